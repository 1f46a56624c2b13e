"""The pure half of `hooks sync`: which hook is ours, and what each project needs. No GitLab, no clock.

Table-driven scenarios plus a Hypothesis invariant, with an in-memory twin of the adapter's hook methods.
(They sit beside the fake-GitLab tests because this change owns only tests/functional/test_hooks*.py.)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.errors import GitLabError
from chalicelib.gitlab import HookInfo, HooksApi, HookTrigger, ProjectRef
from chalicelib.hook_sync import (
    HookAction,
    HookProject,
    HookSpec,
    HookStep,
    OutcomeStatus,
    apply_hooks,
    checked_slice,
    plan_hooks,
    plan_project,
    same_endpoint,
)

URL = "https://scaler.example.com/webhooks/gitlab"
FOREIGN = "https://chat.example.com/hooks/ci"
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PROJECT = HookProject(7, "acme/app")


def hook(hook_id: int = 1, url: str = URL, **fields: object) -> HookInfo:
    """A hook as GitLab lists it; by default ours and right."""
    values: dict[str, object] = {
        "job_events": True,
        "pipeline_events": True,
        "push_events": False,
        "enable_ssl_verification": True,
        "alert_status": "executable",
        "disabled_until": None,
    }
    values.update(fields)
    return HookInfo(id=hook_id, project_id=PROJECT.id, url=url, **values)  # type: ignore[arg-type]


class MemoryHooks:
    """The adapter's hook methods over a dict: enough GitLab to apply a plan and read the result."""

    def __init__(self, hooks: dict[int, list[HookInfo]]) -> None:
        self.hooks = {project: list(listed) for project, listed in hooks.items()}
        self.tokens: dict[int, str] = {}
        self.calls: Counter[str] = Counter()
        self._ids = 1000

    def list_project_hooks(self, project_id: int) -> list[HookInfo]:
        self.calls["hooks.list"] += 1
        return list(self.hooks[project_id])

    def create_project_hook(self, project_id: int, *, url: str, token: str, **fields: bool) -> HookInfo:
        self.calls["hooks.create"] += 1
        self._ids += 1
        created = replace(hook(self._ids, url, **fields), project_id=project_id)
        self.hooks[project_id].append(created)
        self.tokens[created.id] = token
        return created

    def update_project_hook(
        self, project_id: int, hook_id: int, *, url: str, token: str, **fields: bool
    ) -> HookInfo:
        self.calls["hooks.update"] += 1
        listed = self.hooks[project_id]
        index = next(i for i, h in enumerate(listed) if h.id == hook_id)
        listed[index] = replace(listed[index], url=url, **fields)  # type: ignore[arg-type]
        self.tokens[hook_id] = token
        return listed[index]

    def test_project_hook(self, project_id: int, hook_id: int, trigger: HookTrigger = "job_events") -> None:
        self.calls["hooks.test"] += 1
        listed = self.hooks[project_id]
        index = next(i for i, h in enumerate(listed) if h.id == hook_id)
        listed[index] = replace(listed[index], alert_status="executable", disabled_until=None)

    def group_projects(self, group_id: int, *, include_subgroups: bool = True) -> list[ProjectRef]:
        return []


def test_the_memory_twin_is_a_hooks_api() -> None:
    api: HooksApi = MemoryHooks({})
    assert api.group_projects(1) == []


@pytest.mark.parametrize(
    ("url", "other", "same"),
    [
        (URL, URL, True),
        (URL, URL + "/", True),  # trailing slash
        (URL, "http://scaler.example.com/webhooks/gitlab", True),  # scheme upgraded
        (URL, "https://SCALER.example.com:443/webhooks/gitlab", True),  # host case, default port
        (URL, URL + "?pool=linux", True),  # query ignored
        (URL, "https://scaler.example.com:8443/webhooks/gitlab", False),  # another port
        (URL, "https://other.example.com/webhooks/gitlab", False),
        (URL, "https://scaler.example.com/webhooks/gitlab-staging", False),
        (URL, "not a url", False),
        (URL, "https://scaler.example.com:port/x", False),
    ],
)
def test_which_urls_reach_our_endpoint(url: str, other: str, same: bool) -> None:
    assert same_endpoint(url, other) is same
    assert same_endpoint(other, url) is same


