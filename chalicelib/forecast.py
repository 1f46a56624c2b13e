"""Pipeline-aware prewarm: the job slots each pool will need one boot time from now, and duration learning.

The room for GitLab issue #12 (`sim/bench_prewarm.py` measures it). Pure: frozen dataclasses and functions
over config models; `now` is a parameter; imports the standard library, `chalicelib.config`, the job
status order of `chalicelib.events.gitlab` and the capacity engine only (no boto3, no clock, no I/O).
`chalicelib/pipelines.py` persists what this module reads.

The rule. A job of stage k becomes pending when every job of stages < k has finished. The current stage of a
pipeline is its first stage with a job that still blocks (not finished). When every job of the current stage
has started (running) or finished, its end is predicted as the latest of its jobs' predicted ends (start +
estimated duration); the next stage's not-yet-pending jobs are counted for their pool when that end falls
within the pool's lead (its boot time) from `now`. Later stages chain: stage k+1 is predicted to end at the
end of stage k plus the longest estimate of its jobs, and its successors count the same way.

Confidence. The estimated duration of a job is the `prewarm_confidence` quantile of its learned durations
(default 0.8 → P80). A higher confidence takes a later quantile: the forecast waits until the stage is
likely (≥ confidence, per job) to have ended within the lead, which warms fewer machines for nothing and
later. An earlier simulator experiment with its own forecast (a 0.25 quantile) cut wait p95 (seed 0; linux
workday 88.4 → 43.6 s, windows 349.6 → 247.4 s, macOS 2106.5 → 1400.9 s) but raised cost by 30-40 % with
idle fractions near 0.5: hence a late, safe quantile by default (`bench/prewarm.json` measures this module).
For a stage of n independent jobs the chance that all have ended is about confidence**n; not corrected for.

Never forecast: a pipeline that is finished, failed, canceled or canceling; a stage after a failed job that
may not fail; a stage whose current predecessor still has a pending/created job (its end is unknown); a
running job with no start time or no estimate (cold start: no history, no confidence); a pipeline whose
current stage is overdue by more than the lead (a hung job or a lost hook must not keep machines warm);
pools with `prewarm = false` or unknown. Per pool the result is capped at `prewarm_max` machines' slots.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from chalicelib.capacity.engine import slots_per_new_machine
from chalicelib.config import Platform, Pool
from chalicelib.events.gitlab import status_rank

#: Seconds from a launch to a runner that takes jobs, per platform, about the P90 of a cold boot: Linux 1-2
#: min, Windows 5-15 min (a launch's Sysprep and reboots "often take 15 minutes or longer" without Fast
#: Launch: EC2 Windows Guide, "Configure faster launching for Windows AMIs"), macOS 6-20 min and more.
LEAD_S: Mapping[Platform, float] = {Platform.LINUX: 120.0, Platform.WINDOWS: 740.0, Platform.MACOS: 1200.0}

#: Statuses after which a job holds nothing and blocks nothing.
FINISHED = frozenset({"success", "failed", "canceled", "skipped"})
#: Pipeline statuses for which nothing more will run.
PIPELINE_OVER = frozenset({"success", "failed", "canceled", "canceling", "skipped"})
#: Later-stage job statuses that a stage's end turns pending (manual and scheduled jobs wait for a person or
#: a timer, not for the stage: they are never forecast).
WILL_QUEUE = frozenset({"created"})

# -- duration estimator ------------------------------------------------------------------------------------

#: Log-histogram buckets: bucket i holds durations in (RATIO**(i-1), RATIO**i] seconds; the last bucket
#: (RATIO**63 ≈ 27 h) takes everything longer. A quantile is read at a bucket's upper edge (≤ 20 % high).
BUCKET_RATIO = 1.2
BUCKETS = 64
#: When the histogram's total weight passes this, every count is halved: recent durations weigh more and
#: counts stay small. With at most BUCKETS buckets an estimate is a few hundred bytes whatever its history.
MAX_WEIGHT = 256
#: Weight of a new duration in the exponentially weighted mean.
EWMA_ALPHA = 0.2
#: A key's estimate is trusted once it has seen this many durations; else the next fallback key is tried.
MIN_SAMPLES = 3

#: A reconcile at the very instant a window opens must see it open despite rounding.
_EPSILON_S = 1e-3
_STEM = re.compile(r"\s+\d+\s*/\s*\d+$")  # `test 3/8` (parallel:) learns as `test`


@dataclass(frozen=True)
class DurationEstimate:
    """Learned durations of one key: how many were seen, their EWMA (seconds), and a decayed log-histogram.

    `buckets` is sparse and sorted: (bucket index, count) pairs with count > 0, at most BUCKETS of them.
    """

    count: int = 0
    mean: float = 0.0
    buckets: tuple[tuple[int, int], ...] = ()

    @property
    def weight(self) -> int:
        return sum(c for _, c in self.buckets)


def bucket_of(duration_s: float) -> int:
    """The histogram bucket of a duration (seconds); durations of a second or less share bucket 0."""
    if duration_s <= 1.0:
        return 0
    index = math.ceil(math.log(duration_s) / math.log(BUCKET_RATIO) - 1e-9)
    return min(BUCKETS - 1, max(0, index))


def bucket_upper(index: int) -> float:
    """The upper edge (seconds) of a bucket."""
    return float(BUCKET_RATIO**index)


def observe(estimate: DurationEstimate, duration_s: float) -> DurationEstimate:
    """The estimate after one more finished job of `duration_s` seconds (negative or NaN is ignored)."""
    if not duration_s >= 0.0 or math.isinf(duration_s):
        return estimate
    counts = dict(estimate.buckets)
    index = bucket_of(duration_s)
    counts[index] = counts.get(index, 0) + 1
    if sum(counts.values()) > MAX_WEIGHT:
        counts = {i: c // 2 for i, c in counts.items() if c // 2 > 0}
    mean = duration_s if estimate.count == 0 else estimate.mean + EWMA_ALPHA * (duration_s - estimate.mean)
    return DurationEstimate(estimate.count + 1, mean, tuple(sorted(counts.items())))


def quantile(estimate: DurationEstimate, q: float) -> float | None:
    """The `q` quantile (0 < q ≤ 1) of the learned durations, at its bucket's upper edge; None if empty."""
    total = estimate.weight
    if total == 0:
        return None
    target = min(1.0, max(0.0, q)) * total
    seen = 0
    for index, count in estimate.buckets:
        seen += count
        if seen >= target:
            return bucket_upper(index)
    return bucket_upper(estimate.buckets[-1][0])


