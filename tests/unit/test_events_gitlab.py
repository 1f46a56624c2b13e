"""GitLab webhook models: doc payloads, both timestamp spellings, malformed input, identity, status order.

Fixtures come from GitLab's "Webhook events" page (docs.gitlab.com/ee/user/project/integrations/
webhook_events.html): gitlab_job_hook.json ("Job events", the doc's // comments and trailing comma
removed), gitlab_pipeline_hook.json ("Pipeline events"), gitlab_push_hook.json ("Push events", one commit
kept), gitlab_member_hook.json ("Group member events", no object_kind).
Headers follow "Webhooks > Delivery headers".
"""

from __future__ import annotations

import copy
import functools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.errors import MalformedEventError, RunnerScalerError
from chalicelib.events.gitlab import (
    IgnoredEvent,
    JobHook,
    JobStatus,
    PipelineHook,
    WebhookHeaders,
    event_identity,
    is_active,
    is_terminal,
    parse_gitlab_event,
    status_rank,
)
from toolkit.samples import BuildSample, job_hook_payload, pipeline_hook_payload, webhook_headers

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOKEN = "glpat-3f9c1a7e5b2d4c6a8e0f"
NOW = datetime(2026, 3, 2, 9, 30, 15, 123000, tzinfo=UTC)


