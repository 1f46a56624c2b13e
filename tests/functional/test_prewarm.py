"""Prewarm through the Chalice app: Job hooks teach durations, a Pipeline hook tells what comes next, and the
tick asks the (moto) Auto Scaling group for machines one boot time before the next stage starts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer
from chalice.test import Client

from app import app
from chalicelib.errors import AwsCallError
from chalicelib.forecast import PipelineState, bucket_of, bucket_upper, duration_keys
from chalicelib.pipelines import MemoryPipelines
from chalicelib.reconcile import Reconciler
from chalicelib.runtime import Runtime, install
from chalicelib.store import JobRecord
from tests.functional.conftest import Stack
from tests.functional.test_webhooks import post
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec
from toolkit.samples import BuildSample, job_hook_payload, pipeline_hook_payload

COMPILE_S = 600.0
#: The P80 of learned 600 s durations, read at its log-histogram bucket's upper edge (≈ 709 s).
ESTIMATE_S = bucket_upper(bucket_of(COMPILE_S))
LINUX_LEAD_S = 120.0


@pytest.fixture
def prewarm_stack(gitlab_stack: Stack) -> Iterator[Stack]:
    """The GitLab-wired stack with prewarm on for the linux pool (at most 2 machines ahead)."""
    pools = [
        p.model_copy(update={"prewarm": True, "prewarm_max": 2}) if p.name == "linux" else p
        for p in gitlab_stack.config.pools
    ]
    rt = gitlab_stack.runtime
    config = gitlab_stack.config.model_copy(update={"pools": pools})
    prewarm_rt = Runtime(dict(rt.environ), aws=rt.aws, config=config, gitlab=rt.gitlab, clock=rt.clock)
    install(prewarm_rt)
    gitlab_stack.runtime, gitlab_stack.config = prewarm_rt, config
    yield gitlab_stack


def _build_then_test(fake: FakeGitLab, project: int) -> tuple[int, list[int]]:
    specs = [
        JobSpec("compile", stage="build", tags=("linux",)),
        JobSpec("unit 1/2", stage="test", tags=("linux",)),
        JobSpec("unit 2/2", stage="test", tags=("linux",)),
    ]
    ref = fake.create_pipeline(project, specs)
    return ref.id, list(ref.job_ids)


def _job_hook(stack: Stack, project: int, pipeline: int, job_id: int, status: str, **kw: Any) -> Any:
    return job_hook_payload(
        job_id,
        status,
        project_id=project,
        pipeline_id=pipeline,
        stage="build",
        name="compile",
        now=stack.runtime.now(),
        **kw,
    )


def _tick(client: Client) -> dict[str, Any]:
    event = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    return dict(client.lambda_.invoke("tick", event).payload)


def _estimate_count(stack: Stack, key: str) -> int:
    got = stack.aws.call(
        "dynamodb",
        "get_item",
        TableName=stack.runtime.names.table,
        Key={"pk": {"S": f"DURATION#{key}"}, "sk": {"S": "DURATION"}},
    )
    if "Item" not in got:
        return 0
    return int(TypeDeserializer().deserialize(got["Item"]["version"]))


def _learn_compile_durations(stack: Stack, fake: FakeGitLab, client: Client, project: int) -> None:
    """Three earlier pipelines whose compile job took COMPILE_S on our runner 5: their success hooks teach
    the estimate."""
    stack.runtime.store.map_runner(5, "i-0555555555555555f", "linux", stack.runtime.now())  # as launched
    for _ in range(3):
        pipeline, jobs = _build_then_test(fake, project)
        started = stack.runtime.now() - timedelta(seconds=COMPILE_S)
        body = _job_hook(stack, project, pipeline, jobs[0], "success", started_at=started, runner_id=5)
        assert post(client, body).status_code == 202


def _pipeline_running_compile(stack: Stack, project: int, pipeline: int, jobs: list[int]) -> Any:
    now = stack.runtime.now()
    builds = [
        BuildSample(jobs[0], "running", "build", "compile", created_at=now, started_at=now),
        BuildSample(jobs[1], "created", "test", "unit 1/2", created_at=now),
        BuildSample(jobs[2], "created", "test", "unit 2/2", created_at=now),
    ]
    return pipeline_hook_payload(pipeline, "running", project_id=project, builds=builds, now=now)


@dataclass
class Warmed:
    """A pipeline whose test stage got two warm machines: what the tests go on from."""

    project: int
    pipeline: int
    jobs: list[int]
    started: datetime
    before: int  # the linux group's desired capacity before the window opened


def _warm_the_test_stage(stack: Stack, fake: FakeGitLab, client: Client) -> Warmed:
    project = fake.create_project("group/app")
    # GIVEN compile jobs of this project and ref that took 600 s, learned from their success hooks
    _learn_compile_durations(stack, fake, client, project)
    host = stack.runtime.gitlab_host
    for key in duration_keys(host, project, "main", "build", "compile", "linux"):
        assert _estimate_count(stack, key) == 3
    # AND a new pipeline whose compile job starts now; its two test jobs wait for the build stage
    pipeline, jobs = _build_then_test(fake, project)
    started: datetime = stack.runtime.now()
    hook = _pipeline_running_compile(stack, project, pipeline, jobs)
    assert post(client, hook, event="Pipeline Hook").status_code == 202
    # (its jobs' tags were not cached: the hook asked for them, and pool_dirty fills the stored pipeline)
    assert stack.resolve_asks() == 1
    body = _job_hook(stack, project, pipeline, jobs[0], "running", started_at=started, runner_id=5)
    assert post(client, body).status_code == 202

    # WHEN the tick runs while the build's predicted end is still more than a boot time away
    stack.clock[0] = started + timedelta(seconds=ESTIMATE_S - LINUX_LEAD_S - 30)
    before = _tick(client)["pools"]["linux"]["desired"]
    # THEN nothing is warmed yet
    assert stack.desired("test-linux") == before

    # WHEN the predicted end comes within the linux boot time
    stack.clock[0] = started + timedelta(seconds=ESTIMATE_S - LINUX_LEAD_S + 30)
    _tick(client)
    # THEN two machines (one per test job to come) are booting before the stage starts
    assert stack.desired("test-linux") == before + 2
    return Warmed(project, pipeline, jobs, started, before)


def test_machines_boot_a_lead_before_the_next_stage(prewarm_stack: Stack, fake_gitlab: FakeGitLab) -> None:
    stack = prewarm_stack
    with Client(app) as client:
        warmed = _warm_the_test_stage(stack, fake_gitlab, client)
        # WHEN the pipeline is cancelled
        cancelled = pipeline_hook_payload(
            warmed.pipeline,
            "canceled",
            project_id=warmed.project,
            builds=[BuildSample(warmed.jobs[0], "canceled", "build", "compile", created_at=warmed.started)],
            now=stack.runtime.now(),
        )
        assert post(client, cancelled, event="Pipeline Hook").status_code == 202
        # THEN its forecast is gone from the table: the warm machines fall to the usual idle_time rule
        assert stack.runtime.pipelines.active(stack.runtime.gitlab_host, stack.runtime.now()) == []


def test_jobs_that_went_pending_are_not_warmed_a_second_time(
    prewarm_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    stack = prewarm_stack
    with Client(app) as client:
        warmed = _warm_the_test_stage(stack, fake_gitlab, client)
        # WHEN the build succeeds and the two test jobs go pending: Job Hooks only, since GitLab sends no
        # Pipeline Hook while the pipeline stays running (the stored pipeline still says "to come")
        stack.clock[0] += timedelta(seconds=60)
        body = _job_hook(
            stack,
            warmed.project,
            warmed.pipeline,
            warmed.jobs[0],
            "success",
            started_at=warmed.started,
            runner_id=5,
        )
        assert post(client, body).status_code == 202
        for job_id, name in zip(warmed.jobs[1:], ("unit 1/2", "unit 2/2"), strict=True):
            pending = job_hook_payload(
                job_id,
                "pending",
                project_id=warmed.project,
                pipeline_id=warmed.pipeline,
                stage="test",
                name=name,
                now=stack.runtime.now(),
            )
            assert post(client, pending).status_code == 202
        _tick(client)
    # THEN the two warm machines are theirs: the group asks for no second pair
    assert stack.desired("test-linux") == warmed.before + 2


def test_prewarm_off_keeps_the_hot_path_lean(gitlab_stack: Stack, fake_gitlab: FakeGitLab) -> None:
    stack = gitlab_stack
    project = fake_gitlab.create_project("group/app")
    pipeline, jobs = _build_then_test(fake_gitlab, project)
    with Client(app) as client:
        hook = _pipeline_running_compile(stack, project, pipeline, jobs)
        assert post(client, hook, event="Pipeline Hook").status_code == 202
        started = stack.runtime.now() - timedelta(seconds=COMPILE_S)
        body = _job_hook(stack, project, pipeline, jobs[0], "success", started_at=started, runner_id=5)
        assert post(client, body).status_code == 202
    # No pool prewarms: neither the pipeline nor the duration was written
    host = stack.runtime.gitlab_host
    assert stack.runtime.pipelines.active(host, stack.runtime.now()) == []
    for key in duration_keys(host, project, "main", "build", "compile", "linux"):
        assert _estimate_count(stack, key) == 0


class _ThrottledPipelines(MemoryPipelines):
    """The pipelines partition is throttled past every retry."""

    def active(self, gitlab: str, now: datetime) -> list[PipelineState]:
        raise AwsCallError(
            "dynamodb", "Query", "ProvisionedThroughputExceededException", "slow down", retryable=True
        )


def test_a_failed_forecast_read_costs_prewarm_never_the_reconcile(prewarm_stack: Stack) -> None:
    # GIVEN two pending jobs and a forecast read that fails
    rt = prewarm_stack.runtime
    for job_id in (1, 2):
        rt.store.record_job(JobRecord(rt.gitlab_host, job_id, "pending", pool="linux"), rt.now())
    reconciler = Reconciler(
        rt.config, rt.store, rt.fleet, pipelines=_ThrottledPipelines(), gitlab=rt.gitlab_host
    )
    # WHEN every pool is reconciled
    results = {r.pool: r for r in reconciler.reconcile_all(rt.now())}
    # THEN the pending jobs still get their machines and nothing is reported failed
    assert results["linux"].ok and results["linux"].desired_after == 2
    assert prewarm_stack.desired("test-linux") == 2


def test_the_tick_gives_pools_to_a_stored_pipeline_whose_resolve_ask_was_lost(
    prewarm_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN a Pipeline hook for a pipeline whose jobs' tags are not cached yet: its stored jobs to come have
    # no pool, and the hook asked for the tags to be resolved...
    stack = prewarm_stack
    project = fake_gitlab.create_project("group/app")
    pipeline, jobs = _build_then_test(fake_gitlab, project)
    host = stack.runtime.gitlab_host
    with Client(app) as client:
        hook = _pipeline_running_compile(stack, project, pipeline, jobs)
        assert post(client, hook, event="Pipeline Hook").status_code == 202
        stored = stack.runtime.pipelines.get(host, pipeline)
        assert stored is not None and {j.pool for j in stored.jobs} == {""}
        # ...but the ask was lost (dead-lettered, or its resolve failed), and no Job hook came since: the
        # tick's unrouted step has no unrouted job of this pipeline to fetch it for
        assert [body for body in stack.queued_messages() if "resolve" in body]
        # WHEN the tick runs
        _tick(client)
    # THEN the stored pipeline's jobs to come have their pool, so prewarm can count them
    stored = stack.runtime.pipelines.get(host, pipeline)
    assert stored is not None
    pools = {j.job_id: j.pool for j in stored.jobs if j.status == "created"}
    assert pools == {jobs[1]: "linux", jobs[2]: "linux"}
