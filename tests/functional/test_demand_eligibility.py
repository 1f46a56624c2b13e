"""Demand counts only jobs this deployment's runners can take: GitLab never gives an instance runner a job of
a project with shared runners disabled (gitlabhq app/services/ci/queue/builds_table_strategy.rb
`builds_for_shared_runner`), so such a job must not launch a machine that would idle until scaled in."""

from __future__ import annotations

import json

import pytest
from chalice.test import Client

from app import app
from tests.functional.conftest import Stack
from tests.functional.test_heal import tick
from tests.functional.test_webhooks import post
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec


def pool_metrics(out: str, pool: str) -> dict[str, object]:
    """The pool's last reconcile metrics blob (EMF: each metric's values as a list)."""
    blobs = [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
    return [b for b in blobs if b.get("pool") == pool and "PendingJobs" in b][-1]  # type: ignore[no-any-return]


def test_a_job_of_a_project_without_shared_runners_launches_no_machine(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN instance runners (the deployment's runner_type) and a project that turned shared runners off
    assert gitlab_stack.config.gitlab.runner_type == "instance_type"
    project = fake_gitlab.create_project("group/private", shared_runners_enabled=False)
    (job_id,) = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))]).job_ids
    with Client(app) as client:
        # WHEN its pending job's hook arrives and the pool reconciles
        assert post(client, fake_gitlab.job_hook(job_id)).status_code == 202
        tick(client)
        # THEN no machine is launched for it
        assert gitlab_stack.desired("test-linux") == 0
        # AND the job is counted as one no runner of ours can take
        metrics = pool_metrics(capsys.readouterr().out, "linux")
        assert (metrics["UnpickableJobs"], metrics["PendingJobs"]) == ([1.0], [0.0])
        # AND the project was asked about once; the next reconciles read what the store learned
        tick(client)
        tick(client)
    assert fake_gitlab.request_count("GET", "/projects/:project") == 1


def test_a_job_of_a_project_with_shared_runners_still_launches_one(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    project = fake_gitlab.create_project("group/app")
    (job_id,) = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))]).job_ids
    with Client(app) as client:
        post(client, fake_gitlab.job_hook(job_id))
        tick(client)
    assert gitlab_stack.desired("test-linux") == 1


def test_when_gitlab_cannot_say_the_job_counts(gitlab_stack: Stack, fake_gitlab: FakeGitLab) -> None:
    # GIVEN GitLab failing the project lookup: a spare machine beats a starved job
    project = fake_gitlab.create_project("group/private", shared_runners_enabled=False)
    (job_id,) = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))]).job_ids
    fake_gitlab.inject_failure(f"/projects/{project}", status=503, times=10)
    with Client(app) as client:
        post(client, fake_gitlab.job_hook(job_id))
        tick(client)
    assert gitlab_stack.desired("test-linux") == 1
