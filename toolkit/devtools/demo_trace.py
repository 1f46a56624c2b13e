"""The demo's trace player: creates a job trace's pipelines in the fake GitLab when they are due.

Part of `runner-scaler demo` (toolkit.devtools.demo); imports the trace reader, the fake GitLab, the demo's
recorder and chalicelib's routing rule.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from chalicelib.capacity import pool_for_tags
from chalicelib.config import Config
from sim.traces import TraceError, TraceJob
from toolkit.devtools.demo_report import Recorder
from toolkit.devtools.fake_gitlab import FakeGitLab, FakeJob, JobSpec

#: Stage names for the trace's stage numbers (GitLab runs stages in this order).
STAGE_NAMES = ("build", "test", "package", "deploy")


@dataclass(frozen=True)
class TracePipeline:
    created_s: float
    pipeline_id: int
    jobs: tuple[TraceJob, ...]


class TracePlayer:
    """Creates the trace's pipelines in the fake GitLab when they are due; remembers each job's duration."""

    def __init__(
        self,
        jobs: list[TraceJob],
        config: Config,
        gitlab: FakeGitLab,
        project_id: int,
        recorder: Recorder,
        source: str,
    ) -> None:
        check_routable(jobs, config, source)
        grouped: dict[int, list[TraceJob]] = {}
        for job in jobs:
            grouped.setdefault(job.pipeline_id, []).append(job)
        self._pending = deque(
            sorted(
                (
                    TracePipeline(js[0].created_s, pid, tuple(sorted(js, key=lambda j: (j.stage, j.name))))
                    for pid, js in grouped.items()
                ),
                key=lambda p: (p.created_s, p.pipeline_id),
            )
        )
        self._config = config
        self._gitlab = gitlab
        self._project = project_id
        self._recorder = recorder
        self._durations: dict[tuple[int, str], float] = {}
        self.total_jobs = len(jobs)
        self.last_created_s = max((j.created_s for j in jobs), default=0.0)

    @property
    def done(self) -> bool:
        return not self._pending

    @property
    def pipelines_left(self) -> int:
        """Trace pipelines not created in GitLab yet (a run stopped at --duration may leave some)."""
        return len(self._pending)

    def release(self, elapsed_s: float) -> int:
        """Create every pipeline due by `elapsed_s` (simulated seconds); returns how many were created."""
        released = 0
        while self._pending and self._pending[0].created_s <= elapsed_s:
            self._create(self._pending.popleft())
            released += 1
        return released

    def _create(self, pipeline: TracePipeline) -> None:
        specs = [JobSpec(job.name, _stage_name(job.stage), job.tags) for job in pipeline.jobs]
        ref = self._gitlab.create_pipeline(
            self._project, specs, name=f"trace pipeline {pipeline.pipeline_id}"
        )
        for job, job_id in zip(pipeline.jobs, ref.job_ids, strict=True):
            self._durations[(ref.id, job.name)] = job.duration_s
            pool = pool_for_tags(job.tags, self._config.pools)
            assert pool is not None  # check_routable made sure
            self._recorder.add_jobs([job_id], pool.name)

    def duration_of(self, job: FakeJob) -> float:
        """A job's duration in seconds; a retried job keeps its original's (same pipeline, same name)."""
        return self._durations.get((job.pipeline_id, job.name), 60.0)


def _stage_name(stage: int) -> str:
    return STAGE_NAMES[stage] if stage < len(STAGE_NAMES) else f"stage-{stage}"


def check_routable(jobs: list[TraceJob], config: Config, source: str) -> None:
    """Every job needs a pool, or it would wait forever and the demo would blame the scaler."""
    unroutable = sorted(
        {" ".join(job.tags) or "(untagged)" for job in jobs if not pool_for_tags(job.tags, config.pools)}
    )
    if unroutable:
        pools = ", ".join(f"{p.name} [{' '.join(p.tags)}]" for p in config.pools)
        raise TraceError(
            f"{source}: jobs tagged {'; '.join(unroutable)} match no pool of the config ({pools}); "
            "add a pool whose tags include theirs (run_untagged for untagged jobs); or use another trace"
        )