@functools.cache
def _fixture_text(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text()


def fixture(name: str) -> dict[str, Any]:
    """A fresh copy of a doc payload (tests mutate it)."""
    data: dict[str, Any] = json.loads(_fixture_text(name))
    return data


def job_headers(**extra: str) -> dict[str, str]:
    return {"X-Gitlab-Event": "Job Hook", "X-Gitlab-Token": TOKEN, **extra}


def parse_job(body: Any, **headers: str) -> JobHook:
    event = parse_gitlab_event(job_headers(**headers), body)
    assert isinstance(event, JobHook)
    return event


def reason_of(headers: dict[str, Any], body: Any) -> str:
    with pytest.raises(MalformedEventError) as caught:
        parse_gitlab_event(headers, body)
    return caught.value.reason


# --- real payloads ------------------------------------------------------------------------------------------


def test_job_hook_doc_sample_parses_with_aware_utc_times_and_the_runners_tags() -> None:
    # GIVEN GitLab's documented Job hook, as bytes on the wire
    body = json.dumps(fixture("gitlab_job_hook")).encode()
    # WHEN it is parsed
    hook = parse_job(body)
    # THEN every field we route on is there, times are aware UTC, tags are the runner's
    assert (hook.build_id, hook.build_status, hook.build_name, hook.build_stage) == (
        1977,
        JobStatus.CREATED,
        "test",
        "test",
    )
    assert (hook.pipeline_id, hook.project_id, hook.retries_count) == (2366, 380, 2)
    assert hook.build_created_at == datetime(2021, 2, 23, 2, 41, 37, 886000, tzinfo=UTC)
    assert hook.build_started_at is None and hook.build_finished_at is None
    assert hook.build_queued_duration == pytest.approx(1095.588715)
    assert hook.runner_id == 380987
    assert hook.runner is not None and hook.runner.tags == ["linux", "docker"]
    assert (
        hook.commit is not None and hook.commit.id == hook.pipeline_id
    )  # GitLab: commit.id is the pipeline id
    assert hook.project is not None and hook.project.path_with_namespace == "gitlab-org/gitlab-test"
    assert hook.source_pipeline is not None and hook.source_pipeline.job_id == 3401


def test_pipeline_hook_doc_sample_parses_every_build() -> None:
    hook = parse_gitlab_event({"X-Gitlab-Event": "Pipeline Hook"}, fixture("gitlab_pipeline_hook"))

    assert isinstance(hook, PipelineHook)
    attributes = hook.object_attributes
    assert (attributes.id, attributes.iid, attributes.status, attributes.stages) == (
        31,
        3,
        JobStatus.SUCCESS,
        ["build", "test", "deploy"],
    )
    assert attributes.finished_at == datetime(2016, 8, 12, 15, 26, 29, tzinfo=UTC)
    assert hook.project is not None and hook.project.id == 1
    assert [(b.id, b.status) for b in hook.builds] == [
        (380, JobStatus.SKIPPED),
        (377, JobStatus.SUCCESS),
        (378, JobStatus.FAILED),
        (376, JobStatus.SUCCESS),
        (379, JobStatus.CREATED),
    ]
    # Tags appear only where a runner picked the job, and they are the runner's.
    assert [b.runner.tags if b.runner else None for b in hook.builds] == [
        None,
        ["linux", "docker", "shared-runner"],
        ["linux", "docker"],
        ["linux", "docker"],
        None,
    ]
    assert (
        hook.builds[0].environment is not None and hook.builds[0].environment.deployment_tier == "production"
    )


def test_pipeline_variables_never_print_their_values() -> None:
    hook = parse_gitlab_event({}, fixture("gitlab_pipeline_hook"))

    assert isinstance(hook, PipelineHook)
    variable = hook.object_attributes.variables[0]
    assert variable.key == "NESTOR_PROD_ENVIRONMENT"
    assert variable.value is not None and variable.value.get_secret_value() == "us-west-1"
    assert "us-west-1" not in repr(hook)


@pytest.mark.parametrize(
    ("headers", "name", "kind"),
    [
        ({"X-Gitlab-Event": "Push Hook"}, "gitlab_push_hook", "push"),
        ({}, "gitlab_push_hook", "push"),
        ({"X-Gitlab-Event": "Member Hook"}, "gitlab_member_hook", "user_add_to_group"),
    ],
)
def test_uninteresting_doc_events_are_accepted_and_ignored(
    headers: dict[str, str], name: str, kind: str
) -> None:
    event = parse_gitlab_event(headers, fixture(name))

    assert isinstance(event, IgnoredEvent)
    assert event.kind == kind


@pytest.mark.parametrize(
    ("header", "body"),
    [
        ("Merge Request Hook", {"object_kind": "merge_request", "object_attributes": {"iid": 1}}),
        ("Note Hook", {"object_kind": "note"}),
        ("Some Future Hook", {"object_kind": "some_future_kind", "whatever": [1, 2, 3]}),
        ("Deployment Hook", {"object_kind": "deployment", "status": "success"}),
        ("Emoji Hook", {}),
    ],
)
def test_any_other_kind_is_ignored_even_one_we_do_not_know(header: str, body: dict[str, Any]) -> None:
    event = parse_gitlab_event({"X-Gitlab-Event": header}, body)

    assert isinstance(event, IgnoredEvent)
    assert event.kind == body.get("object_kind", "emoji")


@pytest.mark.parametrize("status", list(JobStatus))
def test_every_job_status_parses_in_job_and_pipeline_hooks(status: JobStatus) -> None:
    job = fixture("gitlab_job_hook") | {"build_status": status.value}
    pipeline = fixture("gitlab_pipeline_hook")
    pipeline["object_attributes"]["status"] = status.value
    pipeline["builds"][0]["status"] = status.value

    assert parse_job(job).build_status == status
    parsed = parse_gitlab_event({"X-Gitlab-Event": "Pipeline Hook"}, pipeline)
    assert isinstance(parsed, PipelineHook)
    assert parsed.object_attributes.status == status and parsed.builds[0].status == status


def test_waiting_for_callback_is_a_status_gitlab_sends() -> None:
    """gitlabhq `app/models/concerns/ci/has_status.rb` AVAILABLE_STATUSES lists it (GitLab 17.x), and
    `app/models/commit_status.rb` moves jobs out of it to success or failed: it waits on no runner."""
    assert "waiting_for_callback" in set(JobStatus)
    assert status_rank("waiting_for_callback") == status_rank("created")
    assert not is_active("waiting_for_callback") and not is_terminal("waiting_for_callback")


@settings(max_examples=50, deadline=None)
@given(status=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=30))
def test_a_status_we_do_not_know_parses_and_ranks_like_created(status: str) -> None:
    # GIVEN hooks of a newer GitLab, with a status this code has never seen
    job = fixture("gitlab_job_hook") | {"build_status": status}
    pipeline = fixture("gitlab_pipeline_hook")
    pipeline["object_attributes"]["status"] = status
    pipeline["builds"][0]["status"] = status
    # WHEN they are parsed, THEN they are hooks like any other, and the status ranks like `created` if unknown
    assert parse_job(job).build_status == status
    parsed = parse_gitlab_event({}, pipeline)
    assert isinstance(parsed, PipelineHook) and parsed.builds[0].status == status
    if status not in set(JobStatus):
        assert status_rank(status) == status_rank("created")
        assert not is_active(status) and not is_terminal(status)


