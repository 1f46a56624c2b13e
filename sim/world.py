"""One policy run's world: GitLab, the pools' groups, hosts, webhooks, and the run's metrics.

A `ScalingPolicy` acts only through it; imports the simulator's parts and config.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar

from chalicelib.capacity.routing import pool_for_tags
from chalicelib.config import Config, Pool
from sim.events import EventLoop
from sim.fleet import Ledger, SimFleet
from sim.gitlab import SimGitLab
from sim.hosts import SimHosts
from sim.model import HookEvent, PipelineHookEvent, SimJob, SimOptions, at, with_policy_cache
from sim.traces import TraceJob
from sim.warm import stopped_usd_per_hour
from toolkit.devtools.accounting import job_wait_s, machine_seconds, percentile

#: The metrics of a run, exactly these keys, in this order (the JSON the CLI and the bench write).
METRIC_KEYS = (
    "jobs",
    "unmatched_jobs",
    "blocked_jobs",
    "wait_p50_s",
    "wait_p95_s",
    "wait_p99_s",
    "wait_max_s",
    "started_within_120s",
    "machine_hours",
    "cost_usd",
    "idle_fraction",
    "paid_idle_host_hours",
    "max_machines",
    "busy_killed",
    "failed_jobs",
    "skipped_jobs",
    "api_calls",
)

#: Where a pool's instance dollars go (`World.cost_parts`), each in USD; on a pool without dedicated hosts
#: they add up to its `cost_usd` (to rounding). busy: machines running a job; boot: cold boots into the
#: group, launch to runner ready; warm_start: machines leaving the warm pool, start to runner ready; idle:
#: ready machines with no job before their last job, or that never got one (idle_count and scale_factor
#: spares, machines launched for jobs another machine took); drain: after their last job until terminated;
#: warm_pool: the warm pool's own bill, its instances' first (cold) boots billed running plus their stopped
#: volumes; stopped: those volumes alone (part of warm_pool). On a dedicated-host pool the instance parts are
#: 0: its cost is the hosts' bill.
COST_PARTS = (
    "busy_usd",
    "boot_usd",
    "warm_start_usd",
    "idle_usd",
    "drain_usd",
    "warm_pool_usd",
    "stopped_usd",
)
#: The figures of one pool within a run (`RunResult.pools`, the "pools" of `simulate --json`).
POOL_METRIC_KEYS = (
    "jobs",
    "wait_p50_s",
    "wait_p95_s",
    "wait_p99_s",
    "wait_max_s",
    "started_within_120s",
    "machine_hours",
    "cost_usd",
    "idle_fraction",
    "paid_idle_host_hours",
    *COST_PARTS,
)
#: GitLab.com's target for its hosted runners: 90 % of jobs start within two minutes (issue #22's goal on
#: Linux and Windows); `started_within_120s` is the share of jobs that waited at most this long.
START_TARGET_S = 120.0

Event = TypeVar("Event")
Progress = Callable[[float], None]


class ScalingPolicy(Protocol):
    """Something that scales the pools: ours (the real reconciler) or a baseline."""

    name: str

    def start(self, world: World) -> None:
        """Subscribe to what it listens to and schedule its loops on `world.loop`."""
        ...

    def api_calls(self) -> int:
        """AWS and GitLab API calls its control plane made so far."""
        ...


class WebhookBus(Generic[Event]):
    """GitLab's hooks (Job or Pipeline) on their way to a subscriber: delayed, sometimes lost, sometimes sent
    twice. Draws nothing while nobody subscribes, so a bus no policy listens to changes no run."""

    def __init__(self, loop: EventLoop, options: SimOptions, rng: random.Random) -> None:
        self._loop = loop
        self._options = options
        self._rng = rng
        self._listeners: list[Callable[[Event], None]] = []
        self.sent = 0
        self.lost = 0

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def publish(self, event: Event, lag: float) -> None:
        """GitLab emits `event` after `lag` s (its busy lag); each delivery adds a lognormal network delay."""
        for listener in self._listeners:
            self.sent += 1
            if self._rng.random() < self._options.webhook_loss:
                self.lost += 1
                continue
            copies = 2 if self._rng.random() < self._options.webhook_duplication else 1
            for _ in range(copies):
                delay = self._options.webhook_delay_s * math.exp(self._rng.gauss(0.0, 0.7))
                self._loop.after(lag + delay, _deliver(listener, event))


def _deliver(listener: Callable[[Event], None], event: Event) -> Callable[[], None]:
    return lambda: listener(event)


@dataclass
class RunResult:
    """One policy's run: the metrics (METRIC_KEYS) and the fleet-size timeline for plots."""

    policy: str
    metrics: dict[str, float | int]
    timeline: list[tuple[float, int]] = field(default_factory=list)
    run_end_s: float = 0.0
    #: The policy's control-plane calls by service ("dynamodb", "autoscaling", "gitlab", ...): the AWS ones
    #: count against each service's own quotas, the GitLab ones against GitLab's rate limits. The runners' own
    #: job requests are not in it, for any policy.
    calls_by_service: dict[str, int] = field(default_factory=dict)
    #: The same figures per pool (POOL_METRIC_KEYS): a job counts in the pool its tags route to, a machine
    #: and a host in their own pool.
    pools: dict[str, dict[str, float | int]] = field(default_factory=dict)


