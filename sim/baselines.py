"""Baselines: the anchors' scalers built from their documented behaviour, a static fleet, and an oracle.

Each reads the same pool config in its own knobs; imports the simulator and config, never our engine.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from chalicelib.capacity import pool_for_tags, runner_takes
from chalicelib.config import Platform, Policy, Pool
from sim.hosts import NoHostPlanner
from sim.model import BOOT_TIMES, HookEvent, SimMachine
from sim.warm import WARM_START_S, WarmPoolSpec
from sim.world import World, ideal_pending
from toolkit.devtools.accounting import percentile


def _pending_for(world: World, pool: Pool) -> int:
    """Pending jobs a runner of `pool` would take (a runner manager learns them within a check interval)."""
    return world.gitlab.pending_count(lambda tags: runner_takes(tags, pool.tags, pool.run_untagged))


def _idle_for(machine: SimMachine, now: float) -> float:
    since = machine.last_busy_at if machine.last_busy_at is not None else machine.ready_at
    return now - (since if since is not None else now)


def _slots(machine: SimMachine) -> int:
    """Jobs a machine (booting or ready) can still start now, as a runner manager counts them."""
    pool = machine.pool
    if machine.paused:
        return 0
    free = pool.capacity_per_instance - len(machine.running)
    if pool.max_use_count > 0:
        free = min(free, pool.max_use_count - machine.jobs_started)
    return max(0, free)


class _Counted:
    """API calls by kind; every baseline reports their sum."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def api_calls(self) -> int:
        return sum(self.calls.values())


# -- docker+machine ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineKnobs:
    """`[runners.machine]` for one period: IdleCount, IdleCountMin, IdleScaleFactor, IdleTime (s)."""

    idle_count: int
    idle_count_min: int
    idle_scale_factor: float
    idle_time_s: float

    def target(self, in_use: int) -> int:
        """Idle machines to keep: IdleCount, or with IdleScaleFactor `in_use * factor` between the bounds.

        As gitlab-runner computes it (`executors/docker/machine/idle_limit_strategy.go`): the factor's target
        is `int(float64(InUse) * IdleScaleFactor)`, rounded down, and IdleCountMin is at least 1 whenever
        IdleScaleFactor is set (`idleCountMinFulfilled`), so that a fleet with no job never scales to 0.
        """
        if self.idle_scale_factor <= 0:
            return self.idle_count
        floor = max(1, self.idle_count_min)
        return max(floor, min(self.idle_count, math.floor(in_use * self.idle_scale_factor)))


def machine_knobs(policy: Policy) -> MachineKnobs:
    """Our policy in docker+machine's words (the inverse of `toolkit.migrate`)."""
    idle_time = policy.idle_time.total_seconds()
    if policy.scale_factor > 0:
        return MachineKnobs(
            max(policy.idle_count, policy.scale_factor_limit),
            policy.idle_count,
            policy.scale_factor,
            idle_time,
        )
    return MachineKnobs(policy.idle_count, 0, 0.0, idle_time)