# --- timestamps ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "2021-02-23 02:41:37 UTC",  # pipeline hooks, older job hooks
        "2021-02-23T02:41:37.000Z",  # job hooks today
        "2021-02-23T02:41:37Z",  # the *_iso twins
        "2021-02-23T03:41:37+01:00",  # commit timestamps
        "2021-02-23 03:41:37 +0100",  # deployment hooks
        "2021-02-22T21:41:37-05:00",
    ],
)
def test_both_gitlab_timestamp_spellings_give_the_same_aware_utc_instant(spelling: str) -> None:
    body = fixture("gitlab_job_hook") | {"build_started_at": spelling, "build_status": "running"}

    started = parse_job(body).build_started_at

    assert started == datetime(2021, 2, 23, 2, 41, 37, tzinfo=UTC)
    assert started is not None and started.utcoffset() == timedelta(0)


def test_iso_twin_fills_a_missing_plain_timestamp() -> None:
    body = fixture("gitlab_job_hook")
    del body["build_created_at"]

    assert parse_job(body).build_created_at == datetime(2021, 2, 23, 2, 41, 37, tzinfo=UTC)


def test_timestamp_without_a_zone_is_dropped_not_guessed() -> None:
    body = fixture("gitlab_job_hook") | {"build_created_at": "2021-02-23 02:41:37"}
    body["build_created_at_iso"] = None

    hook = parse_job(body)

    assert hook.build_created_at is None and hook.build_id == 1977


def test_a_field_we_cannot_read_is_dropped_and_the_hook_kept() -> None:
    # GIVEN hooks whose optional fields changed shape (a GitLab we do not know yet)
    body = fixture("gitlab_job_hook") | {"build_duration": "long", "retries_count": {"n": 2}}
    body["runner"] = {"description": "no id"}
    pipeline = fixture("gitlab_pipeline_hook")
    pipeline["builds"][1] = {"status": "pending", "name": "no id"}
    pipeline["builds"][2]["created_at"] = "yesterday"
    # WHEN they are parsed
    hook = parse_job(body)
    parsed = parse_gitlab_event({}, pipeline)
    # THEN each is recorded as far as it goes: the unreadable fields take their defaults, a build without
    # its id is left out, every other build is kept
    assert (hook.build_id, hook.build_status) == (1977, "created")
    assert (hook.build_duration, hook.retries_count) == (None, 0)
    assert hook.runner is None
    assert isinstance(parsed, PipelineHook)
    assert len(parsed.builds) == len(fixture("gitlab_pipeline_hook")["builds"]) - 1
    assert all(b.id for b in parsed.builds)


def test_older_gitlab_job_hook_takes_pipeline_and_project_from_their_twins() -> None:
    """gitlabhq `lib/gitlab/data_builder/build.rb`: older versions had no `pipeline_id` and sent the pipeline
    only as `commit.id` ("commit.id is actually the pipeline id"); `project.id` repeats `project_id`."""
    body = fixture("gitlab_job_hook")
    del body["pipeline_id"]
    del body["project_id"]

    hook = parse_job(body)

    assert (hook.pipeline_id, hook.project_id) == (2366, 380)


@pytest.mark.parametrize(
    ("kind", "body", "why"),
    [
        ("build", {"object_kind": "build", "build_id": 5, "build_status": "pending"}, "project_id"),
        ("build", {"object_kind": "build", "build_id": 5, "project_id": 3}, "build_status"),
        ("build", {"object_kind": "build", "build_id": 5, "project_id": 3, "build_status": 7}, "status"),
        ("pipeline", {"object_kind": "pipeline", "object_attributes": {"id": 4, "status": "ok"}}, "project"),
        (
            "pipeline",
            {"object_kind": "pipeline", "object_attributes": {"id": 4}, "project": {"id": 1}},
            "object_attributes.status",
        ),
    ],
)
def test_a_hook_with_an_id_but_without_what_we_need_is_ignored_with_the_reason(
    kind: str, body: dict[str, Any], why: str
) -> None:
    event = parse_gitlab_event({}, body)

    assert isinstance(event, IgnoredEvent)
    assert event.kind == kind and why in event.reason