class World:
    """A fresh simulated world for one policy run, deterministic under `seed`."""

    def __init__(self, config: Config, trace: Sequence[TraceJob], *, seed: int, options: SimOptions) -> None:
        self.config = with_policy_cache(config)
        self.trace = list(trace)
        self.options = options
        self.seed = seed
        self.loop = EventLoop()
        self._start_utc = at(options, 0.0)
        self.ledger = Ledger()
        self.bus: WebhookBus[HookEvent] = WebhookBus(self.loop, options, self.rng("webhooks"))
        # Its own random stream: subscribing to Pipeline Hooks leaves every Job Hook's delivery as it was.
        self.pipeline_bus: WebhookBus[PipelineHookEvent] = WebhookBus(
            self.loop, options, self.rng("pipeline-webhooks")
        )
        self.gitlab = SimGitLab(
            self.loop,
            options,
            clock=self.dt,
            emit=self.bus.publish,
            assign_rng=self.rng("assign"),
            lag_rng=self.rng("busy-lag"),
            emit_pipeline=self.pipeline_bus.publish,
        )
        self.hosts = SimHosts(self.loop, options, on_room=self._host_room)
        self.fleet = SimFleet(
            self.loop,
            self.config.pools,
            self.gitlab,
            self.hosts,
            self.ledger,
            self.rng("boot"),
            options.boot_s,
            warm_rng=self.rng("warm"),
            warm_start_scale=options.warm_start_scale,
        )
        self.jobs = [
            SimJob(index, job, project_id=1 + job.pipeline_id % max(1, options.projects), job_id=0)
            for index, job in enumerate(self.trace)
        ]
        pending = ideal_pending(self.trace)
        ideal_end = max((pending[j.index] + j.trace.duration_s for j in self.jobs), default=0.0)
        self.horizon = ideal_end + options.tail_s
        self.unmatched, self.blocked = unservable(self.jobs, self.config.pools)
        self._unfinished = len(self.jobs) - len(self.unmatched) - len(self.blocked)
        self.gitlab.done_listeners.append(self._job_done)
        self.gitlab.given_up_listeners.append(self._given_up)

    def rng(self, stream: str) -> random.Random:
        """An independent, seeded random stream per concern, so one concern's draws never shift another's."""
        return random.Random(f"{self.seed}:{stream}")

    def dt(self, seconds: float) -> datetime:
        """`sim.model.at`, the start's UTC conversion made once (the clock of every hook and call)."""
        return self._start_utc + timedelta(seconds=seconds)

    def now_dt(self) -> datetime:
        return self.dt(self.loop.now)

    def keep_going(self) -> bool:
        """Periodic loops stop once every job is done and the horizon has passed."""
        return self._unfinished > 0 or self.loop.now < self.horizon

    def pool(self, name: str) -> Pool:
        return self.config.pool(name)

    def run(self, policy: ScalingPolicy, progress: Progress | None = None) -> RunResult:
        """Replay the trace against `policy`; returns its metrics."""
        policy.start(self)
        for pipeline in _pipelines(self.jobs):
            self.loop.at(pipeline[0].trace.created_s, _create(self.gitlab, pipeline))
        if any(p.hosts is not None for p in self.config.pools):
            self.loop.every(60.0, self._host_tick, start=0.0, keep_going=self.keep_going)
        if progress is not None:
            step = max(60.0, self.horizon / 100)
            self.loop.every(
                step,
                lambda: progress(min(1.0, self.loop.now / self.horizon)),
                start=0.0,
                keep_going=self.keep_going,
            )
        self.loop.run(until=self.horizon + self.options.max_overrun_s)
        end = self._run_end()
        calls = getattr(policy, "calls", None)
        by_service = {k: int(v) for k, v in sorted(calls.items())} if calls is not None else {}
        return RunResult(
            policy.name,
            self.metrics(end, policy.api_calls()),
            list(self.ledger.timeline),
            end,
            by_service,
            self.pool_metrics(end),
        )

    def metrics(self, end: float, api_calls: int) -> dict[str, float | int]:
        """The run's figures; machines and hosts still alive are charged until `end`. A dedicated host is
        paid-idle while billed with no instance on it (`SimHost.paid_idle_seconds`)."""
        # A job no pool takes waits forever under every policy, and so do its pipeline's later stages: counted
        # apart, never in the wait figures, where they would say nothing about scaling.
        left_out = {j.index for j in (*self.unmatched, *self.blocked, *self.never_started())}
        waits = sorted(job_wait(job, end) for job in self.jobs if job.index not in left_out)
        machine_s, busy_s, instance_cost = 0.0, 0.0, 0.0
        for machine in self.ledger.machines:
            stop = machine.terminated_at if machine.terminated_at is not None else end
            machine.close_busy(stop)
            seconds = machine_seconds(machine.launched_at, machine.terminated_at, end)
            machine_s += seconds
            busy_s += machine.busy_s
            if machine.pool.hosts is None:
                instance_cost += seconds / 3600 * instance_price(self.config, machine.pool)
        host_cost = sum(
            h.billed_seconds(end) / 3600 * host_price(self.config, self.pool(h.pool))
            for h in self.hosts.hosts
        )
        for warm_running_s, warm_cost in self.warm_costs(end).values():
            machine_s += warm_running_s
            instance_cost += warm_cost
        paid_idle_host_s = sum(h.paid_idle_seconds(end) for h in self.hosts.hosts)
        values: dict[str, float | int] = {
            "jobs": len(self.jobs),
            "unmatched_jobs": len(self.unmatched),
            "blocked_jobs": len(self.blocked),
            "wait_p50_s": round(percentile(waits, 50), 1),
            "wait_p95_s": round(percentile(waits, 95), 1),
            "wait_p99_s": round(percentile(waits, 99), 1),
            "wait_max_s": round(waits[-1] if waits else 0.0, 1),
            "started_within_120s": share_within(waits, START_TARGET_S),
            "machine_hours": round(machine_s / 3600, 2),
            "cost_usd": round(instance_cost + host_cost, 2),
            "idle_fraction": round(1 - busy_s / machine_s, 3) if machine_s else 0.0,
            "paid_idle_host_hours": round(paid_idle_host_s / 3600, 2),
            "max_machines": self.ledger.max_alive,
            "busy_killed": self.ledger.busy_killed,
            "failed_jobs": sum(1 for j in self.jobs if j.status == "failed"),
            "skipped_jobs": sum(1 for j in self.jobs if j.status == "skipped"),
            "api_calls": api_calls,
        }
        return {key: values[key] for key in METRIC_KEYS}

    def never_started(self) -> list[SimJob]:
        """Jobs that failed before they ran (a scaler gave up on them) and the later stages GitLab skipped
        for them: `failed_jobs` and `skipped_jobs`, never in the wait figures (no start, no wait)."""
        return [j for j in self.jobs if j.status in {"failed", "skipped"}]

    def warm_costs(self, end: float) -> dict[str, tuple[float, float]]:
        """Per pool with a warm pool: (running seconds, USD) of its warm instances. Their first boot is paid
        as a running instance (and counts in machine hours); stopped, only the root volume is paid."""
        out: dict[str, tuple[float, float]] = {}
        for warm in self.fleet.warm_history:
            for instance in warm.instances:
                pool = self.pool(instance.pool)
                running = instance.running_seconds(end)
                usd = running / 3600 * instance_price(self.config, pool) + instance.stopped_seconds(
                    end
                ) / 3600 * stopped_usd_per_hour(pool.platform)
                seconds, cost = out.get(pool.name, (0.0, 0.0))
                out[pool.name] = (seconds + running, cost + usd)
        return out

    def pool_metrics(self, end: float) -> dict[str, dict[str, float | int]]:
        """Each pool's figures (POOL_METRIC_KEYS), charged as in `metrics`: the jobs its runners take (by
        gitlab-runner's tag rule, unmatched and blocked jobs left out), its machines and its hosts."""
        left_out = {j.index for j in (*self.unmatched, *self.blocked, *self.never_started())}
        waits: dict[str, list[float]] = {p.name: [] for p in self.config.pools}
        for job in self.jobs:
            pool = pool_for_tags(job.trace.tags, self.config.pools)
            if pool is not None and job.index not in left_out:
                waits[pool.name].append(job_wait(job, end))
        machine_s = dict.fromkeys(waits, 0.0)
        busy_s = dict.fromkeys(waits, 0.0)
        cost = dict.fromkeys(waits, 0.0)
        for machine in self.ledger.machines:
            name = machine.pool.name
            stop = machine.terminated_at if machine.terminated_at is not None else end
            machine.close_busy(stop)
            seconds = machine_seconds(machine.launched_at, machine.terminated_at, end)
            machine_s[name] += seconds
            busy_s[name] += machine.busy_s
            if machine.pool.hosts is None:
                cost[name] += seconds / 3600 * instance_price(self.config, machine.pool)
        for name, (warm_running_s, warm_cost) in self.warm_costs(end).items():
            machine_s[name] += warm_running_s
            cost[name] += warm_cost
        idle_host_s = dict.fromkeys(waits, 0.0)
        for host in self.hosts.hosts:
            cost[host.pool] += host.billed_seconds(end) / 3600 * host_price(self.config, self.pool(host.pool))
            idle_host_s[host.pool] += host.paid_idle_seconds(end)
        parts = self.cost_parts(end)
        out: dict[str, dict[str, float | int]] = {}
        for name, pool_waits in waits.items():
            pool_waits.sort()
            used = machine_s[name]
            out[name] = {
                "jobs": len(pool_waits),
                "wait_p50_s": round(percentile(pool_waits, 50), 1),
                "wait_p95_s": round(percentile(pool_waits, 95), 1),
                "wait_p99_s": round(percentile(pool_waits, 99), 1),
                "wait_max_s": round(pool_waits[-1] if pool_waits else 0.0, 1),
                "started_within_120s": share_within(pool_waits, START_TARGET_S),
                "machine_hours": round(used / 3600, 2),
                "cost_usd": round(cost[name], 2),
                "idle_fraction": round(1 - busy_s[name] / used, 3) if used else 0.0,
                "paid_idle_host_hours": round(idle_host_s[name] / 3600, 2),
                **{key: round(usd, 2) for key, usd in parts[name].items()},
            }
        return out

    def cost_parts(self, end: float) -> dict[str, dict[str, float]]:
        """Each pool's instance dollars by where they go (COST_PARTS): each machine's billed time split into
        its boot or warm start, its busy time, its idle time before or without a job, and its drain after
        its last job; then its warm pool's bill. Dedicated-host pools (billed per host) get zeros."""
        out = {p.name: dict.fromkeys(COST_PARTS, 0.0) for p in self.config.pools}
        for machine in self.ledger.machines:
            if machine.pool.hosts is not None:
                continue
            price = instance_price(self.config, machine.pool) / 3600
            stop = machine.terminated_at if machine.terminated_at is not None else end
            machine.close_busy(stop)
            ready = min(stop, machine.ready_at if machine.ready_at is not None else stop)
            waiting = max(0.0, stop - ready - machine.busy_s)
            drain = 0.0
            if machine.jobs_started and not machine.running and machine.last_busy_at is not None:
                drain = min(waiting, max(0.0, stop - machine.last_busy_at))
            part = out[machine.pool.name]
            start = "warm_start_usd" if machine.from_warm else "boot_usd"
            part[start] += (ready - machine.launched_at) * price
            part["busy_usd"] += machine.busy_s * price
            part["idle_usd"] += (waiting - drain) * price
            part["drain_usd"] += drain * price
        for warm in self.fleet.warm_history:
            for instance in warm.instances:
                pool = self.pool(instance.pool)
                stopped = instance.stopped_seconds(end) / 3600 * stopped_usd_per_hour(pool.platform)
                running = instance.running_seconds(end) / 3600 * instance_price(self.config, pool)
                out[pool.name]["warm_pool_usd"] += running + stopped
                out[pool.name]["stopped_usd"] += stopped
        return out

    def _job_done(self, job: SimJob, machine: object) -> None:
        self._unfinished -= 1

    def _given_up(self, jobs: Sequence[SimJob]) -> None:
        self._unfinished -= len(jobs)

    def _run_end(self) -> float:
        finished = [j.finished_at for j in self.jobs if j.finished_at is not None]
        last = max(finished, default=0.0)
        if self._unfinished:
            return self.horizon + self.options.max_overrun_s
        return max(self.horizon, last)

    def _host_tick(self) -> None:
        self.hosts.tick(self.config.pools, self.fleet.unplaced, self.now_dt())

    def _host_room(self, pool: str) -> None:
        self.fleet.fill(pool)


