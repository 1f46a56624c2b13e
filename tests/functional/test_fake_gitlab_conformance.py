"""What the fake GitLab imitates, one GitLab behaviour per test, each with the GitLab source it comes from.

The tests of the scaler are only as true as this fake: a stand-in looser than GitLab (a hook GitLab never
sends, an assignment GitLab would not make atomic) lets the scaler pass tests and fail in production. Each
test below names the gitlabhq (or gitlab-runner, python-gitlab) source of the behaviour, and drives the fake
over HTTP the way GitLab's clients do: hooks to a real receiver, the REST API through our adapter.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import gitlab
import pytest

from chalicelib.errors import GitLabError, GitLabNotFoundError
from chalicelib.events.gitlab import JobStatus
from chalicelib.gitlab import GitLabClient
from tests.functional.conftest import Stack
from tests.gitlab_fixtures import Clock, WebhookReceiver
from toolkit.devtools.fake_gitlab import (
    HOOK_STATUSES,
    ONLINE_CONTACT_TIMEOUT,
    STALE_TIMEOUT,
    FakeGitLab,
    JobSpec,
)
from toolkit.devtools.machines import ASSIGN_SECONDS, SimulatedMachines


def job_statuses(receiver: WebhookReceiver, job_id: int) -> list[str]:
    return [r.body["build_status"] for r in receiver.events("Job Hook") if r.body["build_id"] == job_id]


def hooked_project(fake: FakeGitLab, receiver: WebhookReceiver, path: str = "acme/app", **kw: object) -> int:
    project = fake.create_project(path, **kw)  # type: ignore[arg-type]
    fake.add_hook(project, receiver.url, token="s3cret")
    return project


# -- hook points: app/models/ci/build.rb, app/workers/ci/build_finished_worker.rb ---------------------


def test_job_hooks_go_out_on_create_pending_running_and_finish_only(
    fake: FakeGitLab, receiver: WebhookReceiver
) -> None:
    """Ci::Build#execute_hooks runs `after_create`, `after_transition any => [:pending]`,
    `after_transition pending: :running` (app/models/ci/build.rb) and, on success/failed/canceled, from
    Ci::BuildFinishedWorker#process_build (app/workers/ci/build_finished_worker.rb). Nothing else."""
    # GIVEN a pipeline whose build fails, so its test stage is skipped
    project = hooked_project(fake, receiver)
    ref = fake.create_pipeline(project, [JobSpec("build", "build", ("linux",)), JobSpec("test", "test")])
    build, test = ref.job_ids
    runner, _ = fake.register_runner(tag_list=("linux",))
    # WHEN a runner takes the build and it fails
    assert fake.request_job(runner) == build
    fake.finish_job(build, "failed")
    # THEN the build had a hook at each of created, pending, running, failed
    assert job_statuses(receiver, build) == ["created", "pending", "running", "failed"]
    # AND the skipped job only its creation: no hook is sent for `skipped`
    assert fake.jobs[test].status == "skipped"
    assert job_statuses(receiver, test) == ["created"]
    assert {"pending", "running", "success", "failed", "canceled"} == HOOK_STATUSES


def test_a_manual_job_sends_no_hook_until_played(fake: FakeGitLab, receiver: WebhookReceiver) -> None:
    """`event :actionize` (created -> manual) has no hook; playing it enqueues it (any -> pending: hook).
    app/models/ci/build.rb state machine."""
    project = hooked_project(fake, receiver)
    ref = fake.create_pipeline(project, [JobSpec("deploy", "deploy", when="manual")])
    (deploy,) = ref.job_ids
    assert fake.jobs[deploy].status == "manual"
    assert job_statuses(receiver, deploy) == ["created"]
    fake.play_job(deploy)
    assert job_statuses(receiver, deploy) == ["created", "pending"]


