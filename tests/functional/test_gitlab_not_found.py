"""A GitLab 404 is a GitLabError like any other: it never stops a tick and never makes the webhook answer 5xx.

GitLab answers 404 for a runner deleted outside the scaler (an admin, GitLab's stale-runner cleanup, another
deployment: gitlabhq `lib/api/ci/runners.rb`, `find_runner` -> `not_found!`), and for a pipeline or job of a
project the token cannot see or that was deleted (`lib/api/ci/pipelines.rb`, `lib/api/ci/jobs.rb`).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from chalice.test import Client

from app import app
from chalicelib.errors import GitLabError, GitLabNotFoundError
from chalicelib.gitlab import GitLabClient
from chalicelib.store import JobRecord
from tests.functional.conftest import WEBHOOK_TOKENS, Stack, describe_group
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec
from toolkit.samples import BuildSample, job_hook_payload, pipeline_hook_payload, webhook_headers


def tick(client: Client) -> dict:  # type: ignore[type-arg]
    event = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    return dict(client.lambda_.invoke("tick", event).payload)


def record(stack: Stack, job_id: int, status: str, pool: str, machine_id: str = "") -> None:
    job = JobRecord(stack.runtime.gitlab_host, job_id, status, pool=pool, machine_id=machine_id)
    stack.runtime.store.record_job(job, stack.runtime.now())


def live(stack: Stack, asg: str) -> list[str]:
    return [i["InstanceId"] for i in describe_group(stack.aws, asg)["Instances"]]


def test_a_404_is_a_gitlab_error_that_is_not_retried(fake_gitlab: FakeGitLab) -> None:
    # GIVEN a runner an admin deleted
    gl = GitLabClient(fake_gitlab.url, fake_gitlab.token, max_retries=0, obey_rate_limit=False)
    runner_id, _ = fake_gitlab.register_runner(description="gone")
    assert gl.delete_runner(runner_id) is True
    # WHEN the scaler pauses it, THEN the 404 is a GitLabError (every handler catches those), not retryable
    with pytest.raises(GitLabNotFoundError) as caught:
        gl.pause_runner(runner_id)
    assert isinstance(caught.value, GitLabError)
    assert (caught.value.status, caught.value.retryable) == (404, False)
    assert f"runner {runner_id}" in str(caught.value)


def test_a_runner_deleted_outside_the_scaler_does_not_stop_the_tick(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN an idle linux machine whose runner was deleted in GitLab by someone else
    rt = gitlab_stack.runtime
    record(gitlab_stack, 1, "pending", "linux")
    with Client(app) as client:
        tick(client)
        gitlab_stack.advance(minutes=1)
        tick(client)
        (machine,) = live(gitlab_stack, "test-linux")
        runner_id, _ = fake_gitlab.register_runner(description=f"runner-scaler/linux/{machine}")
        stored = rt.store.get_machine(machine)
        assert stored is not None
        rt.store.put_machine(replace(stored, runner_id=runner_id))
        record(gitlab_stack, 1, "canceled", "linux")
        GitLabClient(fake_gitlab.url, fake_gitlab.token).delete_runner(runner_id)
        # ... and, past that machine's idle_time, a gpu job waiting for a machine
        gitlab_stack.advance(minutes=15)
        record(gitlab_stack, 2, "pending", "gpu")
        # WHEN the tick runs (the linux drain pauses a runner GitLab no longer has)
        payload = tick(client)
    # THEN the tick answered for every pool, and the gpu pool was reconciled
    assert set(payload["pools"]) == {"linux", "gpu"}
    assert payload["pools"]["gpu"] == {"desired": 1, "errors": []}
    assert gitlab_stack.desired("test-gpu") == 1


def post(client: Client, event: str, body: object) -> tuple[int, dict]:  # type: ignore[type-arg]
    headers = webhook_headers(event, token=WEBHOOK_TOKENS[0])
    response = client.http.post("/webhooks/gitlab", headers=headers, body=json.dumps(body))
    return response.status_code, json.loads(response.body)


def test_a_pipeline_lookup_404_is_answered_202(gitlab_stack: Stack, fake_gitlab: FakeGitLab) -> None:
    # GIVEN hooks of a pipeline GitLab no longer has (project deleted since, or the token cannot see it)
    rt = gitlab_stack.runtime
    now = rt.now()
    job = job_hook_payload(7001, "pending", project_id=999, pipeline_id=888, stage="test", name="t", now=now)
    builds = [BuildSample(7001, "pending", "test", "t"), BuildSample(7002, "created", "deploy", "d")]
    pipeline = pipeline_hook_payload(888, "pending", project_id=999, builds=builds, now=now)
    with Client(app) as client:
        # WHEN GitLab delivers them
        job_status, _ = post(client, "Job Hook", job)
        pipeline_status, _ = post(client, "Pipeline Hook", pipeline)
    # THEN both are answered 202 (a 5xx counts toward GitLab disabling the hook), and the job is recorded
    assert (job_status, pipeline_status) == (202, 202)
    stored = rt.store.get_job(rt.gitlab_host, 7001)
    assert stored is not None and stored.status == "pending"


def test_a_fake_project_pipeline_exists(fake_gitlab: FakeGitLab) -> None:
    """Sanity for the scenario above: the fake answers 404 for a pipeline it does not have."""
    gl = GitLabClient(fake_gitlab.url, fake_gitlab.token, max_retries=0, obey_rate_limit=False)
    project = fake_gitlab.create_project("group/app")
    fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))])
    with pytest.raises(GitLabNotFoundError):
        gl.pipeline_jobs(project, 424242)