class DockerMachine(_Counted):
    """gitlab-runner's docker+machine executor, one runner manager per pool.

    From docs.gitlab.com/runner/configuration/autoscale.html ("Autoscaling algorithm and parameters"): every
    check (check_interval, 3 s) the manager keeps IdleCount machines Idle (IdleCountMin..IdleCount with
    IdleScaleFactor), creating at most MaxGrowthRate in parallel and never more than `limit`; a machine Idle
    longer than IdleTime is removed while more than the idle target are Idle; a machine is removed once it
    ran MaxBuilds jobs (MR !233). With IdleCount = 0 a machine is created on demand for each job that finds
    no Idle machine (MR !4314); with IdleCount > 0 jobs wait for an Idle machine, so a burst is served at the
    pace of pre-creation, which issues #4863 and #28052 describe. Knobs: limit = max_instances,
    MaxGrowthRate = max_growth_rate, MaxBuilds = max_use_count, periods = our policies.
    API calls (docker-machine's amazonec2 driver): 4 per create (CreateKeyPair, RunInstances, CreateTags,
    DescribeInstances), 2 per remove (TerminateInstances, DeleteKeyPair).
    """

    name = "docker-machine"
    check_interval_s = 3.0

    def start(self, world: World) -> None:
        self._world = world
        world.gitlab.exit_listeners.append(self._released)
        world.loop.every(self.check_interval_s, self._check, start=0.0, keep_going=world.keep_going)

    def _released(self, machine: SimMachine) -> None:
        """UsedCount reached MaxBuilds: the machine is removed when the job releases it."""
        self._remove(machine)

    def _remove(self, machine: SimMachine) -> None:
        self.calls["ec2"] += 2
        self._world.fleet.terminate(machine.instance_id)

    def _check(self) -> None:
        for pool in self._world.config.pools:
            self._check_pool(pool)

    def _check_pool(self, pool: Pool) -> None:
        world = self._world
        now = world.loop.now
        knobs = machine_knobs(pool.active_policy(world.now_dt()))
        machines = world.fleet.live(pool.name)
        creating = sum(1 for m in machines if not m.ready) + world.fleet.unplaced(pool.name)
        idle = sorted(
            (m for m in machines if m.idle and m.accepting), key=lambda m: _idle_for(m, now), reverse=True
        )
        target = knobs.target(sum(1 for m in machines if m.running))
        available = len(idle) + creating
        for machine in idle:
            if available <= target or _idle_for(machine, now) < knobs.idle_time_s:
                break
            self._remove(machine)
            available -= 1
        total = len(world.fleet.live(pool.name)) + world.fleet.unplaced(pool.name)
        want = target - available
        if knobs.idle_count == 0:
            want = max(want, _pending_for(world, pool) - available)
        room = pool.max_instances - total
        if pool.max_growth_rate > 0:
            room = min(room, pool.max_growth_rate - creating)
        create = max(0, min(want, room))
        if create:
            self.calls["ec2"] += 4 * create
            world.fleet.launch(pool.name, create)


# -- docker-autoscaler / taskscaler --------------------------------------------------------------------


def taskscaler_idle_slots(policy: Policy, in_use: int) -> int:
    """`[[runners.autoscaler.policy]]`: idle_count, or in_use * scale_factor up to scale_factor_limit."""
    scaled = math.ceil(in_use * policy.scale_factor) if policy.scale_factor > 0 else 0
    if policy.scale_factor_limit > 0:
        scaled = min(scaled, policy.scale_factor_limit)
    return max(policy.idle_count, scaled)


#: `instance_acquire_timeout` default: 15 min (gitlab-runner `executors/internal/autoscaler/executor.go`).
INSTANCE_ACQUIRE_TIMEOUT_S = 900.0
#: Prepare is tried `PreparationRetries` = 3 times (`common/consts.go`, `Build.retryCreateExecutor` in
#: `common/build.go`); the acquire timeout is no BuildError, so each attempt waits the timeout again (a new
#: `context.WithTimeout` per Prepare: `executors/internal/autoscaler/executor.go`), `PreparationRetryInterval`
#: (3 s) apart; after the last one the job fails as a runner system failure.
PREPARATION_RETRIES = 3
PREPARATION_RETRY_INTERVAL_S = 3.0


