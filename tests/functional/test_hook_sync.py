"""`hooks sync` and the tick's hook check against the fake GitLab, through the real adapter and the CLI.

GIVEN projects (some in nested groups) with missing, wrong, right and foreign hooks WHEN the scaler syncs or
checks THEN GitLab holds exactly one right, enabled hook of ours per project, nothing else changed, and the
webhook token shows up nowhere but in GitLab. Write calls are counted on the fake itself.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client
from typer.testing import CliRunner

from app import app as chalice_app
from chalicelib.config import Config, config_from_dict
from chalicelib.gitlab import GitLabClient
from chalicelib.hook_sync import HookAction, OutcomeStatus, check_hooks, sync_hooks
from chalicelib.runtime import Runtime, install
from tests.functional.conftest import Stack
from tests.gitlab_fixtures import T0, Clock, WebhookReceiver
from toolkit.cli.main import app
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec

URL = "https://scaler.example.com/webhooks/gitlab"
FOREIGN = "https://chat.example.com/hooks/ci"
HOOK_TOKEN = "whk-7Qz1-very-secret"


@pytest.fixture
def gl(fake: FakeGitLab) -> GitLabClient:
    return GitLabClient(fake.url, fake.token, max_retries=1, timeout=5)


def settings(
    fake: FakeGitLab,
    *,
    projects: tuple[int | str, ...] = (),
    groups: tuple[int | str, ...] = (),
    url: str = "",
) -> dict[str, Any]:
    return {
        "gitlab": {"url": fake.url, "projects": list(projects), "groups": list(groups), "webhook_url": url},
        "pools": [{"name": "linux", "asg": "test-linux", "tags": ["linux"], "max_instances": 2}],
    }


def config(fake: FakeGitLab, **kwargs: Any) -> Config:
    return config_from_dict(settings(fake, **kwargs), "test")


def writes(fake: FakeGitLab) -> int:
    """Every request that could change GitLab (POST, PUT, DELETE) the fake served."""
    return sum(1 for r in fake.request_log if r.method != "GET")


def hook_fields(fake: FakeGitLab) -> dict[int, tuple[Any, ...]]:
    return {
        h.id: (
            h.project_id,
            h.url,
            h.token,
            h.job_events,
            h.pipeline_events,
            h.push_events,
            h.enable_ssl_verification,
        )
        for h in fake.hooks.values()
    }


def ours(fake: FakeGitLab, project_id: int) -> list[Any]:
    return [h for h in fake.hooks.values() if h.project_id == project_id and h.url == URL]


# -- sync -------------------------------------------------------------------------------------------


def test_sync_creates_the_missing_hooks(fake: FakeGitLab, gl: GitLabClient) -> None:
    # GIVEN two projects without hooks
    app_id, api_id = fake.create_project("acme/app"), fake.create_project("acme/api")

    # WHEN hooks are synced
    report = sync_hooks(gl, config(fake, projects=(app_id, api_id)), URL, HOOK_TOKEN)

    # THEN each project has our hook: job and pipeline events, no push events, TLS verified, our token
    assert report.ok and report.count(HookAction.CREATE) == 2
    for project_id in (app_id, api_id):
        (hook,) = ours(fake, project_id)
        assert (hook.job_events, hook.pipeline_events, hook.push_events, hook.enable_ssl_verification) == (
            True,
            True,
            False,
            True,
        )
        assert hook.token == HOOK_TOKEN
    assert fake.request_count("POST", "/projects/:project/hooks") == 2


def test_sync_fixes_wrong_hooks_and_leaves_right_and_foreign_ones_alone(
    fake: FakeGitLab, gl: GitLabClient
) -> None:
    # GIVEN a hook of ours typed differently with job events off, a right one next to a foreign one,
    # and one with TLS verification off
    typo, right, tls = (fake.create_project(p) for p in ("acme/typo", "acme/right", "acme/tls"))
    typo_hook = fake.add_hook(
        typo, "http://scaler.example.com/webhooks/gitlab/", token="old", job_events=False
    )
    right_hook = fake.add_hook(right, URL, token=HOOK_TOKEN)
    foreign_hook = fake.add_hook(right, FOREIGN, token="chat-token", push_events=True, job_events=False)
    tls_hook = fake.add_hook(tls, URL, token=HOOK_TOKEN, enable_ssl_verification=False)
    before = hook_fields(fake)

    # WHEN hooks are synced
    report = sync_hooks(gl, config(fake, projects=(typo, right, tls)), URL, HOOK_TOKEN)

    # THEN the wrong ones are updated in place, the others are untouched, and nothing was duplicated
    plans = {o.plan.project.id: o.plan for o in report.outcomes}
    assert (plans[typo].action, plans[typo].changes) == (HookAction.UPDATE, ("url", "job_events"))
    assert (plans[right].action, plans[tls].changes) == (HookAction.OK, ("enable_ssl_verification",))
    assert len(fake.hooks) == 4
    assert (fake.hooks[typo_hook].url, fake.hooks[typo_hook].job_events, fake.hooks[typo_hook].token) == (
        URL,
        True,
        HOOK_TOKEN,
    )
    assert fake.hooks[tls_hook].enable_ssl_verification is True
    after = hook_fields(fake)
    assert after[right_hook] == before[right_hook] and after[foreign_hook] == before[foreign_hook]
    assert fake.request_count("PUT", "/projects/:project/hooks/:hook_id") == 2
    assert fake.request_count("POST", "/projects/:project/hooks") == 0


def test_a_second_sync_changes_nothing_and_writes_nothing(fake: FakeGitLab, gl: GitLabClient) -> None:
    # GIVEN a first sync that created and fixed hooks
    first_id, second_id = fake.create_project("acme/a"), fake.create_project("acme/b")
    fake.add_hook(second_id, URL + "/", token="x", pipeline_events=False)
    cfg = config(fake, projects=(first_id, second_id))
    sync_hooks(gl, cfg, URL, HOOK_TOKEN)
    writes_before, calls_before = writes(fake), dict(gl.calls)

    # WHEN it runs again
    again = sync_hooks(gl, cfg, URL, HOOK_TOKEN)

    # THEN every project is ok, and GitLab saw reads only
    assert [o.status for o in again.outcomes] == [OutcomeStatus.UNCHANGED] * 2
    assert writes(fake) == writes_before
    for action in ("hooks.create", "hooks.update", "hooks.test"):
        assert gl.calls[action] == calls_before.get(action, 0)


def test_dry_run_changes_nothing(fake: FakeGitLab, gl: GitLabClient) -> None:
    # GIVEN one project without a hook and one with a wrong hook
    empty, wrong = fake.create_project("acme/empty"), fake.create_project("acme/wrong")
    fake.add_hook(wrong, URL, token="old", job_events=False)
    before = hook_fields(fake)

    # WHEN a dry run syncs (no webhook token needed)
    report = sync_hooks(gl, config(fake, projects=(empty, wrong)), URL, None, dry_run=True)

    # THEN the plan is reported and GitLab is exactly as it was
    assert [(o.plan.action, o.status) for o in report.outcomes] == [
        (HookAction.CREATE, OutcomeStatus.PLANNED),
        (HookAction.UPDATE, OutcomeStatus.PLANNED),
    ]
    assert hook_fields(fake) == before and writes(fake) == 0


def test_a_previous_url_is_moved_not_duplicated(fake: FakeGitLab, gl: GitLabClient) -> None:
    project_id = fake.create_project("acme/app")
    old = "https://old-scaler.example.com/webhooks/gitlab"
    hook_id = fake.add_hook(project_id, old, token="old")

    sync_hooks(gl, config(fake, projects=(project_id,)), URL, HOOK_TOKEN, previous_urls=[old])

    assert list(fake.hooks) == [hook_id] and fake.hooks[hook_id].url == URL


def test_groups_expand_to_every_project_with_subgroups(fake: FakeGitLab, gl: GitLabClient) -> None:
    # GIVEN a group with a subgroup, a project outside it, and a config naming the group, one of its projects
    # again by id and one by path, and a path that is nowhere in the configured groups
    top = fake.create_project("acme/app")
    nested = fake.create_project("acme/platform/infra")
    outside = fake.create_project("other/thing")
    group_id = fake.projects[top].group_id
    assert group_id is not None
    cfg = config(fake, groups=(group_id,), projects=(top, "acme/platform/infra", "lonely/thing"))

    # WHEN hooks are synced
    report = sync_hooks(gl, cfg, URL, HOOK_TOKEN)

    # THEN both group projects got one hook each, the outside project none, and the lost path is a problem
    assert [(o.plan.project.id, o.plan.project.path) for o in report.outcomes] == [
        (top, "acme/app"),
        (nested, "acme/platform/infra"),
    ]
    assert len(ours(fake, top)) == len(ours(fake, nested)) == 1 and ours(fake, outside) == []
    (problem,) = report.problems
    assert '"lonely/thing"' in problem and "numeric id" in problem and not report.ok


def test_one_failing_project_does_not_stop_the_others(fake: FakeGitLab, gl: GitLabClient) -> None:
    # GIVEN a project where the API token may not add hooks
    denied, allowed = fake.create_project("acme/denied"), fake.create_project("acme/allowed")
    fake.inject_failure(f"/projects/{denied}/hooks", status=403, method="POST", message="403 Forbidden")

    report = sync_hooks(gl, config(fake, projects=(denied, allowed)), URL, HOOK_TOKEN)

    by_project = {o.plan.project.id: o for o in report.outcomes}
    assert by_project[denied].status is OutcomeStatus.FAILED and "403" in by_project[denied].error
    assert by_project[allowed].status is OutcomeStatus.CHANGED and len(ours(fake, allowed)) == 1
    assert report.summary()["failed"] == 1 and not report.ok


# -- the tick's check -------------------------------------------------------------------------------


def disable_by_failures(fake: FakeGitLab, receiver: WebhookReceiver, project_id: int) -> int:
    """Four failing Job Hook deliveries: GitLab (and the fake) then disables the hook for a while."""
    receiver.status = 500
    fake.create_pipeline(project_id, [JobSpec(f"j{i}") for i in range(4)], start=False)
    receiver.status = 200
    (hook,) = [h for h in fake.hooks.values() if h.project_id == project_id]
    assert fake.hook_state(hook.id)["alert_status"] == "temporarily_disabled"
    return hook.id


class Metrics:
    def __init__(self) -> None:
        self.emitted: list[tuple[str, float]] = []

    def __call__(self, name: str, value: float) -> None:
        self.emitted.append((name, value))


def test_check_re_enables_a_hook_gitlab_disabled_and_says_why(
    fake: FakeGitLab,
    gl: GitLabClient,
    clock: Clock,
    receiver: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN our hook, installed by sync, then disabled by GitLab after four failed deliveries
    project_id = fake.create_project("acme/app")
    cfg = config(fake, projects=(project_id,), url=receiver.url)
    sync_hooks(gl, cfg, receiver.url, HOOK_TOKEN)
    hook_id = disable_by_failures(fake, receiver, project_id)
    metrics = Metrics()
    caplog.set_level(logging.DEBUG)

    # WHEN the tick's check runs (the scaler answers again)
    health = check_hooks(gl, cfg, None, clock(), emit=metrics)

    # THEN the hook delivers again, the metric counts it, and a log line names GitLab's reason
    assert fake.hook_state(hook_id)["alert_status"] == "executable"
    assert fake.hook_state(hook_id)["disabled_until"] is None
    assert [o.hook_id for o in health.reenabled] == [hook_id] and health.healthy
    assert metrics.emitted == [("WebhooksReenabled", 1), ("WebhooksUnhealthy", 0)]
    (line,) = [r for r in caplog.records if r.getMessage().startswith("re-enabled our webhook")]
    assert "temporarily_disabled" in line.getMessage()
    assert line.__dict__["alert_status"] == "temporarily_disabled"
    assert line.__dict__["disabled_until"] == (T0 + timedelta(minutes=1)).isoformat()
    assert line.__dict__["disabled_for_seconds"] == 60
    assert receiver.received[-1].headers["x-gitlab-token"] == HOOK_TOKEN  # the test event carried it
    assert HOOK_TOKEN not in caplog.text


def test_a_hook_that_still_fails_stays_disabled_and_is_reported(
    fake: FakeGitLab,
    gl: GitLabClient,
    clock: Clock,
    receiver: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    project_id = fake.create_project("acme/app")
    cfg = config(fake, projects=(project_id,), url=receiver.url)
    sync_hooks(gl, cfg, receiver.url, HOOK_TOKEN)
    hook_id = disable_by_failures(fake, receiver, project_id)
    receiver.status = 503  # the scaler is still down
    metrics = Metrics()

    health = check_hooks(gl, cfg, None, clock(), emit=metrics)

    assert fake.hook_state(hook_id)["alert_status"] == "temporarily_disabled"
    (outcome,) = health.disabled
    assert "execution failed" in outcome.error and "is the scaler up" in outcome.error
    assert metrics.emitted == [("WebhooksReenabled", 0), ("WebhooksUnhealthy", 1)] and not health.healthy
    assert any(r.levelno == logging.ERROR and "stays disabled" in r.getMessage() for r in caplog.records)


def test_check_with_the_token_installs_the_hook_of_a_project_new_in_the_group(
    fake: FakeGitLab, gl: GitLabClient, clock: Clock
) -> None:
    # GIVEN a synced group, then a new project in a subgroup
    first = fake.create_project("acme/app")
    group_id = fake.projects[first].group_id
    assert group_id is not None
    cfg = config(fake, groups=(group_id,), url=URL)
    sync_hooks(gl, cfg, URL, HOOK_TOKEN)
    newcomer = fake.create_project("acme/new/service")

    # WHEN the check runs without the token, THEN it reports the missing hook and writes nothing
    writes_before = writes(fake)
    looked = check_hooks(gl, cfg, None, clock(), emit=Metrics())
    assert [o.plan.project.id for o in looked.missing] == [newcomer] and writes(fake) == writes_before

    # WHEN it runs with the current webhook token, THEN the newcomer gets its hook
    fixed = check_hooks(gl, cfg, HOOK_TOKEN, clock(), emit=Metrics())
    assert fixed.healthy and len(ours(fake, newcomer)) == 1 and ours(fake, newcomer)[0].token == HOOK_TOKEN


def test_check_reads_a_bounded_slice_of_projects_per_interval(
    fake: FakeGitLab, gl: GitLabClient, clock: Clock
) -> None:
    ids = [fake.create_project(f"acme/p{i}") for i in range(3)]
    cfg = config(fake, projects=tuple(ids), url=URL)
    seen: set[int] = set()
    for _ in range(3):
        health = check_hooks(gl, cfg, None, clock(), max_projects=1, reenable=False, emit=Metrics())
        assert len(health.outcomes) == 1 and health.deferred == 2
        seen.update(o.plan.project.id for o in health.outcomes)
        clock.advance(15 * 60)
    assert seen == set(ids) and fake.request_count("GET", "/projects/:project/hooks") == 3


def test_check_without_a_webhook_url_is_skipped(fake: FakeGitLab, gl: GitLabClient, clock: Clock) -> None:
    metrics = Metrics()
    health = check_hooks(gl, config(fake, projects=(1,)), None, clock(), emit=metrics)
    assert "gitlab.webhook_url" in health.skipped and not health.healthy
    assert metrics.emitted == [] and fake.request_log == []


# -- the CLI ----------------------------------------------------------------------------------------


def write_config(tmp_path: Path, fake: FakeGitLab, **kwargs: Any) -> Path:
    data = settings(fake, **kwargs)
    gitlab = data["gitlab"]
    lines = [
        "[gitlab]",
        f'url = "{gitlab["url"]}"',
        f"projects = {json.dumps(gitlab['projects'])}",
        f"groups = {json.dumps(gitlab['groups'])}",
        f'webhook_url = "{gitlab["webhook_url"]}"',
        "",
        "[[pools]]",
        'name = "linux"',
        'asg = "test-linux"',
        'tags = ["linux"]',
        "max_instances = 2",
    ]
    path = tmp_path / "scaler.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def env(fake: FakeGitLab, **extra: str | None) -> dict[str, str | None]:
    return {"GITLAB_TOKEN": fake.token, "RUNNER_SCALER_WEBHOOK_TOKEN": HOOK_TOKEN, "COLUMNS": "200", **extra}


def test_cli_sync_reports_changes_in_a_table_and_never_shows_a_token(
    fake: FakeGitLab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a project without our hook and one with a wrong hook
    missing, wrong = fake.create_project("acme/missing"), fake.create_project("acme/wrong")
    fake.add_hook(wrong, URL, token="old", job_events=False)
    cfg = write_config(tmp_path, fake, projects=(missing, wrong))
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    out = tmp_path / "report.json"

    # WHEN the operator syncs, then syncs again, then checks
    first = runner.invoke(
        app, ["hooks", "sync", "-c", str(cfg), "--url", URL, "--json", str(out)], env=env(fake)
    )
    second = runner.invoke(app, ["hooks", "sync", "-c", str(cfg), "--url", URL], env=env(fake))
    checked = runner.invoke(app, ["hooks", "check", "-c", str(cfg), "--url", URL], env=env(fake))

    # THEN the table says what changed, the second run changed nothing, the check is healthy
    assert first.exit_code == 0, first.output
    assert "create" in first.stdout and "update job_events" in first.stdout and "changed" in first.stdout
    assert "create 1, update 1, re-enable 0, ok 0, failed 0" in first.stdout
    report = json.loads(out.read_text())
    assert report["summary"]["create"] == 1 and report["summary"]["update"] == 1
    assert second.exit_code == 0 and "ok 2, failed 0" in second.stdout
    assert checked.exit_code == 0 and "healthy" in checked.stdout
    # AND no token appears in any output, the JSON report or the logs, while GitLab holds the webhook token
    for text in (first.output, second.output, checked.output, out.read_text(), caplog.text):
        assert HOOK_TOKEN not in text and fake.token not in text
    assert all(h.token == HOOK_TOKEN for h in fake.hooks.values())


def test_cli_dry_run_needs_no_webhook_token_and_changes_nothing(fake: FakeGitLab, tmp_path: Path) -> None:
    project_id = fake.create_project("acme/app")
    cfg = write_config(tmp_path, fake, projects=(project_id,), url=URL)

    result = CliRunner().invoke(
        app,
        ["hooks", "sync", "-c", str(cfg), "--dry-run", "--json", "-"],
        env=env(fake, RUNNER_SCALER_WEBHOOK_TOKEN=None),
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dry_run"] is True and report["projects"][0]["status"] == "planned"
    assert fake.hooks == {} and writes(fake) == 0


def test_cli_reads_tokens_from_files(fake: FakeGitLab, tmp_path: Path) -> None:
    project_id = fake.create_project("acme/app")
    cfg = write_config(tmp_path, fake, projects=(project_id,))
    api_file, hook_file = tmp_path / "api", tmp_path / "hook"
    api_file.write_text(fake.token + "\n")
    hook_file.write_text(HOOK_TOKEN + "\n")

    result = CliRunner().invoke(
        app,
        [
            *("hooks", "sync", "-c", str(cfg), "--url", URL),
            *("--token-file", str(api_file), "--webhook-token-file", str(hook_file)),
        ],
        env={"GITLAB_TOKEN": None, "RUNNER_SCALER_WEBHOOK_TOKEN": None},
    )

    assert result.exit_code == 0, result.output
    assert [h.token for h in ours(fake, project_id)] == [HOOK_TOKEN]


@pytest.mark.parametrize(
    ("unset", "message"),
    [("GITLAB_TOKEN", "no GitLab API token"), ("RUNNER_SCALER_WEBHOOK_TOKEN", "no webhook token")],
)
def test_cli_refuses_to_run_without_a_token(
    fake: FakeGitLab, tmp_path: Path, unset: str, message: str
) -> None:
    project_id = fake.create_project("acme/app")
    cfg = write_config(tmp_path, fake, projects=(project_id,))

    result = CliRunner().invoke(
        app, ["hooks", "sync", "-c", str(cfg), "--url", URL], env=env(fake, **{unset: None})
    )

    assert result.exit_code == 2 and message in result.output and unset in result.output
    assert fake.hooks == {}


def test_cli_check_exits_1_and_shows_a_disabled_hook(
    fake: FakeGitLab, gl: GitLabClient, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    # GIVEN one project with a hook GitLab disabled and one without our hook
    disabled = fake.create_project("acme/disabled")
    missing = fake.create_project("acme/missing")
    fake.add_hook(disabled, receiver.url, token=HOOK_TOKEN)
    disable_by_failures(fake, receiver, disabled)
    cfg = write_config(tmp_path, fake, projects=(disabled, missing), url=receiver.url)

    # WHEN the operator checks, THEN nothing changes and the table names both problems
    looked = CliRunner().invoke(app, ["hooks", "check", "-c", str(cfg)], env=env(fake))
    assert looked.exit_code == 1
    assert (
        "disabled" in looked.stdout and "temporarily_disabled" in looked.stdout and "missing" in looked.stdout
    )
    assert writes(fake) == 0

    # WHEN asked to re-enable, THEN the disabled hook comes back; the missing one still needs `hooks sync`
    fixed = CliRunner().invoke(
        app, ["hooks", "check", "-c", str(cfg), "--reenable", "--json", "-"], env=env(fake)
    )
    health = json.loads(fixed.stdout)
    assert fixed.exit_code == 1 and (health["reenabled"], health["missing"], health["disabled"]) == (1, 1, 0)
    assert HOOK_TOKEN not in fixed.output


# -- the tick ---------------------------------------------------------------------------------------


def test_the_tick_re_enables_a_hook_gitlab_disabled(
    stack: Stack, fake: FakeGitLab, receiver: WebhookReceiver
) -> None:
    # GIVEN a deployment whose config names our webhook URL and a project whose hook GitLab disabled after
    # four failed deliveries (the scaler was down)
    project_id = fake.create_project("acme/app")
    hook_id = fake.add_hook(project_id, receiver.url, token=HOOK_TOKEN)
    disable_by_failures(fake, receiver, project_id)
    gitlab = stack.config.gitlab.model_copy(
        update={"url": fake.url, "projects": [project_id], "webhook_url": receiver.url}
    )
    config = stack.config.model_copy(update={"gitlab": gitlab})
    client = GitLabClient(fake.url, fake.token, max_retries=1, timeout=5)
    install(
        Runtime(
            dict(stack.runtime.environ),
            aws=stack.aws,
            config=config,
            gitlab=client,
            clock=stack.runtime.clock,
        )
    )

    # WHEN the scheduled tick runs through the Chalice app
    with Client(chalice_app) as chalice:
        event = chalice.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
        response = chalice.lambda_.invoke("tick", event)

    # THEN GitLab delivers to the hook again, and every pool was reconciled without error
    assert fake.hook_state(hook_id)["alert_status"] == "executable"
    assert fake.hook_state(hook_id)["disabled_until"] is None
    assert all(not pool["errors"] for pool in response.payload["pools"].values())