def _create(gitlab: SimGitLab, pipeline: list[SimJob]) -> Callable[[], None]:
    return lambda: gitlab.add_pipeline(pipeline)


def _pipelines(jobs: Sequence[SimJob]) -> list[list[SimJob]]:
    by_id: dict[int, list[SimJob]] = {}
    for job in jobs:
        by_id.setdefault(job.trace.pipeline_id, []).append(job)
    return list(by_id.values())


def unservable(jobs: Sequence[SimJob], pools: Sequence[Pool]) -> tuple[list[SimJob], list[SimJob]]:
    """Jobs whose tags match no pool (chalicelib.capacity.routing, gitlab-runner's tag rule), and the jobs of
    their pipelines' later stages, which GitLab never starts while an earlier stage cannot run."""
    unmatched = [job for job in jobs if pool_for_tags(job.trace.tags, pools) is None]
    first_stuck: dict[int, int] = {}
    for job in unmatched:
        pipeline = job.trace.pipeline_id
        first_stuck[pipeline] = min(first_stuck.get(pipeline, job.trace.stage), job.trace.stage)
    stuck = {job.index for job in unmatched}
    blocked = [
        job
        for job in jobs
        if job.index not in stuck
        and job.trace.stage > first_stuck.get(job.trace.pipeline_id, job.trace.stage)
    ]
    return unmatched, blocked


