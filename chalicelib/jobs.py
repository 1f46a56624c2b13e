"""Use case: turn GitLab job events into job state, route each job to a pool, and mark that pool dirty.

Routing follows gitlab-runner's tag rule. A pending job carries no tags in its webhook (`runner` is null and
the job's own `tag_list` is in no payload), so tags come from the Jobs API, resolved per pipeline in one
call and cached. Imports adapters' Protocols, config and the capacity routing rule; no boto3.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from chalicelib.capacity import pool_for_tags
from chalicelib.config import Config
from chalicelib.errors import GitLabError
from chalicelib.store import JobRecord, Store

logger = logging.getLogger(__name__)

#: Runner descriptions the scaler gives its runners: `runner-scaler/<pool>/<instance-id>`.
RUNNER_DESCRIPTION = re.compile(r"^runner-scaler/(?P<pool>[a-z0-9][a-z0-9-]*)/(?P<instance>i-[0-9a-f]+)$")


#: The only job statuses whose news cannot wait for the next tick: a job that now wants a machine. Any other
#: change (running, finished, canceled) leaves demand as it was or lowers it, and scale-in waits `idle_time`
#: anyway, so the one-minute tick takes it in: a "pool dirty" message (and a reconcile) per job, not per hook.
DEMAND_RISES = frozenset({"pending"})


def runner_description(pool: str, instance_id: str) -> str:
    return f"runner-scaler/{pool}/{instance_id}"


class PipelineJobsSource(Protocol):
    """The one GitLab call routing needs: every job of a pipeline with its `tag_list`."""

    def pipeline_jobs(self, project_id: int, pipeline_id: int) -> Sequence[Any]: ...


class DirtyMarker(Protocol):
    def mark_dirty(self, pool: str, reason: str, now: datetime) -> None: ...


class TagResolver:
    """Job tags from the Jobs API, one `GET /projects/:id/pipelines/:pid/jobs` per pipeline, cached by job id.

    Bounded: entries expire after `ttl` seconds and the cache keeps at most `max_entries` jobs.
    """

    def __init__(
        self,
        source: PipelineJobsSource | None,
        *,
        ttl: float = 3600.0,
        max_entries: int = 50_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._ttl = ttl
        self._max = max_entries
        self._monotonic = monotonic
        self._tags: dict[tuple[int, int], tuple[float, tuple[str, ...]]] = {}
        self._lock = threading.Lock()
        self.calls = 0

    def remember(self, project_id: int, job_id: int, tags: Sequence[str]) -> None:
        with self._lock:
            if len(self._tags) >= self._max:
                oldest = sorted(self._tags.items(), key=lambda kv: kv[1][0])[: self._max // 10 or 1]
                for key, _ in oldest:
                    del self._tags[key]
            self._tags[(project_id, job_id)] = (self._monotonic(), tuple(tags))

    def tags(self, project_id: int, pipeline_id: int, job_id: int) -> tuple[str, ...] | None:
        """The job's tags, or None when GitLab cannot tell us (unreachable, or no such job)."""
        cached = self._cached(project_id, job_id)
        if cached is not None:
            return cached
        if self._source is None or not pipeline_id:
            return None
        self.calls += 1
        for job in self._source.pipeline_jobs(project_id, pipeline_id):
            self.remember(project_id, int(job.id), tuple(getattr(job, "tag_list", ()) or ()))
        return self._cached(project_id, job_id)

    def _cached(self, project_id: int, job_id: int) -> tuple[str, ...] | None:
        with self._lock:
            hit = self._tags.get((project_id, job_id))
        if hit is None or self._monotonic() - hit[0] > self._ttl:
            return None
        return hit[1]


@dataclass(frozen=True)
class JobEvent:
    """The fields of a Job Hook the scaler uses (built from the pydantic model at the edge)."""

    gitlab: str
    job_id: int
    status: str
    project_id: int
    pipeline_id: int | None  # None: a GitLab that sent neither pipeline_id nor commit.id
    name: str = ""
    stage: str = ""
    runner_id: int | None = None
    runner_description: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class Ingested:
    applied: bool
    pool: str
    unroutable: bool = False


def ingest_job(
    event: JobEvent,
    *,
    config: Config,
    store: Store,
    dirty: DirtyMarker,
    tags: TagResolver,
    now: datetime,
) -> Ingested:
    """Record one job event (forward-only); when it made a job pending, mark its pool dirty (DEMAND_RISES)."""
    pool, machine_id, job_tags = _route(event, config, tags)
    record = JobRecord(
        gitlab=event.gitlab,
        job_id=event.job_id,
        status=event.status,
        project_id=event.project_id,
        pipeline_id=event.pipeline_id or 0,
        pool=pool,
        tags=job_tags,
        runner_id=event.runner_id,
        machine_id=machine_id,
        name=event.name,
        stage=event.stage,
        created_at=event.created_at,
        started_at=event.started_at,
        finished_at=event.finished_at,
    )
    applied = store.record_job(record, now)
    if not applied and event.status in {"created", "pending"}:
        applied = store.reopen_skipped(record, now)  # rare: a retry upstream reopened a skipped job
        if not applied and job_tags:
            store.fill_tags(record)  # rare: it was first seen running on our runner, stored without tags
    if applied and pool and event.status in DEMAND_RISES:
        dirty.mark_dirty(pool, f"job {event.job_id} {event.status}", now)
    if not pool:
        logger.warning("job matches no pool", extra={"job_id": event.job_id, "tags": list(job_tags)})
        if not job_tags and event.status in {"created", "pending"}:
            # Maybe GitLab could not tell its tags: the tick's lost-job scan of this project routes it later.
            store.note_projects(event.gitlab, [event.project_id], now)
    return Ingested(applied=applied, pool=pool, unroutable=not pool)


def _route(event: JobEvent, config: Config, tags: TagResolver) -> tuple[str, str, tuple[str, ...]]:
    """(pool, machine id, job tags): our runner's description names both; otherwise the job's tags decide."""
    match = RUNNER_DESCRIPTION.match(event.runner_description)
    if match and any(p.name == match["pool"] for p in config.pools):
        return match["pool"], match["instance"], ()
    try:
        job_tags = tags.tags(event.project_id, event.pipeline_id or 0, event.job_id)
    except GitLabError as exc:
        logger.warning("cannot resolve job tags", extra={"job_id": event.job_id, "error": str(exc)})
        job_tags = None
    if job_tags is None:
        return "", "", ()
    pool = pool_for_tags(job_tags, config.pools)
    return (pool.name if pool else ""), "", job_tags
