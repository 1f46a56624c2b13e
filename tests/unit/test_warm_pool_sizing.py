"""Warm pool sizing (chalicelib/capacity/warm.py) and the warm_pool config rules, table by table and under
hypothesis: the size follows demand, never exceeds max_instances, and is zero or absent where AWS allows none.

AWS facts: PutWarmPool "cannot be called on an Auto Scaling group that has a mixed instances policy or a
launch template or launch configuration that requests Spot Instances" (Amazon EC2 Auto Scaling API Reference,
PutWarmPool; User Guide, "Warm pools for Amazon EC2 Auto Scaling"); MinSize = MaxGroupPreparedCapacity gives
an absolute pool size (PutWarmPool, MaxGroupPreparedCapacity).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.capacity.warm import (
    ARRIVAL_WINDOW,
    QUIET_HOLD_REFILL_S,
    WarmPoolSettings,
    needs_delete,
    peak_arrivals,
    prewarm_to_launch,
    quiet_floor,
    size_warm_pool,
    warm_lead_s,
    warm_pool_change,
)
from chalicelib.config import Platform, parse_config
from chalicelib.errors import ConfigError
from chalicelib.forecast import LEAD_S, quantile
from chalicelib.reconcile import _prewarm
from tests.builders import T0, pool
from tests.unit.test_forecast import WINDOWS, learned, windows_three_stages

REFILL_S = 120.0


def test_auto_is_the_default_on_an_on_demand_pool_and_off_where_aws_allows_none() -> None:
    # GIVEN an on-demand pool, a Spot pool and a host pool, all with the default warm_pool = "auto"
    on_demand = pool()
    spot = pool(spot=True)
    hosts = pool(
        platform="windows",
        hosts={"instance_type": "m5.large", "host_resource_group": "hrg", "availability_zones": ["a"]},
    )
    # THEN only the on-demand pool has a warm pool
    assert on_demand.warm_pool == "auto" and on_demand.warm_pool_on
    assert not spot.warm_pool_on and not hosts.warm_pool_on
    # AND sizing says "off" (None) for the others, whatever the demand
    for quiet in (spot, hosts):
        size = size_warm_pool(quiet, T0, arrivals=[T0] * 5, prewarm_slots=3, refill_s=REFILL_S)
        assert size.machines is None and size.settings is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("spot = true\nwarm_pool = 2", "warm_pool = 2 on a Spot pool"),
        ("warm_pool = -1", "pools[0].warm_pool: -1 is not a warm pool size"),
        ('warm_pool = "always"', "pools[0].warm_pool: 'always' is not a warm pool size"),
        ('warm_pool_state = "running"', "warm_pool_state"),
        ('warm_pool = "3"', "warm_pool"),
    ],
)
def test_validate_config_rejects_a_warm_pool_aws_would_refuse(extra: str, expected: str) -> None:
    # GIVEN a pool asking for a warm pool where none is possible, or in a form that is not a size
    text = f"""
