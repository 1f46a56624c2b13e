"""`POST /webhooks/gitlab` with hook bodies others have published, from several GitLab versions and shapes.

Each file under tests/fixtures/published/ names its origin (repository, path, commit) and what it shows:
captures and doc examples kept by the go-gitlab client library (GitLab 9.x to GitLab.com 2023). The two
fixtures at the top of tests/fixtures/ are GitLab's own "Webhook events" doc examples (GitLab 17.x). Each body
goes through the Chalice app unchanged, and the job records it leaves are asserted field by field.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.events.gitlab import PipelineHook, parse_gitlab_event
from tests.functional.conftest import WEBHOOK_TOKENS, Stack
from toolkit.samples import webhook_headers

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def published(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "published" / f"{name}.json").read_text())
    assert {"repository", "path", "commit"} <= set(data["origin"]), "every fixture names where it comes from"
    return data


def deliver(body: dict[str, Any], event: str, version: str = "17.4.0") -> tuple[int, dict[str, Any]]:
    headers = webhook_headers(event, token=WEBHOOK_TOKENS[0], version=version)
    with Client(app) as client:
        response = client.http.post("/webhooks/gitlab", headers=headers, body=json.dumps(body))
    return response.status_code, json.loads(response.body)


def stored(stack: Stack, job_id: int) -> Any:
    return stack.runtime.store.get_job(stack.runtime.gitlab_host, job_id)


def test_gitlab_com_capture_of_a_retried_job_is_recorded(stack: Stack) -> None:
    # GIVEN a Job hook GitLab.com sent in 2023: a retried job that succeeded on an instance runner
    hook = published("go_gitlab_job_gitlab_com_2023_retried")
    # WHEN it is delivered
    status, answer = deliver(hook["body"], hook["event"], version="15.8.0-pre")
    # THEN it is accepted and the job stored as GitLab described it
    assert status == 202 and answer["job"] == 3580121225
    job = stored(stack, 3580121225)
    assert (job.status, job.project_id, job.pipeline_id) == ("success", 31537070, 743121198)
    assert (job.name, job.stage, job.runner_id) == ("auto_deploy:start", "coordinated:tag", 12270837)
    assert job.started_at == datetime(2023, 1, 10, 13, 50, 5, tzinfo=UTC)
    assert job.finished_at == datetime(2023, 1, 10, 13, 50, 54, tzinfo=UTC)


def test_an_older_job_hook_without_pipeline_id_takes_it_from_commit_id(stack: Stack) -> None:
    # GIVEN the 2019 doc example: no pipeline_id (gitlabhq `lib/gitlab/data_builder/build.rb` added it later;
    # `commit.id` "is actually the pipeline id"), no runner, no build_created_at
    hook = published("go_gitlab_build_2019_without_pipeline_id")
    assert "pipeline_id" not in hook["body"] and "runner" not in hook["body"]
    # WHEN it is delivered
    status, _ = deliver(hook["body"], hook["event"], version="12.3.0")
    # THEN the job is recorded, in its pipeline, waiting for no runner yet
    assert status == 202
    job = stored(stack, 1977)
    assert (job.status, job.project_id, job.pipeline_id, job.runner_id) == ("created", 380, 2366, None)
    assert (job.name, job.stage) == ("test", "test")


def test_gitlab_17_doc_example_of_a_job_retried_twice_is_recorded(stack: Stack) -> None:
    # GIVEN GitLab's current "Job events" example (tests/fixtures/gitlab_job_hook.json): retries_count 2
    body = json.loads((FIXTURES / "gitlab_job_hook.json").read_text())
    # WHEN it is delivered
    status, _ = deliver(body, "Job Hook")
    # THEN its job is stored with the runner GitLab named
    assert status == 202
    job = stored(stack, 1977)
    assert (job.status, job.project_id, job.pipeline_id, job.runner_id) == ("created", 380, 2366, 380987)


def test_a_merge_request_pipeline_triggered_by_another_pipeline_is_accepted(stack: Stack) -> None:
    # GIVEN the 2023 "Pipeline events" example: a merge-request pipeline with an upstream pipeline, a manual
    # job and a job still created
    hook = published("go_gitlab_pipeline_2023_merge_request_child")
    parsed = parse_gitlab_event({"X-Gitlab-Event": hook["event"]}, hook["body"])
    assert isinstance(parsed, PipelineHook)
    assert parsed.object_attributes.source == "merge_request_event" and parsed.merge_request is not None
    assert parsed.source_pipeline is not None and parsed.source_pipeline.pipeline_id == 30
    assert {b.status for b in parsed.builds} >= {"created", "skipped", "success"}
    assert any(b.manual for b in parsed.builds)
    # WHEN it is delivered, THEN it is accepted for its pipeline
    status, answer = deliver(hook["body"], hook["event"], version="15.11.0")
    assert (status, answer) == (202, {"status": "accepted", "pipeline": 31})


def test_a_gitlab_9_pipeline_hook_without_project_id_is_answered_202_with_the_reason(stack: Stack) -> None:
    # GIVEN the 2017 (GitLab 9.x) "Pipeline events" example: its project has no id
    hook = published("go_gitlab_pipeline_2017_without_project_id")
    assert "id" not in hook["body"]["project"]
    # WHEN it is delivered
    status, answer = deliver(hook["body"], hook["event"], version="9.2.0")
    # THEN it is not refused (a 4xx counts toward disabling the hook): ignored, saying why
    assert status == 202 and answer["status"] == "ignored" and "project.id" in answer["reason"]


@pytest.mark.parametrize(
    "name",
    [
        "go_gitlab_job_gitlab_com_2023_retried",
        "go_gitlab_build_2019_without_pipeline_id",
        "go_gitlab_pipeline_2023_merge_request_child",
        "go_gitlab_pipeline_2017_without_project_id",
    ],
)
def test_every_published_body_is_answered_2xx(stack: Stack, name: str) -> None:
    hook = published(name)
    status, _ = deliver(hook["body"], hook["event"])
    assert 200 <= status < 300
