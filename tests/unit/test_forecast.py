"""Pipeline-aware prewarm forecast and the duration estimator (chalicelib.forecast): pure, no I/O."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.forecast import (
    BUCKETS,
    LEAD_S,
    MAX_WEIGHT,
    DurationEstimate,
    PipelineState,
    PlannedJob,
    bucket_of,
    bucket_upper,
    choose_estimate,
    duration_keys,
    forecast,
    forecast_pipeline,
    lead_of,
    observe,
    prewarm_cap,
    quantile,
)
from tests.builders import T0, pool

GITLAB = "gitlab.example.com"
PROJECT = 7

LINUX = pool(
    name="linux", tags=["linux"], prewarm=True, prewarm_max=3, capacity_per_instance=2, max_use_count=0
)
WINDOWS = pool(
    name="windows",
    asg="asg-windows",
    platform="windows",
    tags=["windows"],
    run_untagged=False,
    prewarm=True,
    prewarm_max=4,
)
COLD = pool(name="cold", asg="asg-cold", tags=["cold"], run_untagged=False, prewarm=False)
POOLS = (LINUX, WINDOWS, COLD)


def learned(*durations: float) -> DurationEstimate:
    estimate = DurationEstimate()
    for d in durations:
        estimate = observe(estimate, d)
    return estimate


def job(
    job_id: int,
    stage: int,
    status: str,
    pool_name: str,
    *,
    started_at: datetime | None = None,
    name: str | None = None,
    allow_failure: bool = False,
) -> PlannedJob:
    return PlannedJob(
        job_id=job_id,
        stage=stage,
        name=name or f"job-{stage}",
        status=status,
        pool=pool_name,
        started_at=started_at,
        allow_failure=allow_failure,
        stage_name=f"stage-{stage}",
    )


def pipeline(
    jobs: list[PlannedJob], status: str = "running", estimates: dict[str, DurationEstimate] | None = None
) -> PipelineState:
    state = PipelineState(GITLAB, PROJECT, 100, status, ref="main", jobs=tuple(jobs))
    if estimates is None:  # every stage's jobs take 600 s, stage 2's 1000 s
        estimates = {}
        for j in jobs:
            key = state.keys_of(j)[0]
            estimates[key] = learned(*([1000.0] * 5 if j.stage == 1 else [600.0] * 5))
    return PipelineState(GITLAB, PROJECT, 100, status, ref="main", jobs=tuple(jobs), estimates=estimates)


def windows_three_stages(started: datetime) -> PipelineState:
    return pipeline(
        [
            job(1, 0, "running", "windows", started_at=started),
            job(2, 0, "success", "windows", started_at=started - timedelta(seconds=30)),
            job(3, 1, "created", "windows"),
            job(4, 1, "created", "windows"),
            job(5, 2, "created", "windows"),
        ]
    )


# -- estimator ---------------------------------------------------------------------------------------------


def test_quantile_reads_the_bucket_upper_edge_and_orders_with_q() -> None:
    estimate = learned(*[100.0] * 8, *[1000.0] * 2)
    assert quantile(estimate, 0.5) == bucket_upper(bucket_of(100.0))
    assert quantile(estimate, 0.95) == bucket_upper(bucket_of(1000.0))
    assert 100.0 <= quantile(estimate, 0.5) <= 120.0  # type: ignore[operator]
    assert quantile(DurationEstimate(), 0.5) is None


def test_observe_keeps_an_ewma_mean_and_ignores_nonsense() -> None:
    estimate = learned(100.0, 200.0)
    assert estimate.count == 2
    assert estimate.mean == 100.0 + 0.2 * 100.0
    assert observe(estimate, -5.0) == estimate
    assert observe(estimate, float("nan")) == estimate
    assert observe(estimate, float("inf")) == estimate


def test_recent_durations_take_over_after_decay() -> None:
    estimate = learned(*[60.0] * 1000, *[600.0] * 1000)
    assert quantile(estimate, 0.5) == bucket_upper(bucket_of(600.0))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1e7, allow_nan=False), max_size=600))
def test_estimator_memory_is_bounded(durations: list[float]) -> None:
    estimate = learned(*durations)
    assert len(estimate.buckets) <= BUCKETS
    assert estimate.weight <= MAX_WEIGHT
    assert all(0 <= i < BUCKETS and c > 0 for i, c in estimate.buckets)
    assert len(json.dumps([estimate.count, estimate.mean, estimate.buckets])) < 1200
    assert estimate.count == len(durations)
    if durations:
        low, high = quantile(estimate, 0.1), quantile(estimate, 0.9)
        assert low is not None and high is not None and low <= high


def test_keys_fall_back_from_ref_and_stage_to_job_name_to_pool() -> None:
    keys = duration_keys(GITLAB, PROJECT, "main", "test", "rspec 3/8", "linux")
    assert keys == (
        f"{GITLAB}#7#ref=main#stage=test",
        f"{GITLAB}#7#name=rspec",
        "pool=linux",
    )
    few, many = learned(10.0), learned(20.0, 20.0, 20.0)
    assert choose_estimate({keys[0]: few, keys[2]: many}, keys) == (keys[2], many)
    assert choose_estimate({keys[0]: few}, keys) == (keys[0], few)
    assert choose_estimate({}, keys) is None


# -- forecast ----------------------------------------------------------------------------------------------


def test_windows_stage_two_is_warmed_a_lead_before_stage_one_ends() -> None:
    started = T0
    state = windows_three_stages(started)
    p80 = quantile(learned(*[600.0] * 5), WINDOWS.prewarm_confidence)
    assert p80 is not None
    end = started + timedelta(seconds=p80)
    lead = timedelta(seconds=LEAD_S[WINDOWS.platform])
    assert lead_of(WINDOWS) == 740.0

    assert forecast([state], POOLS, end - lead - timedelta(seconds=1))["windows"] == 0
    assert forecast([state], POOLS, end - lead)["windows"] == 2  # stage 2's two jobs, not stage 3's
    assert forecast([state], POOLS, end - timedelta(seconds=10))["windows"] == 2
    # Stage 3 joins once stage 2's predicted end (stage 1's end + 1000 s at P80) is within the lead.
    stage2 = quantile(learned(*[1000.0] * 5), 0.8)
    assert stage2 is not None and stage2 > LEAD_S[WINDOWS.platform]
    assert forecast([state], POOLS, end)["windows"] == 2


def test_a_chained_stage_counts_when_its_predecessors_fit_in_the_lead() -> None:
    mac_lead = {"windows": 3000.0}  # an override (as for a macOS-sized boot)
    state = windows_three_stages(T0)  # stage 1 ends at ~709 s, stage 2 at ~709 + 1240 s (P80 edges)
    assert forecast([state], POOLS, T0, leads=mac_lead)["windows"] == 3
    assert forecast([state], POOLS, T0, leads={"windows": 1000.0})["windows"] == 2


def test_higher_confidence_warms_later() -> None:
    durations = [float(d) for d in range(100, 1100, 10)]
    jobs = [job(1, 0, "running", "windows", started_at=T0), job(2, 1, "created", "windows")]
    state = pipeline(jobs, estimates={pipeline(jobs, estimates={}).keys_of(jobs[0])[0]: learned(*durations)})
    low = WINDOWS.model_copy(update={"prewarm_confidence": 0.2})
    high = WINDOWS.model_copy(update={"prewarm_confidence": 0.95})
    at = T0 + timedelta(seconds=300)
    assert forecast([state], (low,), at)["windows"] == 1
    assert forecast([state], (high,), at)["windows"] == 0


def test_no_prewarm_for_a_cancelled_or_failed_pipeline() -> None:
    for status in ("canceled", "canceling", "failed", "success"):
        state = windows_three_stages(T0)
        over = PipelineState(
            GITLAB, PROJECT, 100, status, ref="main", jobs=state.jobs, estimates=state.estimates
        )
        assert forecast([over], POOLS, T0 + timedelta(seconds=600)) == {"linux": 0, "windows": 0}


def test_a_failed_job_stops_the_forecast_unless_it_may_fail() -> None:
    jobs = [
        job(1, 0, "running", "windows", started_at=T0),
        job(2, 0, "failed", "windows"),
        job(3, 1, "created", "windows"),
    ]
    at = T0 + timedelta(seconds=600)
    assert forecast([pipeline(jobs)], POOLS, at)["windows"] == 0
    jobs[1] = job(2, 0, "failed", "windows", allow_failure=True)
    assert forecast([pipeline(jobs)], POOLS, at)["windows"] == 1


def test_unknown_ends_are_not_forecast() -> None:
    at = T0 + timedelta(seconds=600)
    pending = [job(1, 0, "pending", "windows"), job(3, 1, "created", "windows")]
    assert forecast([pipeline(pending)], POOLS, at)["windows"] == 0
    no_start = [job(1, 0, "running", "windows"), job(3, 1, "created", "windows")]
    assert forecast([pipeline(no_start)], POOLS, at)["windows"] == 0
    cold_start = [job(1, 0, "running", "windows", started_at=T0), job(3, 1, "created", "windows")]
    assert forecast([pipeline(cold_start, estimates={})], POOLS, at)["windows"] == 0


def test_an_overdue_stage_stops_warming_after_a_lead() -> None:
    state = windows_three_stages(T0)
    p80 = quantile(learned(*[600.0] * 5), 0.8)
    assert p80 is not None
    end = T0 + timedelta(seconds=p80)
    biggest_lead = timedelta(seconds=max(LEAD_S[LINUX.platform], LEAD_S[WINDOWS.platform]))
    assert forecast([state], POOLS, end + biggest_lead)["windows"] == 2
    assert forecast([state], POOLS, end + biggest_lead + timedelta(seconds=1))["windows"] == 0


def test_pools_without_prewarm_get_nothing_and_caps_hold() -> None:
    jobs = [job(1, 0, "running", "linux", started_at=T0)]
    jobs += [job(10 + n, 1, "created", "linux") for n in range(20)]
    jobs += [job(40 + n, 1, "created", "cold") for n in range(5)]
    jobs += [job(60, 1, "manual", "linux"), job(61, 1, "pending", "linux")]
    state = pipeline(jobs)
    at = T0 + timedelta(seconds=600)
    raw = forecast_pipeline(state, {"linux": LINUX}, at)
    assert raw == {"linux": 20}
    assert forecast([state], POOLS, at) == {"linux": 6, "windows": 0}  # 3 machines x 2 slots
    assert prewarm_cap(COLD) == 0


def test_manual_jobs_do_not_hold_a_stage_open() -> None:
    jobs = [
        job(1, 0, "running", "windows", started_at=T0),
        job(2, 0, "manual", "windows"),
        job(3, 1, "created", "windows"),
    ]
    assert forecast([pipeline(jobs)], POOLS, T0 + timedelta(seconds=600))["windows"] == 1


# -- properties --------------------------------------------------------------------------------------------

POOL_NAMES = ["linux", "windows", "cold", ""]
STATUSES = ["created", "pending", "running", "success", "failed", "canceled", "skipped", "manual"]


DONE = ["success", "skipped", "manual"]
LATER = ["created", "created", "created", "manual", "skipped", "pending"]


@st.composite
def pipelines(draw: Any, ordered: bool = False) -> PipelineState:
    """A random pipeline of up to 4 stages with random estimates and starts. `ordered` keeps GitLab's stage
    order: stages before the current one are done, later ones have not started (a `needs:` job may pend)."""
    stages = draw(st.integers(1, 4))
    current = draw(st.integers(0, stages - 1))
    jobs: list[PlannedJob] = []
    next_id = 1
    for stage in range(stages):
        choices = STATUSES if not ordered or stage == current else DONE if stage < current else LATER
        for _ in range(draw(st.integers(1, 6))):
            status = draw(st.sampled_from(choices))
            started = T0 + timedelta(seconds=draw(st.integers(-3000, 0))) if draw(st.booleans()) else None
            jobs.append(
                job(
                    next_id,
                    stage,
                    status,
                    draw(st.sampled_from(POOL_NAMES)),
                    started_at=started,
                    allow_failure=draw(st.booleans()),
                )
            )
            next_id += 1
    base = PipelineState(GITLAB, PROJECT, 100, "running", ref="main", jobs=tuple(jobs))
    estimates = {
        key: learned(*draw(st.lists(st.floats(1.0, 5000.0), min_size=1, max_size=8)))
        for j in jobs
        for key in base.keys_of(j)
        if draw(st.booleans())
    }
    status = draw(st.sampled_from(["running", "running", "pending", "canceled", "failed", "success"]))
    return PipelineState(GITLAB, PROJECT, 100, status, ref="main", jobs=tuple(jobs), estimates=estimates)


@settings(max_examples=300, deadline=None)
@given(st.lists(pipelines(), max_size=6), st.integers(-2000, 4000))
def test_never_beyond_prewarm_max_and_never_for_cold_pools(states: list[PipelineState], offset: int) -> None:
    result = forecast(states, POOLS, T0 + timedelta(seconds=offset))
    assert set(result) == {"linux", "windows"}
    for p in (LINUX, WINDOWS):
        assert 0 <= result[p.name] <= prewarm_cap(p)
        assert result[p.name] <= p.prewarm_max * p.capacity_per_instance


@settings(max_examples=300, deadline=None)
@given(pipelines(), st.integers(-2000, 4000))
def test_no_prewarm_once_the_pipeline_is_cancelled(state: PipelineState, offset: int) -> None:
    cancelled = PipelineState(
        GITLAB, PROJECT, 100, "canceled", ref="main", jobs=state.jobs, estimates=state.estimates
    )
    assert forecast([cancelled], POOLS, T0 + timedelta(seconds=offset)) == {"linux": 0, "windows": 0}


def _finish_current_stage(state: PipelineState) -> PipelineState | None:
    """The same pipeline once its first open stage has finished and the next stage's jobs turned pending."""
    stages = sorted({j.stage for j in state.jobs})
    open_stages = [
        s
        for s in stages
        if any(j.status not in {"success", "skipped", "manual"} for j in state.jobs if j.stage == s)
    ]
    if not open_stages:
        return None
    current = open_stages[0]

    def moved(j: PlannedJob) -> PlannedJob:
        if j.stage == current and j.status not in {"manual", "skipped"}:
            return PlannedJob(
                j.job_id, j.stage, j.name, "success", j.pool, j.started_at, j.allow_failure, j.stage_name
            )
        if j.stage == current + 1 and j.status == "created":
            return PlannedJob(
                j.job_id, j.stage, j.name, "pending", j.pool, None, j.allow_failure, j.stage_name
            )
        return j

    return PipelineState(
        state.gitlab,
        state.project_id,
        state.pipeline_id,
        state.status,
        ref=state.ref,
        jobs=tuple(moved(j) for j in state.jobs),
        estimates=state.estimates,
    )


@settings(max_examples=300, deadline=None)
@given(pipelines(ordered=True), st.integers(-2000, 4000))
def test_forecasts_shrink_as_stages_finish(state: PipelineState, offset: int) -> None:
    now = T0 + timedelta(seconds=offset)
    previous = forecast([state], POOLS, now)
    following = _finish_current_stage(state)
    while following is not None:
        current = forecast([following], POOLS, now)
        assert all(current[name] <= previous[name] for name in current)
        previous, following = current, _finish_current_stage(following)


def test_jobs_that_turned_pending_leave_the_forecast() -> None:
    state = windows_three_stages(T0)
    at = T0 + timedelta(seconds=600)
    assert forecast([state], POOLS, at)["windows"] == 2
    finished = _finish_current_stage(state)
    assert finished is not None
    assert forecast([finished], POOLS, at)["windows"] == 0
