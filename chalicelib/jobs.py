"""Use case: turn GitLab job events into job state, route each job to a pool, and mark that pool dirty.

Routing follows gitlab-runner's tag rule. A pending job carries no tags in its webhook: the Job hook has the
job's `runner` (null until a runner takes it) but never the job's own tag list (gitlabhq
`lib/gitlab/data_builder/build.rb`), so tags come from the Jobs API (`GET /projects/:id/pipelines/:pid/jobs`,
each job with its `tag_list`). That call is never made inside the webhook: GitLab waits 10 s for a hook's
answer (GitLab docs "GitLab.com settings", other limits: webhook timeout; `webhook_timeout` on self-managed)
and a failed delivery counts toward disabling the hook (docs "Webhooks", failing webhooks: four consecutive
failures). The webhook records a job whose tags are not cached yet as *unrouted* (no pool, on the unrouted
index) and asks for its resolution; `resolve_unrouted` (the pool_dirty consumer on that ask, and the tick)
makes one call per pipeline, caches the pipeline's tags in the store (`cached_pipeline_tags`, with a TTL),
routes the jobs and marks their pools dirty.

A job already on a runner is attributed by the runner's id (the Job hook's `runner.id`), which the store maps
to our machine at launch; the runner's description is editable by anyone who may edit the runner in GitLab
(`PUT /runners/:id`), so it is never trusted alone. Imports adapters' Protocols, config and the capacity
routing rule; no boto3.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from chalicelib.capacity import pool_for_tags
from chalicelib.config import Config, Pool
from chalicelib.errors import AwsCallError, GitLabError, GitLabNotFoundError
from chalicelib.forecast import PipelineState
from chalicelib.store import TERMINAL, JobRecord, Store, rank

logger = logging.getLogger(__name__)

#: Runner descriptions the scaler gives its runners: `runner-scaler/<pool>/<instance-id>`.
RUNNER_DESCRIPTION = re.compile(r"^runner-scaler/(?P<pool>[a-z0-9][a-z0-9-]*)/(?P<instance>i-[0-9a-f]+)$")

#: How long a pipeline's job tags are cached in the store. A job's tags never change (a retry is a new job
#: with its own id, which misses the cache and is fetched again), so this only bounds the item's life.
PIPELINE_TAGS_TTL = timedelta(days=1)

#: Pipelines one tick resolves from GitLab (one `GET /projects/:id/pipelines/:pid/jobs` each, 100 jobs a
#: page); the rest wait for the next tick or their own resolve message. GitLab.com's per-user API limit is
#: 2,000 authenticated requests a minute (docs "GitLab.com settings").
MAX_TICK_PIPELINES = 50


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


class ResolveAsker(Protocol):
    """The webhook's way to have a pipeline's tags resolved out of its request (a queue message)."""

    def ask_resolve(self, project_id: int, pipeline_id: int, job_id: int, now: datetime) -> None: ...


# -- the per-pipeline tag cache (an item in the store, with a TTL) -----------------------------------------


def pipeline_tags_key(gitlab: str, project_id: int, pipeline_id: int) -> str:
    return f"pipeline-tags#{gitlab}#{int(project_id)}#{int(pipeline_id)}"


def cached_pipeline_tags(
    store: Store, gitlab: str, project_id: int, pipeline_id: int, now: datetime
) -> dict[int, tuple[str, ...]] | None:
    """job id -> tags of one pipeline as last fetched, or None when not cached (one store read)."""
    if not pipeline_id:
        return None
    facts = store.get_facts(pipeline_tags_key(gitlab, project_id, pipeline_id), now)
    if facts is None:
        return None
    tags: dict[int, tuple[str, ...]] = {}
    for job_tags, job_ids in json.loads(str(facts.get("jobs", "[]"))):
        for job_id in job_ids:
            tags[int(job_id)] = tuple(job_tags)
    return tags


def cache_pipeline_tags(
    store: Store,
    gitlab: str,
    project_id: int,
    pipeline_id: int,
    tags: Mapping[int, Sequence[str]],
    now: datetime,
) -> None:
    """Store a pipeline's job tags, grouped by tag set (a few per pipeline) so that the item stays small."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for job_id, job_tags in sorted(tags.items()):
        groups.setdefault(tuple(sorted(job_tags)), []).append(int(job_id))
    encoded = json.dumps([[list(t), ids] for t, ids in groups.items()], separators=(",", ":"))
    store.put_facts(
        pipeline_tags_key(gitlab, project_id, pipeline_id), {"jobs": encoded}, now + PIPELINE_TAGS_TTL
    )


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
    #: Its tags are known and no pool takes them.
    unroutable: bool = False
    #: Its tags are not known yet: stored unrouted, resolved out of the request (`resolve_unrouted`).
    deferred: bool = False
    #: Nothing was written: this delivery was applied before, or the job is stored with this very status.
    duplicate: bool = False