# --- leniency -----------------------------------------------------------------------------------------------


def test_unknown_fields_are_accepted_at_every_level() -> None:
    body = fixture("gitlab_job_hook") | {"brand_new_field": {"nested": True}}
    body["runner"] = body["runner"] | {"runner_manager": {"id": 9}}
    body["project"] = body["project"] | {"ci_config_path": ""}
    pipeline = fixture("gitlab_pipeline_hook")
    pipeline["object_attributes"]["protected_ref"] = True
    pipeline["builds"][1]["tag_list"] = ["surprise"]

    assert parse_job(body).runner_id == 380987
    assert isinstance(parse_gitlab_event({}, pipeline), PipelineHook)


def test_fields_gitlab_may_omit_or_null_are_optional() -> None:
    body = {
        "object_kind": "build",
        "build_id": 1,
        "build_name": "n",
        "build_stage": "s",
        "build_status": "pending",
        "pipeline_id": 2,
        "project_id": 3,
        "runner": None,
        "environment": None,
        "commit": None,
    }
    pipeline = fixture("gitlab_pipeline_hook") | {"builds": None, "merge_request": None}
    pipeline["object_attributes"]["variables"] = None

    hook = parse_job(body)
    assert (hook.runner_id, hook.retries_count, hook.build_created_at) == (None, 0, None)
    parsed = parse_gitlab_event({}, pipeline)
    assert isinstance(parsed, PipelineHook) and parsed.builds == []


def test_headers_are_read_whatever_their_case_or_spelling() -> None:
    headers = WebhookHeaders.from_mapping(
        {
            "x-gitlab-event": "Job Hook",
            "X-GITLAB-TOKEN": TOKEN,
            "X_Gitlab_Event_UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e",
            "x-gitlab-webhook-uuid": "02affd2d-2cba-4033-917d-ec22d5dc4b38",
            "idempotency-key": " f5e5f430-f57b-4e6e-9fac-d9128cd7232f ",
            "X-Gitlab-Instance": "https://gitlab.com",
            "User-Agent": "GitLab/17.4.0",
            "Content-Type": "application/json",
        }
    )

    assert headers.x_gitlab_event == "Job Hook"
    assert headers.x_gitlab_token is not None and headers.x_gitlab_token.get_secret_value() == TOKEN
    assert headers.x_gitlab_event_uuid == "13792a34-cac6-4fda-95a8-c58e00a3954e"
    assert headers.idempotency_key == "f5e5f430-f57b-4e6e-9fac-d9128cd7232f"
    assert (headers.x_gitlab_instance, headers.user_agent) == ("https://gitlab.com", "GitLab/17.4.0")


def test_the_token_never_prints() -> None:
    headers = WebhookHeaders.from_mapping(job_headers())

    assert TOKEN not in repr(headers) and TOKEN not in str(headers)
    assert TOKEN not in headers.model_dump_json()


# --- malformed ----------------------------------------------------------------------------------------------


def _job_without(field: str) -> dict[str, Any]:
    body = fixture("gitlab_job_hook")
    del body[field]
    return body