def test_a_graceful_cancel_sends_no_canceling_hook(fake: FakeGitLab, receiver: WebhookReceiver) -> None:
    """`event :cancel`: `transition running: :canceling, if: :supports_canceling?`, and the runner's report
    ends it `canceled` (`transition canceling: :canceled`), app/models/commit_status.rb. Only the end
    (BuildFinishedWorker) sends a hook."""
    project = hooked_project(fake, receiver)
    (job,) = fake.create_pipeline(project, [JobSpec("test", tags=("linux",))]).job_ids
    runner, _ = fake.register_runner(tag_list=("linux",))
    fake.request_job(runner)
    fake.cancel_job(job, gracefully=True)
    assert fake.jobs[job].status == "canceling"
    fake.finish_job(job, "success")  # the runner ran after_script and reports back
    assert fake.jobs[job].status == "canceled"
    assert job_statuses(receiver, job) == ["created", "pending", "running", "canceled"]


def test_a_retry_is_a_new_job_with_its_own_create_and_pending_hooks(
    fake: FakeGitLab, receiver: WebhookReceiver
) -> None:
    """Ci::RetryJobService clones the job (a new id, `retries_count` + 1); the old one is marked retried.
    Skipped jobs after it go back to created through `process` (no hook) - app/models/commit_status.rb."""
    project = hooked_project(fake, receiver)
    build, test = fake.create_pipeline(
        project, [JobSpec("build", "build", ("linux",)), JobSpec("test", "test", ("linux",))]
    ).job_ids
    runner, _ = fake.register_runner(tag_list=("linux",))
    fake.request_job(runner)
    fake.finish_job(build, "failed")
    new = fake.retry_job(build)
    assert new != build
    assert job_statuses(receiver, new) == ["created", "pending"]
    assert [r.body["retries_count"] for r in receiver.events("Job Hook") if r.body["build_id"] == new] == [
        1,
        1,
    ]
    assert job_statuses(receiver, test) == ["created"]  # skipped, then created again: neither sends a hook


# -- status values: app/models/concerns/ci/has_status.rb ----------------------------------------------


def test_job_and_pipeline_statuses_are_gitlabs_and_the_scaler_names_each(
    fake: FakeGitLab, receiver: WebhookReceiver
) -> None:
    """Ci::HasStatus::AVAILABLE_STATUSES (app/models/concerns/ci/has_status.rb; the states of
    app/models/commit_status.rb and app/models/ci/pipeline.rb): created, waiting_for_resource, preparing,
    waiting_for_callback, pending, running, canceling, success, failed, canceled, skipped, manual, scheduled.
    The scaler names each (chalicelib.events.gitlab.JobStatus) and takes any other string as `created`
    would rank; the fake's hooks carry none but GitLab's."""
    gitlab_statuses = {
        "created", "waiting_for_resource", "preparing", "waiting_for_callback", "pending", "running",
        "canceling", "success", "failed", "canceled", "skipped", "manual", "scheduled",
    }  # fmt: skip
    assert {s.value for s in JobStatus} == gitlab_statuses
    # GIVEN a pipeline that goes through a run, a failure, a skip and a cancel
    project = hooked_project(fake, receiver)
    ref = fake.create_pipeline(
        project, [JobSpec("build", "build", ("linux",)), JobSpec("test", "test"), JobSpec("lint", "build")]
    )
    build, _test, lint = ref.job_ids
    runner, _ = fake.register_runner(tag_list=("linux",), run_untagged=True)
    assert fake.request_job(runner) == build
    fake.cancel_job(lint)
    fake.finish_job(build, "failed")
    # THEN every status its Job and Pipeline hooks carried is one of GitLab's
    carried = {r.body["build_status"] for r in receiver.events("Job Hook")}
    carried |= {r.body["object_attributes"]["status"] for r in receiver.events("Pipeline Hook")}
    assert carried and carried <= gitlab_statuses


# -- payload fields: lib/gitlab/data_builder/build.rb, lib/gitlab/data_builder/pipeline.rb ----------


