"""Use case: reconcile ONE pool. Read one snapshot, build a plan (a pure, frozen value), then apply it.

The plan (`ReconcilePlan`, from the pure `plan_reconcile`) decides the desired capacity, the machines to
protect, the instance-type fallback and every removal with its reason: the engine's scale-in, and every
draining machine with no job, whoever marked it (a rebalance hint, the sweep's stuck and runner-gone
machines). The apply runs each removal through the one drain protocol (chalicelib.drain). On a macOS pool a
used-up Mac may be reused instead (`plan_reuse`): drained the same way, its root volume replaced, and its new
runner and secret delivered once the replacement succeeded (docs/windows-macos.md, "Host reuse"). `dry_run`
reads, plans and returns the plan without a write (as `apply_hooks` and `apply_host_plan` do). Only one
reconcile of a pool applies at a time (a conditional-write lease in the store), so two never act on a stale
view of each other. Imports adapters' Protocols, the engine and config; no boto3.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from chalicelib.capacity import Demand, Machine, MachineState, PoolPlan, RemovalReason, plan_pool
from chalicelib.capacity.engine import slots_per_new_machine
from chalicelib.capacity.fallback import can_fall_back, preferred_types
from chalicelib.capacity.hosts import (
    REPLACE_FAILED,
    REPLACE_SUCCEEDED,
    HostPlan,
    ReusePlan,
    Standby,
    plan_hosts,
    plan_reuse,
    plan_standby,
)
from chalicelib.capacity.warm import (
    WarmPoolSettings,
    needs_delete,
    prewarm_to_launch,
    size_warm_pool,
    warm_lead_s,
    warm_pool_change,
)
from chalicelib.config import Config, Pool
from chalicelib.drain import DrainState, drain_machine, takes_no_job
from chalicelib.eligibility import Eligibility
from chalicelib.errors import AwsCallError, GitLabError, LeaseExpiredError, NotFoundError
from chalicelib.fleet import Fleet, GroupView, Instance, WarmPools
from chalicelib.forecast import PipelineState, forecast, lead_of, with_statuses
from chalicelib.hosts import HostPoolView, HostPort, apply_host_plan
from chalicelib.jobs import runner_description
from chalicelib.lifecycle import PREPARE_FAULT, LifecycleOutcome, pending_since
from chalicelib.metrics import EmfMetrics, Metrics
from chalicelib.pipelines import Pipelines, active_for_prewarm
from chalicelib.store import HOLDS_SLOT, TERMINAL, Fault, JobRecord, MachineRecord, PoolLease, Store

if TYPE_CHECKING:  # python-gitlab is imported with the adapter, never on the reconcile's import path
    from chalicelib.gitlab import RunnerType

logger = logging.getLogger(__name__)

#: A reconcile stops writing this long before its lease ends (clock drift, the write's own duration).
LEASE_SAFETY_SECONDS = 5.0

#: A pool asks GitLab which of its runners never polled at most once per this many seconds.
CONTACT_CHECK_SECONDS = 15

#: The drain reason of a used Mac being drained for reuse (its root volume replaced, not terminated).
REUSE_REASON = "reuse"
#: The removal reason of a Mac whose root-volume replacement failed: it is terminated as before.
REUSE_FAILED_REASON = "reuse-failed"
#: The removal reason of a standby Mac ended so that its host, past its minimum allocation, can be released.
STANDBY_END_REASON = "standby-end"


class RunnerControl(Protocol):
    """The GitLab side of drain-then-terminate: stop a runner taking jobs, then ask what it still runs."""

    def pause_runner(self, runner_id: int, paused: bool = True) -> None: ...

    def runner_jobs(self, runner_id: int, status: str = "running") -> Sequence[Any]: ...

    def list_runners(
        self,
        description_prefix: str,
        *,
        runner_type: RunnerType | None = None,
        group_id: int | None = None,
        project_id: int | None = None,
        status: str | None = None,
    ) -> Sequence[Any]: ...


class ReusePreparer(Protocol):
    """A reused Mac's old runner and secret cleared, and its new ones made, by the lifecycle's own code
    (chalicelib.lifecycle.Lifecycle): the same steps as a termination's clean-up and a launch."""

    def clear_for_reuse(self, instance_id: str, runner_id: int | None) -> None: ...

    def prepare_reused(self, pool: Pool, record: MachineRecord, now: datetime) -> LifecycleOutcome: ...


@dataclass(frozen=True)
class Removal:
    """A machine the plan removes, and why: idle / used-up (the engine), stuck / runner-gone (the sweep),
    rebalance / drain (a drain someone else started)."""

    instance_id: str
    reason: str


@dataclass(frozen=True)
class WarmPoolStep:
    """The plan's warm-pool decision (chalicelib/capacity/warm.py sizes it): put `put`, or delete the pool,
    or leave it with the reason it is `skipped`. `reason` is the sizing's own."""

    put: WarmPoolSettings | None = None
    delete: bool = False
    reason: str = ""
    skipped: str = ""

    def describe(self) -> str:
        """One line for the result, the CLI's plan and the logs ("put 3 (...)", "deleted", "skipped: ...")."""
        if self.skipped:
            return f"skipped: {self.skipped}"
        if self.put is not None:
            return f"put {self.put.min_size} ({self.reason})"
        return "deleted"


@dataclass(frozen=True)
class PoolSnapshot:
    """What one reconcile read of a pool, once: the group, the machine records (repaired against the group:
    adopted, vanished ones left out, jobs credited, contact learned), the jobs and faults, the hosts."""

    pool: Pool
    now: datetime
    group: GroupView
    records: Mapping[str, MachineRecord]
    jobs: tuple[JobRecord, ...]
    faults: tuple[Fault, ...]
    #: Pending jobs no runner of ours can take (chalicelib.eligibility): not demand.
    unpickable: int = 0
    #: Prewarm slots to launch now, and those expected within a cold boot (the warm pool's size).
    prewarm: int = 0
    prewarm_cold: int = 0
    hosts: HostPoolView | None = None
    #: A dedicated-host pool's host plan: made while reading, as its license room is read only when the plan
    #: needs it (an allocation). None for other pools.
    host_plan: HostPlan | None = None
    #: The TaskState of each reused Mac's root-volume replacement under way, by instance id.
    replace_states: Mapping[str, str] = field(default_factory=dict)
    #: The reconciler can reuse Macs (it has the hosts, GitLab and the lifecycle that prepares a machine).
    can_reuse: bool = False


