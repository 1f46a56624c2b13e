"""State of pipeline-aware prewarm (issue #12): running pipelines' jobs to come, and learned job durations.

`DynamoPipelines` keeps them in the scaler's one DynamoDB table (every call through `AwsClients.call`);
`MemoryPipelines` is its in-memory twin; both satisfy `Pipelines` and pass the same contract tests. The
use-case functions at the bottom are what the webhook and the reconciler call. Imports the standard library,
`chalicelib.dynamo` (the table plumbing it shares with `chalicelib.store`), `chalicelib.resources`, the
GitLab event models, the routing rule and `chalicelib.forecast` (where every decision lives).

Layout (same table as `chalicelib.store`, pk/sk strings, TTL attribute `expires_at`):
- `pk = PIPELINES#<gitlab>`, `sk = <pipeline id>`: one item per active pipeline, rewritten whole by each
  Pipeline hook (one put), deleted when the pipeline is over, TTL one day. The reconciler reads the single
  partition with one Query. Limit: the partition holds every active pipeline of one GitLab, so a read costs
  about (active pipelines × item size) / 8 KB read units, paginated by 1 MB pages; jobs per item are capped
  at MAX_JOBS (extra jobs are not forecast) and names at MAX_NAME characters, so an item stays far below
  DynamoDB's 400 KB. A single partition serves ~3,000 reads/s, well above one Query per reconcile.
- `pk = DURATION#<key>`, `sk = DURATION`: one `forecast.DurationEstimate` (a few hundred bytes whatever
  its history), TTL DURATION_TTL after its last update; updated read-modify-write with a version check
  (GetItem + conditional PutItem per key, three keys per successful job). Read with GetItem per key (the
  Lambda role has no BatchGetItem grant); a Pipeline hook reads about one key per stage.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from chalicelib.capacity.routing import pool_for_tags
from chalicelib.config import Pool
from chalicelib.dynamo import DynamoTable
from chalicelib.events.gitlab import PipelineHook
from chalicelib.events.timestamps import epoch_seconds as _epoch
from chalicelib.events.timestamps import from_epoch
from chalicelib.forecast import (
    MIN_SAMPLES,
    PIPELINE_OVER,
    DurationEstimate,
    PipelineState,
    PlannedJob,
    choose_estimate,
    duration_keys,
    observe,
)
from chalicelib.resources import TABLE_PK, TABLE_SK, TABLE_TTL_ATTRIBUTE

PIPELINE_TTL = timedelta(days=1)
#: Job statuses the forecast looks at: jobs to come (created) and those whose end starts the next stage.
_FORECAST = frozenset({"created", "running"})
DURATION_TTL = timedelta(days=30)
MAX_JOBS = 300
MAX_NAME = 120
#: Attempts of one estimate update when another writer changed it meanwhile; then the duration is dropped
#: (a statistic, one lost sample is harmless).
OBSERVE_ATTEMPTS = 3


class Pipelines(Protocol):
    """What prewarm needs from state; implemented by DynamoPipelines and MemoryPipelines."""

    def record(self, state: PipelineState, now: datetime) -> bool:
        """Store the pipeline (delete it when over) unless a delivery with a later `stamp` is stored;
        True when it changed anything."""
        ...

    def active(self, gitlab: str, now: datetime) -> list[PipelineState]:
        """Every stored, unexpired pipeline of one GitLab (one read)."""
        ...

    def estimates(self, keys: Iterable[str]) -> dict[str, DurationEstimate]:
        """The known estimates among `keys` (unknown keys are absent)."""
        ...

    def get(self, gitlab: str, pipeline_id: int) -> PipelineState | None:
        """One stored pipeline (a key read), or None."""
        ...

    def rewrite(self, state: PipelineState, now: datetime) -> bool:
        """Replace the stored pipeline by `state` only if the stored one has the same `stamp` (no delivery
        came in between); True when written."""
        ...

    def observe(self, keys: Iterable[str], duration_s: float, now: datetime) -> None:
        """Add one finished job's duration to the estimate of each key."""
        ...


# -- encoding ----------------------------------------------------------------------------------------------


def encode_estimate(estimate: DurationEstimate) -> list[Any]:
    return [estimate.count, round(estimate.mean, 3), [list(pair) for pair in estimate.buckets]]


def decode_estimate(data: Sequence[Any]) -> DurationEstimate:
    count, mean, buckets = data
    return DurationEstimate(int(count), float(mean), tuple((int(i), int(c)) for i, c in buckets))


def _encode_job(job: PlannedJob) -> list[Any]:
    started = round(job.started_at.timestamp(), 3) if job.started_at else None
    return [job.job_id, job.stage, job.name, job.status, job.pool, started, job.allow_failure, job.stage_name]


