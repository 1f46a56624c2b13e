"""The fake GitLab's world and its rules: projects, runners, pipelines and jobs, GitLab's side of running
jobs (job requests, assignment, retries), failure injection, and the server's lifecycle.

Part of the fake GitLab (`toolkit.devtools.fake_gitlab`): `FakeGitLab` adds the hook delivery (hooks.py) and
the REST API (rest.py) to this class. Standard library, the model and the HTTP server only.
"""

from __future__ import annotations

import fnmatch
import itertools
import random
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
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self
from urllib.parse import unquote

from toolkit.devtools.fake_gitlab.model import (
    DEFAULT_ASSIGNMENT_WINDOW,
    FINISHED_BY_RUNNER,
    HOOK_STATUSES,
    ONLINE_CONTACT_TIMEOUT,
    RUNNER_TYPES,
    STALE_TIMEOUT,
    TERMINAL,
    Delivery,
    FakeGroup,
    FakeHook,
    FakeJob,
    FakePipeline,
    FakeProject,
    FakeRunner,
    JobRequest,
    JobSpec,
    PipelineRef,
    RequestRecord,
    Route,
    _bool,
    _Failure,
    _HttpError,
    _int_or_none,
    _not_found,
    _Outgoing,
    _RateLimit,
    _Response,
    _tag_list,
)
from toolkit.devtools.fake_gitlab.server import _Handler, _Server


class GitLabWorld:
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

    def start(self) -> Self:
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

    def __enter__(self) -> Self:
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

    # -- provided by the hook delivery (hooks.HookDelivery) and the REST API (rest.RestApi) -------------

    def _dispatch(self, outgoing: list[_Outgoing]) -> None:
        raise NotImplementedError("hooks.HookDelivery")

    def _executable(self, hook: FakeHook) -> bool:
        raise NotImplementedError("hooks.HookDelivery")

    def _job_hook_payload(self, job: FakeJob) -> dict[str, Any]:
        raise NotImplementedError("hooks.HookDelivery")

    def _pipeline_hook_payload(self, pipeline: FakePipeline) -> dict[str, Any]:
        raise NotImplementedError("hooks.HookDelivery")

    def _send_loop(self) -> None:
        raise NotImplementedError("hooks.HookDelivery")

    def _build_routes(self) -> list[Route]:
        raise NotImplementedError("rest.RestApi")

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> _Response:
        raise NotImplementedError("rest.RestApi")

    def _hook_entity(self, hook: FakeHook) -> dict[str, Any]:
        raise NotImplementedError("rest.RestApi")
