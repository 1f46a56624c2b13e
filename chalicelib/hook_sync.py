"""Use case behind `runner-scaler hooks sync` and the tick's hook check: our project webhook, everywhere.

GitLab sends Job and Pipeline events through project (and group) hooks only, never through system hooks, so
every project the scaler serves needs one hook pointing at our `/webhooks/gitlab`. Plan first (`plan_hooks`:
pure, plain data), execute second (`apply_hooks`, through the GitLab adapter's methods). Imports config,
errors and the standard library (metrics lazily); the adapter's types only for type checking, so
python-gitlab stays out of the cold start. Reads no clock and no environment; never logs or reports a token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from chalicelib.config import Config
from chalicelib.errors import GitLabError

if TYPE_CHECKING:
    from chalicelib.gitlab import HookInfo, HooksApi

logger = logging.getLogger(__name__)

#: How often the tick looks at our hooks. GitLab pauses a failing hook for 1 minute after the 4th
#: consecutive failure, doubling up to 24 h, and disables it for good after 40 (docs: "Auto-disabled
#: webhooks"); checking every 15 minutes bounds how long a recovered scaler stays deaf to job events.
HOOK_CHECK_INTERVAL = timedelta(minutes=15)

#: Projects whose hooks one check reads (one GET each), so a tick stays well inside its minute; the others
#: are read by the following checks, in rotation.
MAX_PROJECTS_PER_CHECK = 100

#: The hook fields `plan_hooks` compares with what we want, by GitLab's names.
COMPARED_FIELDS = ("url", "job_events", "pipeline_events", "push_events", "enable_ssl_verification")

#: GitLab's answer to a test request when the project has nothing to send (TestHooks::ProjectService).
_NO_JOBS = "has CI jobs"

_ERRORS = (GitLabError,)  # a 404 (GitLabNotFoundError) is one of them


# --------------------------------------------------------------------------------------------------
# Plain data


@dataclass(frozen=True)
class HookProject:
    """A project to keep a hook in; `path` (path_with_namespace) is known when a group listing named it."""

    id: int
    path: str = ""

    @property
    def label(self) -> str:
        return self.path or f"project {self.id}"


@dataclass(frozen=True)
class HookSpec:
    """What our hook must look like: job and pipeline events to our URL, nothing else, TLS verified."""

    url: str
    job_events: bool = True
    pipeline_events: bool = True
    push_events: bool = False
    enable_ssl_verification: bool = True

    def differences(self, hook: HookInfo) -> tuple[str, ...]:
        """The fields of `hook` that are not what we want (GitLab's field names)."""
        return tuple(name for name in COMPARED_FIELDS if getattr(hook, name) != getattr(self, name))


class HookAction(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REENABLE = "re-enable"
    OK = "ok"


class HookStep(StrEnum):
    """One write to GitLab; an action is one or two of them (an update may need a re-enable after it)."""

    CREATE = "create"
    UPDATE = "update"
    REENABLE = "re-enable"


@dataclass(frozen=True)
class ProjectHookPlan:
    """What one project needs.

    `changes` names the fields to fix, plus "token" when the token is re-sent on request (GitLab never shows
    a hook's token, so we cannot tell whether it is right). `reenable`: GitLab auto-disabled the hook, and
    editing a hook does not re-enable it, a successful test delivery does. `duplicates`: further hooks of
    ours in the project, left alone (the adapter deletes no hooks): each doubles our deliveries.
    """

    project: HookProject
    action: HookAction
    hook_id: int | None = None
    changes: tuple[str, ...] = ()
    reenable: bool = False
    alert_status: str | None = None
    disabled_until: datetime | None = None
    duplicates: tuple[int, ...] = ()

    @property
    def disabled_reason(self) -> str:
        """Why GitLab is not delivering to the hook, in its own terms; empty when it is."""
        return disabled_reason(self.alert_status, self.disabled_until) if self.reenable else ""

    @property
    def steps(self) -> tuple[HookStep, ...]:
        if self.action is HookAction.CREATE:
            return (HookStep.CREATE,)
        steps = (HookStep.UPDATE,) if self.changes else ()
        return steps + ((HookStep.REENABLE,) if self.reenable else ())

    def describe(self) -> str:
        """`create`, `update url, job_events + re-enable`, `re-enable` or `ok`."""
        if self.action is HookAction.CREATE:
            return "create"
        parts = [f"update {', '.join(self.changes)}"] if self.changes else []
        parts += ["re-enable"] if self.reenable else []
        return " + ".join(parts) or "ok"


@dataclass(frozen=True)
class HookPlan:
    spec: HookSpec
    items: tuple[ProjectHookPlan, ...]

    @property
    def writes(self) -> int:
        """GitLab write calls the plan needs (a re-enable may take two when a project has no jobs)."""
        return sum(len(item.steps) for item in self.items)


class OutcomeStatus(StrEnum):
    UNCHANGED = "unchanged"
    PLANNED = "planned"  # needed, not made: a dry run, or no webhook token to write with
    CHANGED = "changed"
    FAILED = "failed"


@dataclass(frozen=True)
class HookOutcome:
    """What happened to one project: the steps done, the error that stopped the rest, the hook's id."""

    plan: ProjectHookPlan
    done: tuple[HookStep, ...] = ()
    hook_id: int | None = None
    error: str = ""

    @property
    def left(self) -> tuple[HookStep, ...]:
        return tuple(step for step in self.plan.steps if step not in self.done)

    @property
    def status(self) -> OutcomeStatus:
        if self.error:
            return OutcomeStatus.FAILED
        if self.left:
            return OutcomeStatus.PLANNED
        return OutcomeStatus.CHANGED if self.done else OutcomeStatus.UNCHANGED

    def as_dict(self) -> dict[str, Any]:
        item = self.plan
        return {
            "project_id": item.project.id,
            "project": item.project.path,
            "hook_id": self.hook_id,
            "action": item.action.value,
            "changes": list(item.changes),
            "reenable": item.reenable,
            "alert_status": item.alert_status,
            "disabled_until": item.disabled_until.isoformat() if item.disabled_until else None,
            "disabled_reason": item.disabled_reason,
            "duplicates": list(item.duplicates),
            "status": self.status.value,
            "done": [step.value for step in self.done],
            "error": self.error,
        }


@dataclass(frozen=True)
class HookReport:
    """What `hooks sync` changed (or, in a dry run, would change), project by project."""

    url: str
    dry_run: bool
    outcomes: tuple[HookOutcome, ...]
    problems: tuple[str, ...] = ()

    def count(self, action: HookAction) -> int:
        return sum(1 for o in self.outcomes if o.plan.action is action and not o.error)

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if o.error)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.problems

    def summary(self) -> dict[str, int]:
        counts = {action.value: self.count(action) for action in HookAction}
        return {**counts, "failed": self.failed, "problems": len(self.problems)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "dry_run": self.dry_run,
            "summary": self.summary(),
            "projects": [o.as_dict() for o in self.outcomes],
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class HookHealth:
    """What one hook check saw and did. `deferred`: projects left for a later check (budget per check)."""

    checked_at: datetime
    url: str
    outcomes: tuple[HookOutcome, ...] = ()
    problems: tuple[str, ...] = ()
    deferred: int = 0
    skipped: str = ""

    def _where(self, step: HookStep, *, done: bool) -> tuple[HookOutcome, ...]:
        return tuple(o for o in self.outcomes if step in o.plan.steps and (step in o.done) is done)

    @property
    def reenabled(self) -> tuple[HookOutcome, ...]:
        return self._where(HookStep.REENABLE, done=True)

    @property
    def disabled(self) -> tuple[HookOutcome, ...]:
        """Our hooks GitLab still does not deliver to."""
        return self._where(HookStep.REENABLE, done=False)

    @property
    def missing(self) -> tuple[HookOutcome, ...]:
        return self._where(HookStep.CREATE, done=False)

    @property
    def drifted(self) -> tuple[HookOutcome, ...]:
        return self._where(HookStep.UPDATE, done=False)

    @property
    def unhealthy(self) -> int:
        """Projects whose job events may not reach us, plus config or read problems."""
        broken = {o.plan.project.id for o in (*self.disabled, *self.missing, *self.drifted)}
        return len(broken) + len(self.problems)

    @property
    def healthy(self) -> bool:
        return not self.skipped and self.unhealthy == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "url": self.url,
            "healthy": self.healthy,
            "skipped": self.skipped,
            "deferred": self.deferred,
            "reenabled": len(self.reenabled),
            "disabled": len(self.disabled),
            "missing": len(self.missing),
            "drifted": len(self.drifted),
            "projects": [o.as_dict() for o in self.outcomes],
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class ProjectSelection:
    projects: tuple[HookProject, ...]
    problems: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------
# Pure rules


def same_endpoint(url: str, other: str) -> bool:
    """Whether two hook URLs reach the same endpoint: equal, or same host, port and path.

    A trailing slash, the scheme (http upgraded to https), a default port and the query are ignored, so a
    hook someone typed slightly differently is still recognised as ours and fixed instead of duplicated.
    """
    if url == other:
        return True
    left, right = _endpoint(url), _endpoint(other)
    return left is not None and left == right


def _endpoint(url: str) -> tuple[str, int | None, str] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    if (parts.scheme, port) in (("http", 80), ("https", 443)):
        port = None
    return parts.hostname.lower(), port, parts.path.rstrip("/")


def is_our_hook(hook_url: str, url: str, previous_urls: Sequence[str] = ()) -> bool:
    """Whether a hook is ours: it reaches our URL, or a URL the scaler had before (`--previous-url`)."""
    return any(same_endpoint(hook_url, candidate) for candidate in (url, *previous_urls))


def needs_reenable(hook: HookInfo) -> bool:
    """GitLab stopped delivering (alert_status not executable), or is backing off after failures."""
    return not hook.executable or hook.disabled_until is not None


_MEANING = {
    "temporarily_disabled": (
        "GitLab paused deliveries after 4 consecutive failures; each pause doubles, up to 24 h"
    ),
    "disabled": "GitLab disabled the hook until it is re-enabled (40 consecutive failures, newer GitLab)",
}


def disabled_reason(alert_status: str | None, disabled_until: datetime | None) -> str:
    """Why GitLab is not delivering, in its own terms (docs: "Auto-disabled webhooks")."""
    status = alert_status or "unknown"
    until = f", disabled_until {disabled_until.isoformat()}" if disabled_until else ""
    meaning = _MEANING.get(status, "recent deliveries failed and GitLab is backing off")
    return f"alert_status {status}{until}: {meaning}"


def plan_project(
    project: HookProject,
    hooks: Sequence[HookInfo],
    spec: HookSpec,
    *,
    rotate_token: bool = False,
    previous_urls: Sequence[str] = (),
) -> ProjectHookPlan:
    """One project's plan: create our hook, fix it, re-enable it, or leave it; other hooks are not ours.

    With several hooks of ours, the one already at our exact URL, enabled, with job events (then the oldest)
    is kept up to date; the others are reported as duplicates.
    """
    ours = [hook for hook in hooks if is_our_hook(hook.url, spec.url, previous_urls)]
    if not ours:
        return ProjectHookPlan(project, HookAction.CREATE)
    ours.sort(key=lambda h: (h.url != spec.url, not h.executable, not h.job_events, h.id))
    hook, *others = ours
    changes = spec.differences(hook) + (("token",) if rotate_token else ())
    reenable = needs_reenable(hook)
    action = HookAction.UPDATE if changes else HookAction.REENABLE if reenable else HookAction.OK
    return ProjectHookPlan(
        project,
        action,
        hook_id=hook.id,
        changes=changes,
        reenable=reenable,
        alert_status=hook.alert_status,
        disabled_until=hook.disabled_until,
        duplicates=tuple(h.id for h in others),
    )


def plan_hooks(
    projects: Sequence[HookProject],
    existing_hooks_by_project: Mapping[int, Sequence[HookInfo]],
    url: str,
    *,
    job_events: bool = True,
    pipeline_events: bool = True,
    enable_ssl_verification: bool = True,
    rotate_token: bool = False,
    previous_urls: Sequence[str] = (),
) -> HookPlan:
    """Per project: create, update (which fields), re-enable or ok. Pure: no GitLab, no clock.

    Projects missing from `existing_hooks_by_project` (their hooks could not be read) are left out of the
    plan: creating a hook blind could duplicate one; the caller reports them.
    """
    spec = HookSpec(
        url,
        job_events=job_events,
        pipeline_events=pipeline_events,
        enable_ssl_verification=enable_ssl_verification,
    )
    items = tuple(
        plan_project(
            project,
            existing_hooks_by_project[project.id],
            spec,
            rotate_token=rotate_token,
            previous_urls=previous_urls,
        )
        for project in projects
        if project.id in existing_hooks_by_project
    )
    return HookPlan(spec, items)


def checked_slice(
    projects: Sequence[HookProject], now: datetime, interval: timedelta, budget: int
) -> tuple[tuple[HookProject, ...], int]:
    """The projects one check reads, and how many it leaves for later.

    Within budget, all of them; past it, a window that moves by `budget` every `interval`, so successive
    checks cover every project without keeping state.
    """
    if budget <= 0 or len(projects) <= budget:
        return tuple(projects), 0
    slot = int(now.timestamp()) // max(1, int(interval.total_seconds()))
    start = (slot * budget) % len(projects)
    rotated = (*projects[start:], *projects[:start])
    return rotated[:budget], len(projects) - budget


# --------------------------------------------------------------------------------------------------
# Reading GitLab


def _numeric(ref: int | str) -> int | None:
    if isinstance(ref, int):
        return ref
    text = ref.strip()
    return int(text) if text.isdigit() else None


def resolve_projects(
    gitlab: HooksApi, projects: Sequence[int | str], groups: Sequence[int | str]
) -> ProjectSelection:
    """Every project of the configured `groups` (subgroups included) plus the configured `projects`.

    Ids are used as they are. A project path is found among the groups' projects; the adapter has no
    lookup by path, so a path outside the configured groups (or a group path) is reported with its fix.
    """
    found: dict[int, HookProject] = {}
    problems = _expand_groups(gitlab, groups, found)
    by_path = {p.path: p for p in found.values() if p.path}
    for ref in projects:
        project_id = _numeric(ref)
        if project_id is not None:
            found.setdefault(project_id, HookProject(project_id))
        elif str(ref).strip("/") not in by_path:
            problems.append(
                f'gitlab.projects: "{ref}" is a path outside the configured groups; write the project\'s '
                "numeric id (Settings > General), or add its group to gitlab.groups"
            )
    if not projects and not groups:
        problems.append(
            "gitlab.projects and gitlab.groups are both empty: list the projects or groups (numeric ids) "
            "whose CI jobs the scaler runs"
        )
    return ProjectSelection(tuple(sorted(found.values(), key=lambda p: p.id)), tuple(problems))


def _expand_groups(gitlab: HooksApi, groups: Sequence[int | str], found: dict[int, HookProject]) -> list[str]:
    problems: list[str] = []
    for ref in groups:
        group_id = _numeric(ref)
        if group_id is None:
            problems.append(
                f"gitlab.groups: \"{ref}\" is a path; write the group's numeric id (shown on the group's "
                "overview page): the GitLab adapter looks groups up by id"
            )
            continue
        try:
            listed = gitlab.group_projects(group_id, include_subgroups=True)
        except _ERRORS as exc:
            problems.append(f"gitlab.groups: group {group_id}: {exc}")
            continue
        for project in listed:
            found.setdefault(project.id, HookProject(project.id, project.path_with_namespace))
    return problems


def read_hooks(
    gitlab: HooksApi, projects: Sequence[HookProject]
) -> tuple[dict[int, list[HookInfo]], tuple[str, ...]]:
    """Each project's hooks (one GET each), and a problem line for each project that could not be read."""
    hooks: dict[int, list[HookInfo]] = {}
    problems: list[str] = []
    for project in projects:
        try:
            hooks[project.id] = gitlab.list_project_hooks(project.id)
        except _ERRORS as exc:
            problems.append(f"{project.label}: cannot read its hooks, left alone: {exc}")
    return hooks, tuple(problems)


# --------------------------------------------------------------------------------------------------
# Executing a plan


def apply_hooks(gitlab: HooksApi, plan: HookPlan, token: str | None, dry_run: bool = False) -> HookReport:
    """Make GitLab match the plan, project by project; one project's failure does not stop the others.

    `token` is the webhook secret GitLab sends as `X-Gitlab-Token`; every create and update sends it (GitLab
    resets it when the URL changes). Without it, only re-enables happen and the rest stays planned. With
    `dry_run`, nothing is written.
    """
    outcomes = tuple(_apply_one(gitlab, item, plan.spec, token, dry_run) for item in plan.items)
    return HookReport(url=plan.spec.url, dry_run=dry_run, outcomes=outcomes)


def _apply_one(
    gitlab: HooksApi, item: ProjectHookPlan, spec: HookSpec, token: str | None, dry_run: bool
) -> HookOutcome:
    done: list[HookStep] = []
    hook_id = item.hook_id
    for step in item.steps:
        if dry_run or (token is None and step is not HookStep.REENABLE):
            continue
        try:
            hook_id = _run_step(gitlab, step, item.project.id, hook_id, spec, token)
        except _ERRORS as exc:
            logger.warning(
                "webhook change failed",
                extra={"project_id": item.project.id, "hook_id": hook_id, "step": step.value},
            )
            return HookOutcome(item, tuple(done), hook_id, _explain(step, exc))
        logger.info(
            "webhook changed", extra={"project_id": item.project.id, "hook_id": hook_id, "step": step.value}
        )
        done.append(step)
    return HookOutcome(item, tuple(done), hook_id)


def _run_step(
    gitlab: HooksApi,
    step: HookStep,
    project_id: int,
    hook_id: int | None,
    spec: HookSpec,
    token: str | None,
) -> int:
    """One write; returns the hook's id (new after a create). Writes without a token are skipped earlier."""
    if step is HookStep.CREATE and token is not None:
        return gitlab.create_project_hook(
            project_id,
            url=spec.url,
            token=token,
            job_events=spec.job_events,
            pipeline_events=spec.pipeline_events,
            push_events=spec.push_events,
            enable_ssl_verification=spec.enable_ssl_verification,
        ).id
    if hook_id is None:
        raise AssertionError(f"{step} of project {project_id} needs the hook's id")
    if step is HookStep.UPDATE and token is not None:
        gitlab.update_project_hook(
            project_id,
            hook_id,
            url=spec.url,
            token=token,
            job_events=spec.job_events,
            pipeline_events=spec.pipeline_events,
            push_events=spec.push_events,
            enable_ssl_verification=spec.enable_ssl_verification,
        )
    elif step is HookStep.REENABLE:
        send_test_event(gitlab, project_id, hook_id)
    else:
        raise AssertionError(f"{step} of project {project_id} needs the webhook token")
    return hook_id


def send_test_event(gitlab: HooksApi, project_id: int, hook_id: int) -> None:
    """GitLab's way to re-enable an auto-disabled hook: a test delivery our endpoint answers with 2xx.

    GitLab builds the test Job event from the project's latest job and answers 422 "Ensure the project has
    CI jobs." without one; the Pipeline event is then tried, our hook takes both.
    """
    try:
        gitlab.test_project_hook(project_id, hook_id, "job_events")
    except GitLabError as exc:
        if exc.status != 422 or _NO_JOBS not in str(exc):
            raise
        gitlab.test_project_hook(project_id, hook_id, "pipeline_events")


def _explain(step: HookStep, exc: Exception) -> str:
    """The error, and for a failed re-enable what it usually means and what to do."""
    text = f"{step.value} failed: {exc}"
    if step is not HookStep.REENABLE:
        return text
    if "CI pipelines" in text or _NO_JOBS in text:
        return (
            f"{text} (GitLab needs a job or pipeline in the project to send a test event; a temporarily "
            "disabled hook comes back by itself after disabled_until)"
        )
    if "execution failed" in text:
        return (
            f"{text} (our endpoint still refuses deliveries: is the scaler up? If it answers 401, re-send "
            "the webhook token with `runner-scaler hooks sync --rotate-token`)"
        )
    return text


# --------------------------------------------------------------------------------------------------
# The whole use cases


def sync_hooks(
    gitlab: HooksApi,
    config: Config,
    url: str,
    token: str | None,
    *,
    dry_run: bool = False,
    rotate_token: bool = False,
    previous_urls: Sequence[str] = (),
) -> HookReport:
    """`hooks sync`: resolve the projects, read their hooks, plan, apply; problems go in the report."""
    selection = resolve_projects(gitlab, config.gitlab.projects, config.gitlab.groups)
    hooks, unreadable = read_hooks(gitlab, selection.projects)
    plan = plan_hooks(selection.projects, hooks, url, rotate_token=rotate_token, previous_urls=previous_urls)
    report = apply_hooks(gitlab, plan, token, dry_run)
    return replace(report, problems=selection.problems + unreadable)


def check_hooks(
    gitlab: HooksApi,
    config: Config,
    token: str | None,
    now: datetime,
    *,
    reenable: bool = True,
    max_projects: int = MAX_PROJECTS_PER_CHECK,
    interval: timedelta = HOOK_CHECK_INTERVAL,
    emit: Callable[[str, float], None] | None = None,
) -> HookHealth:
    """The tick's hook check: re-enable our hooks GitLab disabled, report missing or wrong ones.

    Our URL is `gitlab.webhook_url`. With `token` (the current webhook secret), missing or wrong hooks are
    also fixed, so a project new in a configured group gets its hook; without it they are reported for
    `hooks sync`. `reenable=False` only looks. Emits `WebhooksReenabled` and `WebhooksUnhealthy` (counts)
    through `emit` (default: `chalicelib.metrics.emit_count`). `now` picks the slice of projects read when
    there are more than `max_projects`.
    """
    url = config.gitlab.webhook_url
    if not url:
        return HookHealth(
            now,
            "",
            skipped="gitlab.webhook_url is empty: set it to the scaler's /webhooks/gitlab URL to check hooks",
        )
    selection = resolve_projects(gitlab, config.gitlab.projects, config.gitlab.groups)
    chosen, deferred = checked_slice(selection.projects, now, interval, max_projects)
    hooks, unreadable = read_hooks(gitlab, chosen)
    report = apply_hooks(gitlab, plan_hooks(chosen, hooks, url), token, dry_run=not reenable)
    health = HookHealth(now, url, report.outcomes, selection.problems + unreadable, deferred)
    _log_health(health, now)
    count = emit or _emit_count
    count("WebhooksReenabled", len(health.reenabled))
    count("WebhooksUnhealthy", health.unhealthy)
    return health


def _emit_count(name: str, value: float) -> None:
    """The default metric sink: one EMF counter (powertools is imported only when a check runs)."""
    from chalicelib.metrics import emit_count

    emit_count(name, value)


def _log_health(health: HookHealth, now: datetime) -> None:
    """One line per re-enabled or still disabled hook saying why GitLab disabled it; one for the rest."""
    for outcome in (*health.reenabled, *health.disabled):
        item = outcome.plan
        until = item.disabled_until
        extra = {
            "project_id": item.project.id,
            "hook_id": outcome.hook_id,
            "alert_status": item.alert_status,
            "disabled_until": until.isoformat() if until else None,
            "disabled_for_seconds": max(0, int((until - now).total_seconds())) if until else None,
            "reason": item.disabled_reason,
            "error": outcome.error,
        }
        if outcome in health.reenabled:
            logger.warning(
                "re-enabled our webhook %s in %s; GitLab had disabled it (%s)",
                outcome.hook_id,
                item.project.label,
                item.disabled_reason,
                extra=extra,
            )
        else:
            logger.error(
                "our webhook %s in %s stays disabled, so no job events come from it (%s): %s",
                outcome.hook_id,
                item.project.label,
                item.disabled_reason,
                outcome.error or "not re-enabled (look-only check)",
                extra=extra,
            )
    broken = (*health.missing, *health.drifted)
    if broken or health.problems:
        logger.warning(
            "webhooks not all healthy: %d missing, %d wrong, %d problems (see `runner-scaler hooks check`)",
            len(health.missing),
            len(health.drifted),
            len(health.problems),
            extra={
                "missing": [o.plan.project.id for o in health.missing][:20],
                "drifted": [o.plan.project.id for o in health.drifted][:20],
                "problems": list(health.problems[:5]),
            },
        )
