"""`LongPendingJobs` through the tick: jobs pending past `stale_job_after` while their pool had room are the
alarm-worthy kind; at `max_instances` the wait is the cap's and `Desired` already shows it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.store import JobRecord
from tests.functional.conftest import Stack
from tests.functional.test_heal import tick
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec


def _pending_jobs(stack: Stack, fake: FakeGitLab, count: int) -> None:
    """`count` linux jobs pending in GitLab, heard of once by the scaler (then their hooks went quiet)."""
    project = fake.create_project("group/app")
    ref = fake.create_pipeline(project, [JobSpec(f"job-{n}", tags=("linux",)) for n in range(count)])
    rt = stack.runtime
    for job_id in ref.job_ids:
        record = JobRecord(rt.gitlab_host, job_id, "pending", project_id=project, pool="linux")
        rt.store.record_job(record, rt.now())


def _long_pending(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"_aws"')]
    return [b for b in lines if "LongPendingJobs" in b]


def test_jobs_waiting_long_in_a_pool_with_room_are_reported(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN two jobs pending for 20 minutes (stale_job_after is 10m) in a pool far below max_instances 5
    _pending_jobs(gitlab_stack, fake_gitlab, 2)
    gitlab_stack.advance(minutes=20)
    capsys.readouterr()
    with Client(app) as client:
        tick(client)
    # THEN the tick reports them for the pool: something other than capacity holds them
    (blob,) = _long_pending(capsys)
    assert (blob["LongPendingJobs"], blob["pool"], blob["platform"]) == ([2.0], "linux", "linux")


def test_jobs_waiting_at_max_instances_are_not_alarm_worthy(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN more long-pending jobs than the pool's max_instances (5) may ever serve at once
    _pending_jobs(gitlab_stack, fake_gitlab, 7)
    gitlab_stack.advance(minutes=20)
    capsys.readouterr()
    with Client(app) as client:
        payload = tick(client)
    # THEN the pool is at its cap, and the wait is not reported as unexplained
    assert payload["pools"]["linux"]["desired"] == 5
    assert _long_pending(capsys) == []


def test_long_pending_jobs_are_reported_by_the_queued_reconcile_when_the_tick_fans_out(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN two long-pending jobs, and a deployment whose tick queues every pool's reconcile
    _pending_jobs(gitlab_stack, fake_gitlab, 2)
    gitlab_stack.advance(minutes=20)
    gitlab_stack.fan_out()
    capsys.readouterr()
    with Client(app) as client:
        tick(client)
        # THEN the tick, which judged no pool's room, reports nothing itself...
        assert _long_pending(capsys) == []
        bodies = [b for b in gitlab_stack.queued_messages() if json.loads(b)["pool"] == "linux"]
        event = client.events.generate_sqs_event(message_bodies=bodies, queue_name="test-dirty.fifo")
        client.lambda_.invoke("pool_dirty", event)
    # ...and the linux pool's own reconcile, which saw its room, does
    (blob,) = _long_pending(capsys)
    assert (blob["LongPendingJobs"], blob["pool"], blob["platform"]) == ([2.0], "linux", "linux")
