"""The capacity rule: how many machines a pool needs now, and which idle machines may go.

Pure functions over config models and frozen dataclasses; `now` is a parameter. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

from chalicelib.capacity.model import Demand, Machine, MachineState, PoolPlan, Removal, RemovalReason
from chalicelib.config import Policy, Pool, format_duration


def idle_target(policy: Policy, in_use: int) -> int:
    """Idle slots to keep, as taskscaler computes it.

    `max(idle_count, min(ceil(in_use * scale_factor), scale_factor_limit))`; a `scale_factor_limit` of 0
    means no limit, so that `scale_factor` works on its own (slots).
    """
    scaled = math.ceil(in_use * policy.scale_factor) if policy.scale_factor > 0 else 0
    if policy.scale_factor_limit > 0:
        scaled = min(scaled, policy.scale_factor_limit)
    return max(policy.idle_count, scaled)


def idle_in_group(target: int, warm: int) -> int:
    """The idle slots to keep running in the group itself, of an idle `target`, with `warm` slots in its warm
    pool.

    A warm machine is a slot that arrives after its warm-start time (about 20 s on Linux, under 40 s on
    Windows), as a booting machine arrives after its boot (and a booting machine already counts toward the
    target, here and in taskscaler). So warm slots meet the idle target, `idle_count` included: an idle
    runner held running in front of a warm pool saves a job only its warm start, and costs the instance
    price every second it waits (issue #22's capacity rule). Without a warm pool, `idle_count` runners run
    idle as in gitlab-runner. Pending jobs are never covered by warm slots: they get launches, which take
    warm machines first.
    """
    return max(0, target - max(0, warm))


def machine_free_slots(pool: Pool, machine: Machine) -> int:
    """Slots a machine can still take: free capacity, bounded by the jobs left before `max_use_count`."""
    if machine.state is MachineState.DRAINING:
        return 0
    return free_slots(pool, running_jobs=machine.running_jobs, jobs_started=machine.jobs_started)


def free_slots(pool: Pool, *, running_jobs: int, jobs_started: int) -> int:
    """`machine_free_slots` of a machine that is not draining, from its two counts: for a caller that holds
    a machine's record rather than the engine's view of it (no Machine to build per machine)."""
    free = max(0, pool.capacity_per_instance - running_jobs)
    remaining = pool.remaining_uses(jobs_started)
    return free if remaining is None else min(free, remaining)


def slots_per_new_machine(pool: Pool) -> int:
    """Jobs a fresh machine can hold at once."""
    if pool.max_use_count == 0:
        return pool.capacity_per_instance
    return min(pool.capacity_per_instance, pool.max_use_count)


def plan_pool(
    pool: Pool,
    demand: Demand,
    machines: Sequence[Machine],
    now: datetime,
    *,
    launchable: int | None = None,
    halted: str = "",
) -> PoolPlan:
    """Decide one pool: machines to launch and machines to remove.

    `launchable` bounds launches by what can be placed now (free dedicated-host slots); None = unbounded.
    `halted`, when set, says why nothing may launch now (a pool fault): removals still go ahead.
    A machine with a job is never removed, whatever the numbers say.
    """
    policy = pool.active_policy(now)
    reasons: list[str] = []
    removals = _forced_removals(pool, machines, now)
    removed = {r.instance_id for r in removals}
    kept = [m for m in machines if m.instance_id not in removed]

    free = sum(machine_free_slots(pool, m) for m in kept)
    target = idle_target(policy, demand.in_use)
    idle_now = idle_in_group(target, demand.warm)
    standby = max(0, demand.standby - demand.in_use)
    if standby > idle_now:
        target = idle_now = standby
    need = demand.pending + idle_now + demand.prewarm - free

    launch = 0
    capped: list[str] = []
    if need > 0:
        launch, capped = _bounded_launch(pool, need, kept, launchable)
        if halted and launch > 0:
            launch, capped = 0, [*capped, halted]
        reasons.append(
            f"launch {launch}: {demand.pending} pending + {target} idle target"
            + (" (standby: every kept host slot)" if standby and standby == idle_now else "")
            + (f" - {target - idle_now} warm" if target > idle_now else "")
            + (f" + {demand.prewarm} prewarm" if demand.prewarm else "")
            + f" > {free} free slots"
            + (f" (capped by {', '.join(capped)})" if capped else "")
        )
    elif need < 0:
        surplus_removals = _idle_removals(pool, policy, kept, -need, now)
        removals = removals + surplus_removals
    reasons.extend(f"remove {r.instance_id}: {r.detail}" for r in removals)

    remaining = len(machines) - len(removals)
    return PoolPlan(
        pool=pool.name,
        now=now,
        current=len(machines),
        launch=launch,
        removals=tuple(removals),
        desired=remaining + launch,
        in_use=demand.in_use,
        idle_target=target,
        free_slots=free,
        need_slots=need,
        capped_by=tuple(capped),
        reasons=tuple(reasons),
    )


def _forced_removals(pool: Pool, machines: Sequence[Machine], now: datetime) -> tuple[Removal, ...]:
    """Machines that must go whatever the demand: used up, or stuck booting. Never one with a job."""
    out: list[Removal] = []
    for machine in machines:
        if machine.has_job or machine.state is MachineState.DRAINING:
            continue
        if pool.remaining_uses(machine.jobs_started) == 0:
            out.append(
                Removal(
                    machine.instance_id,
                    RemovalReason.USED_UP,
                    f"used up ({machine.jobs_started}/{pool.max_use_count} jobs)",
                )
            )
        elif machine.state is MachineState.BOOTING and now - machine.launched_at > pool.boot_timeout:
            booted_for = format_duration(now - machine.launched_at)
            out.append(
                Removal(
                    machine.instance_id,
                    RemovalReason.STUCK,
                    f"stuck booting {booted_for} > boot_timeout {format_duration(pool.boot_timeout)}",
                )
            )
    return tuple(out)


def _bounded_launch(
    pool: Pool, need_slots: int, kept: Sequence[Machine], launchable: int | None
) -> tuple[int, list[str]]:
    """Machines to add for `need_slots`, bounded by max_instances, max_growth_rate and host room."""
    wanted = math.ceil(need_slots / slots_per_new_machine(pool))
    bounds: list[tuple[int, str]] = [(pool.max_instances - len(kept), f"max_instances {pool.max_instances}")]
    if pool.max_growth_rate > 0:
        booting = sum(1 for m in kept if m.state is MachineState.BOOTING)
        bounds.append(
            (pool.max_growth_rate - booting, f"max_growth_rate {pool.max_growth_rate} ({booting} booting)")
        )
    if launchable is not None:
        bounds.append((launchable, f"host room {launchable}"))
    launch = wanted
    capped: list[str] = []
    for bound, label in bounds:
        if bound < launch:
            launch = max(0, bound)
            capped.append(label)
    return launch, capped


def _idle_removals(
    pool: Pool, policy: Policy, kept: Sequence[Machine], surplus: int, now: datetime
) -> tuple[Removal, ...]:
    """Idle machines past `idle_time` whose slots the pool does not need, longest idle first."""
    candidates = sorted(
        (m for m in kept if m.state is MachineState.IDLE and not m.has_job),
        key=lambda m: (m.idle_since(), m.instance_id),
    )
    out: list[Removal] = []
    for machine in candidates:
        idle_for = now - machine.idle_since()
        if idle_for < policy.idle_time or idle_for < timedelta(0):
            continue
        slots = machine_free_slots(pool, machine)
        if slots > surplus:
            continue
        surplus -= slots
        out.append(
            Removal(
                machine.instance_id,
                RemovalReason.IDLE,
                f"idle {format_duration(idle_for)} >= idle_time {format_duration(policy.idle_time)}",
            )
        )
    return tuple(out)
