"""Experiment, not shipped: pipeline-aware prewarm measured through the real reconciler (next-stage jobs shown
as pending a boot time early, until `Demand.prewarm` carries them). Imports ours and the simulator.
"""

from __future__ import annotations

import functools
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from chalicelib.capacity import pool_for_tags
from chalicelib.config import Config, Platform
from chalicelib.store import JobRecord, Store, rank
from sim.model import HookEvent, JobInfo
from sim.ours import Ours

#: Seconds ahead of a stage's predicted end at which its successors are warmed: about the 90th percentile
#: of the platform's boot time (sim.model.BOOT_TIMES) plus a few seconds of plumbing.
LEAD_S = {Platform.LINUX: 120.0, Platform.WINDOWS: 420.0, Platform.MACOS: 1200.0}
#: Which quantile of a job name's past durations predicts a running job's end: lower warms earlier (less
#: waiting, more idle machines). A quarter: durations are long-tailed, a median warms too late.
QUANTILE = 0.25
#: Before any job of a name has finished, a job is expected to run this long (seconds).
DEFAULT_DURATION_S = 300.0
#: A reconcile scheduled for the very instant a window opens must see it open despite rounding.
_EPSILON_S = 1e-3
_STEM = re.compile(r"\s+\d+/\d+$")


def _seen(status: str | None) -> bool:
    return status in {"pending", "running", "success", "failed", "canceled"}


@dataclass
class _Pipeline:
    stages: list[list[JobInfo]]
    status: dict[int, str] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)


class StageForecast:
    """Which pool's machines the next stages of running pipelines will want within a boot time.

    Learns job durations per job name (`test 3/8` counts as `test`) from success hooks; a stage whose jobs
    all run is predicted to end when its slowest job is expected to end; its successors are then counted
    `LEAD_S` ahead. A stage with a job still pending is not forecast (its end is unknown).
    """

    def __init__(
        self,
        config: Config,
        fetch: Callable[[int, int], list[JobInfo]],
        *,
        quantile: float = QUANTILE,
        lead_s: Mapping[Platform, float] = LEAD_S,
    ) -> None:
        self._config = config
        self._quantile = quantile
        self._lead_s = lead_s
        self._fetch = fetch
        self._pipelines: dict[int, _Pipeline] = {}
        self._done: set[int] = set()
        self._by_name: dict[str, deque[float]] = {}
        self._all: deque[float] = deque(maxlen=500)

    def observe(self, event: HookEvent) -> None:
        if event.pipeline_id in self._done:
            return
        pipeline = self._pipelines.get(event.pipeline_id)
        if pipeline is None:
            pipeline = self._load(event)
        if rank(event.status) > rank(pipeline.status.get(event.job_id, "created")):
            pipeline.status[event.job_id] = (
                event.status
            )  # forward only: a late `running` hook changes nothing
        if event.status == "running" and event.started_s is not None:
            pipeline.started[event.job_id] = event.started_s
        if event.status == "success" and event.started_s is not None and event.finished_s is not None:
            self._learn(event.name, event.finished_s - event.started_s)
        if all(pipeline.status.get(j.id) == "success" for stage in pipeline.stages for j in stage):
            self._done.add(event.pipeline_id)
            del self._pipelines[event.pipeline_id]

    def prewarm(self, pool: str, now: float) -> int:
        """Next-stage jobs of `pool` expected to become pending within the pool's lead time."""
        count = 0
        for pipeline in self._pipelines.values():
            count += self._due(pipeline, pool, now)
        return count

    def _load(self, event: HookEvent) -> _Pipeline:
        jobs = self._fetch(event.project_id, event.pipeline_id)
        stages = sorted({int(j.stage) for j in jobs})
        pipeline = _Pipeline([[j for j in jobs if int(j.stage) == s] for s in stages])
        for job in jobs:
            pipeline.status[job.id] = job.status
        self._pipelines[event.pipeline_id] = pipeline
        return pipeline

    def due_at(self, pipeline_id: int) -> list[tuple[float, str]]:
        """When (and for which pools) the pipeline's next stage should be warmed: its predicted end less
        the lead. The caller asks for a reconcile then (an SQS message with DelaySeconds, up to 15 min)."""
        pipeline = self._pipelines.get(pipeline_id)
        current = None if pipeline is None else self._running_stage(pipeline)
        if pipeline is None or current is None:
            return []
        end = self._predicted_end(pipeline, current)
        pools = {
            p.name
            for j in pipeline.stages[current + 1]
            if (p := pool_for_tags(j.tag_list, self._config.pools))
        }
        return [(end - self._lead_s[self._config.pool(name).platform], name) for name in sorted(pools)]

    def _due(self, pipeline: _Pipeline, pool: str, now: float) -> int:
        """The next stage's jobs of `pool`, when the current stage all runs and should end within the lead.

        A stage past its predicted end by more than the lead is no longer forecast: a lost hook or a slow job
        must not hold machines idle for long.
        """
        current = self._running_stage(pipeline)
        if current is None:
            return 0
        lead = self._lead_s[self._config.pool(pool).platform]
        if not -lead <= self._predicted_end(pipeline, current) - now <= lead + _EPSILON_S:
            return 0
        tags = [j.tag_list for j in pipeline.stages[current + 1]]
        return sum(1 for t in tags if (p := pool_for_tags(t, self._config.pools)) and p.name == pool)

    def _running_stage(self, pipeline: _Pipeline) -> int | None:
        """The latest stage with a job seen past `created`, if its jobs all run or ran and a stage follows."""
        seen = [
            i for i, st in enumerate(pipeline.stages) if any(_seen(pipeline.status.get(j.id)) for j in st)
        ]
        if not seen or seen[-1] + 1 >= len(pipeline.stages):
            return None
        states = [pipeline.status.get(j.id, "created") for j in pipeline.stages[seen[-1]]]
        if any(s not in {"running", "success"} for s in states) or "running" not in states:
            return None
        return seen[-1]

    def _predicted_end(self, pipeline: _Pipeline, stage: int) -> float:
        jobs = [j for j in pipeline.stages[stage] if pipeline.status.get(j.id) == "running"]
        return max(pipeline.started.get(j.id, 0.0) + self._expected(j.name) for j in jobs)

    def _expected(self, name: str) -> float:
        """The `quantile` of past durations of jobs of this name (of all jobs, before one has finished)."""
        history = self._by_name.get(_STEM.sub("", name)) or self._all
        if not history:
            return DEFAULT_DURATION_S
        ordered = sorted(history)
        return ordered[min(len(ordered) - 1, int(self._quantile * len(ordered)))]

    def _learn(self, name: str, seconds: float) -> None:
        self._by_name.setdefault(_STEM.sub("", name), deque(maxlen=50)).append(seconds)
        self._all.append(seconds)