class Taskscaler(_Counted):
    """gitlab-runner's docker-autoscaler executor (taskscaler + the fleeting AWS plugin on the pool's ASG), as
    configured by default: `preemptive_mode` unset.

    From docs.gitlab.com/runner/executors/docker_autoscaler.html and the `[runners.autoscaler]` reference:
    taskscaler keeps `idle_count` idle slots, or `in_use * scale_factor` bounded by `scale_factor_limit`,
    each instance holding `capacity_per_instance` slots and retiring after `max_use_count` jobs; instances
    idle longer than `idle_time` go while above the idle target; `max_instances` bounds the group.

    Preemptive mode (`common/config.go`, `PreemptiveModeEnabled`: unset means on when the period's
    `idle_count` > 0): the runner reserves capacity before it asks GitLab for a job (`provider.Acquire` in
    `executors/internal/autoscaler/provider.go` calls `scaler.Reserve`, and a full fleet answers
    NoFreeExecutorError), so it asks only when an idle slot exists: a pending job is no demand signal, and
    taskscaler scales on its idle slots alone. Without it (`preemptive_mode = false`, or a period with
    idle_count 0), the runner takes jobs up to `max_instances * capacity_per_instance`, counts them in use,
    and each waits for an instance; a job that gets none within `instance_acquire_timeout` (15 min), on
    each of the 3 preparation attempts, fails: it never runs, its pipeline's later stages are skipped, and
    neither is in the wait figures (`failed_jobs`, `skipped_jobs`).
    Loop: jobs are requested every check_interval (3 s); the fleeting plugin's Update runs every
    update_interval (1 min), every update_interval_when_expecting (2 s) while instances boot.
    API calls: 2 per Update (DescribeAutoScalingGroups, DescribeInstances), 1 per SetDesiredCapacity,
    1 per instance removed.
    """

    name = "taskscaler"
    check_interval_s = 3.0
    update_interval_s = 60.0
    update_when_expecting_s = 2.0
    #: `preemptive_mode` as configured: None (unset) follows `PreemptiveModeEnabled`.
    preemptive_mode: bool | None = None

    def start(self, world: World) -> None:
        self._world = world
        self._last_update: dict[str, float] = {}
        self._acquiring: dict[int, float] = {}  # GitLab job id -> when its current attempt began
        world.gitlab.exit_listeners.append(self._used_up)
        world.loop.every(self.check_interval_s, self._check, start=0.0, keep_going=world.keep_going)

    def preemptive(self, policy: Policy) -> bool:
        """`AutoscalerPolicyConfig.PreemptiveModeEnabled` for the period's policy."""
        return policy.idle_count > 0 if self.preemptive_mode is None else self.preemptive_mode

    def _used_up(self, machine: SimMachine) -> None:
        self.calls["autoscaling"] += 1
        self._world.fleet.terminate(machine.instance_id)

    def _check(self) -> None:
        for pool in self._world.config.pools:
            self._update_calls(pool)
            self._scale(pool)

    def _update_calls(self, pool: Pool) -> None:
        now = self._world.loop.now
        expecting = any(not m.ready for m in self._world.fleet.live(pool.name))
        interval = self.update_when_expecting_s if expecting else self.update_interval_s
        if now - self._last_update.get(pool.name, -math.inf) >= interval:
            self._last_update[pool.name] = now
            self.calls["autoscaling"] += 2

    def _scale(self, pool: Pool) -> None:
        world = self._world
        now = world.loop.now
        policy = pool.active_policy(world.now_dt())
        machines = world.fleet.live(pool.name)
        pending = 0
        if not self.preemptive(policy):
            pending = min(_pending_for(world, pool), pool.max_instances * pool.capacity_per_instance)
            self._time_out(pool)
        running = sum(len(m.running) for m in machines)
        target = taskscaler_idle_slots(policy, pending + running)
        per_instance = pool.capacity_per_instance
        if pool.max_use_count > 0:
            per_instance = min(per_instance, pool.max_use_count)
        requested = world.fleet.unplaced(pool.name)  # asked of the ASG, not launched yet (no host room)
        free = sum(_slots(m) for m in machines) + requested * per_instance
        need = pending + target - free
        if need > 0:
            launch = min(math.ceil(need / per_instance), pool.max_instances - len(machines) - requested)
            if launch > 0:
                self.calls["autoscaling"] += 1
                world.fleet.launch(pool.name, launch)
            return
        surplus = -need
        idle_time = policy.idle_time.total_seconds()
        idle = sorted((m for m in machines if m.idle), key=lambda m: _idle_for(m, now), reverse=True)
        for machine in idle:
            slots = _slots(machine)
            if _idle_for(machine, now) < idle_time or slots > surplus:
                continue
            surplus -= slots
            self.calls["autoscaling"] += 1
            world.fleet.terminate(machine.instance_id)

    def _time_out(self, pool: Pool) -> None:
        """Jobs the runner took without an instance for them: one that found none within the acquire
        timeout on each of its preparation attempts fails (`SimGitLab.fail_pending`)."""
        world = self._world
        now = world.loop.now
        limit = (INSTANCE_ACQUIRE_TIMEOUT_S + PREPARATION_RETRY_INTERVAL_S) * PREPARATION_RETRIES
        for job in world.gitlab.pending_for(lambda tags: runner_takes(tags, pool.tags, pool.run_untagged)):
            began = self._acquiring.setdefault(job.job_id, now)  # taken by the runner at the first check
            if now - began >= limit:
                world.gitlab.fail_pending(job)