MALFORMED: list[tuple[str, dict[str, Any], Any, str]] = [
    ("not JSON", job_headers(), b"{not json", "not JSON"),
    ("not UTF-8", job_headers(), b"\xff\xfe{}", "UTF-8"),
    ("a list", job_headers(), b"[1, 2]", "list"),
    ("a string", job_headers(), '"build"', "str"),
    ("a number", job_headers(), "42", "int"),
    ("not text at all", job_headers(), 42, "not JSON text"),
    ("header says job, body pipeline", job_headers(), fixture("gitlab_pipeline_hook"), "needs object_kind"),
    (
        "header says pipeline, body job",
        {"X-Gitlab-Event": "Pipeline Hook"},
        fixture("gitlab_job_hook"),
        "needs object_kind",
    ),
    ("job body under push header", {"X-Gitlab-Event": "Push Hook"}, fixture("gitlab_job_hook"), "arrived as"),
    ("header says job, no object_kind", job_headers(), {"build_id": 1}, "body has none"),
    ("object_kind not text", {}, {"object_kind": 7}, "not a string"),
    ("no kind at all", {}, {"build_id": 1}, "no object_kind"),
    ("job without build_id", job_headers(), _job_without("build_id"), "build_id"),
    ("id not a number", job_headers(), fixture("gitlab_job_hook") | {"build_id": "abc"}, "build_id"),
    (
        "pipeline without attributes",
        {},
        {"object_kind": "pipeline", "project": {"id": 1}},
        "object_attributes",
    ),
    ("idempotency key too long", job_headers(**{"Idempotency-Key": "k" * 300}), {}, "Idempotency-Key"),
    ("header not text", {"X-Gitlab-Event": 5}, {}, "X-Gitlab-Event is not text"),
    (
        "conflicting duplicate headers",
        {"X-Gitlab-Event": "Job Hook", "x-gitlab-event": "Push Hook"},
        {},
        "twice",
    ),
]


