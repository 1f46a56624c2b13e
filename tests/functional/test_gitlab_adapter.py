"""The real GitLab adapter (python-gitlab underneath) against the local fake GitLab, plus the fake's webhooks.

GIVEN a FakeGitLab on 127.0.0.1 WHEN the adapter or a simulated runner acts THEN GitLab's documented
requests, responses, retries and webhook payloads are what we see. No real sleep over 0.1 s.
"""

from __future__ import annotations

import logging
import socket
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from chalicelib.errors import GitLabError, GitLabNotFoundError
from chalicelib.gitlab import GitLabApi, GitLabClient, counting, gitlab_client, parse_time
from tests.gitlab_fixtures import T0, Clock, WebhookReceiver, make_tls_material
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec

PREFIX = "runner-scaler/linux/"


@pytest.fixture
def gl(fake: FakeGitLab) -> GitLabClient:
    return GitLabClient(fake.url, fake.token, max_retries=3, timeout=5)


def linux_runner(gl: GitLabApi, instance_id: str = "i-1", **overrides: object) -> int:
    fields: dict[str, object] = {
        "runner_type": "instance_type",
        "description": f"{PREFIX}{instance_id}",
        "tag_list": ["linux", "docker"],
        "run_untagged": False,
        "locked": True,
        "maintenance_note": "managed by runner-scaler",
    }
    fields.update(overrides)
    return gl.create_runner(**fields).id  # type: ignore[arg-type]


# -- runners ----------------------------------------------------------------------------------------


def test_our_runners_are_not_protected_and_take_jobs_of_unprotected_refs(
    gl: GitLabClient, fake: FakeGitLab
) -> None:
    """Demand counts pending jobs of every ref (no protected flag reaches the Job hook: gitlabhq
    lib/gitlab/data_builder/build.rb), so our runners must take them all: a `ref_protected` runner takes only
    protected refs (Ci::Runner#can_pick?, app/models/ci/runner.rb), which the fake imitates."""
    # GIVEN a runner the scaler created, and a job pending on an unprotected branch
    created = gl.create_runner(
        runner_type="instance_type",
        description=f"{PREFIX}i-0abc",
        tag_list=["linux"],
        run_untagged=False,
        locked=False,
    )
    project = fake.create_project("group/app")
    ref = fake.create_pipeline(project, [JobSpec("build", tags=("linux",))], ref="feature/x")
    # WHEN the runner asks GitLab for work
    taken = fake.request_job(created.id)
    # THEN it is a not_protected runner, and it got the job
    assert fake.runners[created.id].access_level == "not_protected"
    assert taken == ref.job_ids[0]


def test_created_runner_is_visible_through_get_and_list(gl: GitLabClient, fake: FakeGitLab) -> None:
    # GIVEN a scaler-made runner and a runner someone else made
    created = gl.create_runner(
        runner_type="instance_type",
        description=f"{PREFIX}i-0abc",
        tag_list=["linux", "docker"],
        run_untagged=False,
        locked=True,
        maintenance_note="managed by runner-scaler",
    )
    fake.register_runner(description="hand-made", tag_list=("linux",))

    # WHEN the scaler reads them back
    info = gl.get_runner(created.id)
    listed = gl.list_runners(PREFIX)

    # THEN the details carry every field it set, and the list holds only its own runner
    assert created.token.startswith("glrt-")
    assert (info.description, info.tag_list, info.run_untagged, info.locked) == (
        f"{PREFIX}i-0abc",
        ("linux", "docker"),
        False,
        True,
    )
    assert (info.paused, info.status, info.online, info.runner_type) == (
        False,
        "never_contacted",
        None,
        "instance_type",
    )
    assert [r.id for r in listed] == [created.id]
    assert listed[0].tag_list is None  # GitLab's list entity has no tags: None, not "untagged"
    assert fake.runners[created.id].maintenance_note == "managed by runner-scaler"