class TaskscalerNonPreemptive(Taskscaler):
    """Taskscaler with `preemptive_mode = false` on every policy: jobs are taken first, capacity found
    after (the mode gitlab-runner documents as slower to start jobs; this baseline's model before #22)."""

    name = "taskscaler-nonpreemptive"
    preemptive_mode = False


def warm_pool_size(pool: Pool) -> int:
    """The fixed warm pool an operator would give the group by hand: the most idle slots any period asks
    for (idle_count plus scale_factor_limit), in instances, within max_instances; at least one."""
    slots = max((p.idle_count + p.scale_factor_limit for p in pool.policy), default=0)
    per_instance = pool.capacity_per_instance
    if pool.max_use_count > 0:
        per_instance = min(per_instance, pool.max_use_count)
    return max(1, min(pool.max_instances, math.ceil(slots / max(1, per_instance))))


class TaskscalerWarm(Taskscaler):
    """Taskscaler (default configuration) on an Auto Scaling group with a fixed warm pool of stopped
    instances, as an operator can set one up by hand ("Warm pools for Amazon EC2 Auto Scaling": PutWarmPool
    with MinSize, PoolState Stopped). A launch takes a stopped instance when one is ready (Linux starts in
    about 20 s, Windows in under 40 s, then taskscaler connects over SSH: `sim.warm.Readiness.SSH`), and the
    group refills the pool with a cold boot then a stop; a stopped instance costs its root volume only
    (sim.warm, the one warm-pool model ours uses too). Taskscaler knows nothing of the pool: it sets
    the desired capacity as before. Pools on dedicated hosts get none (a stopped Mac scrubs its host).
    The operator turns preemptive mode off: with launches served in seconds, taking jobs first and
    launching for them is the stronger setting (a lower wait p95 on every bench scenario than the default).
    """

    name = "taskscaler-warm"
    preemptive_mode = False

    def start(self, world: World) -> None:
        for pool in world.config.pools:
            if pool.hosts is None:
                world.fleet.set_warm_pool(pool.name, WarmPoolSpec(warm_pool_size(pool)), prepared=True)
        super().start(world)


# -- philips-labs-style webhook scaler -----------------------------------------------------------------


#: `minimum_running_time_in_minutes` defaults by runner OS (modules/runners/scale-down.tf,
#: `min_runtime_defaults`: windows 15, linux 5, osx 20).
MINIMUM_RUNNING_TIME_S = {Platform.LINUX: 300.0, Platform.WINDOWS: 900.0, Platform.MACOS: 1200.0}


