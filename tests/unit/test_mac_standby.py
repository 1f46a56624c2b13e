"""Standby Macs: every Mac host the pool keeps holds a booted Mac waiting for a job (`keep_ready`).

AWS bills a Mac host, not the instance on it ("Amazon EC2 Mac instances": "The unit of billing is the
dedicated host. The instances running on that host have no additional charge"), and a Mac host cannot be
released before its 24-hour minimum allocation ("Stop or terminate your Amazon EC2 Mac instance", "Release
the Dedicated Host"). So a waiting Mac on a paid host is free, and a job that finds it skips a 6-20 minute
boot.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib.capacity import Demand, Machine, MachineState, plan_pool
from chalicelib.capacity.hosts import Host, HostState, Standby, plan_reuse, plan_standby
from chalicelib.config import Pool, config_from_dict
from tests.builders import T0
from tests.functional.test_hosts_contract import MAC, WINDOWS

HOUR = timedelta(hours=1)


def host(
    name: str, allocated_hours_ago: float, *instance_ids: str, state: HostState = HostState.AVAILABLE
) -> Host:
    return Host(f"h-{name}", state, allocated_at=T0 - allocated_hours_ago * HOUR, instance_ids=instance_ids)


def idle_mac(instance_id: str, idle_minutes: float) -> Machine:
    """A standby Mac, ready and waiting for a job since `idle_minutes` ago."""
    since = T0 - timedelta(minutes=idle_minutes)
    return Machine(instance_id, MachineState.IDLE, launched_at=since - HOUR, ready_at=since)


def with_hosts(pool: Pool, **hosts: object) -> Pool:
    assert pool.hosts is not None
    return pool.model_copy(update={"hosts": pool.hosts.model_copy(update=hosts)})


def test_every_host_inside_its_paid_window_is_kept_ready_even_empty_or_scrubbing() -> None:
    # GIVEN three Mac hosts inside their 24 hours: one empty, one holding a Mac, one scrubbing
    hosts = [host("a", 2), host("b", 23, "i-b"), host("c", 5, state=HostState.PENDING)]
    # WHEN the standby is planned with no job anywhere
    standby = plan_standby(MAC, hosts, [idle_mac("i-b", 300)], T0)
    # THEN each holds a booted Mac (or will, once it can take one): they are paid for anyway
    assert standby.slots == 3 and set(standby.kept) == {"h-a", "h-b", "h-c"}
    assert standby.release == ()


@pytest.mark.parametrize(
    ("scenario", "idle_minutes", "kept", "ended"),
    [
        ("its Mac ran a job 30 min ago (idle_time 1 h)", 30, True, False),
        ("its Mac has waited 61 min with no job", 61, False, True),
    ],
)
def test_past_its_minimum_allocation_a_host_is_kept_while_its_mac_is_used(
    scenario: str, idle_minutes: float, kept: bool, ended: bool
) -> None:
    # GIVEN a host 30 h old, billed per second since its 24 h, holding a Mac idle `idle_minutes`
    hosts = [host("old", 30, "i-old")]
    # WHEN the standby is planned
    standby = plan_standby(MAC, hosts, [idle_mac("i-old", idle_minutes)], T0)
    # THEN it is kept while its Mac was used within idle_time, else its Mac is ended so the host can go
    assert (standby.kept == ("h-old",), standby.release == ("i-old",)) == (kept, ended), scenario


def test_a_busy_or_booting_mac_keeps_its_host_past_the_minimum_and_is_never_ended() -> None:
    # GIVEN two hosts past their 24 h: one Mac running a job, one Mac booting (a reuse under way)
    busy = Machine("i-busy", MachineState.BUSY, launched_at=T0 - 5 * HOUR, running_jobs=1)
    booting = Machine("i-boot", MachineState.BOOTING, launched_at=T0 - timedelta(minutes=3))
    hosts = [host("busy", 26, "i-busy"), host("boot", 26, "i-boot")]
    # WHEN the standby is planned
    standby = plan_standby(MAC, hosts, [busy, booting], T0)
    # THEN both hosts are kept and nothing is ended
    assert set(standby.kept) == {"h-busy", "h-boot"} and standby.release == ()


def test_an_empty_host_past_its_minimum_is_not_refilled_and_a_failed_one_never() -> None:
    # GIVEN an empty host past its 24 h, and a failed one inside them
    hosts = [host("empty", 25), host("failed", 2, state=HostState.PERMANENT_FAILURE)]
    # WHEN the standby is planned
    standby = plan_standby(MAC, hosts, [], T0)
    # THEN neither gets a standby Mac: the first is the host plan's to release, the second cannot take one
    assert standby == Standby()


def test_min_hosts_are_kept_ready_whatever_their_idle_time() -> None:
    # GIVEN min_hosts = 1 and a single host past its 24 h whose Mac has waited 3 hours
    pool = with_hosts(MAC, min_hosts=1)
    # WHEN the standby is planned
    standby = plan_standby(pool, [host("floor", 40, "i-floor")], [idle_mac("i-floor", 180)], T0)
    # THEN the Mac stays: ending it would only leave the floor's host empty
    assert standby.kept == ("h-floor",) and standby.release == ()


@pytest.mark.parametrize(
    "pool", [with_hosts(MAC, keep_ready=False), WINDOWS], ids=["keep_ready off", "windows"]
)
def test_no_standby_without_keep_ready_or_off_macos(pool: Pool) -> None:
    # GIVEN a Mac pool with keep_ready off, or a Windows host pool; WHEN the standby is planned
    standby = plan_standby(pool, [host("a", 2)], [], T0)
    # THEN there is none
    assert standby == Standby()


def test_the_engine_fills_every_kept_host_slot_within_host_room() -> None:
    # GIVEN three kept host slots, one Mac busy, none idle, and room on two hosts
    busy = Machine("i-busy", MachineState.BUSY, launched_at=T0 - HOUR, running_jobs=1, jobs_started=1)
    demand = Demand(running=1, standby=3)
    # WHEN the engine plans with no job pending
    plan = plan_pool(MAC, demand, [busy], T0, launchable=2)
    # THEN it launches a Mac onto each empty host: the idle target is the kept slots not in use
    assert plan.launch == 2 and plan.idle_target == 2


def test_a_standby_mac_is_never_scale_in_surplus_while_its_host_is_kept() -> None:
    # GIVEN two kept host slots holding two Macs idle for 5 hours (idle_time 1 h), no job at all
    machines = [idle_mac("i-a", 300), idle_mac("i-b", 300)]
    # WHEN the engine plans
    plan = plan_pool(MAC, Demand(standby=2), machines, T0)
    # THEN neither is removed; without the standby both would be
    assert plan.removals == () and plan.launch == 0
    assert {r.instance_id for r in plan_pool(MAC, Demand(), machines, T0).removals} == {"i-a", "i-b"}


def test_a_used_mac_on_a_kept_host_past_its_minimum_is_reused() -> None:
    # GIVEN a Mac that just ran its job on a host 30 h old that the standby keeps, and a slot needed
    used = Machine(
        "i-used",
        MachineState.IDLE,
        launched_at=T0 - HOUR,
        jobs_started=1,
        last_busy_at=T0 - timedelta(minutes=1),
    )
    hosts = [host("old", 30, "i-used")]
    # WHEN reuse is planned, with and without the host kept
    kept = plan_reuse(MAC, [used], hosts, 1, T0, kept=("h-old",))
    not_kept = plan_reuse(MAC, [used], hosts, 1, T0)
    # THEN it is reused on the kept host (cheaper than a scrub and a new 24 h host), terminated otherwise
    assert kept.reuse == ("i-used",)
    assert not_kept.reuse == () and not_kept.hold == ()


@pytest.mark.parametrize(
    ("platform", "pool_extra", "hosts_extra", "prewarm"),
    [
        ("macos", {}, {}, True),
        ("macos", {"prewarm": False}, {}, False),
        ("macos", {}, {"keep_ready": False}, False),
        ("linux", {}, {}, False),
    ],
)
def test_prewarm_defaults_on_for_standby_mac_pools_only(
    platform: str, pool_extra: dict[str, object], hosts_extra: dict[str, object], prewarm: bool
) -> None:
    # GIVEN a pool of `platform`, prewarm unset unless `pool_extra` sets it
    raw: dict[str, object] = {
        "name": "p",
        "asg": "a",
        "platform": platform,
        "tags": ["t"],
        "max_instances": 2,
        **pool_extra,
    }
    if platform == "macos":
        raw["hosts"] = {
            "instance_type": "mac2.metal",
            "host_resource_group": "g",
            "availability_zones": ["us-east-1a"],
            **hosts_extra,
        }
    # WHEN the config is read
    (pool,) = config_from_dict({"gitlab": {"url": "https://gitlab.example.com"}, "pools": [raw]}, "t").pools
    # THEN the pipeline forecast sizes hosts ahead of later stages on a standby Mac pool, and nowhere else
    assert pool.prewarm is prewarm