@pytest.mark.parametrize(
    ("headers", "body", "expected"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_every_malformed_delivery_gives_a_one_line_reason_without_the_token(
    headers: dict[str, Any], body: Any, expected: str
) -> None:
    reason = reason_of(headers, body)

    assert expected in reason
    assert "\n" not in reason and len(reason) <= 300
    assert TOKEN not in reason


def test_malformed_event_error_is_a_project_error() -> None:
    assert issubclass(MalformedEventError, RunnerScalerError)
    assert str(MalformedEventError("a\nb   c")) == "a b c"


def test_a_reason_that_would_quote_the_token_is_withheld() -> None:
    # GIVEN a body that echoes the token where a reason would quote it
    body = fixture("gitlab_job_hook") | {"object_kind": TOKEN}
    # WHEN it is parsed
    reason = reason_of(job_headers(), body)
    # THEN the reason says what happened without any piece of the token
    assert "withheld" in reason
    assert TOKEN[:8] not in reason


# --- identity -----------------------------------------------------------------------------------------------


def _delivery(body: dict[str, Any], **headers: str) -> tuple[dict[str, str], JobHook | PipelineHook]:
    all_headers = job_headers(**headers) if body["object_kind"] == "build" else headers
    event = parse_gitlab_event(all_headers, body)
    assert isinstance(event, JobHook | PipelineHook)
    return all_headers, event


def _identity(body: dict[str, Any], **headers: str) -> str:
    return event_identity(*_delivery(body, **headers))


def test_distinct_job_events_sharing_one_event_uuid_get_distinct_identities() -> None:
    # GIVEN one request that fired several job hooks: GitLab gives them all the same X-Gitlab-Event-UUID
    shared = {"X-Gitlab-Event-UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e"}
    bodies = [
        job_hook_payload(10, "pending", project_id=1, pipeline_id=5, stage="test", name="a", now=NOW),
        job_hook_payload(11, "pending", project_id=1, pipeline_id=5, stage="test", name="b", now=NOW),
        job_hook_payload(
            10, "running", project_id=1, pipeline_id=5, stage="test", name="a", now=NOW, runner_id=3
        ),
    ]
    # WHEN each gets its identity
    identities = {_identity(body, **shared) for body in bodies}
    # THEN none is mistaken for a duplicate of another
    assert len(identities) == 3


def test_a_resend_with_the_same_idempotency_key_is_the_same_identity() -> None:
    body = job_hook_payload(
        10, "running", project_id=1, pipeline_id=5, stage="t", name="a", now=NOW, runner_id=3
    )
    first = _identity(
        body, **{"Idempotency-Key": "f5e5f430-f57b-4e6e-9fac-d9128cd7232f", "X-Gitlab-Webhook-UUID": "w-1"}
    )
    resend = _identity(
        body, **{"Idempotency-Key": "f5e5f430-f57b-4e6e-9fac-d9128cd7232f", "X-Gitlab-Webhook-UUID": "w-2"}
    )

    assert first == resend
    assert "f5e5f430-f57b-4e6e-9fac-d9128cd7232f" in first


def test_a_pre_17_4_resend_without_key_is_the_same_identity() -> None:
    # GIVEN one payload delivered twice, each time with new webhook and event UUIDs, no Idempotency-Key
    body = job_hook_payload(
        10, "success", project_id=1, pipeline_id=5, stage="t", name="a", now=NOW, runner_id=3
    )
    first = _identity(body, **{"X-Gitlab-Webhook-UUID": "w-1", "X-Gitlab-Event-UUID": "e-1"})
    # WHEN the resend arrives (re-serialized with keys in another order)
    resend = _identity(
        dict(reversed(list(body.items()))), **{"X-Gitlab-Webhook-UUID": "w-2", "X-Gitlab-Event-UUID": "e-2"}
    )
    # THEN it is recognised as the same event
    assert first == resend
    assert "|sha256|" in first


def test_identity_ignores_how_gitlab_spelled_the_timestamps() -> None:
    iso = fixture("gitlab_job_hook") | {"build_created_at": "2021-02-23T02:41:37.000Z"}
    legacy = fixture("gitlab_job_hook") | {"build_created_at": "2021-02-23 02:41:37 UTC"}

    assert _identity(iso) == _identity(legacy)


def test_identity_changes_with_the_job_status_and_the_gitlab_instance() -> None:
    pending = job_hook_payload(10, "pending", project_id=1, pipeline_id=5, stage="t", name="a", now=NOW)
    running = job_hook_payload(10, "running", project_id=1, pipeline_id=5, stage="t", name="a", now=NOW)

    assert _identity(pending) != _identity(running)
    assert _identity(pending, **{"X-Gitlab-Instance": "https://gitlab.com"}) != _identity(
        pending, **{"X-Gitlab-Instance": "https://gitlab.example.com"}
    )
    assert _identity(pending, **{"X-Gitlab-Instance": "https://GitLab.com/"}) == _identity(
        pending, **{"X-Gitlab-Instance": "https://gitlab.com"}
    )


def test_pipeline_identity_follows_its_jobs_not_their_order() -> None:
    builds = [BuildSample(1, "success", "build", "b"), BuildSample(2, "pending", "test", "t")]
    body = pipeline_hook_payload(9, "running", project_id=1, builds=builds, now=NOW)
    reordered = copy.deepcopy(body)
    reordered["builds"].reverse()
    progressed = pipeline_hook_payload(
        9,
        "running",
        project_id=1,
        builds=[builds[0], BuildSample(2, "running", "test", "t", runner_id=4)],
        now=NOW,
    )

    assert _identity(body) == _identity(reordered)
    assert _identity(body) != _identity(progressed)


def test_ignored_events_have_a_stable_identity_too() -> None:
    push = parse_gitlab_event({"X-Gitlab-Event": "Push Hook"}, fixture("gitlab_push_hook"))

    assert event_identity({}, push) == event_identity(WebhookHeaders(), push)


# --- status order -------------------------------------------------------------------------------------------

# GitLab's state machine (app/models/commit_status.rb, app/models/ci/build.rb): (from, to) for every event.
FORWARD_TRANSITIONS = {
    *((s, "pending") for s in ("created", "preparing", "manual", "scheduled", "waiting_for_resource")),
    ("created", "waiting_for_resource"),
    ("created", "preparing"),
    ("waiting_for_resource", "preparing"),
    ("created", "manual"),
    ("created", "scheduled"),
    ("scheduled", "manual"),
    ("manual", "waiting_for_resource"),
    ("manual", "created"),
    ("pending", "running"),
    ("running", "canceling"),
    ("canceling", "canceled"),
    *((s, "skipped") for s in ("created", "preparing", "pending")),
    *(
        (s, "failed")
        for s in ("created", "preparing", "pending", "running", "scheduled", "waiting_for_resource")
    ),
    *((s, "success") for s in ("created", "preparing", "pending", "running")),
    *(
        (s, "canceled")
        for s in ("created", "preparing", "pending", "running", "manual", "scheduled", "waiting_for_resource")
    ),
}
# `process`/`enqueue` reopen a skipped job when an earlier one is retried: the one documented exception.
REOPENING_TRANSITIONS = {("skipped", "created"), ("skipped", "pending")}


@pytest.mark.parametrize(("before", "after"), sorted(FORWARD_TRANSITIONS))
def test_status_rank_never_decreases_along_gitlabs_state_machine(before: str, after: str) -> None:
    assert status_rank(before) <= status_rank(after)


def test_status_rank_is_a_total_order_waiting_pending_running_canceling_done() -> None:
    ranks = {status: status_rank(status) for status in JobStatus}

    assert sorted(set(ranks.values())) == [0, 1, 2, 3, 4]
    assert ranks[JobStatus.CREATED] < ranks[JobStatus.PENDING] < ranks[JobStatus.RUNNING]
    assert ranks[JobStatus.RUNNING] < ranks[JobStatus.CANCELING] < ranks[JobStatus.SUCCESS]
    assert {s for s in JobStatus if is_terminal(s)} == {"success", "failed", "canceled", "skipped"}
    assert {s for s in JobStatus if is_active(s)} == {"pending", "running", "canceling"}
    assert all(status_rank(before) > status_rank(after) for before, after in REOPENING_TRANSITIONS)


def _walks() -> st.SearchStrategy[list[str]]:
    """Random paths through GitLab's forward transitions, starting at `created`."""

    @st.composite
    def walk(draw: st.DrawFn) -> list[str]:
        path = ["created"]
        for _ in range(draw(st.integers(0, 6))):
            nexts = sorted(after for before, after in FORWARD_TRANSITIONS if before == path[-1])
            if not nexts:
                break
            path.append(draw(st.sampled_from(nexts)))
        return path

    return walk()


@settings(max_examples=300, deadline=None)
@given(path=_walks(), order=st.randoms(use_true_random=False))
def test_keeping_the_higher_rank_survives_any_delivery_order(path: list[str], order: Any) -> None:
    # GIVEN a job's real history, delivered shuffled (webhooks race)
    deliveries = list(path)
    order.shuffle(deliveries)
    # WHEN a store keeps only status updates of higher rank
    kept = deliveries[0]
    for status in deliveries[1:]:
        if status_rank(status) > status_rank(kept):
            kept = status
    # THEN it ends at the rank of the job's true last status
    assert status_rank(kept) == status_rank(path[-1])


# --- robustness (hypothesis) --------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=10,
)
SMALL_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=4,
)
HEADER_NAMES = st.sampled_from(
    [
        "X-Gitlab-Event",
        "x-gitlab-token",
        "X-Gitlab-Event-UUID",
        "Idempotency-Key",
        "X-Gitlab-Instance",
        "Accept",
    ]
) | st.text(max_size=12)
HEADER_VALUES = st.sampled_from(["Job Hook", "Pipeline Hook", "Push Hook", "", "  "]) | st.text(max_size=40)
HEADERS = st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=5)
KINDS = st.sampled_from(["build", "pipeline", "push", "note"]) | st.text(max_size=8) | st.none()