def test_job_hook_payload_has_the_data_builder_fields(fake: FakeGitLab, receiver: WebhookReceiver) -> None:
    """Gitlab::DataBuilder::Build.build (lib/gitlab/data_builder/build.rb): `build_*` fields, `pipeline_id`,
    `runner` {id, description, runner_type, active, is_shared, tags} once a runner has the job, and
    `commit.id` that is the PIPELINE id. No job tag list: only the runner's tags."""
    project = hooked_project(fake, receiver)
    ref = fake.create_pipeline(project, [JobSpec("build", "build", ("linux",))])
    runner, _ = fake.register_runner(tag_list=("linux", "docker"), description="r1")
    fake.request_job(runner)
    created, pending, running = (r.body for r in receiver.events("Job Hook"))
    for body in (created, pending, running):
        assert body["object_kind"] == "build"
        for key in ("build_id", "build_name", "build_stage", "build_status", "build_created_at",
                    "build_started_at", "build_finished_at", "build_duration", "build_queued_duration",
                    "build_allow_failure", "build_failure_reason", "pipeline_id", "project_id",
                    "project_name", "ref", "tag", "sha", "before_sha", "user", "commit", "repository",
                    "environment", "runner"):  # fmt: skip
            assert key in body, key
        assert body["commit"]["id"] == ref.id == body["pipeline_id"]
        assert "tag_list" not in body
    assert pending["runner"] is None
    assert running["runner"] == {
        "id": runner,
        "description": "r1",
        "runner_type": "instance_type",
        "active": True,
        "is_shared": True,
        "tags": ["linux", "docker"],
    }


def test_pipeline_hook_payload_has_the_data_builder_fields(
    fake: FakeGitLab, receiver: WebhookReceiver
) -> None:
    """Gitlab::DataBuilder::Pipeline (lib/gitlab/data_builder/pipeline.rb): `object_attributes` with id,
    status, stages, `builds` with each current job's id, stage, name, status, when, manual, runner.
    Ci::Pipeline sends one on every status change that is not a loopback (app/models/ci/pipeline.rb:
    `after_transition do ... next if transition.loopback? ... PipelineHooksWorker`)."""
    project = hooked_project(fake, receiver)
    fake.create_pipeline(
        project, [JobSpec("build", "build", ("linux",)), JobSpec("ship", "ship", when="manual")]
    )
    runner, _ = fake.register_runner(tag_list=("linux",))
    fake.request_job(runner)
    statuses = [r.body["object_attributes"]["status"] for r in receiver.events("Pipeline Hook")]
    assert statuses == ["pending", "running"]  # each a change; none repeated
    body = receiver.events("Pipeline Hook")[-1].body
    assert body["object_attributes"]["stages"] == ["build", "ship"]
    build = body["builds"][0]
    assert {"id", "stage", "name", "status", "when", "manual", "runner", "allow_failure"} <= build.keys()
    assert (body["builds"][1]["when"], body["builds"][1]["manual"]) == ("manual", True)


# -- the job assignment window: lib/api/ci/runner.rb, app/services/ci/register_job_service.rb ---------


def test_a_runner_paused_after_its_active_check_still_gets_a_job(fake: FakeGitLab, clock: Clock) -> None:
    """`POST /jobs/request` checks `current_runner.active?` once (lib/api/ci/runner.rb); then
    Ci::RegisterJobService walks the queue and `assign_runner!` runs `build.run!` without checking again
    (app/services/ci/register_job_service.rb), while Workhorse holds the request open
    (workhorse/internal/builds/register.go). A pause in between does not stop the assignment."""
    # GIVEN a runner whose job request passed the active? check, and a pending job
    project = fake.create_project("acme/app")
    runner, _ = fake.register_runner(tag_list=("linux",))
    request = fake.begin_job_request(runner)
    assert request is not None
    (job,) = fake.create_pipeline(project, [JobSpec("test", tags=("linux",))]).job_ids
    # WHEN the scaler pauses the runner, and GitLab completes the request a moment later
    GitLabClient(fake.url, fake.token).pause_runner(runner)
    clock.advance(fake.assignment_window.total_seconds())
    # THEN the paused runner got the job
    assert fake.complete_job_request(request) == job
    assert fake.runners[runner].paused and fake.jobs[job].runner_id == runner