class WebhookScaler(_Counted):
    """A port of philips-labs/terraform-aws-github-runner's control plane (now github-aws-runners) to GitLab.

    From modules/runners/README.md and lambdas/.../scale-runners/scale-up.ts and scale-down.ts: each "job
    queued" webhook goes to an SQS queue delayed by `delay_webhook_event` (30 s); the scale-up Lambda checks
    the job is still queued (only for non-ephemeral runners by default: `enable_job_queued_check`,
    modules/runners/main.tf) and, below `runners_maximum_count` (max_instances), creates one instance for
    it; at the maximum an ephemeral setup raises ScaleError and SQS redelivers the message after its
    visibility timeout (30 s), any other setup drops it. Scale-down runs on `scale_down_schedule_expression`
    (every 5 min): runners are walked newest first; any runner past `minimum_running_time_in_minutes`
    (5 Linux, 15 Windows, 20 macOS: module defaults) counts against the idle_config `idleCount` (our
    policy's idle_count) and is kept, the others are de-registered and terminated when the runner's busy
    flag reads false; an instance not registered within `runner_boot_time_in_minutes` (our boot_timeout) is
    an orphan, terminated on the next run. The busy flag lags job assignment (issues #3573, #3802, #4391),
    so a runner that just got a job can be killed: modelled with the world's busy lag. Ephemeral runners
    (max_use_count 1) shut their instance down after their job; the optional pool (`pool_config`) tops idle
    runners up to idle_count every 5 min. No tick reads the queue: a lost webhook means no instance for
    that job.
    API calls: per scale-up message 3 (the job status only with the job-queued check, DescribeInstances,
    CreateFleet); per scale-down run 2 (DescribeInstances, list runners), plus 1 per candidate (busy flag)
    and 2 per removal (de-register, TerminateInstances); per pool top-up 2, plus 1 per instance created.
    """

    name = "webhook-scaler"
    delay_webhook_event_s = 30.0
    visibility_timeout_s = 30.0
    scale_down_every_s = 300.0
    pool_every_s = 300.0

    def start(self, world: World) -> None:
        self._world = world
        self._orphans: set[str] = set()
        world.bus.subscribe(self._on_hook)
        world.gitlab.exit_listeners.append(self._ephemeral_done)
        world.loop.every(
            self.scale_down_every_s,
            self._scale_down,
            start=self.scale_down_every_s,
            keep_going=world.keep_going,
        )
        world.loop.every(self.pool_every_s, self._top_up, start=0.0, keep_going=world.keep_going)

    def _on_hook(self, event: HookEvent) -> None:
        if event.status == "pending":
            self._world.loop.after(
                self.delay_webhook_event_s, functools.partial(self._scale_up, event.job_id)
            )

    def _scale_up(self, job_id: int) -> None:
        """One delayed "job queued" message. The job-queued check runs only for non-ephemeral runners: the
        module's `enable_job_queued_check` defaults to `!enable_ephemeral_runners` (modules/runners/main.tf)
        and scale-up.ts skips the GitHub call when it is off, so an ephemeral pool launches for every
        message, even for a job another runner already took."""
        world = self._world
        job = world.gitlab.jobs.get(job_id)
        if job is None:
            return
        pool = pool_for_tags(job.tags, world.config.pools)
        if pool is None:
            return
        if pool.max_use_count != 1:  # not ephemeral: the job-queued check (a job status call)
            self.calls["gitlab"] += 1
            if job.status != "pending":
                return
        self.calls["ec2"] += 1
        if len(world.fleet.live(pool.name)) + world.fleet.unplaced(pool.name) >= pool.max_instances:
            if pool.max_use_count == 1:  # ephemeral: ScaleError, SQS redelivers after the visibility timeout
                world.loop.after(self.visibility_timeout_s, functools.partial(self._scale_up, job_id))
            return
        self.calls["ec2"] += 1
        world.fleet.launch(pool.name, 1)

    def _ephemeral_done(self, machine: SimMachine) -> None:
        """The runner ran its last job; the instance shuts itself down (no API call by the control plane)."""
        self._world.fleet.terminate(machine.instance_id)

    def _scale_down(self) -> None:
        for pool in self._world.config.pools:
            self._scale_down_pool(pool)

    def _scale_down_pool(self, pool: Pool) -> None:
        world = self._world
        now = world.loop.now
        self.calls["ec2"] += 1
        self.calls["gitlab"] += 1
        minimum = MINIMUM_RUNNING_TIME_S[pool.platform]
        keep = pool.active_policy(world.now_dt()).idle_count
        for machine in sorted(world.fleet.live(pool.name), key=lambda m: -m.launched_at):
            if machine.instance_id in self._orphans:
                self._terminate(machine)
            elif not machine.ready:
                if now - machine.launched_at > pool.boot_timeout.total_seconds():
                    self._orphans.add(machine.instance_id)
            elif now - machine.launched_at > minimum:
                if keep > 0:
                    keep -= 1
                    continue
                self.calls["gitlab"] += 1
                if not world.gitlab.busy_visible(machine):
                    self._terminate(machine)

    def _terminate(self, machine: SimMachine) -> None:
        self.calls["gitlab"] += 1
        self.calls["ec2"] += 1
        self._orphans.discard(machine.instance_id)
        self._world.fleet.terminate(machine.instance_id)

    def _top_up(self) -> None:
        world = self._world
        for pool in world.config.pools:
            size = pool.active_policy(world.now_dt()).idle_count
            if size <= 0:
                continue
            self.calls["ec2"] += 1
            self.calls["gitlab"] += 1
            machines = world.fleet.live(pool.name)
            ready_or_coming = sum(1 for m in machines if m.idle or not m.ready) + world.fleet.unplaced(
                pool.name
            )
            create = min(size - ready_or_coming, pool.max_instances - len(machines))
            if create > 0:
                self.calls["ec2"] += create
                world.fleet.launch(pool.name, create)