def ingest_job(
    event: JobEvent,
    *,
    config: Config,
    store: Store,
    dirty: DirtyMarker,
    resolve: ResolveAsker | None,
    now: datetime,
    event_key: str = "",
) -> Ingested:
    """Record one job event (forward-only); when it made a job pending, mark its pool dirty (DEMAND_RISES).

    Never calls GitLab. A `created` job is recorded as it is (it is no demand yet: no lookup at all); a job on
    one of our runners goes to that runner's machine and pool; a pending job whose pipeline's tags are cached
    goes to its pool; any other pending job is stored unrouted and its resolution asked for (`resolve`).

    The job's one write is the de-duplication: `event_key` (the webhook's `event_identity`) is marked on the
    job item, so the same delivery again changes nothing and marks nothing dirty (`Ingested.duplicate`), even
    where its status alone could not tell: a resent hook from before a skip never reopens the skipped job.
    """
    if event.runner_id is not None and event.status in TERMINAL:
        ended = _end_on_known_runner(event, store, now, event_key)
        if ended is not None:
            return ended
    pool, machine_id, job_tags, deferred = _route(event, config, store, now)
    record = _record(event, pool, machine_id, job_tags)
    written = store.write_job(record, now, event_key=event_key)
    applied, stored, filled = written.applied, written.stored, False
    reopens = event.status in {"created", "pending"}
    if not applied and not written.duplicate and stored is not None and reopens:
        if stored.status == "skipped":  # rare: a retry upstream reopened a skipped job
            applied = store.reopen_skipped(record, now, event_key=event_key)
        elif job_tags and not stored.tags:
            filled = store.fill_tags(record)  # rare: first seen running on our runner, stored without tags
    if applied and pool and event.status in DEMAND_RISES:
        dirty.mark_dirty(pool, f"job {event.job_id} {event.status}", now)
    elif applied and deferred and resolve is not None:
        resolve.ask_resolve(event.project_id, event.pipeline_id or 0, event.job_id, now)
    elif not pool and job_tags and not written.duplicate:
        logger.warning("job matches no pool", extra={"job_id": event.job_id, "tags": list(job_tags)})
    duplicate = written.duplicate or (
        not applied and not filled and stored is not None and stored.status == event.status
    )
    return Ingested(
        applied=applied,
        pool=pool,
        unroutable=not pool and bool(job_tags),
        deferred=deferred,
        duplicate=duplicate,
    )


