"""Warm pool sizing: how many stopped machines a pool keeps beside its Auto Scaling group (pure).

A warm pool holds machines that booted once (user data, image pulls) and were stopped; raising the group's
desired capacity takes them first, and they start in seconds instead of a cold boot (AWS Compute Blog,
"Scaling your applications faster with EC2 Auto Scaling Warm Pools"). This room decides the size from the
demand forecast and says what PutWarmPool should hold. Imports config and the capacity engine only: no I/O,
no clock (`now` is a parameter).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from chalicelib.capacity.engine import slots_per_new_machine
from chalicelib.config import Platform, Pool

#: Seconds from "desired capacity raised" to a running warm machine, per platform: Linux about 20 s, Windows
#: under 40 s from stopped. These are issue #22's figures, not AWS's: no AWS page we could read states a start
#: time from stopped or hibernated (InfoQ, "AWS Launches EC2 Auto Scaling Warm Pools", 2021, writes "as low as
#: 30 seconds"). A warm machine is capacity that arrives after this, never now. macOS pools run on dedicated
#: hosts: no warm pool.
WARM_START_S: Mapping[Platform, float] = {Platform.LINUX: 20.0, Platform.WINDOWS: 40.0, Platform.MACOS: 0.0}
#: How far back job arrivals are read (the store's index holds active jobs and finished ones not yet settled).
ARRIVAL_WINDOW = timedelta(minutes=30)
#: How far ahead the schedule is read: a period that opens within it has its idle_count warmed now (a
#: stopped machine costs only its EBS volumes, so warming early is cheap; refilling late is a cold boot).
SCHEDULE_LOOKAHEAD = timedelta(minutes=30)
_STEP = timedelta(minutes=1)
#: The fewest machines an auto pool keeps: one stopped machine costs only its EBS volumes (about 0.08 USD a
#: day for 30 GiB of gp3), and lets a quiet spell's first job start warm.
QUIET_FLOOR = 1
#: Seconds of refill (the platform's cold boot lead, chalicelib.forecast.LEAD_S) from which a quiet pool keeps
#: what it held: Windows (740 s) does, Linux (120 s) does not. A Windows refill pays about eight minutes of a
#: license-included instance (m6i.xlarge: about 0.05 USD), as much as 9 hours of its stopped 50 GiB volume,
#: and a job that finds the pool short waits that boot; a Linux refill pays about a minute of an m7i.large,
#: 0.6 hours of a stopped 30 GiB volume. Measured on the bench windows scenario with 3-8 minute boots: quiet
#: pools falling to the quiet floor, wait p95 124 s; keeping what they held, 60 s, for 0.29 USD more in a day.
QUIET_HOLD_REFILL_S = 300.0

#: PutWarmPool's PoolState for each `warm_pool_state` (Amazon EC2 Auto Scaling API Reference, PutWarmPool:
#: Stopped | Running | Hibernated; Running is never used, since a running warm machine costs as much as an
#: idle one).
POOL_STATES: Mapping[str, str] = {"stopped": "Stopped", "hibernated": "Hibernated"}


@dataclass(frozen=True)
class WarmPoolSettings:
    """What a group's warm pool holds (as PutWarmPool takes it and DescribeAutoScalingGroups returns it).

    MinSize equal to MaxGroupPreparedCapacity gives the pool an absolute size: with only MinSize set, the
    pool would also hold "the difference between the group's maximum capacity and its desired capacity"
    (PutWarmPool, MaxGroupPreparedCapacity), which for a group sized to max_instances is most of it.
    `reuse_on_scale_in` is always False here: a machine that ran a job never goes back to the pool.
    """

    min_size: int
    max_group_prepared_capacity: int | None
    pool_state: str = "Stopped"
    reuse_on_scale_in: bool = False


@dataclass(frozen=True)
class WarmPoolSize:
    """The wanted warm pool of one pool: `machines` (0 keeps an empty pool), or None when it has none."""

    pool: str
    machines: int | None
    reason: str
    state: str = "Stopped"

    @property
    def settings(self) -> WarmPoolSettings | None:
        if self.machines is None:
            return None
        return WarmPoolSettings(self.machines, self.machines, self.state, reuse_on_scale_in=False)


def size_warm_pool(
    pool: Pool,
    now: datetime,
    *,
    arrivals: Sequence[datetime],
    prewarm_slots: int,
    refill_s: float,
    held: int = 0,
) -> WarmPoolSize:
    """The warm pool a pool should have now, in machines, capped by `max_instances`.

    "auto" keeps the largest of three demands, in slots, then in machines:
    - the peak of recent job arrivals within any `refill_s` window of the last ARRIVAL_WINDOW: a warm machine
      taken is refilled by a cold launch into the pool, which takes `refill_s` (the platform's cold boot), so
      the pool must absorb one refill time of arrivals;
    - the schedule: the largest `idle_count` of the policies active from now to SCHEDULE_LOOKAHEAD ahead, so
      the idle slots a period opens with, and their replacements after they take jobs, start warm (the
      capacity rule meets idle_count with warm slots: chalicelib/capacity/engine.py `idle_in_group`);
    - plus the pipeline forecast's `prewarm_slots` (later stages expected within a boot time).
    It never falls below `quiet_floor` (the most idle slots the pool's own policies may ask for), from the
    first reconcile on, so the first jobs of a day, a night or a weekend start warm too, for the EBS volumes
    of a few stopped machines.
    While the pool is busy (a job arrived within ARRIVAL_WINDOW, or a scheduled idle_count is on), it never
    shrinks below `held`, the size the group holds now: the peak a burst set stays for the next one. The job
    index forgets a job once it is settled, so `arrivals` hold only the jobs active now, and demand alone
    cannot carry that memory; sizing on them alone was measured and rejected (bench wait p95: linux-workday
    32 -> 79 s, windows 56 -> 306 s). Once the pool is quiet, it falls to the demand and the quiet floor,
    unless a refill takes at least QUIET_HOLD_REFILL_S: then it keeps what it held, as a cold boot there costs
    minutes of wait and of the instance price while a stopped machine costs only its volumes ("Warm pools
    for Amazon EC2 Auto Scaling": stopped instances pay only for their EBS volumes). When the size falls,
    Auto Scaling "can terminate instances in the warm pool to reduce its size when it is larger than
    necessary based on its settings" (same guide, instance reuse policy, 2023 edition).
    A number is a fixed size; "off", Spot and dedicated-host pools have none (`Pool.warm_pool_on`).
    """
    state = POOL_STATES[pool.warm_pool_state]
    if not pool.warm_pool_on:
        return WarmPoolSize(pool.name, None, "off", state)
    if isinstance(pool.warm_pool, int):
        fixed = min(pool.warm_pool, pool.max_instances)
        reason = f"fixed {pool.warm_pool} (max_instances {pool.max_instances})"
        return WarmPoolSize(pool.name, fixed, reason, state)
    burst = peak_arrivals(arrivals, now, refill_s)
    scheduled = scheduled_idle(pool, now)
    slots = max(burst, scheduled) + max(0, prewarm_slots)
    wanted = math.ceil(slots / slots_per_new_machine(pool))
    busy = scheduled > 0 or any(now - ARRIVAL_WINDOW <= t <= now for t in arrivals)
    holds = busy or refill_s >= QUIET_HOLD_REFILL_S
    kept = max(max(0, held) if holds else 0, quiet_floor(pool))
    bound, bound_by = auto_bound(pool)
    machines = min(max(wanted, kept), bound)
    reason = (
        f"{burst} arrivals in {refill_s:.0f} s, idle_count {scheduled} ahead, {prewarm_slots} prewarm"
        + (f", {kept} kept while {'busy' if busy else 'quiet'}" if kept > wanted else "")
        + f" -> {machines} ({bound_by})"
    )
    return WarmPoolSize(pool.name, machines, reason, state)


def auto_bound(pool: Pool) -> tuple[int, str]:
    """The most machines an auto warm pool holds, and what sets it: `max_instances`, and `max_growth_rate`
    when set. Every machine the warm pool lacks is launched at once and boots cold (a refill, or a larger
    size), so a pool above `max_growth_rate` would have Auto Scaling boot more machines in parallel than
    the operator allows the fleet (docker+machine's MaxGrowthRate, whose meaning `max_growth_rate` keeps:
    "the maximum number of machines that can be added to the runner in parallel", gitlab-runner
    `docs/configuration/advanced-configuration.md`, `[runners.machine]`).
    """
    if 0 < pool.max_growth_rate < pool.max_instances:
        return pool.max_growth_rate, f"max_growth_rate {pool.max_growth_rate}"
    return pool.max_instances, f"max_instances {pool.max_instances}"


def quiet_floor(pool: Pool) -> int:
    """Machines a quiet pool keeps warm: the most idle slots any of its policies may ask for (idle_count
    plus scale_factor_limit), in machines, at least QUIET_FLOOR."""
    slots = max((p.idle_count + p.scale_factor_limit for p in pool.policy), default=0)
    return max(QUIET_FLOOR, math.ceil(slots / slots_per_new_machine(pool)))


def peak_arrivals(arrivals: Sequence[datetime], now: datetime, window_s: float) -> int:
    """The most arrivals within any `window_s`-second window of the last ARRIVAL_WINDOW (none from later)."""
    since = now - ARRIVAL_WINDOW
    times = sorted(t for t in arrivals if since <= t <= now)
    best, start = 0, 0
    for end, arrived in enumerate(times):
        while (arrived - times[start]).total_seconds() > window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def scheduled_idle(pool: Pool, now: datetime) -> int:
    """The largest `idle_count` (slots) of the policies active at any minute from now to the lookahead.

    The minutes are looked at only until one reaches the pool's largest `idle_count`: none can exceed it
    (every reconcile asks this, and each look matches the policies' cron periods)."""
    steps = int(SCHEDULE_LOOKAHEAD / _STEP)
    most = max((policy.idle_count for policy in pool.policy), default=0)
    best = 0
    for i in range(steps + 1):
        best = max(best, pool.active_policy(now + i * _STEP).idle_count)
        if best >= most:
            break
    return best


def warm_pool_change(wanted: WarmPoolSize, current: WarmPoolSettings | None) -> WarmPoolSettings | None:
    """The settings to put, or None when the group already holds them (no call). Deleting is `wanted` None
    with a current pool: the caller asks `needs_delete`."""
    settings = wanted.settings
    if settings is None or settings == current:
        return None
    return settings


def needs_delete(wanted: WarmPoolSize, current: WarmPoolSettings | None) -> bool:
    """A group keeps a warm pool the config no longer wants ("off", or the pool became Spot)."""
    return wanted.settings is None and current is not None


#: Seconds between two reconciles of a pool at worst (the tick runs every minute): a forecast window shorter
#: than that may open and close between two looks.
RECONCILE_INTERVAL_S = 60.0


def warm_lead_s(pool: Pool) -> float:
    """How far ahead (seconds) a machine taken from the warm pool must be asked for: it arrives after its
    warm-start time, not now, and the next look at the pool may be one reconcile interval away."""
    return WARM_START_S[pool.platform] + RECONCILE_INTERVAL_S


def prewarm_to_launch(pool: Pool, *, cold_slots: int, warm_slots: int, warm_ready: int) -> int:
    """Prewarm slots to launch now, given the pipeline forecast at the cold lead (`cold_slots`: later-stage
    jobs expected within a cold boot) and at the warm lead (`warm_slots`), and `warm_ready` machines waiting
    in the warm pool.

    Auto Scaling takes warm machines first whenever the desired capacity rises, so when the warm pool holds
    a machine for every slot expected within a cold boot, each can be asked for one warm lead ahead, and
    only the slots expected within it launch now: fewer machines idle while a stage finishes. Otherwise
    every slot expected within a cold boot launches now, as without a warm pool (never later than that).
    """
    if warm_ready * slots_per_new_machine(pool) >= cold_slots:
        return min(warm_slots, cold_slots)
    return cold_slots