@dataclass(frozen=True)
class ReconcilePlan:
    """What a reconcile of one pool will do, decided from one snapshot: `Reconciler` applies it, or returns
    it untouched in a dry run."""

    pool: str
    desired_before: int
    #: Live machines in the snapshot, and the group's MaxSize.
    live: int
    max_size: int
    #: Machines to add (the engine's launch, within host room and halts).
    launch: int
    #: Live machines not yet protected from scale-in: the scaler, never the ASG, chooses what goes.
    protect: tuple[str, ...]
    removals: tuple[Removal, ...]
    #: The instance types to set on the group, preferred first (None: leave them as they are).
    instance_types: tuple[str, ...] | None
    demand: Demand
    machines: tuple[Machine, ...]
    pool_plan: PoolPlan
    host_plan: HostPlan | None = None
    #: The warm pool to put or delete; None when the group already holds what the sizing wants.
    warm_pool: WarmPoolStep | None = None
    #: Used-up Macs to reuse rather than remove: drained, then their root volume replaced (they stay live, and
    #: count as booting machines from then on, so they take the place of launches).
    reuse: tuple[str, ...] = ()
    #: Reused Macs whose replacement succeeded: they get their new runner and secret now.
    deliver: tuple[str, ...] = ()

    @property
    def desired(self) -> int:
        """The group's desired capacity once every removal has terminated (a drain's GitLab re-check may still
        keep a machine: the apply then counts it)."""
        return min(self.live - len(self.removals) + self.launch, self.max_size)


def plan_reconcile(snapshot: PoolSnapshot) -> ReconcilePlan:
    """The decision of one reconcile: pure (no I/O; the only time is `snapshot.now`)."""
    pool, group, records = snapshot.pool, snapshot.group, snapshot.records
    live = group.live_instances()
    machines = tuple(_machine(i, records[i.instance_id]) for i in live)
    standby = _standby(snapshot, machines)
    demand = replace(_demand(snapshot), standby=standby.slots)
    halted = next(
        (f"pool fault until {f.until:%H:%M}Z" for f in snapshot.faults if f.kind == PREPARE_FAULT), ""
    )
    host_plan = snapshot.host_plan
    ending = set(standby.release)
    pool_plan = plan_pool(
        pool,
        demand,
        # A standby Mac being ended offers no slot: the engine sees it as draining.
        tuple(replace(m, state=MachineState.DRAINING) if m.instance_id in ending else m for m in machines),
        snapshot.now,
        launchable=host_plan.launchable if host_plan else None,
        halted=halted,
    )
    reuse_plan = reusable(snapshot, machines, pool_plan)
    reuse, kept = reuse_plan.reuse, {*reuse_plan.reuse, *reuse_plan.hold}
    removals = [
        Removal(r.instance_id, r.reason.value) for r in pool_plan.removals if r.instance_id not in kept
    ]
    removals += [Removal(i, STANDBY_END_REASON) for i in standby.release]
    # Any draining machine with no job is removed, whoever started its drain (a scale-in, a rebalance
    # hint, the sweep): a drained machine nothing removes would count against max_instances forever. A
    # Spot-interrupted one is left to EC2, which ends it within two minutes of the warning. One drained for
    # a reuse the plan no longer makes (no demand left, its wait nearly over) is removed as used up.
    removals += [
        Removal(m.instance_id, _drain_reason(records[m.instance_id]))
        for m in machines
        if m.state is MachineState.DRAINING
        and m.instance_id not in kept
        and m.instance_id not in ending
        and records[m.instance_id].drain_reason != "spot"
        and not records[m.instance_id].running
    ]
    # A failed replacement: terminated as before (`failed` left the used volume attached, `failed-detached`
    # none at all).
    removing = {r.instance_id for r in removals}
    removals += [
        Removal(i, REUSE_FAILED_REASON)
        for i, state in sorted(snapshot.replace_states.items())
        if state in REPLACE_FAILED and i in records and i not in removing
    ]
    deliver = tuple(
        i
        for i, state in sorted(snapshot.replace_states.items())
        if state == REPLACE_SUCCEEDED and i in records and records[i].replace_task is not None
    )
    return ReconcilePlan(
        pool=pool.name,
        desired_before=group.desired,
        live=len(live),
        max_size=group.max_size,
        launch=_launch_after_reuse(pool, pool_plan, len(reuse)),
        protect=tuple(i.instance_id for i in live if not i.protected),
        removals=tuple(removals),
        instance_types=_fallback_types(pool, group, snapshot.faults),
        demand=demand,
        machines=machines,
        pool_plan=pool_plan,
        host_plan=host_plan,
        warm_pool=_plan_warm_pool(snapshot),
        reuse=reuse,
        deliver=deliver,
    )


def _standby(snapshot: PoolSnapshot, machines: Sequence[Machine]) -> Standby:
    """A macOS pool's standby Macs (chalicelib.capacity.hosts.plan_standby): each host it keeps holds a booted
    Mac. Not without the hosts read, and never where a reuse could not be applied (a used Mac on a kept host
    is meant to be reused, not replaced by a launch its host has no room for)."""
    if snapshot.hosts is None or not snapshot.pool.keeps_hosts_ready:
        return Standby()
    return plan_standby(snapshot.pool, snapshot.hosts.hosts, machines, snapshot.now)


def _plan_warm_pool(snapshot: PoolSnapshot) -> WarmPoolStep | None:
    """The warm pool the forecast wants (chalicelib/capacity/warm.py), as a change to what the group reports
    (DescribeAutoScalingGroups' WarmPoolConfiguration, read anyway): None when it already holds it.

    Never on a mixed-instances group: PutWarmPool "cannot be called on an Auto Scaling group that has a
    mixed instances policy" (earlier editions of the API Reference, PutWarmPool; kept, see config.py).
    """
    pool, group = snapshot.pool, snapshot.group
    arrivals = [t for job in snapshot.jobs if (t := _arrived_at(job)) is not None]
    held = group.warm_pool.min_size if group.warm_pool is not None else 0
    wanted = size_warm_pool(
        pool,
        snapshot.now,
        arrivals=arrivals,
        prewarm_slots=snapshot.prewarm_cold,
        refill_s=lead_of(pool),
        held=held,
    )
    change = warm_pool_change(wanted, group.warm_pool)
    if change is not None and group.instances_distribution is not None:
        return WarmPoolStep(reason=wanted.reason, skipped="the group has a mixed instances policy")
    if change is not None:
        return WarmPoolStep(put=change, reason=wanted.reason)
    if needs_delete(wanted, group.warm_pool):
        return WarmPoolStep(delete=True, reason=wanted.reason)
    return None