class ForecastStore:
    """The job store as the reconciler sees it, plus one pending record per forecast job (negative ids)."""

    def __init__(
        self,
        inner: Store,
        forecast: StageForecast,
        host: str,
        clock: Callable[[], float],
        to_dt: Callable[[float], datetime],
    ) -> None:
        self._inner = inner
        self._forecast = forecast
        self._host = host
        self._clock = clock
        self._to_dt = to_dt

    def pool_jobs(self, pool: str) -> list[JobRecord]:
        now = self._clock()
        stamp = self._to_dt(now)
        extra = [
            JobRecord(self._host, -(n + 1), "pending", pool=pool, created_at=stamp, updated_at=stamp)
            for n in range(self._forecast.prewarm(pool, now))
        ]
        return [*self._inner.pool_jobs(pool), *extra]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class OursPrewarm(Ours):
    """Ours, with the stage forecast feeding the reconciler (the tuning proposal under test)."""

    name = "ours-prewarm"
    quantile = QUANTILE
    lead_s: Mapping[Platform, float] = LEAD_S

    def _planning_store(self) -> Store:
        self._forecast = StageForecast(
            self._world.config, self._api.pipeline_jobs, quantile=self.quantile, lead_s=self.lead_s
        )
        store = ForecastStore(
            self._store, self._forecast, self._host, lambda: self._world.loop.now, self._world.dt
        )
        return cast(Store, store)

    def _record(self, event: HookEvent, now: datetime) -> None:
        super()._record(event, now)
        self._forecast.observe(event)
        loop = self._world.loop
        for when, pool in self._forecast.due_at(event.pipeline_id):
            if when > loop.now:
                self.calls["sqs"] += 1  # a dirty message with DelaySeconds = when - now
                loop.at(when, functools.partial(self._reconcile_pool, pool))