def _decode_job(data: Sequence[Any]) -> PlannedJob:
    job_id, stage, name, status, pool, started, allow_failure, stage_name = data
    return PlannedJob(
        job_id=int(job_id),
        stage=int(stage),
        name=str(name),
        status=str(status),
        pool=str(pool),
        started_at=from_epoch(float(started)) if started is not None else None,
        allow_failure=bool(allow_failure),
        stage_name=str(stage_name),
    )


def encode_pipeline(state: PipelineState) -> dict[str, Any]:
    """The attributes of a pipeline item, besides its keys and TTL (JSON text keeps the item compact)."""
    estimates = {k: encode_estimate(v) for k, v in sorted((state.estimates or {}).items())}
    return {
        "project_id": state.project_id,
        "ref": state.ref,
        "status": state.status,
        "stamp": Decimal(str(round(state.stamp, 3))),
        "jobs": json.dumps([_encode_job(j) for j in state.jobs], separators=(",", ":")),
        "estimates": json.dumps(estimates, separators=(",", ":")),
    }


def decode_pipeline(gitlab: str, pipeline_id: int, item: Mapping[str, Any]) -> PipelineState:
    return PipelineState(
        gitlab=gitlab,
        project_id=int(item["project_id"]),
        pipeline_id=pipeline_id,
        status=str(item["status"]),
        ref=str(item.get("ref", "")),
        jobs=tuple(_decode_job(j) for j in json.loads(str(item["jobs"]))),
        estimates={k: decode_estimate(v) for k, v in json.loads(str(item["estimates"])).items()},
        stamp=float(item.get("stamp", 0)),
    )


# -- DynamoDB ----------------------------------------------------------------------------------------------


class DynamoPipelines(DynamoTable):
    """Pipelines on the scaler's DynamoDB table: one put per Pipeline hook, one Query per reconcile."""

    def record(self, state: PipelineState, now: datetime) -> bool:
        key = {TABLE_PK: f"PIPELINES#{state.gitlab}", TABLE_SK: str(state.pipeline_id)}
        newer = self._dump({":stamp": Decimal(str(round(state.stamp, 3)))})
        condition = f"attribute_not_exists({TABLE_PK}) OR stamp <= :stamp"
        if state.status in PIPELINE_OVER:
            return self._conditional(
                "delete_item",
                Key=self._dump(key),
                ConditionExpression=condition,
                ExpressionAttributeValues=newer,
            )
        item = {**key, **encode_pipeline(state), TABLE_TTL_ATTRIBUTE: _epoch(now + PIPELINE_TTL)}
        return self._conditional(
            "put_item", Item=self._dump(item), ConditionExpression=condition, ExpressionAttributeValues=newer
        )

    def active(self, gitlab: str, now: datetime) -> list[PipelineState]:
        items = self._query(f"PIPELINES#{gitlab}")
        out = []
        for item in items:
            if int(item.get(TABLE_TTL_ATTRIBUTE, 0)) > _epoch(now):  # TTL deletion lags by up to days
                out.append(decode_pipeline(gitlab, int(item[TABLE_SK]), item))
        return sorted(out, key=lambda p: p.pipeline_id)

    def get(self, gitlab: str, pipeline_id: int) -> PipelineState | None:
        item = self._get(f"PIPELINES#{gitlab}", str(pipeline_id))
        return decode_pipeline(gitlab, pipeline_id, item) if item else None

    def rewrite(self, state: PipelineState, now: datetime) -> bool:
        key = {TABLE_PK: f"PIPELINES#{state.gitlab}", TABLE_SK: str(state.pipeline_id)}
        item = {**key, **encode_pipeline(state), TABLE_TTL_ATTRIBUTE: _epoch(now + PIPELINE_TTL)}
        same = self._dump({":stamp": Decimal(str(round(state.stamp, 3)))})
        return self._conditional(
            "put_item",
            Item=self._dump(item),
            ConditionExpression="stamp = :stamp",
            ExpressionAttributeValues=same,
        )

    def estimates(self, keys: Iterable[str]) -> dict[str, DurationEstimate]:
        out: dict[str, DurationEstimate] = {}
        for key in dict.fromkeys(keys):  # GetItem per key: the Lambda role is not granted BatchGetItem
            item = self._get(f"DURATION#{key}", "DURATION", consistent=False)
            if item:
                out[key] = self._estimate(item)
        return out

    def observe(self, keys: Iterable[str], duration_s: float, now: datetime) -> None:
        for key in dict.fromkeys(keys):
            for _ in range(OBSERVE_ATTEMPTS):
                if self._observe_once(key, duration_s, now):
                    break

    def _observe_once(self, key: str, duration_s: float, now: datetime) -> bool:
        ids = {TABLE_PK: f"DURATION#{key}", TABLE_SK: "DURATION"}
        item = self._get(ids[TABLE_PK], ids[TABLE_SK])
        version = int(item["version"]) if item else 0
        estimate = observe(self._estimate(item) if item else DurationEstimate(), duration_s)
        condition = f"attribute_not_exists({TABLE_PK})" if item is None else "version = :version"
        params: dict[str, Any] = {}
        if item is not None:
            params["ExpressionAttributeValues"] = self._dump({":version": version})
        stored = {
            **ids,
            "estimate": json.dumps(encode_estimate(estimate), separators=(",", ":")),
            "version": version + 1,
            TABLE_TTL_ATTRIBUTE: _epoch(now + DURATION_TTL),
        }
        return self._conditional("put_item", Item=self._dump(stored), ConditionExpression=condition, **params)

    @staticmethod
    def _estimate(item: Mapping[str, Any]) -> DurationEstimate:
        return decode_estimate(json.loads(str(item["estimate"])))