def duration_keys(
    gitlab: str, project_id: int, ref: str, stage: str, name: str, pool: str
) -> tuple[str, ...]:
    """A job's estimate keys, most specific first: (project, ref, stage), then (project, job name), then pool.

    Names of parallel jobs (`rspec 3/8`) learn as their stem. A job without a pool has no pool key.
    """
    stem = _STEM.sub("", name)
    keys = [f"{gitlab}#{project_id}#ref={ref}#stage={stage}", f"{gitlab}#{project_id}#name={stem}"]
    if pool:
        keys.append(f"pool={pool}")
    return tuple(keys)


def choose_estimate(
    estimates: Mapping[str, DurationEstimate], keys: Sequence[str]
) -> tuple[str, DurationEstimate] | None:
    """The first key with MIN_SAMPLES durations; else the known key with the most; None when none is known."""
    known = [(key, estimates[key]) for key in keys if key in estimates and estimates[key].count > 0]
    for key, estimate in known:
        if estimate.count >= MIN_SAMPLES:
            return key, estimate
    return max(known, key=lambda pair: pair[1].count, default=None)


# -- pipeline forecast -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedJob:
    """One job of a pipeline as the forecast needs it. `stage` is the index in the pipeline's stage order."""

    job_id: int
    stage: int
    name: str
    status: str
    pool: str = ""
    started_at: datetime | None = None
    allow_failure: bool = False
    stage_name: str = ""


@dataclass(frozen=True)
class PipelineState:
    """A pipeline's latest known state, plus the learned estimates its jobs may use (key → estimate)."""

    gitlab: str
    project_id: int
    pipeline_id: int
    status: str
    ref: str = ""
    jobs: tuple[PlannedJob, ...] = ()
    estimates: Mapping[str, DurationEstimate] | None = None
    stamp: float = 0.0  # latest timestamp the hook carried (epoch s): orders out-of-order deliveries

    def keys_of(self, job: PlannedJob) -> tuple[str, ...]:
        return duration_keys(self.gitlab, self.project_id, self.ref, job.stage_name, job.name, job.pool)


def with_statuses(pipeline: PipelineState, statuses: Mapping[int, str]) -> PipelineState:
    """The pipeline with the newer statuses the job store holds for some of its jobs (job id → status).

    Only forward moves apply (a stale "running" stays when the store says "pending"), as in the store.
    """
    jobs = tuple(
        replace(job, status=statuses[job.job_id])
        if job.job_id in statuses and _rank(statuses[job.job_id]) > _rank(job.status)
        else job
        for job in pipeline.jobs
    )
    return replace(pipeline, jobs=jobs)


def _rank(status: str) -> int:
    try:
        return status_rank(status)
    except ValueError:  # manual, scheduled...: below pending, as the store ranks them
        return 0


