"""A local fake GitLab: the REST endpoints the adapter calls, GitLab's side of CI jobs, and webhook delivery.

For tests, the simulator and the demo. Standard library only (http.server, urllib, threading), so any
process can run it; faithful to GitLab's documented JSON shapes, pagination headers and hook payloads.

    with FakeGitLab() as fake:
        project = fake.create_project("acme/app")
        fake.add_hook(project, "http://127.0.0.1:8000/webhooks/gitlab", token="s3cret")
        pipeline = fake.create_pipeline(project, [JobSpec("build", "build", ("linux",))])
        runner_id, _token = fake.register_runner(tag_list=("linux",))
        job_id = fake.request_job(runner_id)          # GitLab assigns the oldest matching pending job
        fake.finish_job(job_id, "success")           # Job Hook + Pipeline Hook go to the receiver
"""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import json
import logging
import random
import re
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from toolkit.samples import (
    BuildSample,
    PipelineSample,
    RunnerSample,
    job_hook_payload,
    pipeline_hook_payload,
)

logger = logging.getLogger(__name__)

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
#: a pause landing in between does not stop that assignment. Workhorse holds the request meanwhile
#: (workhorse/internal/builds/register.go long-polls the runner's queue key), so the request a runner has
#: in flight when it is paused can still come back with a job.
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
    open (Workhorse long-polls it); `complete_job_request` assigns its job, paused runner or not."""

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


# --------------------------------------------------------------------------------------------------
# The fake


Route = tuple[str, str, re.Pattern[str], Callable[..., _Response], bool]


class FakeGitLab:
    """An in-memory GitLab behind a real HTTP server on 127.0.0.1 (ephemeral port).

    `token` is the API token python-gitlab must send as `PRIVATE-TOKEN` (else 401). `now` gives GitLab's
    clock (timestamps, runner status, hook auto-disabling), so the simulator can drive simulated time.
    Webhooks go out synchronously by default (`delivery="sync"`: delivered before the state-changing call
    returns), or from a background sender thread (`delivery="async"`) with `delay` (min, max seconds),
    `loss` and `duplicate` probabilities drawn from `random.Random(seed)`.
    `job_time_format` picks the Job Hook `build_*_at` format: "iso" (docs: `2021-02-23T02:41:37.886Z`) or
    "utc" (older GitLab: `2021-02-23 02:41:37 UTC`); the `*_iso` fields are always sent.
    `assignment_window`: how long a job request that passed the `active?` check may still be given a job
    after its runner was paused (see DEFAULT_ASSIGNMENT_WINDOW and `begin_job_request`).
    """

    def __init__(
        self,
        *,
        token: str = "fake-admin-token",
        version: str = "17.6.0",
        now: Callable[[], datetime] | None = None,
        delivery: Literal["sync", "async"] = "sync",
        delay: tuple[float, float] = (0.0, 0.0),
        loss: float = 0.0,
        duplicate: float = 0.0,
        seed: int = 0,
        job_time_format: Literal["iso", "utc"] = "iso",
        delivery_timeout: float = 5.0,
        auto_disable_hooks: bool = True,
        instance_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        assignment_window: timedelta = DEFAULT_ASSIGNMENT_WINDOW,
    ) -> None:
        self.token = token
        self.version = version
        self._now = now or (lambda: datetime.now(UTC))
        self.delivery_mode = delivery
        self.delay = delay
        self.loss = loss
        self.duplicate = duplicate
        self.job_time_format = job_time_format
        self.delivery_timeout = delivery_timeout
        self.auto_disable_hooks = auto_disable_hooks
        self.assignment_window = assignment_window
        self._instance_url = instance_url
        self._ssl_context = ssl_context
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)

        self._lock = threading.RLock()
        self._depth = 0
        self._outbox: list[_Outgoing] = []
        self._event_uuid = ""

        self.groups: dict[int, FakeGroup] = {}
        self.projects: dict[int, FakeProject] = {}
        self.runners: dict[int, FakeRunner] = {}
        self.pipelines: dict[int, FakePipeline] = {}
        self.jobs: dict[int, FakeJob] = {}
        self.hooks: dict[int, FakeHook] = {}
        self._failures: list[_Failure] = []
        self._rate_limits: list[_RateLimit] = []

        #: Requests served, keyed "GET /runners/:runner_id" (route template), injected failures included.
        self.requests: Counter[str] = Counter()
        self.request_log: list[RequestRecord] = []
        #: Webhook POSTs attempted, in the order they were sent.
        self.deliveries: list[Delivery] = []
        #: sent, succeeded, failed, lost, duplicated, suppressed (hook disabled), queued
        self.delivery_stats: Counter[str] = Counter()

        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._sender: threading.Thread | None = None
        self._queue: list[_Outgoing] = []
        self._queue_cond = threading.Condition()
        self._in_flight = 0
        self._stopping = False
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._routes = self._build_routes()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FakeGitLab:
        """Bind 127.0.0.1 on a free port and serve; start the webhook sender in async mode."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        if self._ssl_context is not None:
            server.socket = self._ssl_context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._serve_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-gitlab-http", daemon=True
        )
        self._serve_thread.start()
        if self.delivery_mode == "async":
            self._sender = threading.Thread(target=self._send_loop, name="fake-gitlab-webhooks", daemon=True)
            self._sender.start()
        return self

    def close(self) -> None:
        """Stop serving, stop the sender (queued deliveries are dropped), join every thread, free the port."""
        with self._queue_cond:
            self._stopping = True
            self._queue_cond.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=10)
            self._sender = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._serve_thread is not None:
            self._serve_thread.join(timeout=10)
            self._serve_thread = None

    def __enter__(self) -> FakeGitLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The GitLab root URL to give python-gitlab (`http://127.0.0.1:<port>`)."""
        if self._server is None:
            raise RuntimeError("FakeGitLab is not started: use `with FakeGitLab() as fake:` or fake.start()")
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v4"

    @property
    def instance_url(self) -> str:
        """What `X-Gitlab-Instance` carries (GitLab sends its external URL)."""
        return self._instance_url or (self.url if self._server is not None else "https://gitlab.example.com")

    def now(self) -> datetime:
        return self._now()

    # -- building GitLab's world ------------------------------------------------------------------

    def create_group(self, full_path: str) -> int:
        """A group (parents created as needed: `acme/platform` makes `acme` too). Returns its id."""
        with self._mutating():
            existing = self._group_by_path(full_path)
            if existing is not None:
                return existing.id
            parent_path, _, _ = full_path.rpartition("/")
            parent_id = self.create_group(parent_path) if parent_path else None
            group = FakeGroup(id=next(self._ids), full_path=full_path, parent_id=parent_id)
            self.groups[group.id] = group
            return group.id

    def create_project(
        self,
        path_with_namespace: str,
        *,
        shared_runners_enabled: bool = True,
        protected_branches: Sequence[str] = ("main",),
    ) -> int:
        """A project; its namespace becomes a group (so group runners and group project lists work)."""
        with self._mutating():
            namespace, _, _ = path_with_namespace.rpartition("/")
            group_id = self.create_group(namespace) if namespace else None
            project = FakeProject(
                id=next(self._ids),
                path_with_namespace=path_with_namespace,
                group_id=group_id,
                shared_runners_enabled=shared_runners_enabled,
                protected_branches=tuple(protected_branches),
            )
            self.projects[project.id] = project
            return project.id

    def add_hook(
        self,
        project_id: int,
        url: str,
        *,
        token: str | None = None,
        job_events: bool = True,
        pipeline_events: bool = True,
        push_events: bool = False,
        enable_ssl_verification: bool = True,
    ) -> int:
        """Register a project webhook (what `POST /projects/:id/hooks` does). Returns the hook id."""
        with self._mutating():
            self._project(project_id)
            hook = FakeHook(
                id=next(self._ids),
                project_id=project_id,
                url=url,
                token=token,
                job_events=job_events,
                pipeline_events=pipeline_events,
                push_events=push_events,
                enable_ssl_verification=enable_ssl_verification,
                created_at=self.now(),
            )
            self.hooks[hook.id] = hook
            return hook.id

    def register_runner(
        self,
        *,
        runner_type: str = "instance_type",
        description: str = "",
        tag_list: Sequence[str] = (),
        run_untagged: bool = False,
        locked: bool = False,
        paused: bool = False,
        group_id: int | None = None,
        project_id: int | None = None,
        access_level: str = "not_protected",
    ) -> tuple[int, str]:
        """Create a runner as `POST /user/runners` does. Returns (runner id, runner token)."""
        with self._mutating():
            runner = self._new_runner(
                {
                    "runner_type": runner_type,
                    "description": description,
                    "tag_list": list(tag_list),
                    "run_untagged": run_untagged,
                    "locked": locked,
                    "paused": paused,
                    "group_id": group_id,
                    "project_id": project_id,
                    "access_level": access_level,
                }
            )
            return runner.id, runner.token

    def create_pipeline(
        self,
        project_id: int,
        jobs: Sequence[JobSpec],
        *,
        ref: str = "main",
        sha: str | None = None,
        name: str | None = None,
        start: bool = True,
    ) -> PipelineRef:
        """A pipeline with `jobs`; stages run in order of first appearance, as GitLab runs them.

        Every job starts `created` (a Job Hook each); with `start`, the first stage's jobs become `pending`
        at once, later stages wait for the earlier ones to succeed (failure skips them).
        """
        with self._mutating():
            project = self._project(project_id)
            project.pipelines_created += 1
            stages = list(dict.fromkeys(spec.stage for spec in jobs))
            pipeline = FakePipeline(
                id=next(self._ids),
                iid=project.pipelines_created,
                project_id=project_id,
                ref=ref,
                sha=sha or secrets.token_hex(20),
                stages=stages,
                created_at=self.now(),
                name=name,
            )
            self.pipelines[pipeline.id] = pipeline
            job_ids = tuple(self._add_job(pipeline, spec).id for spec in jobs)
            if start:
                self._refresh_pipeline(pipeline)
            return PipelineRef(pipeline.id, pipeline.iid, project_id, job_ids)

    def start_pipeline(self, pipeline_id: int) -> None:
        """Start a pipeline created with `start=False`: its first stage's jobs become pending."""
        with self._mutating():
            self._refresh_pipeline(self._pipeline(pipeline_id))

    # -- GitLab's side of running jobs ------------------------------------------------------------

    def request_job(self, runner_id: int) -> int | None:
        """A runner asks for work (`POST /jobs/request`): the oldest pending job it may run, now running.

        The `active?` check and the assignment happen at once here; `begin_job_request` and
        `complete_job_request` split them, as GitLab does. Returns the job id, or None (GitLab's 204).
        """
        request = self.begin_job_request(runner_id)
        return self.complete_job_request(request) if request is not None else None

    def begin_job_request(self, runner_id: int) -> JobRequest | None:
        """The first half of `POST /jobs/request`: the runner checks in, and GitLab checks `active?` once
        (`unless current_runner.active? ... no_content!`, lib/api/ci/runner.rb). None: paused (204)."""
        with self._mutating():
            runner = self._runner(runner_id)
            runner.contacted_at = self.now()
            if runner.paused:
                return None
            return JobRequest(runner.id, self.now())

    def complete_job_request(self, request: JobRequest) -> int | None:
        """The second half: Ci::RegisterJobService picks the oldest pending job the runner may run and
        `assign_runner!` runs it, WITHOUT re-checking `active?` (app/services/ci/register_job_service.rb).

        So a runner paused since `begin_job_request` still gets a job while the request is within
        `assignment_window` of its check; later, the request is over (Workhorse answered 204) and None is
        returned. A runner deleted meanwhile gets nothing (its token no longer authenticates).
        """
        with self._mutating():
            runner = self.runners.get(request.runner_id)
            if runner is None or self.now() - request.checked_at > self.assignment_window:
                return None
            candidates = [job for job in self.jobs.values() if self._runner_may_take(runner, job)]
            if not candidates:
                return None
            job = min(candidates, key=lambda j: (j.queued_at or j.created_at, j.id))
            job.runner_id = runner.id
            self._set_job_status(job, "running")
            self._refresh_pipeline(self._pipeline(job.pipeline_id))
            return job.id

    def finish_job(self, job_id: int, status: str = "success", *, failure_reason: str | None = None) -> None:
        """The runner reports a job's end: success, failed (reason defaults to script_failure) or canceled.

        A `canceling` job ends `canceled` whatever the runner reports (`event :drop` / `event :success`:
        `transition canceling: :canceled`, app/models/commit_status.rb).
        """
        if status not in FINISHED_BY_RUNNER:
            raise ValueError(f"finish_job status must be one of {sorted(FINISHED_BY_RUNNER)}, not {status!r}")
        with self._mutating():
            job = self._job(job_id)
            if job.status in TERMINAL:
                raise ValueError(f"job {job_id} already finished ({job.status})")
            if job.status == "canceling":
                status = "canceled"
            elif status == "failed":
                job.failure_reason = failure_reason or "script_failure"
            self._set_job_status(job, status)
            self._refresh_pipeline(self._pipeline(job.pipeline_id))

    def cancel_job(self, job_id: int, *, gracefully: bool = False) -> None:
        """Cancel a job that has not finished (a user pressing Cancel).

        With `gracefully` (a runner that supports `after_script` on cancel), a running job goes to
        `canceling` and ends `canceled` when its runner reports back (`event :cancel`: `running: :canceling,
        if: :supports_canceling?`, app/models/commit_status.rb); otherwise it is `canceled` at once.
        """
        with self._mutating():
            job = self._job(job_id)
            if job.status in TERMINAL or job.status == "canceling":
                return
            self._set_job_status(job, "canceling" if gracefully and job.status == "running" else "canceled")
            self._refresh_pipeline(self._pipeline(job.pipeline_id))

    def play_job(self, job_id: int) -> None:
        """Play a manual job (`POST /projects/:id/jobs/:job_id/play`): manual -> pending, with its hook."""
        with self._mutating():
            job = self._job(job_id)
            if job.status != "manual":
                raise _HttpError(400, "400 Bad request - Unplayable Job")
            self._set_job_status(job, "pending")
            self._refresh_pipeline(self._pipeline(job.pipeline_id))

    def delete_runner(self, runner_id: int) -> None:
        """An admin (or GitLab's stale-runner cleanup) deletes a runner outside the scaler: from now on
        every API call naming it answers 404 and its token no longer authenticates (403 on /jobs/request)."""
        with self._mutating():
            self.runners.pop(self._runner(runner_id).id)

    def retry_job(self, job_id: int) -> int:
        """Retry a finished job as GitLab does: a NEW job (new id, `retries_count` + 1) replaces it."""
        with self._mutating():
            return self._retry(self._job(job_id)).id

    def runner_contact(self, runner_id: int) -> None:
        """A runner's heartbeat: it is `online` for the next two hours."""
        with self._mutating():
            self._runner(runner_id).contacted_at = self.now()

    def job_hook(self, job_id: int) -> dict[str, Any]:
        """The Job Hook body GitLab would send for this job as it is now (what the receiver gets)."""
        with self._lock:
            return self._job_hook_payload(self._job(job_id))

    # -- failure injection and counters -----------------------------------------------------------

    def inject_failure(
        self,
        path: str,
        *,
        status: int = 500,
        times: int = 1,
        method: str | None = None,
        retry_after: int | None = None,
        message: str | None = None,
    ) -> None:
        """The next `times` requests whose API path (after `/api/v4`) matches the glob `path` fail.

        `status` 500/502/503 for GitLab hiccups, 429 for rate limits; `retry_after` (whole seconds, as
        GitLab sends them) adds a `Retry-After` header, which python-gitlab obeys for any retried status:
        tests pass 0 to stay fast. Example: `fake.inject_failure("/runners/*", status=429, retry_after=0)`.
        """
        with self._lock:
            self._failures.append(
                _Failure(path, method.upper() if method else None, status, times, retry_after, message)
            )

    def rate_limit(
        self, path: str, limit: int, *, method: str = "GET", period: timedelta = timedelta(minutes=1)
    ) -> None:
        """Throttle requests whose API path matches the glob `path`: past `limit` in `period` (the fake's
        clock), GitLab answers 429 with `Retry-After` (seconds to the window's end) and the RateLimit-*
        headers (docs "Rate limits", administration/settings/user_and_ip_rate_limits.md: response headers).

        GitLab.com's settings to copy: project jobs list (`/projects/*/jobs`) 600/min (the
        `project_jobs_api_rate_limit` application setting), `GET /projects/:id` 400/min,
        `GET /groups/:id/projects` 600/min (docs "Rate limits on Projects API").
        """
        with self._lock:
            self._rate_limits.append(_RateLimit(path, method.upper(), limit, period))

    def clear_failures(self) -> None:
        """GitLab is healthy again: injected failures not yet served are dropped."""
        with self._lock:
            self._failures.clear()

    def request_count(self, method: str, route: str) -> int:
        """How many requests hit a route template, e.g. `request_count("GET", "/runners/:runner_id")`."""
        with self._lock:
            return self.requests[f"{method.upper()} {route}"]

    def hook_state(self, hook_id: int) -> dict[str, Any]:
        """The hook as `GET /projects/:id/hooks/:hook_id` shows it (alert_status, disabled_until...)."""
        with self._lock:
            return self._hook_entity(self._hook(hook_id))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued webhook was sent (async mode). False if the timeout passed first."""
        deadline = time.monotonic() + timeout
        with self._queue_cond:
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue_cond.wait(min(remaining, 0.05))
        return True

    # -- internals: mutation scope and events -----------------------------------------------------

    @contextmanager
    def _mutating(self) -> Iterator[None]:
        """Hold the lock for a state change; webhooks it caused are dispatched after the lock is released.

        All hooks triggered by one outermost change share one `X-Gitlab-Event-UUID`, as in GitLab where
        hooks executed for one request carry that request's UUID.
        """
        outgoing: list[_Outgoing] = []
        with self._lock:
            if self._depth == 0:
                self._event_uuid = str(uuid.uuid4())
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    outgoing, self._outbox = self._outbox, []
        if outgoing:
            self._dispatch(outgoing)

    def _emit(
        self, project_id: int, event: str, body: dict[str, Any], wants: Callable[[FakeHook], bool]
    ) -> None:
        for hook in self.hooks.values():
            if hook.project_id != project_id or not wants(hook):
                continue
            if not self._executable(hook):
                self.delivery_stats["suppressed"] += 1
                continue
            self._outbox.append(self._outgoing(hook, event, body))

    def _outgoing(self, hook: FakeHook, event: str, body: dict[str, Any], *, test: bool = False) -> _Outgoing:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"GitLab/{self.version}",
            "X-Gitlab-Event": event,
            "X-Gitlab-Instance": self.instance_url,
            "X-Gitlab-Event-UUID": self._event_uuid or str(uuid.uuid4()),
            "Idempotency-Key": str(uuid.uuid4()),
        }
        if hook.token:
            headers["X-Gitlab-Token"] = hook.token
        return _Outgoing(
            due=0.0,
            seq=next(self._seq),
            hook_id=hook.id,
            project_id=hook.project_id,
            url=hook.url,
            verify_tls=hook.enable_ssl_verification,
            event=event,
            headers=headers,
            body=body,
            test=test,
        )

    def _emit_job(self, job: FakeJob) -> None:
        self._emit(job.project_id, "Job Hook", self._job_hook_payload(job), lambda h: h.job_events)

    def _emit_pipeline(self, pipeline: FakePipeline) -> None:
        body = self._pipeline_hook_payload(pipeline)
        self._emit(pipeline.project_id, "Pipeline Hook", body, lambda h: h.pipeline_events)

    # -- internals: job state machine -------------------------------------------------------------

    def _add_job(self, pipeline: FakePipeline, spec: JobSpec, *, retries_count: int = 0) -> FakeJob:
        job = FakeJob(
            id=next(self._ids),
            project_id=pipeline.project_id,
            pipeline_id=pipeline.id,
            name=spec.name,
            stage=spec.stage,
            tags=tuple(spec.tags),
            allow_failure=spec.allow_failure or spec.when == "manual",
            created_at=self.now(),
            retries_count=retries_count,
            when=spec.when,
            protected=self._protected_ref(pipeline),
        )
        self.jobs[job.id] = job
        self._emit_job(job)  # `after_create ... build.execute_hooks` (app/models/ci/build.rb)
        return job

    def _protected_ref(self, pipeline: FakePipeline) -> bool:
        """Ci::Pipeline#protected_ref?: the project protects the ref (wildcards as in protected branches)."""
        project = self.projects[pipeline.project_id]
        return any(fnmatch.fnmatchcase(pipeline.ref, pattern) for pattern in project.protected_branches)

    def _set_job_status(self, job: FakeJob, status: str) -> None:
        now = self.now()
        job.status = status
        if status == "pending":
            job.queued_at = now
        elif status == "running":
            job.started_at = now
        elif status in TERMINAL and status != "skipped":
            job.finished_at = now
        if status in HOOK_STATUSES:
            self._emit_job(job)

    def _refresh_pipeline(self, pipeline: FakePipeline) -> None:
        """Move stages forward, then recompute the pipeline status; a change sends a Pipeline Hook."""
        self._advance_stages(pipeline)
        status = self._pipeline_status(pipeline)
        if status == pipeline.status:
            return
        now = self.now()
        if status == "running" and pipeline.started_at is None:
            pipeline.started_at = now
        pipeline.finished_at = now if status in TERMINAL else None
        pipeline.status = status
        self._emit_pipeline(pipeline)

    def _advance_stages(self, pipeline: FakePipeline) -> None:
        failed = False
        for stage in pipeline.stages:
            jobs = [j for j in self._current(pipeline) if j.stage == stage]
            if failed:
                for job in jobs:
                    if job.status in ("created", "manual"):
                        self._set_job_status(job, "skipped")
                continue
            waiting = [j for j in jobs if j.status == "created"]
            for job in waiting:
                # `actionize` (created -> manual) for a manual job, `enqueue` for the others.
                self._set_job_status(job, "manual" if job.when == "manual" else "pending")
            # A manual job allows failure by default, so it does not hold later stages back.
            if waiting or any(j.status not in TERMINAL and j.status != "manual" for j in jobs):
                return
            failed = any(j.status in ("failed", "canceled") and not j.allow_failure for j in jobs)

    def _pipeline_status(self, pipeline: FakePipeline) -> str:
        current = self._current(pipeline)
        statuses = [j.status for j in current if j.status != "manual"]
        blocking = {j.status for j in current if not j.allow_failure}
        if not current:
            return "created"
        if not statuses:
            return "manual"
        if "canceling" in statuses:
            return "canceling"
        for status in ("running", "pending", "created"):
            if status in statuses:
                return status
        if "failed" in blocking:
            return "failed"
        if "canceled" in blocking:
            return "canceled"
        return "skipped" if set(statuses) == {"skipped"} else "success"

    def _retry(self, old: FakeJob) -> FakeJob:
        if old.retried or old.status not in FINISHED_BY_RUNNER:
            raise _HttpError(403, "403 Forbidden - Job is not retryable")
        pipeline = self._pipeline(old.pipeline_id)
        old.retried = True
        spec = JobSpec(old.name, old.stage, old.tags, old.allow_failure, old.when)
        new = self._add_job(pipeline, spec, retries_count=old.retries_count + 1)
        later = pipeline.stages[pipeline.stages.index(old.stage) + 1 :]
        for job in self._current(pipeline):
            if job.stage in later and job.status == "skipped":
                self._set_job_status(job, "created")
        self._set_job_status(new, "pending")
        self._refresh_pipeline(pipeline)
        return new

    def _current(self, pipeline: FakePipeline) -> list[FakeJob]:
        return [j for j in self.jobs.values() if j.pipeline_id == pipeline.id and not j.retried]

    def _runner_may_take(self, runner: FakeRunner, job: FakeJob) -> bool:
        """Ci::Runner#can_pick? and the queue's filters (app/models/ci/runner.rb,
        app/services/ci/queue/build_queue_service.rb): a protected runner takes only protected jobs
        (`return false if self.ref_protected? && !build.protected?`), the job's tags are a subset of the
        runner's, an untagged job needs `run_untagged`, and the project is in the runner's scope."""
        if job.status != "pending" or job.retried:
            return False
        if runner.access_level == "ref_protected" and not job.protected:
            return False
        if not set(job.tags) <= set(runner.tag_list):
            return False
        if not job.tags and not runner.run_untagged:
            return False
        return self._in_runner_scope(runner, job.project_id)

    def _in_runner_scope(self, runner: FakeRunner, project_id: int) -> bool:
        """Instance runners: projects with shared runners enabled (`builds_for_shared_runner`); group
        runners: projects of the group or its subgroups (`builds_for_group_runner`); project runners: their
        project (`builds_for_project_runner`), all in app/services/ci/queue/build_queue_service.rb."""
        if runner.runner_type == "instance_type":
            return self.projects[project_id].shared_runners_enabled
        if runner.runner_type == "project_type":
            return runner.project_id == project_id
        group_id = self.projects[project_id].group_id
        while group_id is not None:
            if group_id == runner.group_id:
                return True
            group_id = self.groups[group_id].parent_id
        return False

    # -- internals: runners -----------------------------------------------------------------------

    def _new_runner(self, data: dict[str, Any]) -> FakeRunner:
        runner_type = str(data.get("runner_type") or "")
        if runner_type not in RUNNER_TYPES:
            raise _HttpError(400, "runner_type does not have a valid value", key="error")
        group_id = _int_or_none(data.get("group_id"))
        project_id = _int_or_none(data.get("project_id"))
        if runner_type == "group_type" and (group_id is None or group_id not in self.groups):
            raise _HttpError(400, "400 Bad request - group_id is missing or not found")
        if runner_type == "project_type" and (project_id is None or project_id not in self.projects):
            raise _HttpError(400, "400 Bad request - project_id is missing or not found")
        runner = FakeRunner(
            id=next(self._ids),
            token="glrt-" + secrets.token_urlsafe(15),
            runner_type=runner_type,
            description=str(data.get("description") or ""),
            tag_list=_tag_list(data.get("tag_list")),
            run_untagged=_bool(data.get("run_untagged"), default=True),
            locked=_bool(data.get("locked"), default=False),
            paused=_bool(data.get("paused"), default=False),
            group_id=group_id if runner_type == "group_type" else None,
            project_id=project_id if runner_type == "project_type" else None,
            created_at=self.now(),
            maintenance_note=data.get("maintenance_note"),
            access_level=str(data.get("access_level") or "not_protected"),
        )
        self.runners[runner.id] = runner
        return runner

    def _runner_status(self, runner: FakeRunner) -> tuple[str, bool | None]:
        now = self.now()
        if runner.contacted_at is None:
            return ("stale" if now - runner.created_at > STALE_TIMEOUT else "never_contacted"), None
        if now - runner.contacted_at <= ONLINE_CONTACT_TIMEOUT:
            return "online", True
        return ("stale" if now - runner.contacted_at > STALE_TIMEOUT else "offline"), False

    # -- internals: hooks auto-disabling ----------------------------------------------------------

    def _executable(self, hook: FakeHook) -> bool:
        return self._alert_status(hook) == "executable"

    def _alert_status(self, hook: FakeHook) -> str:
        if not self.auto_disable_hooks:
            return "executable"
        if hook.recent_failures > PERMANENTLY_DISABLED_FAILURE_THRESHOLD:
            return "disabled"
        temporarily = (
            hook.disabled_until is not None
            and hook.disabled_until >= self.now()
            and hook.recent_failures > TEMPORARILY_DISABLED_FAILURE_THRESHOLD
        )
        return "temporarily_disabled" if temporarily else "executable"

    def _record_result(self, hook_id: int, ok: bool) -> None:
        """GitLab's `enable!` on success, `backoff!` on failure (only while the hook is executable)."""
        with self._lock:
            hook = self.hooks.get(hook_id)
            if hook is None or not self.auto_disable_hooks:
                return
            if ok:
                hook.recent_failures, hook.disabled_until = 0, None
                return
            if not self._executable(hook):
                return
            previous = hook.recent_failures
            hook.recent_failures = min(previous + 1, PERMANENTLY_DISABLED_FAILURE_THRESHOLD + 1)
            if hook.recent_failures > TEMPORARILY_DISABLED_FAILURE_THRESHOLD:
                exponent = max(previous - TEMPORARILY_DISABLED_FAILURE_THRESHOLD, 0)
                backoff = INITIAL_BACKOFF * (BACKOFF_GROWTH_FACTOR**exponent)
                hook.disabled_until = self.now() + min(max(backoff, INITIAL_BACKOFF), MAX_BACKOFF)

    # -- internals: delivery ----------------------------------------------------------------------

    def _dispatch(self, outgoing: list[_Outgoing]) -> None:
        """Apply the loss/duplication knobs, then send now (sync) or queue for the sender (async)."""
        plan: list[_Outgoing] = []
        with self._lock:
            for out in outgoing:
                if self.loss and self._rng.random() < self.loss:
                    self.delivery_stats["lost"] += 1
                    continue
                plan.append(out)
                if self.duplicate and self._rng.random() < self.duplicate:
                    self.delivery_stats["duplicated"] += 1
                    plan.append(replace(out, seq=next(self._seq), duplicate=True))
            if self.delivery_mode == "async":
                for out in plan:
                    out.due = time.monotonic() + self._rng.uniform(*self.delay)
        if self.delivery_mode == "sync":
            for out in plan:
                self._deliver(out)
            return
        with self._queue_cond:
            for out in plan:
                heapq.heappush(self._queue, out)
                self.delivery_stats["queued"] += 1
            self._queue_cond.notify_all()

    def _send_loop(self) -> None:
        while True:
            with self._queue_cond:
                out = self._next_due()
                if out is None:
                    return
                self._in_flight += 1
            try:
                self._deliver(out)
            finally:
                with self._queue_cond:
                    self._in_flight -= 1
                    self._queue_cond.notify_all()

    def _next_due(self) -> _Outgoing | None:
        """Under `_queue_cond`: wait for the earliest delivery to be due; None once closing."""
        while not self._stopping:
            if not self._queue:
                self._queue_cond.wait(0.1)
                continue
            wait = self._queue[0].due - time.monotonic()
            if wait <= 0:
                return heapq.heappop(self._queue)
            self._queue_cond.wait(min(wait, 0.1))
        return None

    def _deliver(self, out: _Outgoing) -> Delivery:
        headers = dict(out.headers)
        headers["X-Gitlab-Webhook-UUID"] = str(uuid.uuid4())
        data = json.dumps(out.body).encode()
        request = urllib.request.Request(out.url, data=data, headers=headers, method="POST")
        status: int | None = None
        error: str | None = None
        try:
            with self._opener.open(request, timeout=self.delivery_timeout, **self._tls(out)) as response:
                status = int(response.status)
                response.read()
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        delivery = Delivery(
            out.hook_id,
            out.project_id,
            out.url,
            out.event,
            headers,
            out.body,
            status,
            error,
            out.duplicate,
            out.test,
        )
        with self._lock:
            self.deliveries.append(delivery)
            self.delivery_stats["sent"] += 1
            self.delivery_stats["succeeded" if delivery.ok else "failed"] += 1
        self._record_result(out.hook_id, delivery.ok)
        if not delivery.ok:
            logger.debug("webhook delivery failed", extra={"hook_id": out.hook_id, "status": status})
        return delivery

    def _tls(self, out: _Outgoing) -> dict[str, Any]:
        if not out.url.startswith("https:") or out.verify_tls:
            return {}
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return {"context": context}

    # -- internals: lookups -----------------------------------------------------------------------

    def _group_by_path(self, full_path: str) -> FakeGroup | None:
        return next((g for g in self.groups.values() if g.full_path == full_path), None)

    def _project(self, ref: int | str) -> FakeProject:
        text = str(ref)
        if text.isdigit() and int(text) in self.projects:
            return self.projects[int(text)]
        found = next((p for p in self.projects.values() if p.path_with_namespace == unquote(text)), None)
        if found is None:
            raise _not_found("Project")
        return found

    def _group(self, ref: int | str) -> FakeGroup:
        text = str(ref)
        group = self.groups.get(int(text)) if text.isdigit() else self._group_by_path(unquote(text))
        if group is None:
            raise _not_found("Group")
        return group

    def _runner(self, runner_id: int | str) -> FakeRunner:
        runner = self.runners.get(int(runner_id))
        if runner is None:
            raise _not_found("Runner")
        return runner

    def _pipeline(self, pipeline_id: int | str, project: FakeProject | None = None) -> FakePipeline:
        pipeline = self.pipelines.get(int(pipeline_id))
        if pipeline is None or (project is not None and pipeline.project_id != project.id):
            raise _not_found("Pipeline")
        return pipeline

    def _job(self, job_id: int | str, project: FakeProject | None = None) -> FakeJob:
        job = self.jobs.get(int(job_id))
        if job is None or (project is not None and job.project_id != project.id):
            raise _not_found("Job")
        return job

    def _hook(self, hook_id: int | str, project: FakeProject | None = None) -> FakeHook:
        hook = self.hooks.get(int(hook_id))
        if hook is None or (project is not None and hook.project_id != project.id):
            raise _not_found("Hook")
        return hook

    # -- REST entities (GitLab's JSON shapes) -----------------------------------------------------

    def _runner_entity(self, runner: FakeRunner) -> dict[str, Any]:
        status, online = self._runner_status(runner)
        return {
            "id": runner.id,
            "description": runner.description,
            "ip_address": "",
            "active": not runner.paused,
            "paused": runner.paused,
            "is_shared": runner.runner_type == "instance_type",
            "runner_type": runner.runner_type,
            "name": "gitlab-runner",
            "online": online,
            "status": status,
        }

    def _runner_details(self, runner: FakeRunner) -> dict[str, Any]:
        entity = self._runner_entity(runner)
        projects = [self.projects[runner.project_id]] if runner.project_id in self.projects else []
        groups = [self.groups[runner.group_id]] if runner.group_id in self.groups else []
        entity.update(
            {
                "architecture": None,
                "platform": None,
                "revision": None,
                "version": None,
                "contacted_at": iso_ms(runner.contacted_at),
                "created_at": iso_ms(runner.created_at),
                "maintenance_note": runner.maintenance_note,
                "tag_list": list(runner.tag_list),
                "run_untagged": runner.run_untagged,
                "locked": runner.locked,
                "access_level": runner.access_level,
                "maximum_timeout": runner.maximum_timeout,
                "projects": [self._project_basic(p) for p in projects],
                "groups": [
                    {"id": g.id, "web_url": f"{self.instance_url}/groups/{g.full_path}", "name": g.full_path}
                    for g in groups
                ],
            }
        )
        return entity

    def _project_basic(self, project: FakeProject) -> dict[str, Any]:
        namespace = project.path_with_namespace.rpartition("/")[0]
        return {
            "id": project.id,
            "name": project.name,
            "name_with_namespace": project.path_with_namespace.replace("/", " / "),
            "path": project.name,
            "path_with_namespace": project.path_with_namespace,
            "namespace": {"full_path": namespace},
            "web_url": f"{self.instance_url}/{project.path_with_namespace}",
        }

    def _job_entity(self, job: FakeJob) -> dict[str, Any]:
        pipeline = self.pipelines[job.pipeline_id]
        runner = self.runners.get(job.runner_id) if job.runner_id is not None else None
        project = self.projects[job.project_id]
        now = self.now()
        return {
            "id": job.id,
            "status": job.status,
            "stage": job.stage,
            "name": job.name,
            "ref": pipeline.ref,
            "tag": False,
            "coverage": None,
            "allow_failure": job.allow_failure,
            "created_at": iso_ms(job.created_at),
            "started_at": iso_ms(job.started_at),
            "finished_at": iso_ms(job.finished_at),
            "erased_at": None,
            "duration": _seconds(job.started_at, job.finished_at or (now if job.started_at else None)),
            "queued_duration": _seconds(job.queued_at, job.started_at or (now if job.queued_at else None)),
            "user": dict(ADMIN_USER),
            "commit": {"id": pipeline.sha, "short_id": pipeline.sha[:8], "title": "Fake commit"},
            "pipeline": {
                "id": pipeline.id,
                "project_id": pipeline.project_id,
                "ref": pipeline.ref,
                "sha": pipeline.sha,
                "status": pipeline.status,
            },
            "failure_reason": job.failure_reason,
            "web_url": f"{self.instance_url}/{project.path_with_namespace}/-/jobs/{job.id}",
            "project": {"id": project.id, "ci_job_token_scope_enabled": False},
            "artifacts": [],
            "runner": self._runner_entity(runner) if runner else None,
            "runner_manager": None,
            "tag_list": list(job.tags),
            "archived": False,
            "source": "push",
        }

    def _hook_entity(self, hook: FakeHook) -> dict[str, Any]:
        return {
            "id": hook.id,
            "url": hook.url,
            "name": "",
            "description": "",
            "project_id": hook.project_id,
            "push_events": hook.push_events,
            "push_events_branch_filter": "",
            "branch_filter_strategy": "wildcard",
            "issues_events": False,
            "confidential_issues_events": False,
            "merge_requests_events": False,
            "tag_push_events": False,
            "note_events": False,
            "confidential_note_events": False,
            "job_events": hook.job_events,
            "pipeline_events": hook.pipeline_events,
            "wiki_page_events": False,
            "deployment_events": False,
            "releases_events": False,
            "feature_flag_events": False,
            "enable_ssl_verification": hook.enable_ssl_verification,
            "repository_update_events": False,
            "alert_status": self._alert_status(hook),
            "disabled_until": iso_ms(hook.disabled_until) if hook.recent_failures else None,
            "url_variables": [],
            "created_at": iso_ms(hook.created_at),
            "resource_access_token_events": False,
            "custom_webhook_template": "",
            "custom_headers": [],
        }

    # -- webhook payloads: built by toolkit.samples, the one builder (data_builder shapes) -----

    def _runner_sample(self, job: FakeJob) -> RunnerSample | None:
        runner = self.runners.get(job.runner_id) if job.runner_id is not None else None
        if runner is None:
            return None
        return RunnerSample(
            runner.id, runner.description, runner.runner_type, not runner.paused, tuple(runner.tag_list)
        )

    def _job_hook_payload(self, job: FakeJob) -> dict[str, Any]:
        """A Job Hook body (`object_kind: build`) for the job as it is now."""
        pipeline = self.pipelines[job.pipeline_id]
        project = self.projects[job.project_id]
        return job_hook_payload(
            job.id,
            job.status,
            project_id=project.id,
            pipeline_id=pipeline.id,
            stage=job.stage,
            name=job.name,
            now=self.now(),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            queued_at=job.queued_at,
            retries_count=job.retries_count,
            ref=pipeline.ref,
            instance=self.instance_url,
            project_path=project.path_with_namespace,
            sha=pipeline.sha,
            runner=self._runner_sample(job),
            allow_failure=job.allow_failure,
            failure_reason=job.failure_reason,
            pipeline=PipelineSample(
                pipeline.status, pipeline.name, pipeline.started_at, pipeline.finished_at
            ),
            time_format=self.job_time_format,
        )

    def _pipeline_hook_payload(self, pipeline: FakePipeline) -> dict[str, Any]:
        """A Pipeline Hook body (`object_kind: pipeline`) with every current job under `builds`."""
        project = self.projects[pipeline.project_id]
        builds = [
            BuildSample(
                job.id,
                job.status,
                job.stage,
                job.name,
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                queued_at=job.queued_at,
                when=job.when,
                allow_failure=job.allow_failure,
                failure_reason=job.failure_reason,
                runner=self._runner_sample(job),
            )
            for job in self._current(pipeline)
        ]
        return pipeline_hook_payload(
            pipeline.id,
            pipeline.status,
            project_id=project.id,
            builds=builds,
            now=self.now(),
            created_at=pipeline.created_at,
            iid=pipeline.iid,
            ref=pipeline.ref,
            instance=self.instance_url,
            project_path=project.path_with_namespace,
            sha=pipeline.sha,
            name=pipeline.name,
            stages=pipeline.stages,
            started_at=pipeline.started_at,
            finished_at=pipeline.finished_at,
            protected_ref=self._protected_ref(pipeline),
        )

    # -- HTTP: routing ----------------------------------------------------------------------------

    def _build_routes(self) -> list[Route]:
        table: list[tuple[str, str, Callable[..., _Response], bool]] = [
            ("GET", "/version", self._api_version, True),
            ("POST", "/user/runners", self._api_create_runner, True),
            ("GET", "/runners/all", self._api_list_runners, True),
            ("GET", "/runners", self._api_list_runners, True),
            ("GET", "/runners/:runner_id", self._api_get_runner, True),
            ("PUT", "/runners/:runner_id", self._api_update_runner, True),
            ("DELETE", "/runners/:runner_id", self._api_delete_runner, True),
            ("GET", "/runners/:runner_id/jobs", self._api_runner_jobs, True),
            ("GET", "/groups/:group/runners", self._api_group_runners, True),
            ("GET", "/groups/:group", self._api_get_group, True),
            ("GET", "/groups/:group/projects", self._api_group_projects, True),
            ("GET", "/projects/:project", self._api_get_project, True),
            ("GET", "/projects/:project/runners", self._api_project_runners, True),
            ("GET", "/projects/:project/jobs", self._api_project_jobs, True),
            ("GET", "/projects/:project/jobs/:job_id", self._api_get_job, True),
            ("POST", "/projects/:project/jobs/:job_id/retry", self._api_retry_job, True),
            ("POST", "/projects/:project/jobs/:job_id/cancel", self._api_cancel_job, True),
            ("POST", "/projects/:project/jobs/:job_id/play", self._api_play_job, True),
            ("GET", "/projects/:project/pipelines/:pipeline_id/jobs", self._api_pipeline_jobs, True),
            ("GET", "/projects/:project/hooks", self._api_list_hooks, True),
            ("POST", "/projects/:project/hooks", self._api_create_hook, True),
            ("GET", "/projects/:project/hooks/:hook_id", self._api_get_hook, True),
            ("PUT", "/projects/:project/hooks/:hook_id", self._api_update_hook, True),
            ("DELETE", "/projects/:project/hooks/:hook_id", self._api_delete_hook, True),
            ("POST", "/projects/:project/hooks/:hook_id/test/:trigger", self._api_test_hook, True),
            ("POST", "/jobs/request", self._api_runner_request_job, False),
            ("PUT", "/jobs/:job_id", self._api_runner_update_job, False),
        ]
        routes: list[Route] = []
        for method, template, handler, needs_token in table:
            pattern = re.sub(r":(\w+)", r"(?P<\1>[^/]+)", template)
            routes.append((method, template, re.compile(f"^{pattern}$"), handler, needs_token))
        return routes

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> _Response:
        """Answer one HTTP request (the server calls this; tests may too)."""
        split = urlsplit(raw_path)
        path = split.path.removeprefix("/api/v4")
        query = parse_qs(split.query, keep_blank_values=True)
        route_name, response = self._route(method, path, query, headers, body)
        with self._lock:
            self.requests[f"{method} {route_name}"] += 1
            self.request_log.append(RequestRecord(method, path, route_name, response.status))
        return response

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> tuple[str, _Response]:
        matched = self._match(method, path)
        route_name = matched[0] if matched else path
        injected = self._take_failure(method, path) or self._throttle(method, path)
        if injected is not None:
            return route_name, injected
        if matched is None:
            return route_name, _Response(404, {"error": "404 Not Found"})
        template, handler, params, needs_token = matched
        if needs_token and not self._authorized(headers):
            return template, _Response(401, {"message": "401 Unauthorized"})
        try:
            data = _parse_body(body, headers)
            if handler == self._api_test_hook:  # delivers in this thread: must not hold the lock meanwhile
                return template, handler(params=params, query=query, data=data, path=path)
            with self._mutating():
                return template, handler(params=params, query=query, data=data, path=path)
        except _HttpError as exc:
            return template, _Response(exc.status, {exc.key: exc.message})
        except (ValueError, KeyError, TypeError) as exc:
            return template, _Response(400, {"error": f"400 Bad request - {exc}"})

    def _match(
        self, method: str, path: str
    ) -> tuple[str, Callable[..., _Response], dict[str, str], bool] | None:
        for route_method, template, pattern, handler, needs_token in self._routes:
            found = pattern.match(path)
            if found and route_method == method:
                params = {k: unquote(v) for k, v in found.groupdict().items()}
                return template, handler, params, needs_token
        return None

    def _authorized(self, headers: dict[str, str]) -> bool:
        given = headers.get("private-token") or headers.get("authorization", "").removeprefix("Bearer ")
        return secrets.compare_digest(given.encode(), self.token.encode())

    def _throttle(self, method: str, path: str) -> _Response | None:
        """A 429 from a rate limit this request exceeds, as GitLab answers one (`check_rate_limit!`: "This
        endpoint has been requested too many times. Try again later.", lib/api/helpers/rate_limiter.rb)."""
        now = self.now()
        with self._lock:
            for limit in self._rate_limits:
                if limit.method != method or not fnmatch.fnmatchcase(path, limit.pattern):
                    continue
                if limit.window_start is None or now - limit.window_start >= limit.period:
                    limit.window_start, limit.used = now, 0
                limit.used += 1
                if limit.used <= limit.limit:
                    continue
                reset = limit.window_start + limit.period
                retry_after = max(1, int((reset - now).total_seconds() + 0.999))
                headers = {
                    "Retry-After": str(retry_after),
                    "RateLimit-Limit": str(limit.limit),
                    "RateLimit-Observed": str(limit.used),
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": str(int(reset.timestamp())),
                }
                message = "This endpoint has been requested too many times. Try again later."
                return _Response(429, {"message": message}, headers)
        return None

    def _take_failure(self, method: str, path: str) -> _Response | None:
        with self._lock:
            for failure in self._failures:
                if failure.remaining <= 0 or (failure.method and failure.method != method):
                    continue
                if not fnmatch.fnmatchcase(path, failure.pattern):
                    continue
                failure.remaining -= 1
                headers = {}
                if failure.retry_after is not None:
                    headers["Retry-After"] = str(failure.retry_after)
                text = failure.message or _REASONS.get(failure.status, f"{failure.status} Error")
                return _Response(failure.status, {"message": text}, headers)
        return None

    def _page(self, items: list[dict[str, Any]], path: str, query: dict[str, list[str]]) -> _Response:
        """GitLab's offset pagination: `page`/`per_page` in, X-* and Link headers out."""
        per_page = max(1, min(int(_first(query, "per_page") or DEFAULT_PER_PAGE), MAX_PER_PAGE))
        page = max(1, int(_first(query, "page") or 1))
        total = len(items)
        pages = max(1, -(-total // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        headers = {
            "X-Page": str(page),
            "X-Per-Page": str(per_page),
            "X-Total": str(total),
            "X-Total-Pages": str(pages),
            "X-Next-Page": str(page + 1) if page < pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
        }
        links = []
        if page < pages:
            links.append(f'<{self._page_url(path, query, page + 1, per_page)}>; rel="next"')
        if page > 1:
            links.append(f'<{self._page_url(path, query, page - 1, per_page)}>; rel="prev"')
        links.append(f'<{self._page_url(path, query, 1, per_page)}>; rel="first"')
        links.append(f'<{self._page_url(path, query, pages, per_page)}>; rel="last"')
        headers["Link"] = ", ".join(links)
        return _Response(200, chunk, headers)

    def _page_url(self, path: str, query: dict[str, list[str]], page: int, per_page: int) -> str:
        params = {k: v for k, v in query.items() if k not in ("page", "per_page")}
        params["page"], params["per_page"] = [str(page)], [str(per_page)]
        return f"{self.api_url}{path}?{urlencode(params, doseq=True, quote_via=quote)}"

    # -- HTTP: endpoints --------------------------------------------------------------------------

    def _api_version(self, **_: Any) -> _Response:
        return _Response(200, {"version": self.version, "revision": "fake", "enterprise": False})

    def _api_create_runner(self, data: dict[str, Any], **_: Any) -> _Response:
        runner = self._new_runner(data)
        return _Response(201, {"id": runner.id, "token": runner.token, "token_expires_at": None})

    def _runner_list(
        self, runners: Sequence[FakeRunner], path: str, query: dict[str, list[str]]
    ) -> _Response:
        wanted_type = _first(query, "type")
        paused = _first(query, "paused")
        status = _first(query, "status")
        selected = []
        for runner in sorted(runners, key=lambda r: r.id):
            entity = self._runner_entity(runner)
            if wanted_type and runner.runner_type != wanted_type:
                continue
            if paused is not None and runner.paused != _bool(paused, default=False):
                continue
            if status and entity["status"] != status:
                continue
            selected.append(entity)
        return self._page(selected, path, query)

    def _api_list_runners(self, query: dict[str, list[str]], path: str, **_: Any) -> _Response:
        return self._runner_list(list(self.runners.values()), path, query)

    def _api_group_runners(self, params: dict[str, str], query: dict[str, list[str]], **_: Any) -> _Response:
        group = self._group(params["group"])
        ancestors = set()
        group_id: int | None = group.id
        while group_id is not None:
            ancestors.add(group_id)
            group_id = self.groups[group_id].parent_id
        runners = [
            r for r in self.runners.values() if r.runner_type == "instance_type" or r.group_id in ancestors
        ]
        return self._runner_list(runners, f"/groups/{group.id}/runners", query)

    def _api_project_runners(
        self, params: dict[str, str], query: dict[str, list[str]], **_: Any
    ) -> _Response:
        project = self._project(params["project"])
        runners = [r for r in self.runners.values() if self._in_runner_scope(r, project.id)]
        return self._runner_list(runners, f"/projects/{project.id}/runners", query)

    def _api_get_runner(self, params: dict[str, str], **_: Any) -> _Response:
        return _Response(200, self._runner_details(self._runner(params["runner_id"])))

    def _api_update_runner(self, params: dict[str, str], data: dict[str, Any], **_: Any) -> _Response:
        runner = self._runner(params["runner_id"])
        if "paused" in data:
            runner.paused = _bool(data["paused"], default=runner.paused)
        elif "active" in data:
            runner.paused = not _bool(data["active"], default=not runner.paused)
        for name in ("description", "maintenance_note", "access_level", "maximum_timeout"):
            if name in data:
                setattr(runner, name, data[name])
        for name in ("run_untagged", "locked"):
            if name in data:
                setattr(runner, name, _bool(data[name], default=getattr(runner, name)))
        if "tag_list" in data:
            runner.tag_list = _tag_list(data["tag_list"])
        return _Response(200, self._runner_details(runner))

    def _api_delete_runner(self, params: dict[str, str], **_: Any) -> _Response:
        runner = self._runner(params["runner_id"])
        del self.runners[runner.id]
        return _Response(204)

    def _api_runner_jobs(self, params: dict[str, str], query: dict[str, list[str]], **_: Any) -> _Response:
        runner = self._runner(params["runner_id"])
        status = _first(query, "status")
        jobs = [
            j for j in self.jobs.values() if j.runner_id == runner.id and (not status or j.status == status)
        ]
        jobs.sort(key=lambda j: j.id, reverse=_first(query, "sort") != "asc")
        entities = []
        for job in jobs:
            entity = self._job_entity(job)
            entity.pop("tag_list")  # Entities::Ci::JobBasicWithProject carries no tags
            entity.pop("runner")
            entity["project"] = self._project_basic(self.projects[job.project_id])
            entities.append(entity)
        return self._page(entities, f"/runners/{runner.id}/jobs", query)

    def _api_project_jobs(self, params: dict[str, str], query: dict[str, list[str]], **_: Any) -> _Response:
        project = self._project(params["project"])
        scope = set(_all(query, "scope"))
        jobs = [
            j for j in self.jobs.values() if j.project_id == project.id and (not scope or j.status in scope)
        ]
        jobs.sort(key=lambda j: j.id, reverse=_first(query, "sort") != "asc")
        return self._page([self._job_entity(j) for j in jobs], f"/projects/{project.id}/jobs", query)

    def _api_pipeline_jobs(self, params: dict[str, str], query: dict[str, list[str]], **_: Any) -> _Response:
        project = self._project(params["project"])
        pipeline = self._pipeline(params["pipeline_id"], project)
        include_retried = _bool(_first(query, "include_retried"), default=False)
        scope = set(_all(query, "scope"))
        jobs = [
            j
            for j in self.jobs.values()
            if j.pipeline_id == pipeline.id
            and (include_retried or not j.retried)
            and (not scope or j.status in scope)
        ]
        jobs.sort(key=lambda j: j.id, reverse=True)
        path = f"/projects/{project.id}/pipelines/{pipeline.id}/jobs"
        return self._page([self._job_entity(j) for j in jobs], path, query)

    def _api_get_project(self, params: dict[str, str], **_: Any) -> _Response:
        """`GET /projects/:id` (Entities::Project): the CI settings runners depend on, and the namespace."""
        project = self._project(params["project"])
        entity = self._project_basic(project)
        group = self.groups.get(project.group_id) if project.group_id is not None else None
        entity.update(
            {
                "default_branch": "main",
                "shared_runners_enabled": project.shared_runners_enabled,
                "group_runners_enabled": True,
                "namespace": {
                    "id": group.id if group else None,
                    "full_path": group.full_path if group else "",
                    "kind": "group" if group else "user",
                },
            }
        )
        return _Response(200, entity)

    def _api_play_job(self, params: dict[str, str], **_: Any) -> _Response:
        project = self._project(params["project"])
        job = self._job(params["job_id"], project)
        self.play_job(job.id)
        return _Response(200, self._job_entity(job))

    def _api_get_job(self, params: dict[str, str], **_: Any) -> _Response:
        project = self._project(params["project"])
        return _Response(200, self._job_entity(self._job(params["job_id"], project)))

    def _api_retry_job(self, params: dict[str, str], **_: Any) -> _Response:
        project = self._project(params["project"])
        new = self._retry(self._job(params["job_id"], project))
        return _Response(201, self._job_entity(new))

    def _api_cancel_job(self, params: dict[str, str], **_: Any) -> _Response:
        project = self._project(params["project"])
        job = self._job(params["job_id"], project)
        self.cancel_job(job.id)
        return _Response(201, self._job_entity(job))

    def _api_list_hooks(self, params: dict[str, str], query: dict[str, list[str]], **_: Any) -> _Response:
        project = self._project(params["project"])
        hooks = [
            self._hook_entity(h)
            for h in sorted(self.hooks.values(), key=lambda h: h.id)
            if h.project_id == project.id
        ]
        return self._page(hooks, f"/projects/{project.id}/hooks", query)

    def _api_create_hook(self, params: dict[str, str], data: dict[str, Any], **_: Any) -> _Response:
        project = self._project(params["project"])
        if not data.get("url"):
            raise _HttpError(400, "url is missing", key="error")
        hook_id = self.add_hook(
            project.id,
            str(data["url"]),
            token=data.get("token") or None,
            job_events=_bool(data.get("job_events"), default=False),
            pipeline_events=_bool(data.get("pipeline_events"), default=False),
            push_events=_bool(data.get("push_events"), default=True),
            enable_ssl_verification=_bool(data.get("enable_ssl_verification"), default=True),
        )
        return _Response(201, self._hook_entity(self.hooks[hook_id]))

    def _api_get_hook(self, params: dict[str, str], **_: Any) -> _Response:
        project = self._project(params["project"])
        return _Response(200, self._hook_entity(self._hook(params["hook_id"], project)))

    def _api_update_hook(self, params: dict[str, str], data: dict[str, Any], **_: Any) -> _Response:
        """Edit a hook. As in GitLab, a new URL without a token resets the token; editing never re-enables."""
        project = self._project(params["project"])
        hook = self._hook(params["hook_id"], project)
        if not data.get("url"):
            raise _HttpError(400, "url is missing", key="error")
        if str(data["url"]) != hook.url and "token" not in data:
            hook.token = None
        hook.url = str(data["url"])
        if "token" in data:
            hook.token = data["token"] or None
        for name in ("job_events", "pipeline_events", "push_events", "enable_ssl_verification"):
            if name in data:
                setattr(hook, name, _bool(data[name], default=getattr(hook, name)))
        return _Response(200, self._hook_entity(hook))

    def _api_delete_hook(self, params: dict[str, str], **_: Any) -> _Response:
        project = self._project(params["project"])
        hook = self._hook(params["hook_id"], project)
        del self.hooks[hook.id]
        return _Response(204)

    def _api_test_hook(self, params: dict[str, str], **_: Any) -> _Response:
        """`POST .../hooks/:id/test/:trigger`: deliver now, even to a disabled hook; a 2xx re-enables it."""
        with self._lock:
            out = self._test_delivery(params)
        delivery = self._deliver(out)
        if not delivery.ok:
            raise _HttpError(422, f"Hook execution failed: {delivery.status or delivery.error}")
        return _Response(201, {"message": "201 Created"})

    def _test_delivery(self, params: dict[str, str]) -> _Outgoing:
        project = self._project(params["project"])
        hook = self._hook(params["hook_id"], project)
        trigger = params["trigger"]
        self._event_uuid = str(uuid.uuid4())
        if trigger == "job_events":
            jobs = [j for j in self.jobs.values() if j.project_id == project.id]
            if not jobs:
                raise _HttpError(422, "Ensure the project has CI jobs.")
            out = self._outgoing(
                hook, "Job Hook", self._job_hook_payload(max(jobs, key=lambda j: j.id)), test=True
            )
        elif trigger == "pipeline_events":
            pipelines = [p for p in self.pipelines.values() if p.project_id == project.id]
            if not pipelines:
                raise _HttpError(422, "Ensure the project has CI pipelines.")
            latest = max(pipelines, key=lambda p: p.id)
            out = self._outgoing(hook, "Pipeline Hook", self._pipeline_hook_payload(latest), test=True)
        else:
            raise _HttpError(422, f"Testing {trigger} is not supported by the fake GitLab")
        return out

    def _api_get_group(self, params: dict[str, str], **_: Any) -> _Response:
        group = self._group(params["group"])
        return _Response(
            200,
            {
                "id": group.id,
                "full_path": group.full_path,
                "name": group.full_path.rsplit("/", 1)[-1],
                "parent_id": group.parent_id,
            },
        )

    def _api_group_projects(self, params: dict[str, str], query: dict[str, list[str]], **_: Any) -> _Response:
        group = self._group(params["group"])
        include_subgroups = _bool(_first(query, "include_subgroups"), default=False)
        wanted = {group.id}
        if include_subgroups:
            wanted |= {g.id for g in self.groups.values() if g.full_path.startswith(group.full_path + "/")}
        projects = sorted((p for p in self.projects.values() if p.group_id in wanted), key=lambda p: p.id)
        return self._page([self._project_basic(p) for p in projects], f"/groups/{group.id}/projects", query)

    def _api_runner_request_job(self, data: dict[str, Any], **_: Any) -> _Response:
        """The runner API (`POST /jobs/request`, runner token in the body): 201 with a job, or 204."""
        runner = next((r for r in self.runners.values() if r.token == data.get("token")), None)
        if runner is None:
            return _Response(403, {"message": "403 Forbidden"})
        job_id = self.request_job(runner.id)
        if job_id is None:
            return _Response(204)
        job = self.jobs[job_id]
        pipeline = self.pipelines[job.pipeline_id]
        return _Response(
            201,
            {
                "id": job.id,
                "token": job.token,
                "allow_git_fetch": True,
                "job_info": {
                    "id": job.id,
                    "name": job.name,
                    "stage": job.stage,
                    "project_id": job.project_id,
                    "project_name": self.projects[job.project_id].name,
                },
                "git_info": {"ref": pipeline.ref, "sha": pipeline.sha, "ref_type": "branch"},
                "variables": [],
                "steps": [],
            },
        )

    def _api_runner_update_job(self, params: dict[str, str], data: dict[str, Any], **_: Any) -> _Response:
        """The runner API (`PUT /jobs/:id`, job token in the body): report success or failed."""
        job = self._job(params["job_id"])
        if data.get("token") != job.token:
            return _Response(403, {"message": "403 Forbidden"})
        state = str(data.get("state") or "")
        if state in ("success", "failed") and job.status == "running":
            self.finish_job(job.id, state, failure_reason=data.get("failure_reason"))
        return _Response(200)


# --------------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    """Request threads are joined on close (`block_on_close`), so `close()` leaves no thread behind."""

    daemon_threads = False
    block_on_close = True
    fake: FakeGitLab


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so no idle keep-alive thread outlives close().
    protocol_version = "HTTP/1.0"
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        response = self.server.fake.handle(self.command, self.path, headers, body)
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        self.send_response(response.status)
        if response.body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake gitlab: " + format, *args)


_REASONS = {
    429: "429 Too Many Requests",
    500: "500 Internal Server Error",
    502: "502 Bad Gateway",
    503: "503 Service Unavailable",
    504: "504 Gateway Timeout",
}


def _parse_body(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    if not body:
        return {}
    if "json" in headers.get("content-type", "json"):
        parsed = json.loads(body)
        return parsed if isinstance(parsed, dict) else {}
    form = parse_qs(body.decode(), keep_blank_values=True)
    return {k.removesuffix("[]"): (v if k.endswith("[]") else v[-1]) for k, v in form.items()}


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name) or query.get(f"{name}[]")
    return values[0] if values else None


def _all(query: dict[str, list[str]], name: str) -> list[str]:
    return [*query.get(name, []), *query.get(f"{name}[]", [])]


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