def test_outside_the_window_a_paused_runner_gets_nothing(fake: FakeGitLab, clock: Clock) -> None:
    """Past the window the request was answered (204) and the next one meets the `active?` check."""
    project = fake.create_project("acme/app")
    runner, _ = fake.register_runner(tag_list=("linux",))
    request = fake.begin_job_request(runner)
    assert request is not None
    fake.create_pipeline(project, [JobSpec("test", tags=("linux",))])
    GitLabClient(fake.url, fake.token).pause_runner(runner)
    clock.advance(fake.assignment_window.total_seconds() + 1)
    assert fake.complete_job_request(request) is None
    assert fake.begin_job_request(runner) is None


# -- who may pick a job: app/models/ci/runner.rb, app/services/ci/queue/build_queue_service.rb -------


def test_instance_runners_take_no_job_of_a_project_without_shared_runners(fake: FakeGitLab) -> None:
    """`builds_for_shared_runner`: `where(projects: { shared_runners_enabled: true })`
    (app/services/ci/queue/builds_table_strategy.rb); the project's setting shows in `GET /projects/:id`."""
    project = fake.create_project("acme/private", shared_runners_enabled=False)
    fake.create_pipeline(project, [JobSpec("test", tags=("linux",))])
    shared, _ = fake.register_runner(tag_list=("linux",))
    assert fake.request_job(shared) is None
    gl = gitlab.Gitlab(fake.url, private_token=fake.token)
    assert gl.http_get(f"/projects/{project}")["shared_runners_enabled"] is False  # type: ignore[index]


def test_a_protected_runner_takes_only_jobs_of_protected_refs(fake: FakeGitLab) -> None:
    """Ci::Runner#can_pick?: `return false if self.ref_protected? && !build.protected?`
    (app/models/ci/runner.rb); `builds_for_protected_runner`
    (app/services/ci/queue/build_queue_service.rb)."""
    project = fake.create_project("acme/app", protected_branches=("main",))
    feature = fake.create_pipeline(project, [JobSpec("test", tags=("linux",))], ref="feature").job_ids[0]
    main = fake.create_pipeline(project, [JobSpec("test", tags=("linux",))], ref="main").job_ids[0]
    protected, _ = fake.register_runner(tag_list=("linux",), access_level="ref_protected")
    assert fake.request_job(protected) == main
    assert fake.request_job(protected) is None
    assert fake.jobs[feature].status == "pending"


def test_a_group_runner_takes_only_jobs_of_its_groups_projects(fake: FakeGitLab) -> None:
    """`builds_for_group_runner`: projects in the runner's group and its subgroups
    (app/services/ci/queue/build_queue_service.rb)."""
    inside = fake.create_project("acme/platform/app")
    outside = fake.create_project("other/app")
    fake.create_pipeline(outside, [JobSpec("test", tags=("linux",))])
    job = fake.create_pipeline(inside, [JobSpec("test", tags=("linux",))]).job_ids[0]
    group = fake.create_group("acme")
    runner, _ = fake.register_runner(runner_type="group_type", group_id=group, tag_list=("linux",))
    assert fake.request_job(runner) == job
    assert fake.request_job(runner) is None


# -- 404 after an outside deletion: lib/api/ci/runners.rb ------------------------------------------


def test_a_runner_deleted_outside_the_scaler_is_a_404(fake: FakeGitLab) -> None:
    """An admin, GitLab's stale-runner cleanup or another deployment deletes the runner: every runner
    endpoint then answers `404 Runner Not Found` (`get_runner(id)`: `not_found!('Runner') unless runner`,
    lib/api/ci/runners.rb), and its token no longer authenticates `POST /jobs/request` (403)."""
    runner, token = fake.register_runner(tag_list=("linux",))
    fake.delete_runner(runner)
    gl = GitLabClient(fake.url, fake.token, max_retries=0)
    with pytest.raises(GitLabNotFoundError):
        gl.pause_runner(runner)
    with pytest.raises(GitLabNotFoundError):
        gl.runner_jobs(runner)
    response = fake.handle("POST", "/api/v4/jobs/request", {"content-type": "application/json"},
                           f'{{"token": "{token}"}}'.encode())  # fmt: skip
    assert response.status == 403