def _assert_parses_or_is_malformed(headers: dict[str, Any], body: Any) -> None:
    try:
        event = parse_gitlab_event(headers, body)
    except MalformedEventError as err:
        assert "\n" not in err.reason
        return
    assert isinstance(event, JobHook | PipelineHook | IgnoredEvent)
    event_identity(headers, event)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=HEADERS, body=JSON)
def test_any_json_value_parses_or_is_malformed(headers: dict[str, Any], body: Any) -> None:
    _assert_parses_or_is_malformed(headers, json.dumps(body))


@settings(max_examples=1000, deadline=None)
@given(headers=HEADERS, body=st.binary(max_size=64))
def test_any_bytes_parse_or_are_malformed(headers: dict[str, Any], body: bytes) -> None:
    _assert_parses_or_is_malformed(headers, body)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.sampled_from(["Job Hook", "Pipeline Hook", "Push Hook"]) | st.none(),
    sample=st.sampled_from(["gitlab_job_hook", "gitlab_pipeline_hook"]),
    kind=KINDS,
    mutations=st.dictionaries(
        st.sampled_from(["build_id", "build_status", "build_started_at", "runner", "project_id", "builds"])
        | st.sampled_from(["object_attributes", "project", "build_created_at", "pipeline_id"]),
        SMALL_JSON,
        max_size=3,
    ),
    token=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=16, max_size=32),
)
def test_near_valid_payloads_parse_or_are_malformed_and_never_leak_the_token(
    header: str | None, sample: str, kind: str | None, mutations: dict[str, Any], token: str
) -> None:
    body = fixture(sample) | mutations | ({"object_kind": kind} if kind is not None else {})
    headers = {"X-Gitlab-Token": token} | ({"X-Gitlab-Event": header} if header else {})
    try:
        parse_gitlab_event(headers, body)
    except MalformedEventError as err:
        assert token not in err.reason and "\n" not in err.reason


