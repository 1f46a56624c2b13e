"""Value types of the simulated world: run options, boot-time distributions, jobs, machines, hook events.

Plain dataclasses over simulated seconds (floats since the trace's start). Imports config and the trace type.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import PrivateAttr

from chalicelib.capacity import runner_takes
from chalicelib.config import Config, Platform, Policy, Pool
from sim.traces import TraceJob

#: Time 0 of every trace: a Monday midnight in Paris, the time zone of the example config's policies.
START = datetime(2026, 11, 23, 0, 0, tzinfo=ZoneInfo("Europe/Paris"))


@dataclass(frozen=True)
class SimOptions:
    """The world's knobs (seconds). Defaults are published figures (cited where set) or measured ones.

    `busy_lag_*`: how long after GitLab hands a job to a runner the scaler hears of it (the `running`
    webhook and the runner's busy flag): exponential with this mean, capped. `drain_recheck` is a test-only
    switch: False makes the reconciler skip its re-check before terminating, to prove the invariant test
    can fail. `boot_s` fixes every boot time (hand-checked tests, what-if runs) instead of drawing it.
    `lifecycle_loss` is the share of launch lifecycle events that never reach the app. `pipeline_hooks`:
    "transitions" sends a Pipeline Hook when the pipeline's status changes, as GitLab does; "every_job" is a
    what-if that sends one on every job status change (fresher pipeline state than GitLab gives).
    `stale_index_s` makes the store's per-pool reads (the DynamoDB index in production, eventually
    consistent) answer with the state as it was at least that many seconds ago (sim.ours.StaleIndexStore).
    `warm_start_scale` stretches every start from the warm pool (sim.warm.WARM_START_S): no AWS page we
    could read gives a figure for it, so the bench shows how the results move with it.
    """

    webhook_delay_s: float = 1.0
    webhook_loss: float = 0.01
    webhook_duplication: float = 0.01
    busy_lag_mean_s: float = 10.0
    busy_lag_max_s: float = 60.0
    sqs_latency_s: float = 0.3
    tick_s: float = 60.0
    projects: int = 8
    host_allocation_s: float = 120.0
    tail_s: float = 3600.0
    max_overrun_s: float = 12 * 3600.0
    start: datetime = START
    boot_s: float | None = None
    lifecycle_loss: float = 0.0
    drain_recheck: bool = True
    pipeline_hooks: str = "transitions"
    stale_index_s: float = 0.0
    warm_start_scale: float = 1.0
    #: Seconds a Mac's root-volume replacement takes before its new volume starts booting (CreateReplace-
    #: RootVolumeTask: a volume restored from the AMI's snapshot, the old one detached, the new one attached,
    #: then a reboot). AWS publishes no figure for Mac: an estimate. docs/windows-macos.md ("Host reuse")
    #: gives the macOS wait with 2, 5 and 15 minutes. The boot that follows is drawn as a launch's.
    mac_replace_s: float = 300.0


#: Boot to runner-ready, seconds, as (low, high, mode) of a triangular law: Linux about 1 min, Windows 5 to
#: 15 min (about 8), macOS 6-20 min (github-aws-runners' terraform-aws-github-runner docs, "macOS Runners"),
#: with a slow tail up to 40 min as operators report. Linux and Windows are estimates: AWS states no boot
#: time, except that a Windows launch's own steps (Sysprep, OOBE, reboots) "often take 15 minutes or longer"
#: without Fast Launch (EC2 Windows Guide, "Configure faster launching for Windows AMIs", 2023 edition): the
#: law's top. A pool with Fast Launch on (infra opt-in) boots faster than this.
BOOT_TIMES = {
    Platform.LINUX: (40.0, 120.0, 60.0),
    Platform.WINDOWS: (300.0, 900.0, 480.0),
    Platform.MACOS: (360.0, 1200.0, 600.0),
}
MAC_SLOW_SHARE = 0.1
MAC_SLOW = (1200.0, 2400.0)


def boot_time(platform: Platform, rng: random.Random) -> float:
    """One boot duration (s) for a machine of `platform`."""
    if platform is Platform.MACOS and rng.random() < MAC_SLOW_SHARE:
        return rng.uniform(*MAC_SLOW)
    low, high, mode = BOOT_TIMES[platform]
    return rng.triangular(low, high, mode)


def busy_lag(options: SimOptions, rng: random.Random) -> float:
    """Seconds between GitLab assigning a job and the scaler's view of it (webhook, busy flag)."""
    if options.busy_lag_mean_s <= 0:
        return 0.0
    return min(options.busy_lag_max_s, rng.expovariate(1.0 / options.busy_lag_mean_s))


@dataclass(eq=False)
class SimJob:
    """One trace job as GitLab holds it. A retried job keeps this object and gets a new GitLab id.

    `wait_s` adds up every pending -> running wait of the job (a retry after a kill waits again).
    """

    index: int
    trace: TraceJob
    project_id: int
    job_id: int
    status: str = "created"
    pending_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    machine: SimMachine | None = None
    wait_s: float = 0.0
    attempts: int = 0
    busy_visible_at: float = 0.0

    @property
    def tags(self) -> tuple[str, ...]:
        return self.trace.tags