# -- static fleet --------------------------------------------------------------------------------------


class StaticFleet(_Counted):
    """`max_instances` machines always on: an ASG at fixed desired capacity, nothing scaling it.

    A machine that used up `max_use_count` jobs terminates itself without decrementing the group (one call,
    TerminateInstanceInAutoScalingGroup), and the ASG launches its replacement.
    """

    name = "static"

    def start(self, world: World) -> None:
        self._world = world
        world.gitlab.exit_listeners.append(self._used_up)
        for pool in world.config.pools:
            world.fleet.set_desired(pool.name, pool.max_instances)

    def _used_up(self, machine: SimMachine) -> None:
        self.calls["autoscaling"] += 1
        self._world.fleet.terminate(machine.instance_id, decrement=False)


# -- naive dedicated hosts -----------------------------------------------------------------------------


class NaiveHosts(_Counted):
    """The naive dedicated-host scaler issue #8 measures against: one machine per pending job and one new
    host allocated for each machine, every host released as soon as EC2 allows it (empty, scrubbed, past
    its minimum allocation: 24 h for Mac).

    Every check (3 s, as a runner manager) it launches a machine for each pending job that no idle or coming
    machine will take, within max_instances (the group's size), and allocates a host with it; hosts are not
    bounded by max_hosts. A machine is terminated when its job ends. The world places a machine on any
    usable host, so a new host may stay empty while a scrubbed one takes the machine: it is paid all the
    same. API calls: 2 per machine (AllocateHosts, SetDesiredCapacity), 1 per termination, 1 per release.
    """

    name = "naive-hosts"
    check_interval_s = 3.0
    release_every_s = 60.0

    def start(self, world: World) -> None:
        self._world = world
        world.gitlab.done_listeners.append(self._job_done)
        for pool in world.config.pools:
            if pool.hosts is not None:
                world.hosts.planners[pool.name] = NoHostPlanner()
        world.loop.every(self.check_interval_s, self._check, start=0.0, keep_going=world.keep_going)
        world.loop.every(self.release_every_s, self._release, start=0.0, keep_going=world.keep_going)

    def _check(self) -> None:
        world = self._world
        for pool in world.config.pools:
            machines = world.fleet.live(pool.name)
            coming = sum(1 for m in machines if not m.ready) + world.fleet.unplaced(pool.name)
            idle = sum(1 for m in machines if m.idle and m.accepting)
            room = pool.max_instances - len(machines) - world.fleet.unplaced(pool.name)
            launch = max(0, min(_pending_for(world, pool) - coming - idle, room))
            if not launch:
                continue
            if pool.hosts is not None:
                self.calls["ec2"] += launch
                world.hosts.allocate(pool, launch)
            self.calls["autoscaling"] += launch
            world.fleet.launch(pool.name, launch)

    def _job_done(self, job: object, machine: SimMachine) -> None:
        if not machine.running and machine.alive:
            self.calls["autoscaling"] += 1
            self._world.fleet.terminate(machine.instance_id)

    def _release(self) -> None:
        hosts = self._world.hosts
        for host in hosts.hosts:
            if host.live and not hosts.release_refusal(host.host_id):
                self.calls["ec2"] += 1
                hosts.release(host.host_id)


# -- oracle --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Launch:
    at_s: float
    pool: str
    boot_s: float
    end_s: float


