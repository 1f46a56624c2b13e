"""Dedicated-host planning, rule by rule, and its invariants under hypothesis (pure: no AWS, fixed times)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.capacity.hosts import (
    NEW_HOST_GRACE,
    Host,
    HostState,
    IdleMark,
    LicenseRoom,
    host_free_slots,
    plan_hosts,
    release_after,
)
from chalicelib.config import HostManagement, Pool
from chalicelib.errors import ConfigError
from tests.builders import T0, pool

DAY = timedelta(hours=24)


def mac_pool(**hosts: Any) -> Pool:
    table: dict[str, Any] = {
        "instance_type": "mac2.metal",
        "host_resource_group": "macos-hosts",
        "max_hosts": 3,
        "scrub_time": "50m",
        "availability_zones": ["us-east-1a", "us-east-1b"],
    }
    table.update(hosts)
    return pool(
        name="macos",
        platform="macos",
        tags=["macos"],
        run_untagged=False,
        max_instances=3,
        hosts=table,
        policy=[{"idle_time": "1h"}],
    )


def windows_pool(**hosts: Any) -> Pool:
    table: dict[str, Any] = {
        "instance_type": "m6i.2xlarge",
        "host_family": "m6i",
        "host_resource_group": "windows-hosts",
        "slots_per_host": 4,
        "max_hosts": 2,
        "scrub_time": "0s",
        "availability_zones": ["us-east-1a"],
    }
    table.update(hosts)
    return pool(
        name="windows",
        platform="windows",
        tags=["windows"],
        run_untagged=False,
        max_instances=8,
        hosts=table,
        policy=[{"idle_time": "30m"}],
    )


def host(
    host_id: str = "h-1",
    state: HostState | str = HostState.AVAILABLE,
    *,
    age: timedelta = timedelta(hours=2),
    instances: int = 0,
    idle_for: timedelta | None = None,
    **fields: Any,
) -> Host:
    """A host allocated `age` ago, holding `instances` machines, empty for `idle_for` (None: no clock yet)."""
    return Host(
        host_id=host_id,
        state=HostState(state),
        allocated_at=T0 - age,
        instance_ids=tuple(f"i-{host_id}-{n}" for n in range(instances)),
        idle_since=T0 - idle_for if idle_for is not None else None,
        availability_zone=fields.pop("availability_zone", "us-east-1a"),
        **fields,
    )


class TestLaunchable:
    def test_free_slots_of_available_hosts_are_launchable(self) -> None:
        plan = plan_hosts(windows_pool(), [host("h-1", instances=3), host("h-2")], T0)
        assert plan.launchable == 1 + 4

    def test_a_scrubbing_host_is_never_launchable(self) -> None:
        plan = plan_hosts(mac_pool(), [host("h-1", "pending"), host("h-2")], T0, wanted=2)
        assert plan.launchable == 1
        assert plan.placement == ("h-2",)
        assert plan.unmet == 1

    def test_failed_hosts_and_hosts_outside_the_group_offer_nothing(self) -> None:
        hosts = [host("h-1", "under-assessment"), host("h-2", in_group=False), host("h-3", "unknown")]
        assert plan_hosts(mac_pool(), hosts, T0).launchable == 0

    def test_capacity_reported_by_aws_bounds_the_slots(self) -> None:
        assert host_free_slots(windows_pool().hosts, host(instances=1, free_slots=1)) == 1  # type: ignore[arg-type]
        assert host_free_slots(windows_pool().hosts, host(instances=1)) == 3  # type: ignore[arg-type]

    def test_a_pool_without_hosts_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match=r"no \[pools.hosts\] table"):
            plan_hosts(pool(), [], T0)


class TestAllocate:
    def test_unmet_demand_first_starts_the_clock(self) -> None:
        plan = plan_hosts(mac_pool(), [], T0, wanted=1)
        assert (plan.allocate, plan.unmet, plan.unmet_since) == (0, 1, T0)
        assert "wait" in plan.summary()

    def test_unmet_demand_past_allocate_after_allocates(self) -> None:
        plan = plan_hosts(mac_pool(), [], T0, wanted=2, unmet_since=T0 - timedelta(minutes=2))
        assert plan.allocate == 2
        assert plan.unmet_since is None  # each allocation restarts the wait

    def test_demand_is_packed_into_hosts(self) -> None:
        plan = plan_hosts(windows_pool(), [], T0, wanted=6, unmet_since=T0 - timedelta(minutes=5))
        assert plan.allocate == 2

    def test_capped_by_max_hosts(self) -> None:
        hosts = [host("h-1", instances=1), host("h-2", instances=1)]
        plan = plan_hosts(mac_pool(), hosts, T0, wanted=5, unmet_since=T0 - timedelta(hours=1))
        assert plan.allocate == 1
        assert "capped by max_hosts 3" in plan.summary()

    def test_at_max_hosts_demand_waits_and_keeps_its_clock(self) -> None:
        hosts = [host(f"h-{n}", instances=1) for n in range(3)]
        since = T0 - timedelta(hours=1)
        plan = plan_hosts(mac_pool(), hosts, T0, wanted=1, unmet_since=since)
        assert (plan.allocate, plan.unmet_since) == (0, since)
        assert "cannot allocate" in plan.summary()

    def test_min_hosts_is_reached_without_waiting(self) -> None:
        plan = plan_hosts(mac_pool(min_hosts=2), [host("h-1")], T0)
        assert plan.allocate == 1
        assert "below min_hosts" in plan.summary()

    def test_failed_hosts_do_not_count_toward_min_hosts(self) -> None:
        plan = plan_hosts(mac_pool(min_hosts=1), [host("h-1", "permanent-failure", instances=1)], T0)
        assert plan.allocate == 1

    def test_placed_demand_allocates_nothing(self) -> None:
        plan = plan_hosts(mac_pool(), [host("h-1")], T0, wanted=1, unmet_since=T0 - timedelta(hours=1))
        assert (plan.allocate, plan.unmet, plan.unmet_since) == (0, 0, None)

    def test_a_freshly_allocated_host_not_yet_available_counts_as_coming(self) -> None:
        fresh = host("h-1", "pending", age=NEW_HOST_GRACE - timedelta(minutes=1))
        plan = plan_hosts(mac_pool(), [fresh], T0, wanted=1, unmet_since=T0 - timedelta(minutes=10))
        assert plan.allocate == 0

    def test_a_fresh_host_still_joining_the_group_counts_as_coming(self) -> None:
        stray = host("h-1", age=timedelta(minutes=3), in_group=False)
        plan = plan_hosts(mac_pool(), [stray], T0, wanted=1, unmet_since=T0 - timedelta(minutes=10))
        assert (plan.allocate, plan.associate) == (0, ("h-1",))

    def test_a_scrub_ending_soon_counts_as_coming(self) -> None:
        scrubbing = host("h-1", "pending", scrubbing_until=T0 + timedelta(minutes=1))
        plan = plan_hosts(mac_pool(), [scrubbing], T0, wanted=1, unmet_since=T0 - timedelta(minutes=10))
        assert plan.allocate == 0

    def test_a_long_scrub_does_not_hold_demand_back(self) -> None:
        scrubbing = host("h-1", "pending", scrubbing_until=T0 + timedelta(minutes=45))
        plan = plan_hosts(mac_pool(), [scrubbing], T0, wanted=1, unmet_since=T0 - timedelta(minutes=10))
        assert plan.allocate == 1

    def test_new_hosts_spread_over_the_configured_zones(self) -> None:
        plan = plan_hosts(mac_pool(), [host("h-1")], T0, wanted=3, unmet_since=T0 - timedelta(hours=1))
        assert plan.allocate_zones == ("us-east-1b", "us-east-1a")

    def test_without_zones_the_config_is_refused_and_the_fix_is_named(self) -> None:
        # The config check stops a scaler-managed pool without zones before the planner ever sees it.
        with pytest.raises(ValueError, match="availability_zones"):
            mac_pool(availability_zones=[])

    def test_socket_license_hard_limit_caps_allocation(self) -> None:
        room = LicenseRoom("Socket", limit=4, consumed=0, hard_limit=True)
        hosts = [host("h-1", instances=4, sockets=2)]
        plan = plan_hosts(
            windows_pool(max_hosts=5), hosts, T0, wanted=12, unmet_since=T0 - DAY, license_room=room
        )
        assert plan.allocate == 2  # 4 sockets left, 2 per host

    def test_socket_license_keeps_room_for_empty_hosts(self) -> None:
        room = LicenseRoom("Socket", limit=4, consumed=2, hard_limit=True)
        hosts = [host("h-1", instances=4, sockets=2), host("h-2", instances=4, free_slots=0, sockets=2)]
        plan = plan_hosts(
            windows_pool(max_hosts=5), hosts, T0, wanted=4, unmet_since=T0 - DAY, license_room=room
        )
        assert plan.allocate == 1

    def test_instance_license_bounds_launches_not_hosts(self) -> None:
        room = LicenseRoom("Instance", limit=10, consumed=9, hard_limit=True)
        plan = plan_hosts(
            windows_pool(), [host("h-1")], T0, wanted=6, unmet_since=T0 - DAY, license_room=room
        )
        assert (plan.launchable, plan.unmet, plan.allocate) == (1, 0, 0)

    def test_a_soft_license_limit_bounds_nothing(self) -> None:
        room = LicenseRoom("Instance", limit=1, consumed=5, hard_limit=False)
        assert plan_hosts(windows_pool(), [host("h-1")], T0, license_room=room).launchable == 4


class TestRelease:
    def test_idle_host_inside_its_paid_day_is_kept(self) -> None:
        plan = plan_hosts(mac_pool(), [host(age=timedelta(hours=20), idle_for=timedelta(hours=10))], T0)
        assert plan.release == ()

    def test_idle_host_goes_at_the_end_of_its_paid_day(self) -> None:
        plan = plan_hosts(mac_pool(), [host(age=DAY, idle_for=timedelta(hours=5))], T0)
        assert plan.release == ("h-1",)
        assert "min_allocation 24h" in plan.summary()

    def test_release_time_is_the_later_of_paid_end_and_idle_time(self) -> None:
        p = mac_pool()
        assert release_after(p, host(age=timedelta(hours=10), idle_for=timedelta(hours=3)), T0) == T0 + 14 * (
            DAY / 24
        )
        late_idle = host(age=DAY + timedelta(hours=5), idle_for=timedelta(minutes=20))
        assert release_after(p, late_idle, T0) == T0 + timedelta(minutes=40)
        assert release_after(p, host(instances=1), T0) is None

    def test_host_empty_for_less_than_idle_time_is_kept(self) -> None:
        plan = plan_hosts(mac_pool(), [host(age=2 * DAY, idle_for=timedelta(minutes=59))], T0)
        assert plan.release == ()

    def test_host_whose_idle_clock_has_not_started_is_kept(self) -> None:
        plan = plan_hosts(mac_pool(), [host(age=2 * DAY)], T0)
        assert plan.release == ()
        assert plan.idle_marks == (IdleMark("h-1", T0),)

    def test_occupied_host_is_never_released(self) -> None:
        plan = plan_hosts(mac_pool(), [host(age=2 * DAY, instances=1, idle_for=DAY)], T0)
        assert plan.release == ()

    def test_scrubbing_host_is_not_released(self) -> None:
        plan = plan_hosts(mac_pool(), [host(state="pending", age=2 * DAY, idle_for=DAY)], T0)
        assert plan.release == ()

    def test_min_hosts_are_kept(self) -> None:
        hosts = [host("h-1", age=2 * DAY, idle_for=DAY), host("h-2", age=2 * DAY, idle_for=2 * DAY)]
        plan = plan_hosts(mac_pool(min_hosts=1), hosts, T0)
        assert plan.release == ("h-2",)  # the longest idle goes first

    def test_host_the_engine_is_about_to_use_is_kept(self) -> None:
        plan = plan_hosts(mac_pool(), [host(age=2 * DAY, idle_for=DAY)], T0, wanted=1)
        assert plan.release == ()
        assert plan.launchable == 1

    def test_released_hosts_leave_the_launch_room(self) -> None:
        plan = plan_hosts(
            windows_pool(), [host("h-1", instances=1), host("h-2", age=2 * DAY, idle_for=DAY)], T0
        )
        assert (plan.release, plan.launchable) == (("h-2",), 3)

    def test_failed_empty_host_goes_once_past_its_paid_day(self) -> None:
        young = host("h-1", "permanent-failure", age=timedelta(hours=3))
        old = host("h-2", "permanent-failure", age=DAY)
        assert plan_hosts(mac_pool(), [young, old], T0).release == ("h-2",)


class TestIdleMarksAndPlacement:
    def test_idle_clock_starts_when_empty_and_stops_when_used(self) -> None:
        hosts = [
            host("h-1"),
            host("h-2", instances=1, idle_for=timedelta(hours=1)),
            host("h-3", idle_for=DAY),
        ]
        plan = plan_hosts(mac_pool(), hosts, T0)
        assert plan.idle_marks == (IdleMark("h-1", T0), IdleMark("h-2", None))

    def test_paid_for_hosts_come_first_then_fuller_ones(self) -> None:
        hosts = [
            host("h-past", age=DAY + timedelta(hours=1)),
            host("h-young", age=timedelta(hours=1)),
            host("h-older", age=timedelta(hours=10)),
            host("h-fuller", age=timedelta(hours=10), instances=2),
        ]
        plan = plan_hosts(windows_pool(max_hosts=4), hosts, T0)
        assert plan.placement == ("h-fuller", "h-young", "h-older", "h-past")

    def test_stray_host_is_associated_with_the_group(self) -> None:
        plan = plan_hosts(mac_pool(), [host("h-1", in_group=False)], T0)
        assert plan.associate == ("h-1",)
        assert plan.changes


class TestAutoManagement:
    def test_the_group_allocates_and_releases_the_scaler_only_counts_room(self) -> None:
        p = mac_pool(host_management="auto", min_hosts=1)
        hosts = [host("h-1", age=2 * DAY, idle_for=DAY), host("h-2", "pending")]
        plan = plan_hosts(p, hosts, T0, wanted=3, unmet_since=T0 - DAY)
        assert (plan.allocate, plan.release, plan.idle_marks, plan.launchable, plan.unmet) == (
            0,
            (),
            (),
            1,
            2,
        )


class TestMetrics:
    def test_counts_and_idle_hours(self) -> None:
        hosts = [
            host("h-busy", instances=1),
            host("h-idle", age=timedelta(hours=20), idle_for=timedelta(hours=3)),
            host("h-scrub", "pending"),
            host("h-bad", "under-assessment"),
        ]
        metrics = plan_hosts(mac_pool(max_hosts=4), hosts, T0).metrics
        assert (metrics.allocated, metrics.available, metrics.scrubbing, metrics.occupied) == (4, 2, 1, 1)
        assert (metrics.idle, metrics.failed, metrics.launchable) == (1, 1, 1)
        assert metrics.idle_host_hours == pytest.approx(3.0)
        assert metrics.committed_idle_hours == pytest.approx(4.0)
        assert metrics.as_metrics()["HostsScrubbing"] == 1


# ---------------------------------------------------------------- properties


# Weighted toward available, empty, grouped hosts, so releases are common enough to test.
_states = st.sampled_from([HostState.AVAILABLE] * 4 + [s for s in HostState if s is not HostState.RELEASED])
_ages = st.sampled_from([DAY - timedelta(seconds=1), DAY, DAY + timedelta(seconds=1)]) | st.builds(
    lambda m: timedelta(minutes=m), st.integers(0, 3 * 24 * 60)
)  # the edge of the paid day, and anywhere
_idle = st.none() | st.builds(lambda m: timedelta(minutes=m), st.integers(0, 2 * 24 * 60))
_zones = st.sampled_from(["us-east-1a", "us-east-1b", "us-west-2a"])
_scrub_ends = st.none() | st.builds(lambda m: T0 + timedelta(minutes=m), st.integers(0, 90))
_unmet = st.none() | st.builds(lambda m: T0 - timedelta(minutes=m), st.integers(0, 60))
_POOLS = {
    (slots, max_hosts, min_hosts, mode, wait): windows_pool(
        slots_per_host=slots,
        max_hosts=max_hosts,
        min_hosts=min_hosts,
        host_management=mode,
        allocate_after=wait,
        availability_zones=["us-east-1a", "us-east-1b"],
    )
    for slots in range(1, 5)
    for max_hosts in range(1, 6)
    for min_hosts in range(max_hosts + 1)
    for mode in ("scaler", "auto")
    for wait in ("0s", "2m", "10m")
}
_pools = st.sampled_from(sorted(_POOLS, key=str)).map(_POOLS.__getitem__)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Pool, list[Host], int, Any]:
    p = draw(_pools)
    slots = p.hosts.slots_per_host  # type: ignore[union-attr]
    hosts = [
        host(
            f"h-{n}",
            draw(_states),
            age=draw(_ages),
            instances=draw(st.just(0) | st.integers(0, slots)),
            idle_for=draw(_idle),
            in_group=draw(st.sampled_from([True, True, True, False])),
            availability_zone=draw(_zones),
            scrubbing_until=draw(_scrub_ends),
        )
        for n in range(draw(st.integers(0, 6)))
    ]
    return p, hosts, draw(st.just(0) | st.integers(0, 20)), draw(_unmet)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_never_plans_above_max_hosts(scenario: tuple[Pool, list[Host], int, Any]) -> None:
    p, hosts, wanted, since = scenario
    plan = plan_hosts(p, hosts, T0, wanted=wanted, unmet_since=since)
    live = sum(1 for h in hosts if h.live)
    assert plan.allocate == 0 or live + plan.allocate <= p.hosts.max_hosts  # type: ignore[union-attr]
    assert len(plan.allocate_zones) == plan.allocate


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_never_releases_an_occupied_scrubbing_or_still_paid_host(
    scenario: tuple[Pool, list[Host], int, Any],
) -> None:
    p, hosts, wanted, since = scenario
    plan = plan_hosts(p, hosts, T0, wanted=wanted, unmet_since=since)
    by_id = {h.host_id: h for h in hosts}
    for host_id in plan.release:
        released = by_id[host_id]
        assert not released.occupied
        assert not released.scrubbing
        assert T0 - released.allocated_at >= p.hosts.min_allocation  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_launchable_never_counts_a_scrubbing_host(scenario: tuple[Pool, list[Host], int, Any]) -> None:
    p, hosts, wanted, since = scenario
    plan = plan_hosts(p, hosts, T0, wanted=wanted, unmet_since=since)
    cfg = p.hosts
    assert cfg is not None
    room_without_scrubbing = sum(host_free_slots(cfg, h) for h in hosts if not h.scrubbing)
    assert 0 <= plan.launchable <= room_without_scrubbing
    scrubbing = {h.host_id for h in hosts if h.scrubbing}
    assert not scrubbing & set(plan.placement)
    only_scrubbing = [h for h in hosts if h.scrubbing]
    assert plan_hosts(p, only_scrubbing, T0, wanted=wanted).launchable == 0


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_auto_managed_pools_never_allocate_or_release(scenario: tuple[Pool, list[Host], int, Any]) -> None:
    p, hosts, wanted, since = scenario
    assert p.hosts is not None
    auto = p.model_copy(update={"hosts": p.hosts.model_copy(update={"host_management": HostManagement.AUTO})})
    plan = plan_hosts(auto, hosts, T0, wanted=wanted, unmet_since=since)
    assert (plan.allocate, plan.release, plan.associate) == (0, (), ())


_idle_fleets = st.lists(
    st.tuples(_ages, st.builds(lambda m: timedelta(minutes=m), st.integers(0, 3 * 24 * 60))), max_size=6
)


@settings(max_examples=300, deadline=None)
@given(_idle_fleets)
def test_with_no_demand_exactly_the_idle_hosts_past_their_paid_day_go(
    fleet: list[tuple[timedelta, timedelta]],
) -> None:
    p = windows_pool(max_hosts=6)
    hosts = [host(f"h-{n}", age=age, idle_for=min(idle, age)) for n, (age, idle) in enumerate(fleet)]
    plan = plan_hosts(p, hosts, T0)
    expected = {
        f"h-{n}"
        for n, (age, idle) in enumerate(fleet)
        if age >= DAY and min(idle, age) >= timedelta(minutes=30)
    }
    assert set(plan.release) == expected