def test_group_and_project_runners_need_their_owner(gl: GitLabClient, fake: FakeGitLab) -> None:
    project_id = fake.create_project("acme/app")
    group_id = fake.projects[project_id].group_id
    assert group_id is not None

    group_runner = gl.create_runner(
        runner_type="group_type",
        group_id=group_id,
        description=f"{PREFIX}g",
        tag_list=[],
        run_untagged=True,
        locked=False,
    )
    project_runner = gl.create_runner(
        runner_type="project_type",
        project_id=project_id,
        description=f"{PREFIX}p",
        tag_list=[],
        run_untagged=True,
        locked=False,
    )

    assert [r.id for r in gl.list_runners(PREFIX, group_id=group_id)] == [group_runner.id]
    assert {r.id for r in gl.list_runners(PREFIX, project_id=project_id)} == {
        group_runner.id,
        project_runner.id,
    }
    with pytest.raises(ValueError, match="group_id"):
        gl.create_runner(
            runner_type="group_type", description="x", tag_list=[], run_untagged=True, locked=False
        )


def test_runner_contact_makes_it_online_and_two_hours_of_silence_offline(
    gl: GitLabClient, fake: FakeGitLab, clock: Clock
) -> None:
    runner_id = linux_runner(gl)
    fake.runner_contact(runner_id)
    online = gl.get_runner(runner_id)
    clock.advance(timedelta(hours=2, seconds=1).total_seconds())
    offline = gl.get_runner(runner_id)

    assert (online.status, online.online, online.contacted_at) == ("online", True, T0)
    assert (offline.status, offline.online) == ("offline", False)


def test_deleting_a_runner_twice_is_fine(gl: GitLabClient) -> None:
    runner_id = linux_runner(gl)

    assert gl.delete_runner(runner_id) is True
    assert gl.delete_runner(runner_id) is False
    with pytest.raises(GitLabNotFoundError, match="runner"):
        gl.get_runner(runner_id)


def test_paused_runner_takes_no_job_until_unpaused(gl: GitLabClient, fake: FakeGitLab) -> None:
    project_id = fake.create_project("acme/app")
    fake.create_pipeline(project_id, [JobSpec("build", tags=("linux",))])
    runner_id = linux_runner(gl)

    gl.pause_runner(runner_id)
    assert gl.get_runner(runner_id).paused is True
    assert fake.request_job(runner_id) is None

    gl.pause_runner(runner_id, False)
    assert gl.get_runner(runner_id).paused is False
    assert fake.request_job(runner_id) is not None


def test_runner_jobs_are_what_the_runner_runs(gl: GitLabClient, fake: FakeGitLab) -> None:
    # GIVEN two pending jobs, one taken by our runner
    project_id = fake.create_project("acme/app")
    ref = fake.create_pipeline(project_id, [JobSpec("a", tags=("linux",)), JobSpec("b", tags=("linux",))])
    runner_id = linux_runner(gl)
    job_id = fake.request_job(runner_id)

    # WHEN the scaler asks what the runner runs
    running = gl.runner_jobs(runner_id)

    # THEN it sees that one job, running, oldest first taken; untouched jobs are not listed
    assert job_id == ref.job_ids[0]
    assert [(j.id, j.status, j.runner_id, j.project_id, j.pipeline_id) for j in running] == [
        (job_id, "running", runner_id, project_id, ref.id)
    ]
    assert running[0].tag_list is None  # GET /runners/:id/jobs carries no tags
    fake.finish_job(job_id, "success")
    assert gl.runner_jobs(runner_id) == []
    assert [j.status for j in gl.runner_jobs(runner_id, "success")] == ["success"]


def test_request_job_matches_tags_and_run_untagged(fake: FakeGitLab) -> None:
    project_id = fake.create_project("acme/app")
    ref = fake.create_pipeline(
        project_id, [JobSpec("mac", tags=("macos",)), JobSpec("plain"), JobSpec("linux", tags=("linux",))]
    )
    tagged_only, _ = fake.register_runner(tag_list=("linux", "docker"), run_untagged=False)
    untagged_too, _ = fake.register_runner(tag_list=("linux",), run_untagged=True)

    assert fake.request_job(tagged_only) == ref.job_ids[2]
    assert fake.request_job(tagged_only) is None
    assert fake.request_job(untagged_too) == ref.job_ids[1]
    assert fake.jobs[ref.job_ids[0]].status == "pending"


# -- jobs -------------------------------------------------------------------------------------------