def lead_of(pool: Pool, overrides: Mapping[str, float] | None = None) -> float:
    """Seconds ahead a pool's machines must be asked for: the override for its name, else its platform's."""
    if overrides and pool.name in overrides:
        return overrides[pool.name]
    return LEAD_S[pool.platform]


def prewarm_cap(pool: Pool) -> int:
    """The most prewarm slots a pool may get: `prewarm_max` new machines' worth; 0 with prewarm off."""
    return pool.prewarm_max * slots_per_new_machine(pool) if pool.prewarm else 0


def forecast(
    pipelines: Iterable[PipelineState],
    pools: Sequence[Pool],
    now: datetime,
    *,
    leads: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Prewarm slots per pool (every prewarm pool is a key, 0 included), each capped by `prewarm_cap`."""
    by_name = {p.name: p for p in pools if p.prewarm}
    totals = dict.fromkeys(by_name, 0)
    for pipeline in pipelines:
        for name, slots in forecast_pipeline(pipeline, by_name, now, leads=leads).items():
            totals[name] += slots
    return {name: min(slots, prewarm_cap(by_name[name])) for name, slots in totals.items()}


def forecast_pipeline(
    pipeline: PipelineState,
    pools: Mapping[str, Pool],
    now: datetime,
    *,
    leads: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Jobs of one pipeline, per prewarm pool, expected to turn pending within their pool's lead."""
    if pipeline.status in PIPELINE_OVER:
        return {}
    stages = _stages(pipeline.jobs)
    current = _current_stage(stages)
    if current is None:
        return {}
    end = _stage_end(pipeline, stages[current], pools, now, leads)
    out: dict[str, int] = {}
    for jobs in stages[current + 1 :]:
        if end is None:
            break
        for job in jobs:
            pool = pools.get(job.pool)
            if (
                job.status in WILL_QUEUE
                and pool is not None
                and end <= now.timestamp() + lead_of(pool, leads) + _EPSILON_S
            ):
                out[job.pool] = out.get(job.pool, 0) + 1
        end = _chained_end(pipeline, jobs, end, pools)
    return out


def _stages(jobs: Iterable[PlannedJob]) -> list[list[PlannedJob]]:
    ordered: dict[int, list[PlannedJob]] = {}
    for job in sorted(jobs, key=lambda j: (j.stage, j.job_id)):
        ordered.setdefault(job.stage, []).append(job)
    return [ordered[k] for k in sorted(ordered)]


def _blocks(job: PlannedJob) -> bool:
    """Whether the job keeps its stage from ending (a manual job does not: later stages run past it)."""
    return job.status not in FINISHED and job.status != "manual"


def _current_stage(stages: Sequence[Sequence[PlannedJob]]) -> int | None:
    """Index of the first stage with a blocking job; None when a failure stops the pipeline or none left."""
    for index, jobs in enumerate(stages):
        if any(j.status == "failed" and not j.allow_failure for j in jobs):
            return None
        if any(_blocks(j) for j in jobs):
            return index
    return None


def _estimate_s(pipeline: PipelineState, job: PlannedJob, pools: Mapping[str, Pool]) -> float | None:
    """A job's duration at its pool's confidence (0.8 when its pool is not a prewarm pool)."""
    chosen = choose_estimate(pipeline.estimates or {}, pipeline.keys_of(job))
    if chosen is None:
        return None
    pool = pools.get(job.pool)
    return quantile(chosen[1], pool.prewarm_confidence if pool else 0.8)


def _stage_end(
    pipeline: PipelineState,
    jobs: Sequence[PlannedJob],
    pools: Mapping[str, Pool],
    now: datetime,
    leads: Mapping[str, float] | None,
) -> float | None:
    """Predicted end (epoch s) of the current stage, or None when it cannot be told or is overdue."""
    ends: list[float] = []
    for job in jobs:
        if not _blocks(job):
            continue
        if job.status != "running" or job.started_at is None:
            return None
        duration = _estimate_s(pipeline, job, pools)
        if duration is None:
            return None
        ends.append(job.started_at.timestamp() + duration)
    if not ends:
        return None
    end = max(ends)
    grace = max((lead_of(p, leads) for p in pools.values()), default=0.0)
    if now.timestamp() - end > grace + _EPSILON_S:
        return None
    return max(end, now.timestamp())


def _chained_end(
    pipeline: PipelineState, jobs: Sequence[PlannedJob], start: float, pools: Mapping[str, Pool]
) -> float | None:
    """Predicted end of a later stage that starts at `start`: its longest job; None if one is unknown."""
    durations: list[float] = []
    for job in jobs:
        if job.status not in WILL_QUEUE:
            continue
        duration = _estimate_s(pipeline, job, pools)
        if duration is None:
            return None
        durations.append(duration)
    return start + max(durations, default=0.0)