@pytest.mark.parametrize(
    ("hooks", "action", "changes", "reenable"),
    [
        ([], HookAction.CREATE, (), False),
        ([hook(url=FOREIGN)], HookAction.CREATE, (), False),
        ([hook(), hook(2, FOREIGN, job_events=False)], HookAction.OK, (), False),
        ([hook(url=URL + "/")], HookAction.UPDATE, ("url",), False),
        ([hook(job_events=False)], HookAction.UPDATE, ("job_events",), False),
        (
            [hook(pipeline_events=False, push_events=True, enable_ssl_verification=False)],
            HookAction.UPDATE,
            ("pipeline_events", "push_events", "enable_ssl_verification"),
            False,
        ),
        (
            [hook(alert_status="temporarily_disabled", disabled_until=T0 + timedelta(minutes=1))],
            HookAction.REENABLE,
            (),
            True,
        ),
        ([hook(alert_status="disabled", job_events=False)], HookAction.UPDATE, ("job_events",), True),
        ([hook(disabled_until=T0)], HookAction.REENABLE, (), True),  # backing off after failures
        ([hook(alert_status=None)], HookAction.OK, (), False),  # GitLab before 15.7: no alert_status
    ],
)
def test_plan_per_project(
    hooks: list[HookInfo], action: HookAction, changes: tuple[str, ...], reenable: bool
) -> None:
    item = plan_project(PROJECT, hooks, HookSpec(URL))
    assert (item.action, item.changes, item.reenable) == (action, changes, reenable)


def test_a_disabled_hook_says_why_in_gitlabs_terms() -> None:
    until = T0 + timedelta(minutes=4)
    item = plan_project(
        PROJECT, [hook(5, alert_status="temporarily_disabled", disabled_until=until)], HookSpec(URL)
    )
    assert item.steps == (HookStep.REENABLE,)
    assert "alert_status temporarily_disabled" in item.disabled_reason
    assert f"disabled_until {until.isoformat()}" in item.disabled_reason
    assert "4 consecutive failures" in item.disabled_reason
    assert item.describe() == "re-enable"


def test_rotate_token_updates_a_hook_that_looks_right() -> None:
    item = plan_project(PROJECT, [hook()], HookSpec(URL), rotate_token=True)
    assert (item.action, item.changes, item.describe()) == (HookAction.UPDATE, ("token",), "update token")


def test_several_hooks_of_ours_keep_the_best_and_report_the_rest() -> None:
    # GIVEN an old hand-made duplicate (trailing slash, disabled) and a right one added later
    hooks = [hook(3, URL + "/", alert_status="disabled"), hook(9)]
    item = plan_project(PROJECT, hooks, HookSpec(URL))
    assert (item.action, item.hook_id, item.duplicates) == (HookAction.OK, 9, (3,))


def test_a_previous_url_marks_a_hook_as_ours() -> None:
    old = "https://old-scaler.example.com/webhooks/gitlab"
    item = plan_project(PROJECT, [hook(4, old)], HookSpec(URL), previous_urls=[old])
    assert (item.action, item.hook_id, item.changes) == (HookAction.UPDATE, 4, ("url",))


def test_projects_whose_hooks_could_not_be_read_are_not_planned() -> None:
    other = HookProject(8)
    plan = plan_hooks([PROJECT, other], {PROJECT.id: []}, URL)
    assert [i.project for i in plan.items] == [PROJECT]


def test_dry_run_and_missing_token_leave_writes_planned() -> None:
    disabled_and_wrong = hook(alert_status="temporarily_disabled", disabled_until=T0, job_events=False)
    api = MemoryHooks({PROJECT.id: [disabled_and_wrong]})
    plan = plan_hooks([PROJECT], api.hooks, URL)

    dry = apply_hooks(api, plan, "tok", dry_run=True)
    tokenless = apply_hooks(api, plan, None)

    assert dry.outcomes[0].status is OutcomeStatus.PLANNED and sum(api.calls.values()) == 1
    # without a token the re-enable still happens, the update waits for `hooks sync`
    (outcome,) = tokenless.outcomes
    assert (outcome.done, outcome.left, outcome.status) == (
        (HookStep.REENABLE,),
        (HookStep.UPDATE,),
        OutcomeStatus.PLANNED,
    )
    assert api.tokens == {}