class Oracle(_Counted):
    """Knows every arrival: a lower bound on what a scaler can pay, at the least wait the limits allow.

    Each machine is launched one start time before its job becomes pending (in the zero-wait schedule) and
    terminated when the job ends, one machine per job (every bench pool has max_use_count 1). Its start is
    the shortest any policy can get: the platform's fastest cold boot, or its warm start where a warm pool
    is possible (sim.warm), so no policy's machine hours can undercut it. It is not bound by max_instances.

    On dedicated hosts it is bound by `max_hosts`: a clairvoyant planner puts each job on the host slot
    that frees first (after its scrub) and delays it when none is free, on the fewest hosts whose planned
    wait p95 stays within the pool's `wait_targets_s` (none: the least wait `max_hosts` allows; `simulate`
    gives it ours' wait p95 per host pool, so that cost is compared at ours' wait); each host is allocated
    just in time and released at the end of its last use or of its minimum allocation, whichever is
    cheaper (a small dynamic programme), a refused release being retried every minute. On a macOS pool that
    reuses hosts (`reuse_root_volume`), every used Mac may be reused, whatever the demand or the host's age:
    its slot frees `mac_replace_s` after its job instead of a scrub later (modelled as a termination whose
    host is busy, unbilled, only that long), so ours' reuse never beats it. 1 call per launch,
    termination, allocation and release.
    """

    name = "oracle"
    release_retry_s = 60.0

    def __init__(self, wait_targets_s: dict[str, float] | None = None) -> None:
        super().__init__()
        self.wait_targets_s = dict(wait_targets_s or {})

    def start(self, world: World) -> None:
        self._world = world
        world.gitlab.done_listeners.append(self._job_done)
        launches = self._plan(world)
        for pool in world.config.pools:
            if pool.hosts is not None:
                world.hosts.planners[pool.name] = NoHostPlanner()
                mine = [x for x in launches if x.pool == pool.name]
                planned, slots = self._fit_hosts(pool, mine)
                launches = [x for x in launches if x.pool != pool.name] + planned
                self._plan_hosts(pool, slots)
        for launch in launches:
            world.loop.at(launch.at_s, functools.partial(self._launch, launch))

    def _plan(self, world: World) -> list[_Launch]:
        pending = ideal_pending(world.trace)
        out: list[_Launch] = []
        for index in sorted(pending, key=lambda i: (pending[i], i)):
            job = world.trace[index]
            pool = pool_for_tags(job.tags, world.config.pools)
            if pool is None:
                continue
            boot = world.options.boot_s if world.options.boot_s is not None else fastest_start(pool)
            start = pending[index]
            out.append(_Launch(max(0.0, start - boot), pool.name, boot, start + job.duration_s))
        return out

    def _fit_hosts(
        self, pool: Pool, launches: Sequence[_Launch]
    ) -> tuple[list[_Launch], list[list[tuple[float, float]]]]:
        """The launches on the fewest host slots (within max_hosts) whose planned wait p95 meets the target:
        each launch takes the slot that frees first, later if none is free. Returns the (possibly delayed)
        launches and each slot's uses [launch, end + scrub)."""
        cfg = pool.hosts
        assert cfg is not None
        target = self.wait_targets_s.get(pool.name, 0.0)
        best: tuple[list[_Launch], list[list[tuple[float, float]]]] = ([], [])
        for hosts in range(1, max(1, cfg.max_hosts) + 1):
            planned, slots, waits = _list_schedule(launches, hosts * cfg.slots_per_host, self._gap(pool))
            best = (planned, slots)
            if percentile(sorted(waits), 95) <= target:
                break
        return best

    def _gap(self, pool: Pool) -> float:
        """Seconds a host slot stays busy after its machine's job: a scrub, or a root-volume replacement."""
        cfg = pool.hosts
        assert cfg is not None
        if pool.reuses_root_volume:
            return min(self._world.options.mac_replace_s, cfg.scrub_time.total_seconds())
        return cfg.scrub_time.total_seconds()

    def _launch(self, launch: _Launch) -> None:
        self.calls["autoscaling"] += 1
        self._world.fleet.launch(launch.pool, 1, boot_s=launch.boot_s, bounded=False)

    def _job_done(self, job: object, machine: SimMachine) -> None:
        if not machine.running and machine.alive:
            self.calls["autoscaling"] += 1
            pool = machine.pool
            gap = self._gap(pool) if pool.hosts is not None and pool.reuses_root_volume else None
            self._world.fleet.terminate(machine.instance_id, host_scrub_s=gap)

    def _plan_hosts(self, pool: Pool, slots: Sequence[Sequence[tuple[float, float]]]) -> None:
        """Each host's allocations from its slots' uses, the cheapest cover of them (`_allocations`)."""
        cfg = pool.hosts
        if cfg is None:
            return
        per_host = cfg.slots_per_host
        for first in range(0, len(slots), per_host):
            uses = sorted(u for slot in slots[first : first + per_host] for u in slot)
            if not uses:
                continue
            for start, end in _allocations(uses, self._world.options.host_allocation_s, cfg.min_allocation):
                self._world.loop.at(start, functools.partial(self._allocate_one, pool))
                self._world.loop.at(end, functools.partial(self._release_later, pool))

    def _release_later(self, pool: Pool) -> None:
        """A planned release: the end of a host's allocation in the plan."""
        self._release_one(pool)

    def _allocate_one(self, pool: Pool) -> None:
        self.calls["ec2"] += 1
        self._world.hosts.allocate(pool, 1)

    def _release_one(self, pool: Pool) -> None:
        """Release an empty host of the pool; when EC2 refuses every one (a host still scrubbing or in
        use, the plan's times being off by a boot), try again a minute later."""
        world = self._world
        for host in world.hosts.of(pool.name):
            if host.live and not host.instances and world.hosts.release(host.host_id):
                self.calls["ec2"] += 1
                return
        self.calls["ec2"] += 1
        if world.keep_going():
            world.loop.after(self.release_retry_s, functools.partial(self._release_one, pool))