# -- in memory ---------------------------------------------------------------------------------------------


class MemoryPipelines:
    """Pipelines in dicts, for the simulator and pure tests; same semantics as DynamoPipelines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipelines: dict[tuple[str, int], tuple[PipelineState, datetime]] = {}
        self._estimates: dict[str, DurationEstimate] = {}

    def record(self, state: PipelineState, now: datetime) -> bool:
        key = (state.gitlab, state.pipeline_id)
        with self._lock:
            stored = self._pipelines.get(key)
            if stored is not None and stored[0].stamp > round(state.stamp, 3):
                return False
            if state.status in PIPELINE_OVER:
                self._pipelines.pop(key, None)
                return True
            # Stored as DynamoDB would give it back (millisecond times, rounded means).
            self._pipelines[key] = (decode_pipeline(state.gitlab, state.pipeline_id, _roundtrip(state)), now)
            return True

    def active(self, gitlab: str, now: datetime) -> list[PipelineState]:
        with self._lock:
            return [
                state
                for (host, _), (state, written) in sorted(self._pipelines.items())
                if host == gitlab and written + PIPELINE_TTL > now
            ]

    def get(self, gitlab: str, pipeline_id: int) -> PipelineState | None:
        with self._lock:
            stored = self._pipelines.get((gitlab, pipeline_id))
            return stored[0] if stored is not None else None

    def rewrite(self, state: PipelineState, now: datetime) -> bool:
        key = (state.gitlab, state.pipeline_id)
        with self._lock:
            stored = self._pipelines.get(key)
            if stored is None or stored[0].stamp != round(state.stamp, 3):
                return False
            self._pipelines[key] = (decode_pipeline(state.gitlab, state.pipeline_id, _roundtrip(state)), now)
            return True

    def estimates(self, keys: Iterable[str]) -> dict[str, DurationEstimate]:
        with self._lock:
            return {k: self._estimates[k] for k in set(keys) if k in self._estimates}

    def observe(self, keys: Iterable[str], duration_s: float, now: datetime) -> None:
        with self._lock:
            for key in dict.fromkeys(keys):
                updated = observe(self._estimates.get(key, DurationEstimate()), duration_s)
                self._estimates[key] = decode_estimate(encode_estimate(updated))


def fill_pipeline_pools(
    pipelines: Pipelines, gitlab: str, pipeline_id: int, pools: Mapping[int, str], now: datetime
) -> bool:
    """The resolver side (chalicelib.jobs.resolve_unrouted), once a pipeline's tags are known: its stored
    jobs that had no pool when its hook came (tags not resolved yet) get theirs and their estimates, so the
    forecast counts them without waiting for another Pipeline hook: GitLab sends one per change of the
    pipeline's status only, not per stage (gitlabhq app/models/ci/pipeline.rb: `after_transition` enqueues
    PipelineHooksWorker unless the transition is a loopback). True when the stored pipeline changed."""
    state = pipelines.get(gitlab, pipeline_id)
    filled = _with_pools(state, pools) if state is not None else None
    if filled is None:
        return False
    return pipelines.rewrite(replace(filled, estimates=_estimates_for(pipelines, filled)), now)


def _with_pools(state: PipelineState, pools: Mapping[int, str]) -> PipelineState | None:
    """The state with its pool-less jobs given their pool from `pools`; None when none of them gets one."""
    jobs = tuple(
        replace(j, pool=pools.get(j.job_id, "")) if not j.pool and j.status in _FORECAST else j
        for j in state.jobs
    )
    return replace(state, jobs=jobs) if jobs != state.jobs else None


def _roundtrip(state: PipelineState) -> dict[str, Any]:
    item = encode_pipeline(state)
    item["stamp"] = float(item["stamp"])
    return item


# -- use cases ---------------------------------------------------------------------------------------------


class TagSource(Protocol):
    """A job's tags by (project, pipeline, job), None when not known (tests and tools; the webhook reads the
    per-pipeline cache, `chalicelib.jobs.cached_pipeline_tags`)."""

    def tags(self, project_id: int, pipeline_id: int, job_id: int) -> tuple[str, ...] | None: ...


def pool_resolver(
    tags: TagSource, pools: Sequence[Pool], project_id: int, pipeline_id: int
) -> Callable[[int], str]:
    """A job id → pool name function for one pipeline ("" when its tags or its pool are unknown)."""

    def pool_of(job_id: int) -> str:
        found = tags.tags(project_id, pipeline_id, job_id)
        pool = pool_for_tags(found, pools) if found is not None else None
        return pool.name if pool else ""

    return pool_of


def pipeline_from_hook(gitlab: str, hook: PipelineHook, pool_of: Callable[[int], str]) -> PipelineState:
    """The pipeline's state as its hook tells it (no estimates yet). Pure apart from `pool_of`.

    `pool_of` is only asked about jobs that may still be forecast (created or running ones).
    """
    attributes = hook.object_attributes
    stages = list(attributes.stages)
    for build in hook.builds:  # a stage missing from `stages` (older GitLab) goes after the known ones
        if build.stage not in stages:
            stages.append(build.stage)
    jobs = tuple(
        PlannedJob(
            job_id=b.id,
            stage=stages.index(b.stage),
            name=b.name[:MAX_NAME],
            status=str(b.status),
            pool=pool_of(b.id) if str(b.status) in _FORECAST else "",
            started_at=b.started_at,
            allow_failure=bool(b.allow_failure),
            stage_name=b.stage[:MAX_NAME],
        )
        for b in sorted(hook.builds, key=lambda b: b.id)[:MAX_JOBS]
    )
    moments = [attributes.created_at, attributes.finished_at]
    moments += [m for b in hook.builds for m in (b.created_at, b.started_at, b.finished_at)]
    stamp = max((m.timestamp() for m in moments if m is not None), default=0.0)
    return PipelineState(
        gitlab=gitlab,
        project_id=hook.project_id,
        pipeline_id=attributes.id,
        status=str(attributes.status),
        ref=(attributes.ref or "")[:MAX_NAME],
        jobs=jobs,
        stamp=stamp,
    )


def record_pipeline_hook(
    pipelines: Pipelines, gitlab: str, hook: PipelineHook, pool_of: Callable[[int], str], now: datetime
) -> PipelineState:
    """Webhook side, once per Pipeline hook: one estimate read (none when over) and one put (or delete).

    Only the estimate each job would use is kept in the item, so the reconciler needs no second read.
    """
    state = pipeline_from_hook(gitlab, hook, pool_of)
    if state.status not in PIPELINE_OVER:
        state = replace(state, estimates=_estimates_for(pipelines, state))
    pipelines.record(state, now)
    return state


def _estimates_for(pipelines: Pipelines, state: PipelineState) -> dict[str, DurationEstimate]:
    """The estimate each job to come would use. Keys are read one at a time, most specific first, and a
    job stops at its first trusted key: most jobs share their stage's key, so a hook reads about one key
    per stage (at most three per distinct job name)."""
    known: dict[str, DurationEstimate] = {}
    asked: set[str] = set()
    chosen: dict[str, DurationEstimate] = {}
    for job in state.jobs:
        if job.status not in {"created", "running"}:
            continue
        keys = state.keys_of(job)
        for key in keys:
            if key not in asked:
                asked.add(key)
                known.update(pipelines.estimates([key]))
            if key in known and known[key].count >= MIN_SAMPLES:
                break
        pick = choose_estimate(known, keys)
        if pick is not None:
            chosen[pick[0]] = pick[1]
    return chosen


def active_for_prewarm(
    pipelines: Pipelines, gitlab: str, pools: Sequence[Pool], now: datetime
) -> list[PipelineState]:
    """Reconciler side: the running pipelines to forecast from (one store read), none when no pool prewarms
    (no read at all: prewarm off costs nothing)."""
    if not any(p.prewarm for p in pools):
        return []
    return pipelines.active(gitlab, now)


def observe_job_duration(
    pipelines: Pipelines,
    gitlab: str,
    *,
    project_id: int,
    ref: str,
    stage: str,
    name: str,
    pool: str,
    duration_s: float,
    now: datetime,
) -> None:
    """Webhook side, on a Job hook with status `success`: learn its duration under each of its keys."""
    keys = duration_keys(gitlab, project_id, ref[:MAX_NAME], stage[:MAX_NAME], name[:MAX_NAME], pool)
    pipelines.observe(keys, duration_s, now)