def test_pipeline_jobs_of_a_40_job_pipeline_is_one_request(gl: GitLabClient, fake: FakeGitLab) -> None:
    project_id = fake.create_project("acme/monorepo")
    specs = [JobSpec(f"test {i}", "test", ("linux",) if i % 2 else ("windows",)) for i in range(40)]
    ref = fake.create_pipeline(project_id, specs)

    with counting(gl) as calls:
        jobs = gl.pipeline_jobs(project_id, ref.id)

    assert fake.request_count("GET", "/projects/:project/pipelines/:pipeline_id/jobs") == 1
    assert calls == {"pipelines.jobs": 1} and gl.http_requests == 1
    assert len(jobs) == 40
    assert {j.tag_list for j in jobs} == {("linux",), ("windows",)}
    assert {j.status for j in jobs} == {"pending"}


def test_lists_follow_pagination_across_pages(fake: FakeGitLab) -> None:
    gl = GitLabClient(fake.url, fake.token, per_page=10)
    for n in range(25):
        fake.register_runner(description=f"{PREFIX}i-{n:02d}")

    runners = gl.list_runners(PREFIX)

    assert len(runners) == 25 and len({r.id for r in runners}) == 25
    assert fake.request_count("GET", "/runners/all") == 3
    assert gl.calls["runners.list"] == 1 and gl.http_requests == 3


def test_fake_pagination_headers_follow_gitlab(fake: FakeGitLab) -> None:
    for n in range(5):
        fake.register_runner(description=f"r{n}")

    response = requests.get(
        f"{fake.api_url}/runners/all",
        params={"per_page": 2, "page": 2},
        headers={"PRIVATE-TOKEN": fake.token},
        timeout=5,
    )

    assert response.status_code == 200
    assert {k: response.headers[k] for k in ("X-Page", "X-Per-Page", "X-Total", "X-Total-Pages")} == {
        "X-Page": "2",
        "X-Per-Page": "2",
        "X-Total": "5",
        "X-Total-Pages": "3",
    }
    assert (response.headers["X-Next-Page"], response.headers["X-Prev-Page"]) == ("3", "1")
    assert response.links["next"]["url"].endswith("/api/v4/runners/all?page=3&per_page=2")
    assert set(response.links) == {"next", "prev", "first", "last"}


def test_list_jobs_by_scope_and_get_job(gl: GitLabClient, fake: FakeGitLab) -> None:
    project_id = fake.create_project("acme/app")
    ref = fake.create_pipeline(project_id, [JobSpec("a", tags=("linux",)), JobSpec("b", tags=("linux",))])
    runner_id, _ = fake.register_runner(tag_list=("linux",))
    running_id = fake.request_job(runner_id)

    pending = gl.list_jobs(project_id, scope=["pending"])
    both = gl.list_jobs(project_id, scope=["pending", "running"])
    job = gl.get_job(project_id, ref.job_ids[0])

    assert [j.id for j in pending] == [ref.job_ids[1]]
    assert [j.id for j in both] == sorted(ref.job_ids, reverse=True)
    assert (job.id, job.status, job.runner_id, job.stage, job.name) == (
        running_id,
        "running",
        runner_id,
        "test",
        "a",
    )
    assert job.created_at == T0 and job.started_at == T0 and job.finished_at is None


def test_retry_makes_a_new_job_and_pipeline_jobs_hide_the_retried_one(
    gl: GitLabClient, fake: FakeGitLab
) -> None:
    # GIVEN a failed build that skipped its test stage
    project_id = fake.create_project("acme/app")
    ref = fake.create_pipeline(project_id, [JobSpec("build", "build", ("linux",)), JobSpec("test", "test")])
    runner_id, _ = fake.register_runner(tag_list=("linux",))
    build = fake.request_job(runner_id)
    assert build is not None
    fake.finish_job(build, "failed")
    assert fake.jobs[ref.job_ids[1]].status == "skipped"

    # WHEN the scaler retries it
    new = gl.retry_job(project_id, build)

    # THEN GitLab made a new pending job; the old one is only listed with include_retried
    assert new.id != build and (new.status, new.name, new.tag_list) == ("pending", "build", ("linux",))
    assert {j.id for j in gl.pipeline_jobs(project_id, ref.id)} == {new.id, ref.job_ids[1]}
    assert {j.id for j in gl.pipeline_jobs(project_id, ref.id, include_retried=True)} == {
        build,
        new.id,
        ref.job_ids[1],
    }
    assert fake.jobs[ref.job_ids[1]].status == "created"
    with pytest.raises(GitLabError) as not_retryable:
        gl.retry_job(project_id, build)
    assert not_retryable.value.status == 403 and not not_retryable.value.retryable