# --- samples ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(JobStatus))
def test_job_hook_sample_parses_for_every_status(status: JobStatus) -> None:
    body = job_hook_payload(
        77,
        status,
        project_id=4,
        pipeline_id=8,
        stage="build",
        name="compile",
        now=NOW,
        tags=["mac"],
        runner_id=12,
    )

    hook = parse_job(json.dumps(body))

    assert (hook.build_id, hook.build_status, hook.project_id, hook.pipeline_id) == (77, status, 4, 8)
    assert hook.runner is not None and hook.runner.tags == ["mac"]
    assert (hook.build_started_at is not None) == (status in {"running", "canceling", "success", "failed"})
    assert (hook.build_finished_at is not None) == (status in {"success", "failed", "canceled"})
    assert hook.build_created_at == NOW.replace(microsecond=123000)


def test_job_hook_sample_matches_the_doc_samples_keys() -> None:
    sample = job_hook_payload(1, "pending", project_id=1, pipeline_id=1, stage="s", name="n", now=NOW)

    missing = set(fixture("gitlab_job_hook")) - set(sample) - {"source_pipeline"}
    assert missing == set()
    assert sample["runner"] is None  # a pending job has no runner, hence no tags


def test_pending_job_sample_has_queued_time_and_no_start() -> None:
    created = NOW - timedelta(seconds=90)
    hook = parse_job(
        job_hook_payload(
            1, "pending", project_id=1, pipeline_id=1, stage="s", name="n", now=NOW, created_at=created
        )
    )

    assert hook.build_queued_duration == pytest.approx(90.0)
    assert hook.build_started_at is None and hook.runner_id is None


def test_pipeline_hook_sample_parses_and_keeps_stage_order() -> None:
    builds = [
        BuildSample(1, "success", "build", "compile", runner_id=5, tags=("linux",), created_at=NOW),
        BuildSample(2, "running", "test", "unit", runner_id=6, tags=("linux",)),
        BuildSample(3, "created", "deploy", "prod"),
        BuildSample(4, "manual", "deploy", "canary"),
    ]
    body = pipeline_hook_payload(40, "running", project_id=7, builds=builds, now=NOW + timedelta(minutes=5))

    hook = parse_gitlab_event(webhook_headers("Pipeline Hook", token=TOKEN), json.dumps(body))

    assert isinstance(hook, PipelineHook)
    assert hook.object_attributes.stages == ["build", "test", "deploy"]
    assert hook.object_attributes.created_at == NOW.replace(microsecond=0)
    assert [(b.id, b.status, b.runner.tags if b.runner else None) for b in hook.builds] == [
        (1, JobStatus.SUCCESS, ["linux"]),
        (2, JobStatus.RUNNING, ["linux"]),
        (3, JobStatus.CREATED, None),
        (4, JobStatus.MANUAL, None),
    ]
    assert hook.builds[3].manual is True


def test_pipeline_hook_sample_matches_the_doc_samples_keys() -> None:
    doc = fixture("gitlab_pipeline_hook")
    sample = pipeline_hook_payload(
        1, "success", project_id=1, builds=[BuildSample(1, "success", "b", "b")], now=NOW
    )

    assert set(doc) - set(sample) == {"source_pipeline"}
    assert set(doc["object_attributes"]) <= set(sample["object_attributes"])
    assert set(doc["builds"][0]) == set(sample["builds"][0])


def test_webhook_headers_sample_parses() -> None:
    headers = WebhookHeaders.from_mapping(
        webhook_headers("Job Hook", token=TOKEN, idempotency_key="k-1", event_uuid="e-1", webhook_uuid="w-1")
    )

    assert (headers.x_gitlab_event, headers.idempotency_key, headers.x_gitlab_event_uuid) == (
        "Job Hook",
        "k-1",
        "e-1",
    )
    assert headers.user_agent == "GitLab/17.4.0"
