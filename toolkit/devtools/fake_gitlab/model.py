"""GitLab's world as data: the fake's constants (each with its GitLab source), its records (groups, projects,
runners, pipelines, jobs, hooks) and the request/response types the REST API and hook delivery share.

Part of the fake GitLab (`toolkit.devtools.fake_gitlab`); standard library and toolkit.samples only.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

JobStatus = Literal[
    "created", "pending", "running", "success", "failed", "canceled", "skipped", "manual", "canceling"
]
TERMINAL: frozenset[str] = frozenset({"success", "failed", "canceled", "skipped"})
FINISHED_BY_RUNNER: frozenset[str] = frozenset({"success", "failed", "canceled"})
RUNNER_TYPES = ("instance_type", "group_type", "project_type")

# Where GitLab sends a Job Hook (Ci::Build#execute_hooks), and nowhere else:
# - create: `after_create ... build.execute_hooks` (app/models/ci/build.rb), the job is `created`;
# - `after_transition any => [:pending]` and `after_transition pending: :running` (app/models/ci/build.rb);
# - finish: `after_transition any => [:success, :failed, :canceled]` queues Ci::BuildFinishedWorker, whose
#   `process_build` calls `build.execute_hooks` (app/workers/ci/build_finished_worker.rb).
# So never on skipped, manual, canceling (`event :cancel ... running: :canceling`,
# app/models/commit_status.rb), scheduled, preparing, or the `process` event that puts a skipped job back to
# created after a retry.
HOOK_STATUSES: frozenset[str] = frozenset({"pending", "running", "success", "failed", "canceled"})

#: How long after a runner's `active?` check GitLab may still assign it a job. `POST /jobs/request` checks
#: `current_runner.active?` once, then Ci::RegisterJobService walks the queue (read from a replica) and
#: `assign_runner!` runs `build.run!` later (lib/api/ci/runner.rb, app/services/ci/register_job_service.rb);
#: a pause landing in between does not stop that assignment, so a request already inside Rails when its
#: runner is paused can still come back with a job. (A request Workhorse still holds in its long poll,
#: before Rails, gets a 204 when the pause ticks the runner's queue key: workhorse
#: internal/builds/register.go, Ci::Runners::UpdateRunnerService#tick_runner_queue.)
DEFAULT_ASSIGNMENT_WINDOW = timedelta(seconds=5)

# Runner status rules (Ci::Runner): online if contacted within 2 hours, stale after 7 days.
ONLINE_CONTACT_TIMEOUT = timedelta(hours=2)
STALE_TIMEOUT = timedelta(days=7)

# WebHooks::AutoDisabling: the 4th consecutive failure disables a hook for 1 minute, doubling up to a day;
# the 40th disables it for good. A delivery that succeeds (or a test request that succeeds) re-enables it.
TEMPORARILY_DISABLED_FAILURE_THRESHOLD = 3
PERMANENTLY_DISABLED_FAILURE_THRESHOLD = 39
INITIAL_BACKOFF = timedelta(minutes=1)
MAX_BACKOFF = timedelta(days=1)
BACKOFF_GROWTH_FACTOR = 2.0

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100

ADMIN_USER: dict[str, Any] = {
    "id": 1,
    "name": "Administrator",
    "username": "root",
    "avatar_url": "https://www.gravatar.com/avatar/e64c7d89f26bd1972efa854d13d7dd61?s=80&d=identicon",
    "email": "admin@example.com",
}


# --------------------------------------------------------------------------------------------------
# Time formats GitLab uses


def iso_ms(value: datetime | None) -> str | None:
    """The REST API's time format: `2021-02-23T02:41:37.886Z`."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 6)


# --------------------------------------------------------------------------------------------------
# State


@dataclass(frozen=True)
class JobSpec:
    """One job of a pipeline to create: name, stage, the tags it needs, whether it may fail."""

    name: str
    stage: str = "test"
    tags: tuple[str, ...] = ()
    allow_failure: bool = False
    #: "on_success" or "manual": a manual job waits (`actionize`: created -> manual) until played.
    when: str = "on_success"


@dataclass(frozen=True)
class JobRequest:
    """A runner's `POST /jobs/request` that passed GitLab's `active?` check at `checked_at` and is still
    being served by Rails; `complete_job_request` assigns its job, paused runner or not."""

    runner_id: int
    checked_at: datetime


@dataclass(frozen=True)
class PipelineRef:
    """What `create_pipeline` made: the pipeline id and its job ids in the order given."""

    id: int
    iid: int
    project_id: int
    job_ids: tuple[int, ...]