def test_later_stage_starts_when_earlier_stage_succeeds(fake: FakeGitLab) -> None:
    project_id = fake.create_project("acme/app")
    ref = fake.create_pipeline(project_id, [JobSpec("build", "build"), JobSpec("test", "test")])
    runner_id, _ = fake.register_runner(run_untagged=True)

    assert [fake.jobs[j].status for j in ref.job_ids] == ["pending", "created"]
    build = fake.request_job(runner_id)
    assert build is not None
    fake.finish_job(build)

    assert [fake.jobs[j].status for j in ref.job_ids] == ["success", "pending"]
    assert fake.pipelines[ref.id].status == "pending"


# -- retries and errors -----------------------------------------------------------------------------


def test_500s_are_retried_then_succeed(gl: GitLabClient, fake: FakeGitLab) -> None:
    runner_id = linux_runner(gl)
    fake.inject_failure("/runners/*", status=500, times=2, method="GET", retry_after=0)

    info = gl.get_runner(runner_id)

    assert info.id == runner_id
    assert fake.request_count("GET", "/runners/:runner_id") == 3
    assert gl.calls["runners.get"] == 1


def test_429_with_retry_after_is_obeyed(gl: GitLabClient, fake: FakeGitLab) -> None:
    runner_id = linux_runner(gl)
    fake.inject_failure(f"/runners/{runner_id}", status=429, times=1, retry_after=0)

    assert gl.get_runner(runner_id).id == runner_id
    assert [r.status for r in fake.request_log if r.route == "/runners/:runner_id"] == [429, 200]


def test_a_latency_bound_client_leaves_429_to_the_next_tick(fake: FakeGitLab) -> None:
    gl = GitLabClient(fake.url, fake.token, obey_rate_limit=False, max_retries=0)
    runner_id = linux_runner(gl)
    fake.inject_failure(f"/runners/{runner_id}", status=429, retry_after=0)

    with pytest.raises(GitLabError) as raised:
        gl.get_runner(runner_id)

    assert raised.value.status == 429 and raised.value.retryable
    assert fake.request_count("GET", "/runners/:runner_id") == 1


def test_persistent_500_is_a_retryable_gitlab_error(fake: FakeGitLab) -> None:
    gl = GitLabClient(fake.url, fake.token, max_retries=2)
    fake.inject_failure("/runners/all", status=503, times=10, retry_after=0)

    with pytest.raises(GitLabError) as raised:
        gl.list_runners(PREFIX)

    assert (raised.value.status, raised.value.retryable, raised.value.action) == (503, True, "runners.list")
    assert fake.request_count("GET", "/runners/all") == 3


def test_wrong_token_is_a_401_that_is_not_retried(fake: FakeGitLab) -> None:
    gl = GitLabClient(fake.url, "not-the-token", max_retries=3)

    with pytest.raises(GitLabError) as raised:
        gl.list_runners(PREFIX)

    assert (raised.value.status, raised.value.retryable) == (401, False)
    assert "rotate" in str(raised.value)
    assert fake.request_count("GET", "/runners/all") == 1


def test_a_rotated_api_token_is_re_read_after_a_401(fake: FakeGitLab) -> None:
    # GIVEN the secret held a stale token when the client was first used
    tokens = ["stale-token", fake.token]
    reads: list[str] = []

    def provider() -> str:
        reads.append(tokens[min(len(reads), 1)])
        return reads[-1]

    gl = gitlab_client(fake.url, provider)
    assert reads == []  # nothing is read before the first call

    # WHEN a call meets the 401 THEN the token is re-read once and the call succeeds
    assert gl.list_runners(PREFIX) == []
    assert len(reads) == 2 and fake.request_count("GET", "/runners/all") == 2