def _record(event: JobEvent, pool: str, machine_id: str, job_tags: tuple[str, ...]) -> JobRecord:
    return JobRecord(
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


def _end_on_known_runner(event: JobEvent, store: Store, now: datetime, event_key: str) -> Ingested | None:
    """A job's end on the runner its stored item already names: one write, no routing.

    The hook that stored that runner (its `running` hook, or heal) routed the job then: by the runner's id to
    our machine (pool and machine stored together), or to no machine when the runner is not ours. So the
    write keeps what is stored (a write without a pool keeps the stored one, and no machine is written),
    and the job as it was, returned by the write itself, says whether the runner is ours: the pool of a job
    on one of our machines, "" otherwise, as `_route` would have said. None when the stored job does not
    name this runner (its running hook was lost, or it is not stored): the caller routes it as any job.
    """
    written = store.write_job(_record(event, "", "", ()), now, event_key=event_key, same_runner=True)
    known = written.before if written.applied else written.stored
    if known is None or known.runner_id != event.runner_id:
        return None
    pool = known.pool if known.machine_id else ""
    duplicate = written.duplicate or (not written.applied and known.status == event.status)
    return Ingested(applied=written.applied, pool=pool, duplicate=duplicate)


def _route(
    event: JobEvent, config: Config, store: Store, now: datetime
) -> tuple[str, str, tuple[str, ...], bool]:
    """(pool, machine id, job tags, deferred): our runner's machine names the pool; else cached tags decide
    for a pending job; else the pool is left to `resolve_unrouted` (deferred) or to what is stored."""
    if event.runner_id is not None:
        mine = _our_runner(event, config, store)
        if mine is not None:
            return mine[1], mine[0], (), False
    if event.status != "pending":
        # created: no demand yet. running/finished on a runner not ours: the stored pool stands (record_job
        # keeps it); a job never seen before goes on the unrouted index while it holds a slot.
        return "", "", (), False
    cached = cached_pipeline_tags(store, event.gitlab, event.project_id, event.pipeline_id or 0, now)
    job_tags = cached.get(event.job_id) if cached is not None else None
    if job_tags is None:
        return "", "", (), True
    pool = pool_for_tags(job_tags, config.pools)
    return (pool.name if pool else ""), "", job_tags, False


def _our_runner(event: JobEvent, config: Config, store: Store) -> tuple[str, str] | None:
    """(instance id, pool) when the job's runner is one this deployment created, by its id.

    The store maps each runner id to its machine when the launch handler records the runner. Without that
    mapping (a machine launched before it existed, or adopted after its launch event was lost) the runner's
    description names the machine, and is believed only for a machine of ours in that pool whose record
    holds this runner id or none at all: a look-alike description on anyone else's runner is not ours.
    """
    assert event.runner_id is not None
    pools = {p.name for p in config.pools}
    mapped = store.runner_machine(event.runner_id)
    if mapped is not None:
        return mapped if mapped[1] in pools else None
    match = RUNNER_DESCRIPTION.match(event.runner_description)
    if match is None or match["pool"] not in pools:
        return None
    record = store.get_machine(match["instance"])
    if record is None or record.pool != match["pool"] or record.runner_id not in (None, event.runner_id):
        return None
    return record.instance_id, record.pool


def pipeline_announced(
    store: Store,
    resolve: ResolveAsker,
    pools: Sequence[Pool],
    *,
    gitlab: str,
    project_id: int,
    pipeline_id: int,
    waiting: Sequence[int],
    forecast: bool,
    now: datetime,
) -> Callable[[int], str]:
    """A Pipeline hook: ask for the tags of its jobs to come (`waiting`: created or pending job ids) unless
    cached, so that their Job hooks find them cached; returns job id -> pool name from the cache ("" when
    not known yet), for the forecast. One store read when there is something to know, never a GitLab call."""
    tags: dict[int, tuple[str, ...]] = {}
    if waiting or forecast:
        tags = cached_pipeline_tags(store, gitlab, project_id, pipeline_id, now) or {}
    if any(job_id not in tags for job_id in waiting):
        resolve.ask_resolve(project_id, pipeline_id, waiting[0], now)

    def pool_of(job_id: int) -> str:
        pool = pool_for_tags(tags[job_id], pools) if job_id in tags else None
        return pool.name if pool else ""

    return pool_of


# -- resolution out of the request path ---------------------------------------------------------------------


@dataclass
class ResolveReport:
    routed: list[int] = field(default_factory=list)  # job ids given a pool
    unroutable: list[int] = field(default_factory=list)  # job ids whose tags match no pool
    gitlab_calls: int = 0  # pipeline-jobs calls made
    errors: list[str] = field(default_factory=list)


def resolve_unrouted(
    config: Config,
    store: Store,
    source: PipelineJobsSource | None,
    dirty: DirtyMarker,
    now: datetime,
    *,
    gitlab: str,
    asked: tuple[int, int, int] | None = None,
    max_pipelines: int = MAX_TICK_PIPELINES,
    on_pools: Callable[[int, Mapping[int, str]], None] | None = None,
) -> ResolveReport:
    """Route the jobs stored unrouted: their pipelines' tags from the cache, else one GitLab call per pipeline
    (then cached), each job recorded with its pool at the status it has, and each pool marked dirty.

    `asked` is a webhook's ask, (project id, pipeline id, job id): only that pipeline is fetched from GitLab
    (other unrouted jobs are routed only from the cache: each has its own ask, or the tick), and the asked
    job is read by key as well, since the unrouted index may not show it yet (DynamoDB developer guide,
    "DynamoDB read consistency": reads from a global secondary index are eventually consistent). Without
    `asked` (the tick), up to `max_pipelines` pipelines are fetched. `on_pools(pipeline id, job id -> pool)`
    hears of each pipeline fetched, and of the asked one (prewarm fills its stored pipeline's pools).
    """
    report = ResolveReport()
    by_pipeline = _unrouted_by_pipeline(store, gitlab, asked)
    for (project_id, pipeline_id), group in sorted(by_pipeline.items()):
        if asked is not None:
            may_fetch = (project_id, pipeline_id) == (asked[0], asked[1])
        else:
            may_fetch = report.gitlab_calls < max_pipelines
        found = _pipeline_tags(
            store, source, gitlab, (project_id, pipeline_id), group, now, may_fetch, report
        )
        if found is None:
            continue
        tags, complete = found
        if on_pools is not None and (complete or (may_fetch and asked is not None)):
            on_pools(pipeline_id, _pools_of(tags, config))  # a hook may have stored it before the cache
        for job in group:
            if complete or job.job_id in tags:
                _route_resolved(job, tags, config, store, dirty, now, report)
    return report


#: Stored pipeline jobs prewarm forecasts from, and so needs a pool for (chalicelib.pipelines, `_FORECAST`).
_FORECAST = frozenset({"created", "running"})


def resolve_pipeline_pools(
    config: Config,
    store: Store,
    source: PipelineJobsSource | None,
    pipelines: Sequence[PipelineState],
    now: datetime,
    *,
    gitlab: str,
    on_pools: Callable[[int, Mapping[int, str]], None],
    max_pipelines: int = MAX_TICK_PIPELINES,
    max_fetches: int = MAX_TICK_PIPELINES,
) -> ResolveReport:
    """The tick's repair for prewarm: stored pipelines (Pipeline hooks, chalicelib.pipelines) whose jobs to
    come still have no pool get their tags and `on_pools(pipeline id, job id -> pool)`.

    Their hook asked for the tags (`ask_resolve`), but a lost, dead-lettered or failed ask leaves them
    pool-less, and `resolve_unrouted` never sees them: `created` jobs are not stored as jobs, so no
    unrouted job names the pipeline. GitLab sends the next Pipeline hook only when the pipeline's status
    changes (gitlabhq `app/models/ci/pipeline.rb`), which may be after the stage prewarm was for. Up to
    `max_pipelines` such pipelines a tick (one cache read each, oldest first), of which up to `max_fetches`
    are fetched from GitLab (then cached). A job whose tags match no pool stays pool-less, and costs its
    pipeline one cache read a tick while it is stored (until the pipeline ends, or a day)."""
    report = ResolveReport()
    waiting = [s for s in pipelines if any(not j.pool and j.status in _FORECAST for j in s.jobs)]
    for state in sorted(waiting, key=lambda s: s.pipeline_id)[:max_pipelines]:
        asked = [
            JobRecord(gitlab, j.job_id, j.status, project_id=state.project_id, pipeline_id=state.pipeline_id)
            for j in state.jobs
            if not j.pool and j.status in _FORECAST
        ]
        may_fetch = report.gitlab_calls < max_fetches
        pipeline = (state.project_id, state.pipeline_id)
        found = _pipeline_tags(store, source, gitlab, pipeline, asked, now, may_fetch, report)
        if found is not None:
            on_pools(state.pipeline_id, _pools_of(found[0], config))
    return report


def _unrouted_by_pipeline(
    store: Store, gitlab: str, asked: tuple[int, int, int] | None
) -> dict[tuple[int, int], list[JobRecord]]:
    """(project id, pipeline id) -> its unrouted jobs; the asked pipeline is there even with none stored
    (a Pipeline hook's ask warms the cache for the Job hooks to come)."""
    jobs = {j.key: j for j in store.unrouted_jobs()}
    by_pipeline: dict[tuple[int, int], list[JobRecord]] = {}
    if asked is not None:
        by_pipeline[(asked[0], asked[1])] = []
        own = store.get_job(gitlab, asked[2])
        if (
            own is not None
            and not own.pool
            and rank(own.status) >= rank("pending")
            and own.status not in TERMINAL
        ):
            jobs[own.key] = own
    for job in jobs.values():
        by_pipeline.setdefault((job.project_id, job.pipeline_id), []).append(job)
    return by_pipeline


def _pools_of(tags: Mapping[int, tuple[str, ...]], config: Config) -> dict[int, str]:
    pools = {job_id: pool_for_tags(job_tags, config.pools) for job_id, job_tags in tags.items()}
    return {job_id: pool.name for job_id, pool in pools.items() if pool is not None}


def _pipeline_tags(
    store: Store,
    source: PipelineJobsSource | None,
    gitlab: str,
    pipeline: tuple[int, int],
    jobs: Sequence[JobRecord],
    now: datetime,
    may_fetch: bool,
    report: ResolveReport,
) -> tuple[dict[int, tuple[str, ...]], bool] | None:
    """(job id -> tags, complete) for one (project, pipeline): from the cache when it knows every job asked
    about, else from GitLab when allowed (then cached; `complete`: a job it does not list has no tags to
    find). None when nothing is known."""
    project_id, pipeline_id = pipeline
    cached = cached_pipeline_tags(store, gitlab, project_id, pipeline_id, now)
    if cached is not None and all(j.job_id in cached for j in jobs):
        return cached, False
    if not may_fetch or source is None:
        return (cached, False) if cached is not None else None
    if not pipeline_id:
        return {}, True  # an old GitLab's hook without a pipeline id: no pipeline to ask
    report.gitlab_calls += 1
    try:
        listed = source.pipeline_jobs(project_id, pipeline_id)
    except GitLabNotFoundError:
        listed = []  # the pipeline is gone: its jobs go nowhere
    except GitLabError as exc:
        logger.warning("pipeline tags not resolved", extra={"pipeline_id": pipeline_id, "error": str(exc)})
        report.errors.append(str(exc))
        return None
    fetched = {int(j.id): tuple(getattr(j, "tag_list", ()) or ()) for j in listed}
    try:
        cache_pipeline_tags(store, gitlab, project_id, pipeline_id, fetched, now)
    except AwsCallError as exc:  # routing below still uses them; the next job of the pipeline asks again
        logger.warning("pipeline tags not cached", extra={"pipeline_id": pipeline_id, "error": str(exc)})
    return {**(cached or {}), **fetched}, True


def _route_resolved(
    job: JobRecord,
    tags: Mapping[int, tuple[str, ...]],
    config: Config,
    store: Store,
    dirty: DirtyMarker,
    now: datetime,
    report: ResolveReport,
) -> None:
    """Give one unrouted job its pool (at the status it is stored with), or take it off the index."""
    job_tags = tags.get(job.job_id)
    pool = pool_for_tags(job_tags, config.pools) if job_tags is not None else None
    if pool is None:
        # No pool takes its tags, or GitLab does not list it in its pipeline (no pipeline id from an old
        # GitLab, or a deleted pipeline): the lost-job scan of its project routes it if it is ever pending.
        if store.no_pool(replace(job, tags=job_tags or ())):
            report.unroutable.append(job.job_id)
            store.note_projects(job.gitlab, [job.project_id], now)
        return
    if store.record_job(replace(job, pool=pool.name, tags=job_tags or ()), now):
        report.routed.append(job.job_id)
        if job.status in DEMAND_RISES:  # a running one found meanwhile waits for the tick, as in ingest_job
            dirty.mark_dirty(pool.name, f"job {job.job_id} {job.status} (tags resolved)", now)