@dataclass
class FakeGroup:
    id: int
    full_path: str
    parent_id: int | None


@dataclass
class FakeProject:
    id: int
    path_with_namespace: str
    group_id: int | None
    pipelines_created: int = 0
    #: Instance runners take only jobs of projects with shared runners enabled (`builds_for_shared_runner`:
    #: `where(projects: { shared_runners_enabled: true })`, app/services/ci/queue/builds_table_strategy.rb).
    shared_runners_enabled: bool = True
    #: Branch names or wildcards protected in this project; GitLab protects the default branch by default.
    protected_branches: tuple[str, ...] = ("main",)

    @property
    def name(self) -> str:
        return self.path_with_namespace.rsplit("/", 1)[-1]


@dataclass
class FakeRunner:
    id: int
    token: str = field(repr=False)
    runner_type: str
    description: str
    tag_list: tuple[str, ...]
    run_untagged: bool
    locked: bool
    paused: bool
    group_id: int | None
    project_id: int | None
    created_at: datetime
    maintenance_note: str | None = None
    access_level: str = "not_protected"
    maximum_timeout: int | None = None
    contacted_at: datetime | None = None


@dataclass
class FakePipeline:
    id: int
    iid: int
    project_id: int
    ref: str
    sha: str
    stages: list[str]
    created_at: datetime
    status: str = "created"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    name: str | None = None


@dataclass
class FakeJob:
    id: int
    project_id: int
    pipeline_id: int
    name: str
    stage: str
    tags: tuple[str, ...]
    allow_failure: bool
    created_at: datetime
    status: str = "created"
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    runner_id: int | None = None
    when: str = "on_success"
    #: Ci::Build `protected`: set when the pipeline is created, from whether its ref is protected.
    protected: bool = False
    retried: bool = False
    retries_count: int = 0
    failure_reason: str | None = None
    token: str = field(default_factory=lambda: "glcbt-" + secrets.token_hex(10), repr=False)


@dataclass
class FakeHook:
    id: int
    project_id: int
    url: str
    token: str | None = field(repr=False)
    job_events: bool
    pipeline_events: bool
    push_events: bool
    enable_ssl_verification: bool
    created_at: datetime
    recent_failures: int = 0
    disabled_until: datetime | None = None


@dataclass(frozen=True)
class RequestRecord:
    """One request the fake served: `route` is the template (`/runners/:runner_id`) it matched."""

    method: str
    path: str
    route: str
    status: int


@dataclass(frozen=True)
class Delivery:
    """One webhook POST attempted: what was sent and what the receiver answered (None: no answer)."""

    hook_id: int
    project_id: int
    url: str
    event: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int | None
    error: str | None = None
    duplicate: bool = False
    test: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class _RateLimit:
    """GitLab's per-endpoint throttle (Gitlab::ApplicationRateLimiter,
    lib/gitlab/application_rate_limiter.rb): `limit` requests per `period` per user; the window starts with
    its first request."""

    pattern: str
    method: str
    limit: int
    period: timedelta
    window_start: datetime | None = None
    used: int = 0


@dataclass
class _Failure:
    pattern: str
    method: str | None
    status: int
    remaining: int
    retry_after: int | None
    message: str | None


@dataclass(order=True)
class _Outgoing:
    due: float
    seq: int
    hook_id: int = field(compare=False)
    project_id: int = field(compare=False)
    url: str = field(compare=False)
    verify_tls: bool = field(compare=False)
    event: str = field(compare=False)
    headers: dict[str, str] = field(compare=False)
    body: dict[str, Any] = field(compare=False)
    duplicate: bool = field(default=False, compare=False)
    test: bool = field(default=False, compare=False)


@dataclass
class _Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class _HttpError(Exception):
    """Raised inside a route to answer with GitLab's error body."""

    def __init__(self, status: int, message: str, key: str = "message") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.key = key


def _not_found(what: str = "") -> _HttpError:
    return _HttpError(404, f"404 {what} Not Found" if what else "404 Not found")


Route = tuple[str, str, re.Pattern[str], Callable[..., _Response], bool]


# Request values as GitLab reads them (JSON or form encoded)


def _bool(value: Any, *, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def _int_or_none(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None


def _tag_list(value: Any) -> tuple[str, ...]:
    """GitLab accepts tags as a JSON array or a comma-separated string."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(str(t).strip() for t in items if str(t).strip()))