def reusable(snapshot: PoolSnapshot, machines: Sequence[Machine], pool_plan: PoolPlan) -> ReusePlan:
    """The used-up Macs to reuse (chalicelib.capacity.hosts.plan_reuse): the engine's used-up removals and the
    machines already draining for a reuse, whose record shows no job and names the instance's ARN (its new
    secret is tagged with it; a machine launched before the ARN was kept is terminated as before)."""
    pool, records = snapshot.pool, snapshot.records
    if not snapshot.can_reuse or not pool.reuses_root_volume or snapshot.hosts is None:
        return ReusePlan()
    used_up = {r.instance_id for r in pool_plan.removals if r.reason is RemovalReason.USED_UP}
    candidates = [
        m
        for m in machines
        if (
            m.instance_id in used_up
            or (m.state is MachineState.DRAINING and records[m.instance_id].drain_reason == REUSE_REASON)
        )
        and not records[m.instance_id].running
        and records[m.instance_id].instance_arn
    ]
    kept = _standby(snapshot, machines).kept
    return plan_reuse(pool, candidates, snapshot.hosts.hosts, pool_plan.need_slots, snapshot.now, kept)


def _launch_after_reuse(pool: Pool, pool_plan: PoolPlan, reused: int) -> int:
    """The engine's launch less the machines a reuse provides (each reused Mac is a new machine booting)."""
    if reused == 0:
        return pool_plan.launch
    wanted = math.ceil(max(0, pool_plan.need_slots) / slots_per_new_machine(pool))
    return min(pool_plan.launch, max(0, wanted - reused))


def _drain_reason(record: MachineRecord) -> str:
    if record.drain_reason == REUSE_REASON:
        return RemovalReason.USED_UP.value
    return record.drain_reason or "drain"


def _demand(snapshot: PoolSnapshot) -> Demand:
    """Slots wanted: pending jobs our runners can take, running ones, prewarm, and the jobs of an interrupted
    (Spot) machine that will be retried (their replacement starts booting now)."""
    pool = snapshot.pool
    rescued = sum(
        len(r.running)
        for r in snapshot.records.values()
        if r.drain_reason == "spot" and pool.retry_interrupted_jobs
    )
    pending = sum(1 for j in snapshot.jobs if j.status == "pending")
    group = snapshot.group
    warm = group.warm_size * slots_per_new_machine(pool) if group.warm_pool is not None else 0
    return Demand(
        pending=pending - snapshot.unpickable + rescued,
        running=sum(1 for j in snapshot.jobs if j.status in HOLDS_SLOT),
        prewarm=snapshot.prewarm,
        warm=warm,
    )


def _fallback_types(pool: Pool, group: GroupView, faults: Sequence[Fault]) -> tuple[str, ...] | None:
    """Steer launches away from instance types that recently failed for lack of capacity.

    Only reorders the types of a group that already has a mixed-instances policy (see
    `AsgFleet.set_instance_types` for why nothing else is rewritten); host pools never.
    """
    if not can_fall_back(pool) or group.launch_template is None or group.instances_distribution is None:
        return None
    types = preferred_types(pool, [(f.kind, f.detail) for f in faults if f.kind != PREPARE_FAULT])
    return None if tuple(group.instance_types) == tuple(types) else tuple(types)


@dataclass
class ReconcileResult:
    """What one reconcile saw and did, for logs, metrics, the CLI and the demo."""

    pool: str
    now: datetime
    plan: PoolPlan | None = None
    host_plan: HostPlan | None = None
    #: The whole decision this reconcile applied (or, in a dry run, would apply).
    planned: ReconcilePlan | None = None
    #: Read and planned only: no write was made (`planned` says what would have been done).
    dry_run: bool = False
    fallback: str = ""
    launched: int = 0
    terminated: list[str] = field(default_factory=list)
    #: Machines a drain found already leaving (they ended themselves): not terminated again, not decremented.
    already_gone: list[str] = field(default_factory=list)
    drain_cancelled: list[str] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)
    desired_before: int = 0
    desired_after: int = 0
    skipped: str = ""
    #: The apply failed (reading the group, a drain, a termination, the capacity change): nothing after the
    #: failed call was done, so the pool's dirty message is failed and SQS delivers it again.
    errors: list[str] = field(default_factory=list)
    #: Pool faults: a step beside the apply failed (dedicated hosts) while the apply itself went through.
    #: Counted in the PoolFaults metric; the message succeeds, and the next tick tries the step again.
    faults: list[str] = field(default_factory=list)
    pending: int = 0
    running: int = 0
    #: Pending jobs these runners can never take (GitLab would not give them one): not counted as demand.
    unpickable: int = 0
    machines: dict[str, int] = field(default_factory=dict)  # state -> count
    #: Wall seconds the reconcile took, lease to release: the decision latency operators graph.
    seconds: float = 0.0
    #: Per drained machine, wall seconds from the pause to the termination (or to the dropped decision).
    drain_seconds: list[float] = field(default_factory=list)
    #: What the warm pool step did ("put 3", "deleted", "skipped: ..."); empty when it changed nothing.
    warm_pool: str = ""
    #: Used Macs whose root-volume replacement started (reused instead of terminated).
    reused: list[str] = field(default_factory=list)
    #: Reused Macs given their new runner and secret (their replacement succeeded).
    delivered: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.skipped