def fastest_start(pool: Pool) -> float:
    """The shortest time any policy's machine of `pool` takes to reach its runner polling: the low end of
    a cold boot (sim.model.BOOT_TIMES), or of a warm start where a warm pool is possible (not on hosts)."""
    low = BOOT_TIMES[pool.platform][0]
    if pool.hosts is None:
        warm = [w[0] for (platform, _), w in WARM_START_S.items() if platform is pool.platform]
        low = min([low, *warm])
    return low


def _list_schedule(
    launches: Sequence[_Launch], slots: int, scrub: float
) -> tuple[list[_Launch], list[list[tuple[float, float]]], list[float]]:
    """Launches in time order on `slots` host slots, each on the slot free first (a slot frees `scrub`
    seconds after its machine ends): the launches as delayed, each slot's uses, and each job's wait."""
    free = [0.0] * slots
    uses: list[list[tuple[float, float]]] = [[] for _ in range(slots)]
    planned: list[_Launch] = []
    waits: list[float] = []
    for launch in sorted(launches, key=lambda x: x.at_s):
        slot = min(range(slots), key=lambda i: (free[i], i))
        at = max(launch.at_s, free[slot])
        delay = at - launch.at_s
        end = launch.end_s + delay
        free[slot] = end + scrub
        uses[slot].append((at, end + scrub))
        planned.append(_Launch(at, launch.pool, launch.boot_s, end))
        waits.append(delay)
    return planned, uses, waits


def _allocations(
    uses: Sequence[tuple[float, float]], delay: float, minimum: timedelta
) -> list[tuple[float, float]]:
    """The cheapest (allocate, release) times covering one host's uses, each allocation billed at least
    `minimum`: a small dynamic programme over where to release the host between uses and allocate anew
    `delay` before the next one."""
    floor = minimum.total_seconds()
    n = len(uses)
    best: list[float] = [0.0] + [math.inf] * n  # best[j]: cheapest cover of uses[:j]
    cut: list[int] = [0] * (n + 1)
    for j in range(1, n + 1):
        busy_until = 0.0
        for i in range(j - 1, -1, -1):
            busy_until = max(busy_until, uses[i][1])
            start = max(0.0, uses[i][0] - delay)
            cost = best[i] + max(floor, busy_until - start)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out: list[tuple[float, float]] = []
    j = n
    while j > 0:
        i = cut[j]
        start = max(0.0, uses[i][0] - delay)
        out.append((start, max(start + floor, max(u[1] for u in uses[i:j]))))
        j = i
    return sorted(out)
