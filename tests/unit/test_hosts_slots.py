"""Machines per host: configured when set, 1 on Mac, else AWS's TotalCapacity (pure: no AWS, fixed times)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.capacity.hosts import host_slots, plan_hosts
from chalicelib.config import Pool
from tests.builders import T0
from tests.unit.test_hosts_planning import host, mac_pool, windows_pool

LONG_UNMET = T0 - timedelta(hours=1)


def derived_windows(**hosts: Any) -> Pool:
    """A Windows pool whose [pools.hosts] table leaves slots_per_host out (the common case)."""
    p = windows_pool(max_hosts=4, **hosts)
    table = p.hosts.model_dump(exclude={"slots_per_host"}, exclude_unset=True)  # type: ignore[union-attr]
    return Pool.model_validate({**p.model_dump(exclude_unset=True), "hosts": table})


class TestHostSlots:
    @pytest.mark.parametrize(
        ("p", "reported", "expected"),
        [
            (derived_windows(), 4, 4),  # unset: AWS's count
            (derived_windows(), None, None),  # unset and nothing reported yet: unknown
            (windows_pool(slots_per_host=2), 4, 2),  # set: the operator packs fewer on purpose
            (windows_pool(slots_per_host=1), 4, 1),  # even an explicit 1 wins
            (mac_pool(), None, 1),  # a Mac host holds one instance: nothing to ask
            (mac_pool(), 2, 1),
        ],
        ids=["derived", "unknown", "override", "override-1", "mac", "mac-ignores-aws"],
    )
    def test_where_the_number_comes_from(self, p: Pool, reported: int | None, expected: int | None) -> None:
        assert host_slots(p, reported) == expected

    def test_an_unset_field_is_derived_and_a_written_default_is_not(self) -> None:
        assert derived_windows().hosts.slots_derived  # type: ignore[union-attr]
        assert not windows_pool(slots_per_host=1).hosts.slots_derived  # type: ignore[union-attr]


class TestPlanWithDerivedSlots:
    def test_a_windows_host_packs_as_many_machines_as_aws_reports(self) -> None:
        # GIVEN one empty grouped host that AWS says holds 4 m6i.2xlarge, and 6 machines wanted
        hosts = [host("h-1", free_slots=4, total_slots=4)]
        # WHEN planned with AWS's count
        plan = plan_hosts(derived_windows(), hosts, T0, wanted=6, unmet_since=LONG_UNMET, slots_per_host=4)
        # THEN 4 launch now and the 2 left over need one more host, not two
        assert (plan.launchable, plan.unmet, plan.allocate) == (4, 2, 1)

    def test_without_the_count_a_host_is_one_slot_for_placement(self) -> None:
        plan = plan_hosts(derived_windows(), [host("h-1")], T0, wanted=3, slots_per_host=None)
        assert plan.launchable == 1  # never more than AWS can be shown to take

    def test_a_configured_value_caps_what_aws_reports(self) -> None:
        p = windows_pool(slots_per_host=2, max_hosts=4)
        plan = plan_hosts(p, [host("h-1", free_slots=4, total_slots=4)], T0, wanted=6, slots_per_host=4)
        assert plan.launchable == 2

    def test_an_unknown_size_allocates_one_host_first(self) -> None:
        # GIVEN no host yet, so no size, and 8 machines waiting long enough
        plan = plan_hosts(derived_windows(), [], T0, wanted=8, unmet_since=LONG_UNMET, slots_per_host=None)
        # THEN one host is allocated to learn the size, not one per machine
        assert plan.allocate == 1
        assert any("host size unknown" in r for r in plan.reasons)

    def test_min_hosts_is_honoured_even_while_the_size_is_unknown(self) -> None:
        plan = plan_hosts(derived_windows(min_hosts=2), [], T0, wanted=0, slots_per_host=None)
        assert plan.allocate == 2

    def test_a_mac_pool_never_waits_to_learn_its_size(self) -> None:
        plan = plan_hosts(mac_pool(), [], T0, wanted=3, unmet_since=LONG_UNMET)
        assert plan.allocate == 3


@given(reported=st.integers(1, 64), wanted=st.integers(0, 64), instances=st.integers(0, 64))
def test_launchable_never_exceeds_what_aws_reports_free(reported: int, wanted: int, instances: int) -> None:
    used = min(instances, reported)
    free = reported - used
    hosts = [host("h-1", instances=used, free_slots=free, total_slots=reported)]
    plan = plan_hosts(derived_windows(), hosts, T0, wanted=wanted, slots_per_host=reported)
    assert plan.launchable == free