@dataclass(eq=False)
class SimMachine:
    """One instance and its runner: boots, takes jobs from GitLab, leaves after `max_use_count` jobs."""

    instance_id: str
    pool: Pool
    runner_id: int
    launched_at: float
    boot_s: float
    host_id: str | None = None
    ready_at: float | None = None
    terminated_at: float | None = None
    jobs_started: int = 0
    running: list[SimJob] = field(default_factory=list)
    paused: bool = False
    protected: bool = True
    last_busy_at: float | None = None
    busy_since: float | None = None
    busy_s: float = 0.0
    #: It left the group's warm pool (started from stopped) rather than launching cold.
    from_warm: bool = False
    #: Root-volume replacements so far (host reuse): each one a new life of the same instance.
    reused: int = 0

    @property
    def alive(self) -> bool:
        return self.terminated_at is None

    @property
    def ready(self) -> bool:
        return self.ready_at is not None and self.alive

    @property
    def used_up(self) -> bool:
        """The runner has started `max_use_count` jobs: `run-single --max-builds` takes no more."""
        return self.pool.max_use_count > 0 and self.jobs_started >= self.pool.max_use_count

    @property
    def exited(self) -> bool:
        """Used up and done: the runner process has exited, the instance waits to be terminated."""
        return self.used_up and not self.running

    @property
    def accepting(self) -> bool:
        """GitLab may hand this runner a job now: ready (booted, alive), not paused, not used up, a slot free.
        (Spelled out rather than through the properties: every pending job asks it of every runner.)"""
        pool = self.pool
        return (
            self.ready_at is not None
            and self.terminated_at is None
            and not self.paused
            and not (pool.max_use_count > 0 and self.jobs_started >= pool.max_use_count)
            and len(self.running) < pool.capacity_per_instance
        )

    @property
    def idle(self) -> bool:
        """Ready, runs nothing and can still take a job."""
        return self.ready and not self.running and not self.used_up

    def takes(self, job: SimJob) -> bool:
        return self.accepting and runner_takes(job.tags, self.pool.tags, self.pool.run_untagged)

    def start(self, job: SimJob, now: float) -> None:
        if not self.running:
            self.busy_since = now
        self.running.append(job)
        self.jobs_started += 1

    def finish(self, job: SimJob, now: float) -> None:
        self.running.remove(job)
        self.last_busy_at = now
        if not self.running and self.busy_since is not None:
            self.busy_s += now - self.busy_since
            self.busy_since = None

    def reuse(self, now: float) -> None:
        """Its root volume was replaced (a reused Mac): a new runner, no job started, not ready until it boots
        again. Same instance, same host."""
        self.jobs_started = 0
        self.ready_at = None
        self.paused = False
        self.reused += 1

    def close_busy(self, now: float) -> None:
        """Count the busy time still open (at termination or at the end of the run)."""
        if self.busy_since is not None:
            self.busy_s += now - self.busy_since
            self.busy_since = None


@dataclass(frozen=True)
class HookEvent:
    """A GitLab Job Hook as the scaler receives it (times in simulated seconds)."""

    job_id: int
    status: str
    project_id: int
    pipeline_id: int
    name: str
    stage: int
    runner_id: int | None = None
    runner_description: str = ""
    created_s: float | None = None
    started_s: float | None = None
    finished_s: float | None = None


@dataclass(frozen=True)
class PipelineBuildState:
    """One job of a pipeline as a Pipeline Hook lists it (latest try; times in simulated seconds)."""

    job_id: int
    stage: int
    name: str
    status: str
    tags: tuple[str, ...]
    created_s: float
    started_s: float | None = None
    finished_s: float | None = None
    runner_id: int | None = None


@dataclass(frozen=True)
class PipelineHookEvent:
    """A GitLab Pipeline Hook as the scaler receives it: the pipeline's status and every job's, at `at_s`."""

    pipeline_id: int
    project_id: int
    status: str
    created_s: float
    at_s: float
    builds: tuple[PipelineBuildState, ...]


@dataclass(frozen=True)
class ProjectInfo:
    id: int


class CachedPool(Pool):
    """A `Pool` whose active policy is remembered per minute: periods are cron expressions matched on whole
    minutes (`Policy.matches` drops the seconds), so the answer cannot change within one. Same decisions as
    `Pool`, without re-parsing cron on each of the simulator's thousands of reconciles.

    When every period's minute field is `*` (each matches whole hours), the answer is remembered per local
    hour of each policy's time zone instead: `Policy.matches` reads the time in the policy's zone, and with
    any minute allowed only the hour, day, month and weekday decide. A day then asks cron once an hour, not
    once a minute."""

    _policy_cache: dict[Hashable, Policy] = PrivateAttr(default_factory=dict)
    _hour_zones: tuple[ZoneInfo, ...] | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        hourly = all(period.split()[0] == "*" for policy in self.policy for period in policy.periods)
        if hourly:
            self._hour_zones = tuple(dict.fromkeys(policy.zone for policy in self.policy))

    def active_policy(self, now: datetime) -> Policy:
        key = self._cache_key(now)
        cached = self._policy_cache.get(key)
        if cached is None:
            cached = super().active_policy(now)
            if len(self._policy_cache) > 10_000:
                self._policy_cache.clear()
            self._policy_cache[key] = cached
        return cached

    def _cache_key(self, now: datetime) -> Hashable:
        if self._hour_zones is None:
            return int(now.timestamp()) // 60
        hours = []
        for zone in self._hour_zones:
            local = now.astimezone(zone)
            hours.append((local.year, local.month, local.day, local.hour))
        return tuple(hours)


def with_policy_cache(config: Config) -> Config:
    """The same config, its pools answering `active_policy` from a per-minute cache."""
    pools = tuple(CachedPool.model_validate(p.model_dump()) for p in config.pools)
    return config.model_copy(update={"pools": pools})


def at(options: SimOptions, seconds: float) -> datetime:
    """The UTC time of simulated second `seconds` (absolute time: a DST change does not shift it)."""
    return options.start.astimezone(UTC) + timedelta(seconds=seconds)
