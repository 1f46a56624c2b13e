"""Simulated GitLab: stages release jobs, pending jobs go to free runners of matching tags, hooks are sent;
REST answers are truthful at the call, only hooks and the busy flag lag. Imports the model, the loop and
chalicelib.gitlab's JobInfo (what the REST adapter returns).

Pipeline Hooks follow GitLab: one each time the pipeline's status changes (Ci::Pipeline's state machine runs
PipelineHooksWorker after every transition that is not a loopback), the status being the composite of its
jobs' latest statuses (Gitlab::Ci::Status::Composite). A pipeline is `running` from its first job's start
to its end, so a stage starting later sends no hook.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

from chalicelib.capacity.routing import runner_takes
from chalicelib.config import Pool
from chalicelib.gitlab import JobInfo
from sim.events import EventLoop
from sim.model import (
    HookEvent,
    PipelineBuildState,
    PipelineHookEvent,
    ProjectInfo,
    SimJob,
    SimMachine,
    SimOptions,
    busy_lag,
)

Emit = Callable[[HookEvent, float], None]
EmitPipeline = Callable[[PipelineHookEvent, float], None]
JobListener = Callable[[SimJob, SimMachine], None]
#: Hears of jobs that will never run: a job its runner gave up on, and the later stages GitLab skipped.
GivenUpListener = Callable[[Sequence[SimJob]], None]
MachineListener = Callable[[SimMachine], None]

FIRST_JOB_ID = 1000


class SimGitLab:
    """Jobs, pipelines and runners; `emit(event, lag)` sends a Job Hook after `lag` seconds, `emit_pipeline`
    a Pipeline Hook."""

    def __init__(
        self,
        loop: EventLoop,
        options: SimOptions,
        *,
        clock: Callable[[float], datetime],
        emit: Emit,
        assign_rng: random.Random,
        lag_rng: random.Random,
        emit_pipeline: EmitPipeline | None = None,
    ) -> None:
        self._loop = loop
        self._options = options
        self._clock = clock
        self._emit = emit
        self._emit_pipeline = emit_pipeline
        self._assign_rng = assign_rng
        self._lag_rng = lag_rng
        self._ids = itertools.count(FIRST_JOB_ID)
        self.jobs: dict[int, SimJob] = {}
        self.retired: dict[int, SimJob] = {}  # old id of a retried job -> the job
        #: `jobs`' values, project by project, in `jobs`' order (a retried job again under its new id).
        self._by_project: dict[int, list[SimJob]] = {}
        self.pending: dict[int, SimJob] = {}  # insertion order = GitLab's queue order
        self._pending_tags: Counter[tuple[str, ...]] = Counter()  # pending jobs by tag set
        #: The pending jobs of each tag set, in queue order: a runner looks only at the jobs it may take.
        self._pending_by_tags: dict[tuple[str, ...], dict[int, SimJob]] = {}
        self._tag_rule: dict[tuple[tuple[str, ...], bool, tuple[str, ...]], bool] = {}
        self.runners: dict[int, SimMachine] = {}
        self._pipelines: dict[int, list[list[SimJob]]] = {}
        self._stage_left: dict[int, list[int]] = {}
        self._pipeline_status: dict[int, str] = {}
        self.done_listeners: list[JobListener] = []
        self.exit_listeners: list[MachineListener] = []
        self.given_up_listeners: list[GivenUpListener] = []

    # -- the world's side -------------------------------------------------------------------------------

    def add_pipeline(self, jobs: Sequence[SimJob]) -> None:
        """All jobs of a pipeline are created now; the first stage becomes pending at once."""
        stages = sorted({j.trace.stage for j in jobs})
        groups = [[j for j in jobs if j.trace.stage == stage] for stage in stages]
        pipeline_id = jobs[0].trace.pipeline_id
        self._pipelines[pipeline_id] = groups
        self._stage_left[pipeline_id] = [len(g) for g in groups]
        self._pipeline_status[pipeline_id] = "created"
        for job in jobs:
            job.job_id = next(self._ids)
            self._add(job)
        for job in groups[0]:
            self.make_pending(job)

    def make_pending(self, job: SimJob) -> None:
        job.status = "pending"
        job.pending_at = self._loop.now
        self._enqueue(job)
        self._hook(job, "pending", 0.0)
        self._pipeline_changed(job.trace.pipeline_id)
        candidates = [m for m in self.runners.values() if m.accepting and self._takes(m.pool, job.tags)]
        if candidates:
            self._start(job, self._assign_rng.choice(candidates))

    def register(self, machine: SimMachine) -> None:
        """A booted machine's runner starts asking GitLab for jobs."""
        self.runners[machine.runner_id] = machine
        self.runner_available(machine)

    def unregister(self, machine: SimMachine) -> list[SimJob]:
        """The machine is gone: its runner disappears and the jobs it ran fail and are retried."""
        self.runners.pop(machine.runner_id, None)
        killed = list(machine.running)
        for job in killed:
            machine.finish(job, self._loop.now)
            self._hook(job, "failed", 0.0)
            self.retired[job.job_id] = job
            job.job_id = next(self._ids)
            job.machine = None
            self._add(job)
            self.make_pending(job)
        return killed

    def fail_pending(self, job: SimJob) -> None:
        """The runner that took `job` gave up preparing it (taskscaler's acquire timeout on each of its
        preparation attempts): gitlab-runner reports it failed, a runner system failure
        (`Build.retryCreateExecutor` in gitlab-runner `common/build.go` returns the last Prepare error after
        `PreparationRetries`, and `Build.Run` fails the job with it). GitLab retries it only where the job
        says `retry` (off by default), so it never runs, and the later stages of its pipeline are skipped
        (a failed job without `allow_failure` stops the pipeline). Its wait is no start's wait: it is
        counted in `failed_jobs`, never in the wait figures."""
        if job.job_id not in self.pending:
            return
        self._dequeue(job)
        job.status = "failed"
        job.finished_at = self._loop.now
        self._hook(job, "failed", 0.0)
        groups = self._pipelines[job.trace.pipeline_id]
        index = next(i for i, g in enumerate(groups) if job in g)
        skipped = [j for g in groups[index + 1 :] for j in g if j.status == "created"]
        for later in skipped:
            later.status = "skipped"
        self._pipeline_changed(job.trace.pipeline_id)
        for listener in self.given_up_listeners:
            listener([job, *skipped])

    def runner_available(self, machine: SimMachine) -> None:
        """A runner that can take work picks the oldest pending jobs it matches (it is offered only those:
        a job of other tags is no job for it)."""
        pool = machine.pool
        if not machine.accepting:
            return
        # It stops accepting once its free slots are taken: the oldest that many are all it may start.
        matching = self._matching(lambda tags: runner_takes(tags, pool.tags, pool.run_untagged))
        for job in list(itertools.islice(matching, pool.capacity_per_instance - len(machine.running))):
            if not machine.accepting:
                return
            self._start(job, machine)

    def set_paused(self, runner_id: int, paused: bool) -> None:
        machine = self.runners.get(runner_id)
        if machine is None:
            return
        machine.paused = paused
        if not paused:
            self.runner_available(machine)

    def pending_jobs(self) -> list[SimJob]:
        return list(self.pending.values())

    def pending_for(self, takes: Callable[[tuple[str, ...]], bool]) -> list[SimJob]:
        """Pending jobs whose tags `takes` accepts, in queue order."""
        return list(self._matching(takes))

    def pending_count(self, takes: Callable[[tuple[str, ...]], bool]) -> int:
        """Pending jobs whose tags `takes` accepts: counted by tag set, so a queue of thousands costs as
        much as its few distinct tag sets (a runner manager polls it every few seconds)."""
        return sum(count for tags, count in self._pending_tags.items() if count and takes(tags))

    def busy_visible(self, machine: SimMachine) -> bool:
        """The runner's busy flag as GitLab's API shows it: a job counts once the busy lag has passed."""
        return any(self._loop.now >= job.busy_visible_at for job in machine.running)

    # -- GitLab's REST answers (the calling adapter counts the call) ------------------------------------

    def job_info(self, job_id: int) -> JobInfo | None:
        job = self.jobs.get(job_id)
        if job is not None:
            return self._info(job, job.status)
        old = self.retired.get(job_id)
        return None if old is None else self._info(old, "failed", job_id=job_id)

    def runner_jobs(self, runner_id: int) -> list[JobInfo]:
        machine = self.runners.get(runner_id)
        return [] if machine is None else [self._info(j, j.status) for j in machine.running]

    def project_jobs(self, project_id: int, scope: Sequence[str]) -> list[JobInfo]:
        wanted = set(scope)
        return [self._info(j, j.status) for j in self._by_project.get(project_id, []) if j.status in wanted]

    def pipeline_jobs(self, pipeline_id: int) -> list[JobInfo]:
        groups = self._pipelines.get(pipeline_id, [])
        return [self._info(j, j.status) for group in groups for j in group]

    def projects(self) -> list[ProjectInfo]:
        return [ProjectInfo(p) for p in range(1, self._options.projects + 1)]

    # -- internals --------------------------------------------------------------------------------------

    def _takes(self, pool: Pool, tags: tuple[str, ...]) -> bool:
        """gitlab-runner's tag rule for a runner of `pool` (`runner_takes`), remembered per pool and tag set:
        every job made pending asks it of every runner."""
        key = (pool.tags, pool.run_untagged, tags)
        takes = self._tag_rule.get(key)
        if takes is None:
            takes = self._tag_rule[key] = runner_takes(tags, pool.tags, pool.run_untagged)
        return takes

    def _add(self, job: SimJob) -> None:
        """A job under its (new) id: in `jobs`, and in its project's list (every id is new, never reused)."""
        self.jobs[job.job_id] = job
        self._by_project.setdefault(job.project_id, []).append(job)

    def _matching(self, takes: Callable[[tuple[str, ...]], bool]) -> Iterator[SimJob]:
        """The pending jobs whose tags `takes` accepts, in queue order, as the queue holds them now (read it
        before the queue changes): the whole queue when every tag set waiting is wanted, one tag set's own
        queue when only it is."""
        queued = [tags for tags, jobs in self._pending_by_tags.items() if jobs]
        wanted = [tags for tags in queued if takes(tags)]
        if len(wanted) == len(queued):
            return iter(self.pending.values())
        if len(wanted) == 1:
            return iter(self._pending_by_tags[wanted[0]].values())
        chosen = set(wanted)
        return (job for job in self.pending.values() if job.tags in chosen)

    def _enqueue(self, job: SimJob) -> None:
        self.pending[job.job_id] = job
        self._pending_tags[job.tags] += 1
        self._pending_by_tags.setdefault(job.tags, {})[job.job_id] = job

    def _dequeue(self, job: SimJob) -> None:
        del self.pending[job.job_id]
        self._pending_tags[job.tags] -= 1
        del self._pending_by_tags[job.tags][job.job_id]

    def _start(self, job: SimJob, machine: SimMachine) -> None:
        now = self._loop.now
        self._dequeue(job)
        job.status = "running"
        job.started_at = now
        job.wait_s += now - (job.pending_at if job.pending_at is not None else now)
        job.machine = machine
        job.attempts += 1
        machine.start(job, now)
        lag = busy_lag(self._options, self._lag_rng)
        job.busy_visible_at = now + lag
        self._hook(job, "running", lag)
        self._pipeline_changed(job.trace.pipeline_id)
        attempt = job.attempts
        self._loop.after(job.trace.duration_s, lambda: self._finish(job, machine, attempt))

    def _finish(self, job: SimJob, machine: SimMachine, attempt: int) -> None:
        if job.machine is not machine or job.attempts != attempt or job.status != "running":
            return  # this run was killed with its machine; the retry has its own finish
        now = self._loop.now
        job.status = "success"
        job.finished_at = now
        machine.finish(job, now)
        self._hook(job, "success", 0.0)
        self._advance(job)
        self._pipeline_changed(job.trace.pipeline_id)
        for listener in self.done_listeners:
            listener(job, machine)
        if machine.exited:
            self.runners.pop(machine.runner_id, None)
            for exit_listener in self.exit_listeners:
                exit_listener(machine)
        elif machine.alive:
            self.runner_available(machine)

    def _advance(self, job: SimJob) -> None:
        """When the last job of a stage finishes, every job of the next stage becomes pending."""
        pipeline_id = job.trace.pipeline_id
        groups = self._pipelines[pipeline_id]
        left = self._stage_left[pipeline_id]
        index = next(i for i, g in enumerate(groups) if job in g)
        left[index] -= 1
        if left[index] == 0 and index + 1 < len(groups):
            for nxt in groups[index + 1]:
                self.make_pending(nxt)

    def _hook(self, job: SimJob, status: str, lag: float) -> None:
        machine = job.machine if status in {"running", "success", "failed"} else None
        event = HookEvent(
            job_id=job.job_id,
            status=status,
            project_id=job.project_id,
            pipeline_id=job.trace.pipeline_id,
            name=job.trace.name,
            stage=job.trace.stage,
            runner_id=machine.runner_id if machine else None,
            runner_description=description(machine) if machine else "",
            created_s=job.trace.created_s,
            started_s=job.started_at if machine else None,
            finished_s=self._loop.now if status in {"success", "failed"} else None,
        )
        self._emit(event, lag)

    def _pipeline_changed(self, pipeline_id: int) -> None:
        """Send a Pipeline Hook when the pipeline's composite status changed (on every call with the
        `every_job` what-if); nothing to send without a receiver."""
        if self._emit_pipeline is None:
            return
        jobs = [j for group in self._pipelines[pipeline_id] for j in group]
        status = composite_status([j.status for j in jobs])
        changed = status != self._pipeline_status[pipeline_id]
        self._pipeline_status[pipeline_id] = status
        if not changed and self._options.pipeline_hooks != "every_job":
            return
        builds = tuple(
            PipelineBuildState(
                job_id=j.job_id,
                stage=j.trace.stage,
                name=j.trace.name,
                status=j.status,
                tags=j.tags,
                created_s=j.trace.created_s,
                started_s=j.started_at if j.status in {"running", "success"} else None,
                finished_s=j.finished_at if j.status == "success" else None,
                runner_id=j.machine.runner_id if j.machine and j.status == "running" else None,
            )
            for j in jobs
        )
        event = PipelineHookEvent(
            pipeline_id, jobs[0].project_id, status, jobs[0].trace.created_s, self._loop.now, builds
        )
        self._emit_pipeline(event, 0.0)

    def _info(self, job: SimJob, status: str, *, job_id: int | None = None) -> JobInfo:
        return JobInfo(
            id=job_id if job_id is not None else job.job_id,
            status=status,
            project_id=job.project_id,
            pipeline_id=job.trace.pipeline_id,
            name=job.trace.name,
            stage=str(job.trace.stage),
            tag_list=job.tags,
            created_at=self._clock(job.trace.created_s),
            started_at=self._clock(job.started_at) if job.started_at is not None else None,
            finished_at=self._clock(job.finished_at) if job.finished_at is not None else None,
            runner_id=job.machine.runner_id if job.machine else None,
        )


def composite_status(statuses: Sequence[str]) -> str:
    """A pipeline's status from its jobs' latest statuses: Gitlab::Ci::Status::Composite for the statuses the
    simulator has (a killed job is retried at once, so a pipeline ends failed only when a runner gave up on
    one of its jobs: `fail_pending`, its later stages skipped)."""
    present = set(statuses)
    if present <= {"success"}:
        return "success"
    if present <= {"created"}:
        return "created"
    if present <= {"pending", "created"}:
        return "pending"
    if present & {"running", "pending", "created"}:
        return "running"
    return "failed"


def description(machine: SimMachine) -> str:
    """The runner description runner-scaler gives its runners (`chalicelib.jobs.runner_description`)."""
    return f"runner-scaler/{machine.pool.name}/{machine.instance_id}"