# -- 429 with Retry-After: docs "Rate limits", lib/gitlab/application_rate_limiter.rb ----------------


def test_past_an_endpoint_limit_gitlab_answers_429_with_retry_after(fake: FakeGitLab, clock: Clock) -> None:
    """Throttled requests get 429 and, from the user/IP throttles, `Retry-After` and `RateLimit-*` headers
    (docs administration/settings/user_and_ip_rate_limits.md "Response headers"); access comes back when
    the window ends (docs "Rate limits on Projects API": "Access to the endpoint is restored after one
    minute"). GitLab.com's project jobs list allows 600 requests a minute (`project_jobs_api_rate_limit`)."""
    project = fake.create_project("acme/app")
    fake.rate_limit("/projects/*/jobs", 600)
    for _ in range(600):
        assert (
            fake.handle("GET", f"/api/v4/projects/{project}/jobs", {"private-token": fake.token}, b"").status
            == 200
        )
    clock.advance(20)
    throttled = fake.handle("GET", f"/api/v4/projects/{project}/jobs", {"private-token": fake.token}, b"")
    assert throttled.status == 429
    assert throttled.headers["Retry-After"] == "40" and throttled.headers["RateLimit-Remaining"] == "0"
    clock.advance(40)
    assert (
        fake.handle("GET", f"/api/v4/projects/{project}/jobs", {"private-token": fake.token}, b"").status
        == 200
    )


# -- auto-disabling: app/models/concerns/web_hooks/auto_disabling.rb ---------------------------------


def test_a_project_hook_is_disabled_on_its_fourth_failure_for_a_minute_then_doubling(
    fake: FakeGitLab, receiver: WebhookReceiver, clock: Clock
) -> None:
    """WebHooks::AutoDisabling: TEMPORARILY_DISABLED_FAILURE_THRESHOLD = 3, so the 4th failure in a row sets
    `disabled_until` = now + INITIAL_BACKOFF (1 minute) * 2**(failures - 4), capped at MAX_BACKOFF (1 day);
    past PERMANENTLY_DISABLED_FAILURE_THRESHOLD (39) it is `disabled`. Only ProjectHook is auto-disabled
    (ENABLED_HOOK_TYPES)."""
    receiver.status = 500
    project = fake.create_project("acme/app")
    hook = fake.add_hook(project, receiver.url, token="s3cret")
    runner, _ = fake.register_runner(tag_list=("linux",))
    fake.create_pipeline(project, [JobSpec("a", tags=("linux",))])  # created + pending + pipeline: 3 failures
    assert fake.hook_state(hook)["alert_status"] == "executable"
    fake.request_job(runner)  # 4th failure (and the pipeline's running hook is suppressed)
    state = fake.hook_state(hook)
    assert state["alert_status"] == "temporarily_disabled"
    assert fake.hooks[hook].disabled_until == clock() + timedelta(minutes=1)
    clock.advance(61)
    fake.create_pipeline(project, [JobSpec("b", tags=("linux",))])  # 5th failure: 2 minutes
    assert fake.hooks[hook].disabled_until == clock() + timedelta(minutes=2)


# -- runner status: app/models/ci/runner.rb ------------------------------------------------------------