[gitlab]
url = "https://gitlab.example.com"
[[pools]]
name = "linux"
asg = "asg-linux"
tags = ["linux"]
max_instances = 5
{extra}
"""
    # WHEN it is parsed THEN the error names the file, the pool and the field
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "scaler.toml")
    message = str(caught.value)
    assert "scaler.toml" in message and "pools[0]" in message and expected in message


def test_a_host_pool_with_a_fixed_warm_pool_is_an_error_that_says_the_fix() -> None:
    with pytest.raises(ValueError, match='set warm_pool = "off"'):
        pool(
            platform="windows",
            warm_pool=2,
            hosts={"instance_type": "m5.large", "host_resource_group": "hrg", "availability_zones": ["a"]},
        )


def test_a_spot_pool_may_say_zero_or_off() -> None:
    assert not pool(spot=True, warm_pool=0).warm_pool_on
    assert not pool(spot=True, warm_pool="off").warm_pool_on


def test_no_demand_keeps_the_quiet_floor_and_a_burst_keeps_one_refill_time_of_arrivals() -> None:
    # GIVEN an auto pool with no idle_count that never had a job
    quiet = size_warm_pool(pool(), T0, arrivals=[], prewarm_slots=0, refill_s=REFILL_S)
    # THEN it keeps one stopped machine from the first reconcile on, so its first job starts warm
    assert quiet.machines == 1 and quiet.settings == WarmPoolSettings(1, 1, "Stopped", False)
    # WHEN 4 jobs arrived within one minute, 10 minutes ago, and 1 job just now
    arrivals = [T0 - timedelta(minutes=10, seconds=s) for s in (0, 10, 20, 50)] + [T0]
    size = size_warm_pool(pool(), T0, arrivals=arrivals, prewarm_slots=0, refill_s=REFILL_S)
    # THEN the pool holds the burst (4 within a refill time), not the total (5)
    assert size.machines == 4


def test_arrivals_older_than_the_window_are_forgotten() -> None:
    old = [T0 - ARRIVAL_WINDOW - timedelta(seconds=s + 1) for s in range(6)]
    assert size_warm_pool(pool(), T0, arrivals=old, prewarm_slots=0, refill_s=REFILL_S).machines == 1


def test_a_period_opening_soon_is_warmed_now() -> None:
    # GIVEN a policy that keeps 3 idle from 13:00 UTC; it is 12:45 UTC
    scheduled = pool(
        policy=[{"idle_count": 0}, {"periods": ["* 13 * * *"], "idle_count": 3}],
    )
    now = T0.replace(hour=12, minute=45)
    # THEN the warm pool already holds those 3 (a stopped machine costs only its EBS volumes)
    soon = size_warm_pool(scheduled, now, arrivals=[], prewarm_slots=0, refill_s=REFILL_S)
    assert soon.machines == 3 and "idle_count 3 ahead" in soon.reason
    # AND two hours before, the same 3, as the quiet floor: the most idle slots its policies ask for
    early = size_warm_pool(scheduled, T0.replace(hour=10), arrivals=[], prewarm_slots=0, refill_s=REFILL_S)
    assert early.machines == 3 and "idle_count 0 ahead" in early.reason and "kept while quiet" in early.reason


def test_the_pipeline_forecast_adds_to_the_burst() -> None:
    arrivals = [T0 - timedelta(seconds=5)] * 2
    size = size_warm_pool(pool(), T0, arrivals=arrivals, prewarm_slots=3, refill_s=REFILL_S)
    assert size.machines == 5


def test_a_fixed_size_is_kept_and_capped_by_max_instances() -> None:
    assert size_warm_pool(pool(warm_pool=3), T0, arrivals=[], prewarm_slots=0, refill_s=1).machines == 3
    capped = pool(warm_pool=50, max_instances=4)
    assert size_warm_pool(capped, T0, arrivals=[T0] * 99, prewarm_slots=9, refill_s=1).machines == 4


def test_an_auto_pool_never_holds_more_than_the_fleet_may_boot_in_parallel() -> None:
    # GIVEN a pool that lets at most 3 machines boot at once, and 8 jobs that arrived within a refill time
    arrivals = [T0 - timedelta(seconds=s) for s in range(8)]
    limited = pool(max_instances=50, max_growth_rate=3)
    size = size_warm_pool(limited, T0, arrivals=arrivals, prewarm_slots=0, refill_s=REFILL_S, held=20)
    # THEN its warm pool holds 3, not 8 nor the 20 it held: each machine the pool lacks boots cold at once
    assert size.machines == 3 and "max_growth_rate 3" in size.reason
    # AND without a growth limit it holds the burst (bounded by max_instances only)
    free = pool(max_instances=50)
    assert size_warm_pool(free, T0, arrivals=arrivals, prewarm_slots=0, refill_s=REFILL_S).machines == 8
    # AND a fixed size is the operator's own: only max_instances bounds it
    fixed = pool(max_instances=50, max_growth_rate=3, warm_pool=6)
    assert size_warm_pool(fixed, T0, arrivals=[], prewarm_slots=0, refill_s=REFILL_S).machines == 6


def test_hibernated_pools_put_hibernated() -> None:
    hibernated = pool(warm_pool=1, warm_pool_state="hibernated")
    size = size_warm_pool(hibernated, T0, arrivals=[], prewarm_slots=0, refill_s=1)
    assert size.settings == WarmPoolSettings(1, 1, "Hibernated", False)


def test_put_only_when_the_wanted_settings_differ_from_what_was_read() -> None:
    wanted = size_warm_pool(pool(warm_pool=2), T0, arrivals=[], prewarm_slots=0, refill_s=1)
    assert warm_pool_change(wanted, WarmPoolSettings(2, 2, "Stopped", False)) is None
    assert warm_pool_change(wanted, WarmPoolSettings(1, 1, "Stopped", False)) == WarmPoolSettings(2, 2)
    # A pool someone set to reuse machines on scale-in is put back to ReuseOnScaleIn = false.
    assert warm_pool_change(wanted, WarmPoolSettings(2, 2, "Stopped", True)) == WarmPoolSettings(2, 2)
    assert warm_pool_change(wanted, None) == WarmPoolSettings(2, 2)
    off = size_warm_pool(pool(warm_pool="off"), T0, arrivals=[], prewarm_slots=0, refill_s=1)
    assert warm_pool_change(off, WarmPoolSettings(2, 2)) is None
    assert needs_delete(off, WarmPoolSettings(2, 2)) and not needs_delete(off, None)


offsets = st.lists(st.integers(min_value=-3600, max_value=60), max_size=40)


@settings(max_examples=150)
@given(
    offsets=offsets,
    prewarm=st.integers(min_value=0, max_value=30),
    max_instances=st.integers(min_value=1, max_value=20),
    refill=st.floats(min_value=1.0, max_value=900.0),
    idle=st.integers(min_value=0, max_value=10),
)
def test_size_is_bounded_and_never_puts_reuse(
    offsets: list[int], prewarm: int, max_instances: int, refill: float, idle: int
) -> None:
    subject = pool(max_instances=max_instances, policy=[{"idle_count": idle}])
    arrivals = [T0 + timedelta(seconds=o) for o in offsets]
    size = size_warm_pool(subject, T0, arrivals=arrivals, prewarm_slots=prewarm, refill_s=refill)
    assert size.machines is not None and 0 <= size.machines <= max_instances
    assert size.settings is not None and size.settings.reuse_on_scale_in is False
    assert size.settings.min_size == size.settings.max_group_prepared_capacity == size.machines
    # Never below what the schedule or the forecast alone asks for (within max_instances).
    assert size.machines >= min(max(idle, prewarm), max_instances)


@settings(max_examples=150)
@given(offsets=offsets, extra=offsets, refill=st.floats(min_value=1.0, max_value=900.0))
def test_more_arrivals_never_shrink_the_pool(offsets: list[int], extra: list[int], refill: float) -> None:
    before = [T0 + timedelta(seconds=o) for o in offsets]
    after = before + [T0 + timedelta(seconds=o) for o in extra]
    assert peak_arrivals(after, T0, refill) >= peak_arrivals(before, T0, refill)
    # And the peak is at most the arrivals inside the window.
    inside = [t for t in after if T0 - ARRIVAL_WINDOW <= t <= T0]
    assert peak_arrivals(after, T0, refill) <= len(inside)


# -- warm machines arrive after their warm-start time, not now ----------------------------------------------


def test_slots_the_warm_pool_covers_launch_one_warm_lead_ahead_not_a_cold_boot_ahead() -> None:
    # GIVEN a Windows pipeline whose running stage is predicted to end 200 s from now, two jobs behind it
    windows = WINDOWS.model_copy(update={"max_instances": 10})
    q = quantile(learned(*[600.0] * 5), 0.8)
    assert q is not None
    state = windows_three_stages(T0 - timedelta(seconds=q - 200))
    # WHEN no warm machine waits THEN both launch now, a cold boot (740 s) ahead, as without a warm pool
    assert _prewarm(windows, [state], [], T0, warm_ready=0) == (2, 2)
    # WHEN the warm pool holds two THEN none launches yet: they start in about 40 s once asked for, and the
    # warm pool stays sized for both (the cold-boot forecast)
    assert warm_lead_s(windows) == 100.0
    assert _prewarm(windows, [state], [], T0, warm_ready=2) == (0, 2)
    # WHEN it holds only one THEN both launch now (never later than without a warm pool)
    assert _prewarm(windows, [state], [], T0, warm_ready=1) == (2, 2)
    # AND once the stage's end is within the warm lead, both launch (taken from the warm pool)
    assert _prewarm(windows, [state], [], T0 + timedelta(seconds=150), warm_ready=2) == (2, 2)


@settings(max_examples=150)
@given(
    cold=st.integers(0, 12),
    warm=st.integers(0, 12),
    ready=st.integers(0, 12),
)
def test_prewarm_with_warm_machines_is_never_more_and_never_later_than_needed(
    cold: int, warm: int, ready: int
) -> None:
    subject = pool()
    warm = min(warm, cold)  # a window inside another never holds more
    now = prewarm_to_launch(subject, cold_slots=cold, warm_slots=warm, warm_ready=ready)
    assert warm <= now <= cold
    assert prewarm_to_launch(subject, cold_slots=cold, warm_slots=warm, warm_ready=0) == cold
    if ready < cold:  # the warm pool cannot cover them all: as without one
        assert now == cold


# -- a busy pool keeps its size; a quiet one keeps one stopped machine ---------------------------------------


def test_a_busy_pool_keeps_the_size_it_holds_and_a_quiet_one_falls_to_one() -> None:
    # GIVEN the group holds 6 warm machines (the last burst's size)
    one_now = [T0 - timedelta(seconds=5)]
    # WHEN a job arrived within the window THEN the pool keeps its 6, not the 1 the job asks for
    busy = size_warm_pool(pool(), T0, arrivals=one_now, prewarm_slots=0, refill_s=REFILL_S, held=6)
    assert busy.machines == 6 and "6 kept while busy" in busy.reason
    # AND a scheduled idle_count keeps it busy without any job
    scheduled = pool(policy=[{"idle_count": 1}])
    assert (
        size_warm_pool(scheduled, T0, arrivals=[], prewarm_slots=0, refill_s=REFILL_S, held=6).machines == 6
    )
    # WHEN no job arrived within the window THEN it keeps one stopped machine, held before or not
    assert size_warm_pool(pool(), T0, arrivals=[], prewarm_slots=0, refill_s=REFILL_S, held=6).machines == 1
    assert size_warm_pool(pool(), T0, arrivals=[], prewarm_slots=0, refill_s=REFILL_S, held=0).machines == 1
    # AND the held size never passes max_instances
    capped = pool(max_instances=3)
    assert size_warm_pool(capped, T0, arrivals=one_now, prewarm_slots=0, refill_s=1, held=9).machines == 3


@settings(max_examples=150)
@given(
    offsets=offsets,
    prewarm=st.integers(min_value=0, max_value=30),
    max_instances=st.integers(min_value=1, max_value=20),
    held=st.integers(min_value=0, max_value=30),
    idle=st.integers(min_value=0, max_value=3),
)
def test_holding_only_ever_keeps_machines_and_stays_within_bounds(
    offsets: list[int], prewarm: int, max_instances: int, held: int, idle: int
) -> None:
    subject = pool(max_instances=max_instances, policy=[{"idle_count": idle}])
    arrivals = [T0 + timedelta(seconds=o) for o in offsets]
    fresh = size_warm_pool(subject, T0, arrivals=arrivals, prewarm_slots=prewarm, refill_s=REFILL_S)
    kept = size_warm_pool(subject, T0, arrivals=arrivals, prewarm_slots=prewarm, refill_s=REFILL_S, held=held)
    assert fresh.machines is not None and kept.machines is not None
    # Never below what demand alone asks, never above max_instances, never above what was held or asked
    assert fresh.machines <= kept.machines <= max_instances
    assert kept.machines <= max(fresh.machines, held)
    busy = idle > 0 or any(T0 - ARRIVAL_WINDOW <= t <= T0 for t in arrivals)
    if busy:
        assert kept.machines == min(max(fresh.machines, held), max_instances)
    else:
        assert kept.machines == fresh.machines  # a short refill: quiet means the demand and the floor
    # Never below the quiet floor (within max_instances), held or not
    assert fresh.machines >= min(quiet_floor(subject), max_instances)


def test_a_quiet_pool_keeps_the_most_idle_slots_its_policies_may_ask_for() -> None:
    # GIVEN a pool whose working-hours policy keeps 2 idle plus up to 6 by scale factor, at night (its
    # period is not active, no job): the group held 20 warm machines during the day
    night = T0.replace(hour=2)
    subject = pool(
        max_instances=50,
        policy=[
            {"idle_count": 0},
            {
                "periods": ["* 8-18 * * mon-fri"],
                "idle_count": 2,
                "scale_factor": 0.2,
                "scale_factor_limit": 6,
            },
        ],
    )
    size = size_warm_pool(subject, night, arrivals=[], prewarm_slots=0, refill_s=REFILL_S, held=20)
    # THEN it keeps 8 stopped machines (what its own policies may ask for), not 20, not 1
    assert size.machines == 8 and "kept while quiet" in size.reason
    # AND the same 8 when it held fewer: the first jobs of the morning start warm
    assert (
        size_warm_pool(subject, night, arrivals=[], prewarm_slots=0, refill_s=REFILL_S, held=3).machines == 8
    )


def test_a_quiet_pool_whose_refill_is_a_long_boot_keeps_what_it_held() -> None:
    # GIVEN a pool that held 9 warm machines through the day, at night, with no job and no idle_count ahead
    night = T0.replace(hour=2)
    subject = pool(max_instances=40, policy=[{"idle_count": 0}])
    # WHEN its refill is a Windows cold boot (forecast.LEAD_S: 740 s) THEN it keeps the 9: a refill costs
    # minutes of the instance price and of a job's wait, a stopped machine only its volumes
    windows_refill, linux_refill = LEAD_S[Platform.WINDOWS], LEAD_S[Platform.LINUX]
    windows = size_warm_pool(subject, night, arrivals=[], prewarm_slots=0, refill_s=windows_refill, held=9)
    assert windows.machines == 9 and "9 kept while quiet" in windows.reason
    assert LEAD_S[Platform.WINDOWS] >= QUIET_HOLD_REFILL_S
    # WHEN its refill is a Linux cold boot (120 s) THEN it falls to its quiet floor (1 machine)
    linux = size_warm_pool(subject, night, arrivals=[], prewarm_slots=0, refill_s=linux_refill, held=9)
    assert linux.machines == 1
    # AND AWS terminates the surplus warm instances when the size falls (PutWarmPool): the size is absolute
    assert linux.settings == WarmPoolSettings(1, 1, "Stopped", False)