def test_unreachable_gitlab_is_status_0_and_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gl = GitLabClient(f"http://127.0.0.1:{port}", "token", max_retries=0, timeout=1)

    with pytest.raises(GitLabError) as raised:
        gl.get_runner(1)

    assert (raised.value.status, raised.value.retryable) == (0, True)


def test_custom_ca_bundle_verifies_a_self_hosted_gitlab(tmp_path: Path) -> None:
    # GIVEN a GitLab serving HTTPS with a certificate from a private CA
    tls = make_tls_material(tmp_path)
    with FakeGitLab(ssl_context=tls.server_context) as fake:
        trusted = GitLabClient(fake.url, fake.token, ca_bundle_path=str(tls.ca_path), max_retries=0)
        untrusted = GitLabClient(fake.url, fake.token, max_retries=0)

        # WHEN both clients call it THEN only the one given the CA bundle gets through
        assert trusted.ssl_verify == str(tls.ca_path)
        assert trusted.list_runners(PREFIX) == []
        with pytest.raises(GitLabError) as raised:
            untrusted.list_runners(PREFIX)
        assert raised.value.status == 0


def test_the_runner_token_never_reaches_the_logs(fake: FakeGitLab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, urllib3 and python-gitlab included
    gl = GitLabClient(fake.url, fake.token)

    created = gl.create_runner(
        runner_type="instance_type",
        description=f"{PREFIX}i-1",
        tag_list=["linux"],
        run_untagged=False,
        locked=True,
    )
    logging.getLogger("test").info("created %s via %r", created, gl)

    assert created.token and created.token not in caplog.text
    assert fake.token not in caplog.text
    assert created.token not in repr(created) and created.token not in str(created)


def test_the_adapter_satisfies_the_protocol(fake: FakeGitLab) -> None:
    api: GitLabApi = GitLabClient(fake.url, fake.token)
    assert api.list_runners(PREFIX) == []


# -- hooks ------------------------------------------------------------------------------------------


def test_hooks_create_update_list(gl: GitLabClient, fake: FakeGitLab) -> None:
    project_id = fake.create_project("acme/app")

    created = gl.create_project_hook(project_id, url="https://scaler.example.com/webhooks/gitlab", token="t1")
    updated = gl.update_project_hook(
        project_id,
        created.id,
        url="https://scaler2.example.com/webhooks/gitlab",
        token="t2",
        push_events=False,
    )
    hooks = gl.list_project_hooks(project_id)

    assert (created.job_events, created.pipeline_events, created.push_events) == (True, True, False)
    assert (created.alert_status, created.disabled_until, created.executable) == ("executable", None, True)
    assert hooks == [updated]
    assert updated.url == "https://scaler2.example.com/webhooks/gitlab"
    assert fake.hooks[created.id].token == "t2"


def test_group_projects_include_subgroups(gl: GitLabClient, fake: FakeGitLab) -> None:
    top = fake.create_project("acme/app")
    nested = fake.create_project("acme/platform/infra")
    fake.create_project("other/thing")
    group_id = fake.projects[top].group_id
    assert group_id is not None

    everything = gl.group_projects(group_id)
    direct = gl.group_projects(group_id, include_subgroups=False)

    assert [(p.id, p.path_with_namespace) for p in everything] == [
        (top, "acme/app"),
        (nested, "acme/platform/infra"),
    ]
    assert [p.id for p in direct] == [top]


def test_job_hook_delivery_has_gitlab_headers_and_payload(
    fake: FakeGitLab, receiver: WebhookReceiver
) -> None:
    # GIVEN a project hook with a secret token
    project_id = fake.create_project("acme/app")
    fake.add_hook(project_id, receiver.url, token="hook-secret")
    runner_id, _ = fake.register_runner(description=f"{PREFIX}i-1", tag_list=("linux",))

    # WHEN a job is created, queued, picked up and finished
    ref = fake.create_pipeline(project_id, [JobSpec("build", "build", ("linux",))], ref="main")
    fake.request_job(runner_id)
    fake.finish_job(ref.job_ids[0], "success")

    # THEN each status change arrived as a Job Hook in GitLab's shape
    jobs = receiver.events("Job Hook")
    assert [r.body["build_status"] for r in jobs] == ["created", "pending", "running", "success"]
    pending, running, finished = jobs[1].body, jobs[2].body, jobs[3].body
    headers = jobs[0].headers
    assert headers["x-gitlab-token"] == "hook-secret"
    assert headers["user-agent"] == f"GitLab/{fake.version}"
    assert headers["x-gitlab-instance"] == fake.url
    for name in ("x-gitlab-event-uuid", "x-gitlab-webhook-uuid", "idempotency-key"):
        assert len(headers[name]) == 36
    assert pending["object_kind"] == "build" and pending["runner"] is None
    assert (pending["build_id"], pending["build_name"], pending["build_stage"]) == (
        ref.job_ids[0],
        "build",
        "build",
    )
    assert (pending["pipeline_id"], pending["project_id"], pending["project_name"]) == (
        ref.id,
        project_id,
        "acme / app",
    )
    assert pending["retries_count"] == 0 and pending["commit"]["id"] == ref.id
    assert pending["build_created_at"] == "2026-11-23T12:00:00.000Z"
    assert pending["build_created_at_iso"] == "2026-11-23T12:00:00Z"
    assert {"sha", "ref", "tag", "user", "repository", "build_queued_duration", "build_duration"} <= set(
        pending
    )
    assert running["runner"] == {
        "id": runner_id,
        "description": f"{PREFIX}i-1",
        "runner_type": "instance_type",
        "active": True,
        "is_shared": True,
        "tags": ["linux"],
    }
    assert finished["build_finished_at_iso"] == "2026-11-23T12:00:00Z"
    assert parse_time(finished["build_finished_at"]) == T0


def test_hooks_of_one_change_share_the_event_uuid_but_not_the_idempotency_key(
    fake: FakeGitLab, receiver: WebhookReceiver
) -> None:
    project_id = fake.create_project("acme/app")
    fake.add_hook(project_id, receiver.url)
    fake.add_hook(project_id, receiver.url)

    fake.create_pipeline(project_id, [JobSpec("build")], start=False)

    first, second = receiver.received
    assert first.headers["x-gitlab-event-uuid"] == second.headers["x-gitlab-event-uuid"]
    assert first.headers["idempotency-key"] != second.headers["idempotency-key"]
    assert "x-gitlab-token" not in first.headers


def test_pipeline_hook_payload_follows_the_docs(fake: FakeGitLab, receiver: WebhookReceiver) -> None:
    project_id = fake.create_project("acme/app")
    fake.add_hook(project_id, receiver.url, job_events=False)

    ref = fake.create_pipeline(project_id, [JobSpec("build", "build", ("linux",)), JobSpec("test", "test")])

    (hook,) = receiver.received
    body = hook.body
    assert hook.event == "Pipeline Hook" and body["object_kind"] == "pipeline"
    attrs = body["object_attributes"]
    assert (attrs["id"], attrs["iid"], attrs["status"], attrs["stages"]) == (
        ref.id,
        1,
        "pending",
        ["build", "test"],
    )
    assert attrs["created_at"] == "2026-11-23 12:00:00 UTC" and attrs["finished_at"] is None
    assert [(b["id"], b["stage"], b["name"], b["status"]) for b in body["builds"]] == [
        (ref.job_ids[0], "build", "build", "pending"),
        (ref.job_ids[1], "test", "test", "created"),
    ]
    assert (
        body["builds"][0]["runner"] is None and body["builds"][0]["created_at"] == "2026-11-23 12:00:00 UTC"
    )


def test_job_hook_can_use_the_older_utc_time_format(clock: Clock, receiver: WebhookReceiver) -> None:
    with FakeGitLab(now=clock, job_time_format="utc") as fake:
        project_id = fake.create_project("acme/app")
        fake.add_hook(project_id, receiver.url)
        fake.create_pipeline(project_id, [JobSpec("build")], start=False)

    body = receiver.events("Job Hook")[0].body
    assert body["build_created_at"] == "2026-11-23 12:00:00 UTC"
    assert parse_time(body["build_created_at"]) == parse_time(body["build_created_at_iso"]) == T0


def test_hook_is_auto_disabled_after_four_failures_and_re_enabled_by_a_test(
    gl: GitLabClient, fake: FakeGitLab, clock: Clock, receiver: WebhookReceiver
) -> None:
    # GIVEN a receiver that answers 500
    project_id = fake.create_project("acme/app")
    hook_id = fake.add_hook(project_id, receiver.url, pipeline_events=False)
    receiver.status = 500

    # WHEN four job events fail, and a fifth event happens
    ref = fake.create_pipeline(project_id, [JobSpec(f"j{i}") for i in range(4)], start=False)
    fake.start_pipeline(ref.id)

    # THEN the hook is temporarily disabled for one minute and the later events are not sent
    (hook,) = gl.list_project_hooks(project_id)
    assert (hook.alert_status, hook.disabled_until, hook.executable) == (
        "temporarily_disabled",
        T0 + timedelta(minutes=1),
        False,
    )
    assert fake.delivery_stats["failed"] == 4 and fake.delivery_stats["suppressed"] == 4

    # WHEN the receiver is fixed and the scaler sends a test event THEN the hook is executable again
    receiver.status = 200
    gl.test_project_hook(project_id, hook_id)
    assert gl.list_project_hooks(project_id)[0].alert_status == "executable"
    assert receiver.received[-1].event == "Job Hook"


def test_a_temporarily_disabled_hook_comes_back_after_disabled_until(
    fake: FakeGitLab, clock: Clock, receiver: WebhookReceiver
) -> None:
    project_id = fake.create_project("acme/app")
    hook_id = fake.add_hook(project_id, receiver.url, pipeline_events=False)
    receiver.status = 404
    fake.create_pipeline(project_id, [JobSpec(f"j{i}") for i in range(4)], start=False)
    assert fake.hook_state(hook_id)["alert_status"] == "temporarily_disabled"

    clock.advance(61)
    receiver.status = 200
    fake.create_pipeline(project_id, [JobSpec("next")], start=False)

    assert fake.hook_state(hook_id)["alert_status"] == "executable"
    assert fake.hooks[hook_id].recent_failures == 0


def test_testing_a_hook_needs_a_job_to_send(
    gl: GitLabClient, fake: FakeGitLab, receiver: WebhookReceiver
) -> None:
    project_id = fake.create_project("acme/app")
    hook = gl.create_project_hook(project_id, url=receiver.url, token="t")

    with pytest.raises(GitLabError) as no_jobs:
        gl.test_project_hook(project_id, hook.id)

    assert no_jobs.value.status == 422 and not no_jobs.value.retryable


def test_async_delivery_with_delay_loss_and_duplicates_is_counted(
    clock: Clock, receiver: WebhookReceiver
) -> None:
    # GIVEN a GitLab that delivers late, loses some hooks and sends some twice (seeded)
    with FakeGitLab(now=clock, delivery="async", delay=(0.0, 0.02), loss=0.2, duplicate=0.3, seed=7) as fake:
        project_id = fake.create_project("acme/app")
        fake.add_hook(project_id, receiver.url, pipeline_events=False)

        # WHEN 20 jobs are created
        fake.create_pipeline(project_id, [JobSpec(f"j{i}") for i in range(20)], start=False)
        assert fake.flush(timeout=5)
        stats = fake.delivery_stats

    # THEN every attempt is accounted for, and a duplicate repeats its Idempotency-Key
    assert stats["lost"] + stats["queued"] == 20 + stats["duplicated"]
    assert stats["lost"] > 0 and stats["duplicated"] > 0
    assert len(receiver.received) == stats["sent"] == stats["queued"]
    keys = [r.headers["idempotency-key"] for r in receiver.received]
    assert len(set(keys)) == len(keys) - stats["duplicated"]
    assert len({r.headers["x-gitlab-webhook-uuid"] for r in receiver.received}) == len(keys)


def test_close_joins_every_thread_and_frees_the_port(receiver: WebhookReceiver) -> None:
    before = set(threading.enumerate())
    fake = FakeGitLab(delivery="async").start()
    port = int(fake.url.rsplit(":", 1)[1])
    GitLabClient(fake.url, fake.token).list_runners(PREFIX)

    fake.close()

    assert set(threading.enumerate()) <= before
    with socket.socket() as sock:  # fails with EADDRINUSE while anything still listens on the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