class NothingToSend(MemoryHooks):
    """GitLab's answer to a test request in a project without jobs (and, optionally, without pipelines)."""

    def __init__(self, hooks: dict[int, list[HookInfo]], *, pipelines: bool) -> None:
        super().__init__(hooks)
        self.pipelines = pipelines
        self.triggers: list[str] = []

    def test_project_hook(self, project_id: int, hook_id: int, trigger: HookTrigger = "job_events") -> None:
        self.triggers.append(trigger)
        if trigger == "job_events":
            raise GitLabError("hooks.test", 422, "Ensure the project has CI jobs.")
        if not self.pipelines:
            raise GitLabError("hooks.test", 422, "Ensure the project has CI pipelines.")
        super().test_project_hook(project_id, hook_id, trigger)


@pytest.mark.parametrize("pipelines", [True, False])
def test_re_enable_falls_back_to_a_pipeline_event_when_the_project_has_no_jobs(pipelines: bool) -> None:
    api = NothingToSend(
        {PROJECT.id: [hook(alert_status="temporarily_disabled", disabled_until=T0)]}, pipelines=pipelines
    )

    (outcome,) = apply_hooks(api, plan_hooks([PROJECT], api.hooks, URL), "tok").outcomes

    assert api.triggers == ["job_events", "pipeline_events"]
    if pipelines:
        assert outcome.status is OutcomeStatus.CHANGED and api.hooks[PROJECT.id][0].executable
    else:
        assert outcome.status is OutcomeStatus.FAILED and "comes back by itself" in outcome.error


def test_checked_slice_rotates_through_every_project() -> None:
    projects = [HookProject(i) for i in range(1, 6)]
    interval = timedelta(minutes=15)
    seen: set[int] = set()
    for n in range(3):
        chosen, deferred = checked_slice(projects, T0 + n * interval, interval, 2)
        assert len(chosen) == 2 and deferred == 3
        seen.update(p.id for p in chosen)
    assert seen == {1, 2, 3, 4, 5}
    assert checked_slice(projects, T0, interval, 0) == (tuple(projects), 0)


# -- the invariant ---------------------------------------------------------------------------------

OUR_VARIANTS = (URL, URL + "/", "http://scaler.example.com/webhooks/gitlab", URL + "?x=1")
hook_strategy = st.builds(
    lambda url, job, pipeline, push, ssl, status: (url, job, pipeline, push, ssl, status),
    st.sampled_from((*OUR_VARIANTS, FOREIGN, "https://scaler.example.com/other")),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(("executable", "temporarily_disabled", "disabled", None)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(hook_strategy, max_size=5), st.booleans())
def test_after_one_sync_every_project_has_exactly_what_we_want_and_a_second_sync_writes_nothing(
    drawn: list[tuple[str, bool, bool, bool, bool, str | None]], rotate: bool
) -> None:
    # GIVEN any mix of our hooks (some typed differently, wrong, disabled) and foreign hooks
    existing = [
        hook(
            i + 1,
            url,
            job_events=job,
            pipeline_events=pipeline,
            push_events=push,
            enable_ssl_verification=ssl,
            alert_status=status,
            disabled_until=None if status in ("executable", None) else T0,
        )
        for i, (url, job, pipeline, push, ssl, status) in enumerate(drawn)
    ]
    api = MemoryHooks({PROJECT.id: existing})
    ours_before = [h for h in existing if h.url in OUR_VARIANTS]
    foreign_before = [h for h in existing if h.url not in OUR_VARIANTS]

    # WHEN sync runs twice
    first = apply_hooks(api, plan_hooks([PROJECT], api.hooks, URL, rotate_token=rotate), "tok")
    writes_after_first = api.calls["hooks.create"] + api.calls["hooks.update"] + api.calls["hooks.test"]
    second_plan = plan_hooks([PROJECT], api.hooks, URL)
    apply_hooks(api, second_plan, "tok")

    # THEN the hook we kept points at exactly our URL, right and enabled (with our token when written);
    # nothing was created when a hook of ours existed, foreign hooks are untouched, and the second run
    # wrote nothing
    (outcome,) = first.outcomes
    after = {h.id: h for h in api.hooks[PROJECT.id]}
    kept = after[outcome.hook_id or 0]
    assert kept.url == URL and HookSpec(URL).differences(kept) == () and kept.executable
    if {HookStep.CREATE, HookStep.UPDATE} & set(outcome.done):
        assert api.tokens[kept.id] == "tok"
    assert len(after) == len(existing) + (0 if ours_before else 1)
    assert [after[f.id] for f in foreign_before] == foreign_before
    assert first.ok and [i.action for i in second_plan.items] == [HookAction.OK]
    assert (
        api.calls["hooks.create"] + api.calls["hooks.update"] + api.calls["hooks.test"] == writes_after_first
    )