def share_within(waits: Sequence[float], limit_s: float) -> float:
    """The share of `waits` at most `limit_s` (1.0 for no job: none waited longer)."""
    if not waits:
        return 1.0
    return round(sum(1 for w in waits if w <= limit_s) / len(waits), 3)


def job_wait(job: SimJob, end: float) -> float:
    """Every wait of the job; a job still pending at the end has waited until the end (censored)."""
    return job_wait_s([job.wait_s], job.pending_at if job.status == "pending" else None, end)


def ideal_pending(trace: Sequence[TraceJob]) -> dict[int, float]:
    """When each job (by trace index) becomes pending if no job ever waits: the zero-wait schedule."""
    out: dict[int, float] = {}
    by_pipeline: dict[int, list[int]] = {}
    for index, job in enumerate(trace):
        by_pipeline.setdefault(job.pipeline_id, []).append(index)
    for indexes in by_pipeline.values():
        stages = sorted({trace[i].stage for i in indexes})
        ready = trace[indexes[0]].created_s
        for stage in stages:
            members = [i for i in indexes if trace[i].stage == stage]
            for i in members:
                out[i] = ready
            ready += max(trace[i].duration_s for i in members)
    return out


def instance_price(config: Config, pool: Pool) -> float:
    """USD per machine-hour: the pool's first instance type in `prices.instances`, else the default."""
    prices = config.prices
    if pool.instance_types and pool.instance_types[0] in prices.instances:
        return prices.instances[pool.instance_types[0]]
    return prices.default_instance


def host_price(config: Config, pool: Pool) -> float:
    """USD per host-hour: `prices.hosts` by the host's instance type, then family, else its slots' price."""
    cfg = pool.hosts
    if cfg is None:
        return 0.0
    for key in (cfg.instance_type, cfg.host_family):
        if key and key in config.prices.hosts:
            return config.prices.hosts[key]
    return instance_price(config, pool) * cfg.slots_per_host
