"""Contract of the prewarm state (chalicelib.pipelines): DynamoPipelines on moto and MemoryPipelines alike,
plus the webhook and reconciler entry points end to end."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.aws import AwsClients
from chalicelib.config import Platform
from chalicelib.events.gitlab import PipelineHook
from chalicelib.forecast import (
    LEAD_S,
    DurationEstimate,
    PipelineState,
    PlannedJob,
    duration_keys,
    forecast,
    quantile,
)
from chalicelib.pipelines import (
    PIPELINE_TTL,
    DynamoPipelines,
    MemoryPipelines,
    Pipelines,
    active_for_prewarm,
    fill_pipeline_pools,
    observe_job_duration,
    pipeline_from_hook,
    pool_resolver,
    record_pipeline_hook,
)
from tests.builders import T0, pool
from toolkit.devtools.bootstrap import ensure_table
from toolkit.samples import BuildSample, pipeline_hook_payload

GITLAB = "gitlab.example.com"
TABLE = "runner-scaler-test"
WINDOWS = pool(
    name="windows",
    asg="asg-windows",
    platform="windows",
    tags=["windows"],
    run_untagged=False,
    prewarm=True,
    prewarm_max=4,
)
LINUX = pool(name="linux", tags=["linux"], prewarm=True)
POOLS = (WINDOWS, LINUX)


@pytest.fixture(params=["memory", "dynamo"])
def pipelines(request: pytest.FixtureRequest) -> Iterator[Pipelines]:
    if request.param == "memory":
        yield MemoryPipelines()
        return
    aws: AwsClients = request.getfixturevalue("aws")
    ensure_table(aws, TABLE)
    yield DynamoPipelines(aws, TABLE)


def state(pipeline_id: int = 1, status: str = "running", stamp: float = 100.0) -> PipelineState:
    started = datetime(2026, 11, 23, 12, 0, 1, 250000, tzinfo=UTC)
    return PipelineState(
        gitlab=GITLAB,
        project_id=7,
        pipeline_id=pipeline_id,
        status=status,
        ref="main",
        jobs=(
            PlannedJob(1, 0, "build", "running", "windows", started, False, "build"),
            PlannedJob(2, 1, "test 1/2", "created", "windows", None, True, "test"),
        ),
        estimates={"k": DurationEstimate(3, 12.5, ((3, 2), (40, 1)))},
        stamp=stamp,
    )


def test_a_pipeline_round_trips(pipelines: Pipelines) -> None:
    assert pipelines.record(state(), T0)
    assert pipelines.active(GITLAB, T0) == [state()]
    assert pipelines.active("other.example.com", T0) == []


def test_an_older_delivery_never_overwrites_a_newer_one(pipelines: Pipelines) -> None:
    assert pipelines.record(state(stamp=200.0), T0)
    assert not pipelines.record(state(status="pending", stamp=150.0), T0)
    assert pipelines.active(GITLAB, T0)[0].status == "running"
    assert pipelines.record(state(status="running", stamp=200.0), T0)  # same moment: a resend is fine
    assert not pipelines.record(state(status="success", stamp=199.0), T0)
    assert len(pipelines.active(GITLAB, T0)) == 1


def test_a_finished_pipeline_leaves_the_active_list(pipelines: Pipelines) -> None:
    pipelines.record(state(1), T0)
    pipelines.record(state(2), T0)
    assert pipelines.record(state(1, status="canceled", stamp=300.0), T0)
    assert [p.pipeline_id for p in pipelines.active(GITLAB, T0)] == [2]
    assert pipelines.record(state(3, status="success"), T0)  # over before ever seen: nothing stored
    assert [p.pipeline_id for p in pipelines.active(GITLAB, T0)] == [2]


def test_pipelines_expire_after_a_day(pipelines: Pipelines) -> None:
    pipelines.record(state(), T0)
    assert pipelines.active(GITLAB, T0 + PIPELINE_TTL - timedelta(seconds=1))
    assert pipelines.active(GITLAB, T0 + PIPELINE_TTL + timedelta(seconds=1)) == []


def test_a_pipeline_stored_before_its_tags_were_known_gets_its_pools(pipelines: Pipelines) -> None:
    # GIVEN a pipeline stored while its jobs' tags were not resolved yet (no pools)
    unrouted = state()
    unrouted = replace(unrouted, jobs=tuple(replace(j, pool="") for j in unrouted.jobs))
    pipelines.record(unrouted, T0)
    # WHEN the resolver learns their pools
    assert fill_pipeline_pools(pipelines, GITLAB, 1, {1: "windows", 2: "windows"}, T0)
    # THEN the stored jobs to come have them; a second fill changes nothing
    (stored,) = pipelines.active(GITLAB, T0)
    assert [(j.job_id, j.pool) for j in stored.jobs] == [(1, "windows"), (2, "windows")]
    assert not fill_pipeline_pools(pipelines, GITLAB, 1, {1: "windows", 2: "windows"}, T0)
    # AND a pipeline a newer delivery replaced meanwhile is left as that delivery wrote it
    newer = replace(unrouted, pipeline_id=2, stamp=200.0)
    pipelines.record(newer, T0)
    assert not pipelines.rewrite(replace(newer, stamp=150.0), T0)


def test_durations_are_learned_per_key(pipelines: Pipelines) -> None:
    keys = [f"key-{n}" for n in range(130)]  # more than one BatchGetItem
    for seconds in (100.0, 100.0, 400.0):
        pipelines.observe(keys[:2], seconds, T0)
    pipelines.observe(keys, 50.0, T0)
    known = pipelines.estimates([*keys, "unknown"])
    assert set(known) == set(keys)
    assert known["key-0"].count == 4
    assert known["key-99"].count == 1
    assert quantile(known["key-0"], 1.0) == quantile(known["key-1"], 1.0)
    assert 400.0 <= quantile(known["key-0"], 1.0) <= 480.0  # type: ignore[operator]


def _hook(
    pipeline_id: int, now: datetime, builds: list[BuildSample], status: str = "running"
) -> PipelineHook:
    payload = pipeline_hook_payload(pipeline_id, status, project_id=7, builds=builds, now=now)
    return PipelineHook.model_validate(payload)


class Tags:
    """A `TagSource` stand-in: tags per job id, and who was asked."""

    def __init__(self, tags: dict[int, tuple[str, ...]]) -> None:
        self._tags = tags
        self.asked: list[int] = []

    def tags(self, project_id: int, pipeline_id: int, job_id: int) -> tuple[str, ...] | None:
        self.asked.append(job_id)
        return self._tags.get(job_id)


def _windows_pipeline(now: datetime, started: datetime) -> PipelineHook:
    return _hook(
        41,
        now,
        [
            BuildSample(1, "success", "prepare", "lint", created_at=T0, started_at=T0, finished_at=T0),
            BuildSample(2, "running", "build", "compile", created_at=T0, started_at=started),
            BuildSample(3, "created", "test", "test 1/2", created_at=T0),
            BuildSample(4, "created", "test", "test 2/2", created_at=T0),
            BuildSample(5, "created", "deploy", "ship", created_at=T0),
        ],
    )


def test_pipeline_from_hook_orders_stages_and_only_routes_jobs_to_come() -> None:
    tags = Tags({2: ("windows",), 3: ("windows",), 4: ("windows",), 5: ("nowhere",)})
    hook = _windows_pipeline(T0, T0)
    got = pipeline_from_hook(GITLAB, hook, pool_resolver(tags, POOLS, 7, 41))
    assert [(j.job_id, j.stage, j.pool, j.status) for j in got.jobs] == [
        (1, 0, "", "success"),
        (2, 1, "windows", "running"),
        (3, 2, "windows", "created"),
        (4, 2, "windows", "created"),
        (5, 3, "", "created"),
    ]
    assert sorted(tags.asked) == [2, 3, 4, 5]
    assert got.ref == "main" and got.project_id == 7 and got.stamp >= T0.timestamp()


def test_webhook_to_reconciler_end_to_end(pipelines: Pipelines) -> None:
    for _ in range(5):  # the build stage of this project and ref takes 600 s
        observe_job_duration(
            pipelines, GITLAB, project_id=7, ref="main", stage="build", name="compile", pool="windows",
            duration_s=600.0, now=T0,
        )  # fmt: skip
    tags = Tags({2: ("windows",), 3: ("windows",), 4: ("windows",), 5: ("windows",)})
    hook = _windows_pipeline(T0, T0)
    stored = record_pipeline_hook(pipelines, GITLAB, hook, pool_resolver(tags, POOLS, 7, 41), T0)
    build_key = duration_keys(GITLAB, 7, "main", "build", "compile", "windows")[0]
    # Only the estimates the forecast will use: the build stage's own, the pool's for stages never seen.
    assert set(stored.estimates or {}) == {build_key, "pool=windows"}
    assert pipelines.active(GITLAB, T0)[0].estimates == stored.estimates

    end = T0 + timedelta(seconds=quantile(stored.estimates[build_key], 0.8) or 0.0)  # type: ignore[index]

    def slots(at: datetime) -> dict[str, int]:
        return forecast(active_for_prewarm(pipelines, GITLAB, POOLS, at), POOLS, at)

    lead = LEAD_S[Platform.WINDOWS]  # the test stage is forecast one Windows cold boot ahead of its start
    assert slots(end - timedelta(seconds=lead + 1)) == {"windows": 0, "linux": 0}
    assert slots(end - timedelta(seconds=lead - 20)) == {"windows": 2, "linux": 0}

    done = _hook(41, end, [BuildSample(2, "canceled", "build", "compile", created_at=T0)], status="canceled")
    record_pipeline_hook(pipelines, GITLAB, done, pool_resolver(tags, POOLS, 7, 41), end)
    assert slots(end) == {"windows": 0, "linux": 0}


def test_one_read_per_reconcile_on_dynamo(aws: AwsClients) -> None:
    ensure_table(aws, TABLE)
    pipelines = DynamoPipelines(aws, TABLE)
    for n in range(5):
        pipelines.record(state(n), T0)
    aws.calls.clear()
    assert len(active_for_prewarm(pipelines, GITLAB, POOLS, T0)) == 5
    assert dict(aws.calls) == {"dynamodb.Query": 1}
    aws.calls.clear()
    assert active_for_prewarm(pipelines, GITLAB, (pool(name="off"),), T0) == []
    assert aws.total_calls == 0