def test_runner_status_values_follow_contact_times(fake: FakeGitLab, clock: Clock) -> None:
    """Ci::Runner#status: never_contacted until it contacts GitLab, online within ONLINE_CONTACT_TIMEOUT
    (2 hours) of its last contact, offline after, stale past STALE_TIMEOUT (7 days; 3 months before 15.x)
    from its last contact or creation (app/models/ci/runner.rb)."""
    assert (timedelta(hours=2), timedelta(days=7)) == (ONLINE_CONTACT_TIMEOUT, STALE_TIMEOUT)
    gl = GitLabClient(fake.url, fake.token)
    runner, _ = fake.register_runner()
    assert gl.get_runner(runner).status == "never_contacted"
    fake.runner_contact(runner)
    assert gl.get_runner(runner).status == "online"
    clock.advance(2 * 3600 + 1)
    assert gl.get_runner(runner).status == "offline"
    clock.advance(7 * 86400)
    assert gl.get_runner(runner).status == "stale"


def test_gitlab_errors_and_rate_limits_reach_the_scaler_as_gitlab_errors(fake: FakeGitLab) -> None:
    """A 429 the adapter could not wait out is a retryable GitLabError, never a crash."""
    fake.inject_failure("/runners/*", status=429, retry_after=30, times=5)
    runner, _ = fake.register_runner()
    with pytest.raises(GitLabError) as caught:
        GitLabClient(fake.url, fake.token, max_retries=0).get_runner(runner)
    assert caught.value.status == 429 and caught.value.retryable


# -- run-single, as the demo's simulated machines run it: gitlab-runner commands/single.go ---------------


def _one_machine(stack: Stack, fake: FakeGitLab, now: datetime) -> SimulatedMachines:
    pool = stack.config.pool("linux")
    machines = SimulatedMachines(
        stack.config.model_copy(update={"pools": (pool.model_copy(update={"max_use_count": 2}),)}),
        stack.runtime.names,
        stack.aws,
        fake,
        duration_of=lambda job: 60.0,
    )
    stack.runtime.fleet.set_desired_capacity("test-linux", 1)
    machines.step(now)
    machines.step(now + timedelta(minutes=2))  # booted: its runner is registered
    return machines


def test_run_single_runs_one_job_at_a_time(stack: Stack, fake: FakeGitLab) -> None:
    """`RunSingleCommand.Execute` loops `processBuild` (request one job, run it to its end) until
    `--max-builds` is used up (`checkFinishedConditions`): never two jobs at once (commands/single.go)."""
    project = fake.create_project("acme/app")
    now = stack.runtime.now()
    machines = _one_machine(stack, fake, now)
    first, second = fake.create_pipeline(
        project, [JobSpec("a", tags=("linux",)), JobSpec("b", tags=("linux",))]
    ).job_ids
    machines.step(now + timedelta(minutes=3))
    (machine,) = machines.live("linux")
    assert list(machine.running) == [first] and fake.jobs[second].status == "pending"
    machines.step(now + timedelta(minutes=4, seconds=1))  # the first ended: the next request passes `active?`
    assert not machine.running and fake.jobs[first].status == "success"
    machines.step(now + timedelta(minutes=4, seconds=1 + ASSIGN_SECONDS))  # ...and is given the second
    assert list(machine.running) == [second]


def test_run_single_with_a_revoked_token_keeps_running_and_takes_nothing(
    stack: Stack, fake: FakeGitLab
) -> None:
    """A deleted runner's token gets 403 from `POST /jobs/request`; gitlab-runner's `RequestJob` returns
    "unhealthy" (network/gitlab.go: `case http.StatusForbidden: ... return nil, false`), and run-single
    sleeps NotHealthyCheckInterval (300 s, common/consts.go) and loops: it exits only on --max-builds or
    --wait-timeout (commands/single.go). The machine stays up, idle, and takes no job."""
    project = fake.create_project("acme/app")
    now = stack.runtime.now()
    machines = _one_machine(stack, fake, now)
    (machine,) = machines.live("linux")
    fake.delete_runner(machine.runner_id)  # type: ignore[arg-type]
    (job,) = fake.create_pipeline(project, [JobSpec("a", tags=("linux",))]).job_ids
    for minutes in range(3, 30, 5):
        machines.step(now + timedelta(minutes=minutes))
    assert machines.live("linux") == [machine] and not machine.running
    assert fake.jobs[job].status == "pending"