class Reconciler:
    """Reconciles pools; `owner` names this worker in the pool lease (a Lambda request id, a thread)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        fleet: Fleet,
        runners: RunnerControl | None = None,
        *,
        hosts: HostPort | None = None,
        owner: str = "reconciler",
        drain_recheck: bool = True,
        pipelines: Pipelines | None = None,
        gitlab: str = "",
        timer: Callable[[], float] = time.perf_counter,
        eligibility: Eligibility | None = None,
        lease_clock: Callable[[], float] = time.monotonic,
        warm_pools: WarmPools | None = None,
        metrics: Metrics | None = None,
        reuse: Callable[[], ReusePreparer] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._fleet = fleet
        self._runners = runners
        self._hosts = hosts
        self._owner = owner
        self._drain_recheck = drain_recheck
        self._pipelines = pipelines
        self._gitlab = gitlab
        self._timer = timer  # measures, never decides: decisions use `now`
        self._lease_clock = lease_clock  # seconds, for the lease's deadline only
        self._lease_deadline = float("inf")
        #: The lease this reconcile holds (with the pool's faults), and the contact window it checked.
        self._lease: PoolLease | None = None
        self._contact_checked: int | None = None
        self._eligibility = eligibility
        self._warm_pools = warm_pools
        # The metrics port (the wiring's, as every use case's); EMF lines when none is given (tools, benches).
        self._metrics: Metrics = metrics or EmfMetrics()
        #: Builds the lifecycle that gives a reused Mac its new runner and secret; None: no Mac is reused.
        self._reuse = reuse

    def reconcile_all(
        self,
        now: datetime,
        *,
        dry_run: bool = False,
        jobs_read: Mapping[str, Sequence[JobRecord]] | None = None,
    ) -> list[ReconcileResult]:
        """Every pool, with one batched read of all groups (calls grow with pools, not machines).

        `jobs_read`: pools' jobs read moments ago in the same invocation (the tick's heal, which wrote none of
        them), taken instead of reading them again (`reconcile_pool`)."""
        try:
            groups = self._fleet.read_groups([p.asg for p in self._config.pools])
            views = self._read_hosts(self._config.pools)
        except AwsCallError as exc:
            return [ReconcileResult(p.name, now, errors=[str(exc)]) for p in self._config.pools]
        pipelines = self._active_pipelines(self._config.pools, now)
        read = jobs_read or {}
        return [
            self.reconcile_pool(
                pool,
                now,
                groups.get(pool.asg),
                views.get(pool.name),
                pipelines,
                dry_run=dry_run,
                jobs=read.get(pool.name),
            )
            for pool in self._config.pools
        ]

    def _active_pipelines(self, pools: Sequence[Pool], now: datetime) -> list[PipelineState]:
        """The running pipelines prewarm forecasts from (one read); none when the read fails.

        Prewarm only ever adds machines ahead of need, so losing it for a tick costs wait, never a job.
        """
        if self._pipelines is None:
            return []
        try:
            return active_for_prewarm(self._pipelines, self._gitlab, pools, now)
        except AwsCallError as exc:
            logger.warning("prewarm forecast skipped", extra={"error": str(exc)})
            return []

    def _read_hosts(self, pools: Sequence[Pool]) -> dict[str, HostPoolView]:
        host_pools = [p for p in pools if p.hosts is not None]
        if not host_pools or self._hosts is None:
            return {}
        return self._hosts.read_pools(host_pools)

    def reconcile_pool(
        self,
        pool: Pool,
        now: datetime,
        group: GroupView | None = None,
        hosts: HostPoolView | None = None,
        pipelines: Sequence[PipelineState] | None = None,
        *,
        dry_run: bool = False,
        jobs: Sequence[JobRecord] | None = None,
    ) -> ReconcileResult:
        """Read the pool, plan, apply. `dry_run`: read and plan only; the result's `planned` is the plan, and
        nothing is written (no lease either: a dry run acts on nothing).

        `jobs`: the pool's jobs (`Store.pool_jobs`) when the caller read them moments ago in the same
        invocation (the tick's heal, before this lease was taken), so they are not read twice. That read is a
        read of the pool index, which is eventually consistent in any case ("All reads from GSIs and streams
        are eventually consistent": DynamoDB developer guide, "DynamoDB read consistency"): the reconcile
        already plans on a job list that may lag, and nothing it removes rests on that list alone (a busy
        machine is kept by the record's conditional drain and GitLab's own answer, chalicelib.drain); a job
        a hook changed since is the dirty queue's reconcile's, or the next tick's."""
        result = ReconcileResult(pool.name, now, dry_run=dry_run)
        started = self._timer()
        if dry_run:
            try:
                if pipelines is None:
                    pipelines = self._active_pipelines([pool], now) if pool.prewarm else []
                self._reconcile_locked(pool, now, group, hosts, pipelines, result, jobs)
            except (AwsCallError, GitLabError) as exc:
                result.errors.append(str(exc))
            result.seconds = self._timer() - started
            return result
        lease = self._config.scaler.lease_duration
        taken = self._store.take_lease(pool.name, self._owner, now, lease)
        if taken is None:
            result.skipped = "another reconcile holds the pool lease"
            return result
        self._lease, self._contact_checked = taken, None
        # Fencing by deadline: once the lease may have expired, another reconcile may hold it and act on a
        # fresher view, so this one makes no further AWS write (each write checks `_check_lease` first).
        self._lease_deadline = self._lease_clock() + lease.total_seconds() - LEASE_SAFETY_SECONDS
        try:
            if pipelines is None:
                pipelines = self._active_pipelines([pool], now) if pool.prewarm else []
            self._reconcile_locked(pool, now, group, hosts, pipelines, result, jobs)
        except (AwsCallError, GitLabError, LeaseExpiredError) as exc:
            # Left for the next tick, which re-reads everything: nothing is half-applied silently.
            result.errors.append(str(exc))
            logger.warning("reconcile failed", extra={"pool": pool.name, "error": str(exc)})
        finally:
            self._store.release_lease(pool.name, self._owner, contact_window=self._contact_checked)
            self._lease = None
            result.seconds = self._timer() - started
        return result

    def _reconcile_locked(
        self,
        pool: Pool,
        now: datetime,
        group: GroupView | None,
        hosts: HostPoolView | None,
        pipelines: Sequence[PipelineState],
        result: ReconcileResult,
        jobs: Sequence[JobRecord] | None = None,
    ) -> None:
        """Read one snapshot, plan, then apply the plan (a dry run stops after the plan)."""
        snapshot = self._read(pool, now, group, hosts, pipelines, result, write=not result.dry_run, jobs=jobs)
        if snapshot is None:
            return
        plan = plan_reconcile(snapshot)
        result.planned, result.plan, result.host_plan = plan, plan.pool_plan, plan.host_plan
        result.pending, result.running = plan.demand.pending, plan.demand.running
        for machine in plan.machines:
            result.machines[machine.state.value] = result.machines.get(machine.state.value, 0) + 1
        if result.dry_run:
            result.warm_pool = plan.warm_pool.describe() if plan.warm_pool is not None else ""
            result.protected = list(plan.protect)
            result.desired_after = plan.desired
            result.launched = max(0, plan.desired - (plan.live - len(plan.removals)))
            return
        self._apply(snapshot, plan, result)

    def _read(
        self,
        pool: Pool,
        now: datetime,
        group: GroupView | None,
        hosts: HostPoolView | None,
        pipelines: Sequence[PipelineState],
        result: ReconcileResult,
        *,
        write: bool,
        jobs: Sequence[JobRecord] | None = None,
    ) -> PoolSnapshot | None:
        """The pool's snapshot: one read of each source. The machine records are repaired against the group
        on the way (adopted, vanished ones dropped, jobs credited, contact learned); with `write` False (a
        dry run) those repairs stay in this snapshot and nothing is written."""
        if group is None:
            group = self._fleet.read_groups([pool.asg]).get(pool.asg)
        if group is None:
            result.errors.append(f'Auto Scaling group "{pool.asg}" of pool "{pool.name}" does not exist')
            return None
        result.desired_before = group.desired
        # The faults came with the lease (they live on its item); a dry run holds none and reads them.
        faults = self._lease.faults if self._lease is not None else tuple(self._store.faults(pool.name, now))
        records = {m.instance_id: m for m in self._store.machines(pool.name)}
        jobs = tuple(self._store.pool_jobs(pool.name) if jobs is None else jobs)
        live = group.live_instances()
        self._adopt(pool, live, records, now, write=write)
        self._forget_vanished(live, records, write=write)
        self._settle_jobs(jobs, records, now, write=write)
        self._learn_contact(pool, live, records, now, write=write)
        pending = [j for j in jobs if j.status == "pending"]
        result.unpickable = self._unpickable(pool, pending, now, cache=write)
        warm_ready = group.warm_size if group.warm_pool is not None else 0
        prewarm_now, prewarm_cold = _prewarm(pool, pipelines, jobs, now, warm_ready)
        if pool.hosts is not None and self._hosts is not None and hosts is None:
            hosts = self._read_hosts([pool]).get(pool.name, HostPoolView(pool.name))
        snapshot = PoolSnapshot(
            pool,
            now,
            group,
            records,
            jobs,
            faults,
            unpickable=result.unpickable,
            prewarm=prewarm_now,
            prewarm_cold=prewarm_cold,
            hosts=hosts,
            replace_states=self._replace_states(pool, records),
            can_reuse=self._reuse is not None and self._runners is not None and self._hosts is not None,
        )
        host_plan = self._plan_hosts(snapshot, live)
        return replace(snapshot, host_plan=host_plan) if host_plan is not None else snapshot

    def _replace_states(self, pool: Pool, records: Mapping[str, MachineRecord]) -> dict[str, str]:
        """The TaskState of the pool's root-volume replacements under way (one DescribeReplaceRootVolumeTasks,
        only while some Mac is being reused). A failed read waits for the next reconcile: until then the
        machines stay booting, and boot_timeout bounds how long."""
        tasks = {r.replace_task: r.instance_id for r in records.values() if r.replace_task}
        if not tasks or self._hosts is None:
            return {}
        try:
            states = self._hosts.replace_task_states(list(tasks))
        except AwsCallError as exc:
            logger.warning("root-volume replacements not read", extra={"pool": pool.name, "error": str(exc)})
            return {}
        return {tasks[task]: state for task, state in states.items() if task in tasks}

    def _apply(self, snapshot: PoolSnapshot, plan: ReconcilePlan, result: ReconcileResult) -> None:
        """Carry the plan out: fallback, protection, each removal through the drain protocol, the capacity,
        the hosts, the warm pool. Stops at the first failed write (the next reconcile re-reads)."""
        pool, group, records, now = snapshot.pool, snapshot.group, snapshot.records, snapshot.now
        self._fall_back(pool, group, plan.instance_types, result)
        result.protected = self._protect(group.asg, plan.protect)
        for instance_id in plan.deliver:
            self._deliver(pool, records[instance_id], now, result)
        for removal in plan.removals:
            if removal.reason == REUSE_FAILED_REASON:
                state = snapshot.replace_states.get(removal.instance_id, "")
                result.faults.append(f"root volume replacement of {removal.instance_id} {state}: terminated")
                logger.error(
                    "root volume replacement failed; machine terminated",
                    extra={"pool": pool.name, "instance_id": removal.instance_id, "state": state},
                )
            self._drain_and_terminate(records[removal.instance_id], removal.reason, now, result)
        for instance_id in plan.reuse:
            self._drain_and_reuse(pool, records[instance_id], now, result)

        remaining = plan.live - len(result.terminated)
        current = group.desired - len(result.terminated)
        if result.already_gone:
            # A machine ended itself (with its own decrement) since the group was read: count from a fresh
            # read rather than decrement for it a second time.
            fresh = self._fleet.read_groups([pool.asg]).get(pool.asg) or group
            remaining, current = len(fresh.live_instances()), fresh.desired
        desired = min(remaining + plan.launch, plan.max_size)
        if desired != current:
            self._check_lease()
            self._fleet.set_desired_capacity(pool.asg, desired)
        result.launched = max(0, desired - remaining)
        result.desired_after = desired
        if plan.host_plan is not None and snapshot.hosts is not None and self._hosts is not None:
            self._check_lease()
            applied = apply_host_plan(self._hosts, pool, plan.host_plan, snapshot.hosts)
            result.faults.extend(applied.errors)
        self._apply_warm_pool(pool, plan.warm_pool, result)
        if plan.pool_plan.changes or result.terminated:
            logger.info(plan.pool_plan.summary(), extra={"pool": pool.name})

    def _apply_warm_pool(self, pool: Pool, step: WarmPoolStep | None, result: ReconcileResult) -> None:
        """Put or delete the warm pool the plan decided, after the capacity change so that it never delays a
        scale-up. A failure is a pool fault, like the fallback's: warm machines only shorten waits, and the
        next reconcile tries again."""
        if step is None or self._warm_pools is None:
            return
        if step.skipped:
            result.warm_pool = step.describe()
            logger.warning("warm pool not set", extra={"pool": pool.name, "reason": step.skipped})
            return
        try:
            self._check_lease()
            if step.put is not None:
                self._warm_pools.put_warm_pool(pool.asg, step.put)
            else:
                self._warm_pools.delete_warm_pool(pool.asg)
        except AwsCallError as exc:
            result.warm_pool = f"failed: {exc.code}"
            result.faults.append(f"warm pool: {exc}")
            logger.error("warm pool not set", extra={"pool": pool.name, "error": str(exc)})
            return
        result.warm_pool = step.describe()
        logger.info("warm pool set", extra={"pool": pool.name, "warm_pool": result.warm_pool})

    def _unpickable(self, pool: Pool, pending: Sequence[JobRecord], now: datetime, *, cache: bool) -> int:
        """How many pending jobs belong to projects our runners never take jobs of (chalicelib.eligibility).
        When project settings cannot be read, every job counts (a spare machine beats a starved job)."""
        if self._eligibility is None or not pending:
            return 0
        try:
            ids = (j.project_id for j in pending if j.project_id)
            reasons = self._eligibility.unpickable(ids, now, cache=cache)
        except AwsCallError as exc:
            logger.warning("project settings unread; all pending jobs counted", extra={"error": str(exc)})
            return 0
        skipped = [j for j in pending if j.project_id in reasons]
        if skipped:
            logger.info(
                "pending jobs no runner of ours can take",
                extra={"pool": pool.name, "jobs": len(skipped), "why": sorted(set(reasons.values()))},
            )
        return len(skipped)

    def _check_lease(self) -> None:
        """Stop before an AWS write once this reconcile's pool lease may have expired (it outlived its
        `lease_duration`, less LEASE_SAFETY_SECONDS): a later reconcile may hold the lease by now."""
        if self._lease_clock() >= self._lease_deadline:
            held = self._config.scaler.lease_duration.total_seconds()
            raise LeaseExpiredError(
                f"the pool lease may have expired ({held:.0f} s held): stopped before writing; the next "
                "reconcile starts afresh"
            )

    def _fall_back(
        self, pool: Pool, group: GroupView, types: Sequence[str] | None, result: ReconcileResult
    ) -> None:
        """Set the instance types the plan prefers (`_fallback_types`). A failing fallback is a pool fault
        (logged, `FallbackFailed` metric), never the end of the reconcile: the launches, protection and
        drains below matter more than the order of the types."""
        if types is None:
            return
        try:
            self._fleet.set_instance_types(group, types)
        except AwsCallError as exc:
            result.fallback = f"failed: {exc.code}"
            logger.error("instance type fallback failed", extra={"pool": pool.name, "error": str(exc)})
            self._metrics.emit({"FallbackFailed": 1}, {"pool": pool.name, "platform": pool.platform.value})
            return
        result.fallback = f"instance types {', '.join(types)}"
        logger.warning("instance types reordered", extra={"pool": pool.name, "fallback": result.fallback})

    def _find_runner(self, record: MachineRecord) -> int | None:
        """The machine's runner by its description; None when it never registered (it cannot run a job)."""
        assert self._runners is not None
        description = runner_description(record.pool, record.instance_id)
        found = self._runners.list_runners(description, **_runner_scope(self._config))
        return next((int(r.id) for r in found if r.description == description), None)

    def _plan_hosts(self, snapshot: PoolSnapshot, live: Sequence[Instance]) -> HostPlan | None:
        """Dedicated-host pools: what can launch now, and which hosts to allocate or release. Reused Macs
        take the place of launches, so they ask for no host. The engine's view of the `live` machines is
        built only here, for a host pool (every other pool's reconcile would build it for nothing)."""
        pool, hosts, now = snapshot.pool, snapshot.hosts, snapshot.now
        if pool.hosts is None or self._hosts is None or hosts is None:
            return None
        machines = [_machine(i, snapshot.records[i.instance_id]) for i in live]
        engine = plan_pool(pool, _demand(snapshot), machines, now)  # what the engine wants, before host room
        wanted = _launch_after_reuse(pool, engine, len(reusable(snapshot, machines, engine).reuse))
        slots = hosts.slots_per_host  # what AWS says a host takes; a configured value still wins
        host_plan = plan_hosts(
            pool, hosts.hosts, now, wanted=wanted, unmet_since=hosts.unmet_since, slots_per_host=slots
        )
        if pool.hosts.license_configuration and (host_plan.allocate or host_plan.unmet):
            room = self._hosts.license_room(pool.hosts.license_configuration)  # only when it matters
            host_plan = plan_hosts(
                pool,
                hosts.hosts,
                now,
                wanted=wanted,
                unmet_since=hosts.unmet_since,
                license_room=room,
                slots_per_host=slots,
            )
        return host_plan

    def _settle_jobs(
        self,
        jobs: Sequence[JobRecord],
        records: dict[str, MachineRecord],
        now: datetime,
        *,
        write: bool = True,
    ) -> None:
        """Credit machines with the jobs they started and finished, then take finished jobs off the index.

        The reconciler, under the pool lease, is the single writer of machine job counts.
        """
        for job in jobs:
            record = records.get(job.machine_id) if job.machine_id else None
            if job.status in HOLDS_SLOT and record is not None and job.job_id not in record.job_ids:
                if write:
                    self._store.machine_job_started(record.instance_id, job.job_id, now)
                records[record.instance_id] = replace(
                    record,
                    job_ids=record.job_ids | {job.job_id},
                    running=record.running | {job.job_id},
                    ready_at=record.ready_at or now,
                )
            elif job.status in TERMINAL:
                if record is not None:
                    if write:
                        self._store.machine_job_finished(record.instance_id, job.job_id, now)
                    records[record.instance_id] = replace(
                        record,
                        job_ids=record.job_ids | {job.job_id},
                        running=record.running - {job.job_id},
                        last_busy_at=job.finished_at or now,
                    )
                if write:
                    self._store.settle_job(job)

    def _adopt(
        self,
        pool: Pool,
        live: Sequence[Instance],
        records: dict[str, MachineRecord],
        now: datetime,
        *,
        write: bool = True,
    ) -> None:
        """Give every live instance a record (its launch event may be late or lost) to credit jobs to.

        Only these instances' launch times are asked for: a record carries its own, so a pool whose
        machines all have one costs no EC2 call, however many machines it has.
        """
        unknown = [i.instance_id for i in live if i.instance_id not in records]
        if not unknown:
            return
        launched = self._fleet.launch_times(unknown)
        for instance_id in unknown:
            record = MachineRecord(
                instance_id=instance_id, pool=pool.name, launched_at=launched.get(instance_id, now)
            )
            # The index may be stale (eventually consistent): a record missing from it may exist. Adoption
            # creates one only where none exists, and otherwise takes the stored one.
            records[instance_id] = self._store.adopt_machine(record) if write else record

    def _learn_contact(
        self,
        pool: Pool,
        live: Sequence[Instance],
        records: dict[str, MachineRecord],
        now: datetime,
        *,
        write: bool = True,
    ) -> None:
        """Mark ready the in-service machines whose runner has contacted GitLab since the last look.

        InService is not ready: the launch hook completes once the machine's secret is written, minutes
        before its runner first polls. GitLab knows: a runner that never polled has no `contacted_at` and
        the status `never_contacted` (gitlabhq `app/models/ci/runner.rb`, `Ci::Runner#status`). So while
        some in-service machine awaits contact, ONE list call asks for the pool's `never_contacted`
        runners (usually one page), at most once per CONTACT_CHECK_SECONDS per pool across containers:
        GitLab rate-limits its API per user (GitLab.com: 2,000 authenticated requests a minute), and a
        pool reconciles up to once per dirty window. A machine whose runner (by recorded id, or by its
        description when its launch event was late or lost) is not in that list has polled; one that never
        got a runner at all is the orphan sweep's (no runner recorded past `boot_timeout`). A job started
        on a machine (`_settle_jobs`) marks it ready too. With no GitLab API configured, contact cannot be
        learned, and InService stands in for it.
        """
        awaiting = [
            records[i.instance_id]
            for i in live
            if i.in_service
            and records[i.instance_id].ready_at is None
            and records[i.instance_id].draining_since is None
            and records[i.instance_id].replace_task is None  # a reused Mac has no runner until delivered
        ]
        if not awaiting:
            return
        if self._runners is None:
            contacted = awaiting
        else:
            # The window last checked lives on the lease item: read with the lease, written with its release.
            window = int(now.timestamp()) // CONTACT_CHECK_SECONDS
            if write and self._lease is not None:
                if self._lease.contact_window == window:
                    return
                self._contact_checked = window
            try:
                listed = self._runners.list_runners(
                    f"runner-scaler/{pool.name}/", status="never_contacted", **_runner_scope(self._config)
                )
            except GitLabError as exc:
                logger.warning("runner contact not learned", extra={"pool": pool.name, "error": str(exc)})
                return  # they stay booting until the next look; no decision rests on a failed read
            # The status is checked here too: a GitLab that ignores the filter lists every runner.
            silent = [r for r in listed if getattr(r, "status", "") == "never_contacted"]
            ids = {int(r.id) for r in silent}
            names = {str(r.description) for r in silent}
            contacted = [
                r
                for r in awaiting
                if r.runner_id not in ids and runner_description(r.pool, r.instance_id) not in names
            ]
        for record in contacted:
            if write:
                self._store.mark_ready(record.instance_id, now)
            records[record.instance_id] = replace(record, ready_at=now)

    def _forget_vanished(
        self, live: Sequence[Instance], records: dict[str, MachineRecord], *, write: bool = True
    ) -> None:
        """Records of instances gone from the group leave this reconcile's view. One with a runner stays
        stored: it is how the sweep knows the runner is this deployment's to delete (chalicelib.sweep)."""
        live_ids = {i.instance_id for i in live}
        for instance_id in [i for i in records if i not in live_ids]:
            if write and records[instance_id].runner_id is None:
                self._store.delete_machine(instance_id)
            del records[instance_id]

    def _protect(self, asg: str, instance_ids: Sequence[str]) -> list[str]:
        """Heal protection: every live instance is protected from scale-in, so only we choose what goes."""
        if instance_ids:
            self._check_lease()
            self._fleet.protect(asg, list(instance_ids))
        return list(instance_ids)

    def _takes_no_job(self, record: MachineRecord) -> bool:
        """chalicelib.drain.takes_no_job, with its jobs' stored statuses (one read per job it started)."""

        def status_of(job_id: int) -> str | None:
            job = self._store.get_job(self._gitlab, job_id)
            return job.status if job is not None else None

        pool = next((p for p in self._config.pools if p.name == record.pool), None)
        return pool is not None and takes_no_job(record, pool.max_use_count, status_of)

    def _deliver(self, pool: Pool, record: MachineRecord, now: datetime, result: ReconcileResult) -> None:
        """A reused Mac's replacement succeeded: its new runner and secret, by the launch's own code
        (`Lifecycle.prepare_reused`), then the record leaves the replacement. The machine stays booting until
        its new runner contacts GitLab (`_learn_contact`). A failure is a pool fault; the record still names
        the task, so the next reconcile tries again."""
        assert self._reuse is not None
        self._check_lease()
        try:
            self._reuse().prepare_reused(pool, record, now)
            self._store.end_reuse(record.instance_id)
        except (GitLabError, AwsCallError, NotFoundError) as exc:
            result.faults.append(f"reused {record.instance_id} not prepared: {exc}")
            logger.error(
                "reused machine not prepared", extra={"instance_id": record.instance_id, "error": str(exc)}
            )
            return
        result.delivered.append(record.instance_id)
        logger.info("reused machine prepared", extra={"pool": pool.name, "instance_id": record.instance_id})

    def _drain_and_reuse(
        self, pool: Pool, record: MachineRecord, now: datetime, result: ReconcileResult
    ) -> None:
        """The drain protocol (chalicelib.drain) up to its last step, then a fresh root volume instead of a
        termination: so a Mac is reused only once its record and GitLab both show no job on it."""

        def end(drained: MachineRecord, runner_id: int | None) -> DrainState:
            return self._replace_root_volume(pool, drained, runner_id, now, result)

        self._drain(record, REUSE_REASON, now, result, end=end)

    def _replace_root_volume(
        self, pool: Pool, record: MachineRecord, runner_id: int | None, now: datetime, result: ReconcileResult
    ) -> DrainState:
        """Delete the used runner (and any secret left), start the replacement, and make the record a booting
        machine again.

        The runner goes first: once the volume is replaced nothing could ever use it, and a refusal here
        leaves the machine draining for the next reconcile. A refused replacement terminates the machine as
        before (a pool fault). The ClientToken names the instance and its job count, so a retry of the same
        reuse starts no second task. No token is written here: the new runner and secret come only once the
        task succeeded (`_deliver`), so the old volume never sees them.
        """
        assert self._hosts is not None and self._reuse is not None
        self._reuse().clear_for_reuse(record.instance_id, runner_id)
        token = f"reuse-{record.instance_id}-{len(record.job_ids)}"
        try:
            task = self._hosts.replace_root_volume(record.instance_id, token)
        except AwsCallError as exc:
            result.faults.append(f"root volume of {record.instance_id} not replaced ({exc.code}): terminated")
            logger.error(
                "root volume replacement refused; machine terminated",
                extra={"pool": pool.name, "instance_id": record.instance_id, "error": str(exc)},
            )
            return (
                DrainState.TERMINATED
                if self._fleet.terminate(record.instance_id)
                else DrainState.ALREADY_GONE
            )
        if not self._store.start_reuse(record, task, now):
            # Only a job credited since the drain's own check could refuse it; the volume is being replaced
            # all the same, and the machine's boot_timeout ends it if it never comes back.
            logger.error("reuse not recorded", extra={"instance_id": record.instance_id, "task": task})
        logger.info(
            "used machine reused: root volume replacement started",
            extra={"pool": pool.name, "instance_id": record.instance_id, "task": task},
        )
        return DrainState.REUSED

    def _count_drain(
        self, instance_id: str, state: DrainState, window: float, result: ReconcileResult
    ) -> None:
        if state is DrainState.BUSY:
            result.drain_cancelled.append(instance_id)
        elif state is DrainState.CANCELLED:
            result.drain_cancelled.append(instance_id)
            result.drain_seconds.append(window)
        elif state is DrainState.TERMINATED:
            result.terminated.append(instance_id)
            result.drain_seconds.append(window)
        elif state is DrainState.ALREADY_GONE:
            result.already_gone.append(instance_id)
        elif state is DrainState.REUSED:
            result.reused.append(instance_id)
            result.drain_seconds.append(window)

    def _drain_and_terminate(
        self, record: MachineRecord, reason: str, now: datetime, result: ReconcileResult
    ) -> None:
        """One step of the drain protocol (chalicelib.drain): mark draining (only if no job), pause the
        runner, re-check in GitLab, then terminate.

        GitLab's view of "busy" lags job assignment, so a job may land between the decision and the
        termination: the re-check after pausing catches it and the removal is dropped.
        """
        self._drain(record, reason, now, result)

    def _drain(
        self,
        record: MachineRecord,
        reason: str,
        now: datetime,
        result: ReconcileResult,
        *,
        end: Callable[[MachineRecord, int | None], DrainState] | None = None,
    ) -> None:
        """One step of `drain_machine` with this reconcile's store, fleet, runners, lease fence and window;
        `end` replaces the termination (a Mac's fresh root volume)."""
        started = self._timer()
        outcome = drain_machine(
            record.instance_id,
            reason,
            now,
            store=self._store,
            fleet=self._fleet,
            runners=self._runners,
            recheck=self._drain_recheck,
            find_runner=self._find_runner if self._runners is not None else None,
            before_write=self._check_lease,
            window=self._config.scaler.drain_window,
            exempt=self._takes_no_job,
            end=end,
        )
        self._count_drain(record.instance_id, outcome.state, self._timer() - started, result)


def _prewarm(
    pool: Pool,
    pipelines: Sequence[PipelineState],
    jobs: Sequence[JobRecord],
    now: datetime,
    warm_ready: int = 0,
) -> tuple[int, int]:
    """The pool's prewarm slots: (to launch now, expected within a cold boot). A stored pipeline is only as
    fresh as its last Pipeline Hook, and GitLab sends none when a later stage starts: jobs this pool already
    knows as pending or running are counted by their own status, never a second time as jobs to come.

    With `warm_ready` machines in the warm pool, a slot they cover is launched one warm lead ahead instead
    of a cold boot ahead (chalicelib/capacity/warm.py, `prewarm_to_launch`); the warm pool itself is sized
    for the cold-boot forecast, so that it holds them in time."""
    if not pool.prewarm or not pipelines:
        return 0, 0
    known = {j.job_id: j.status for j in jobs}
    fresh = [with_statuses(p, known) for p in pipelines]
    cold = forecast(fresh, [pool], now).get(pool.name, 0)
    if warm_ready <= 0 or cold == 0:
        return cold, cold
    warm = forecast(fresh, [pool], now, leads={pool.name: warm_lead_s(pool)}).get(pool.name, 0)
    return prewarm_to_launch(pool, cold_slots=cold, warm_slots=warm, warm_ready=warm_ready), cold


def _arrived_at(job: JobRecord) -> datetime | None:
    """When a job arrived as demand: when it turned pending, else when it started (a running job's pending
    time was overwritten), else when it was created."""
    return pending_since(job) or job.started_at or job.created_at


def _runner_scope(config: Config) -> dict[str, Any]:
    settings = config.gitlab
    return {
        "runner_type": settings.runner_type,
        "group_id": settings.group_id,
        "project_id": settings.project_id,
    }


def _machine(instance: Instance, record: MachineRecord) -> Machine:
    """The engine's view of a live instance: booting until its runner has contacted GitLab (`ready_at`)."""
    if record.draining_since is not None:
        state = MachineState.DRAINING
    elif record.running:
        state = MachineState.BUSY
    elif not instance.in_service or record.ready_at is None:
        state = MachineState.BOOTING
    else:
        state = MachineState.IDLE
    return Machine(
        instance_id=record.instance_id,
        state=state,
        launched_at=record.launched_at,
        jobs_started=record.jobs_started,
        running_jobs=len(record.running),
        ready_at=record.ready_at,
        last_busy_at=record.last_busy_at,
        host_id=record.host_id,
    )
