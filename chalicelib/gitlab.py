"""The only room that talks to GitLab: runners, jobs, project hooks, through python-gitlab's REST client.

Imports python-gitlab and `chalicelib.errors`; returns small frozen dataclasses, never python-gitlab objects.
Cold start: python-gitlab costs ~100 ms to import, so `app.py` (and anything it imports at module level)
must import this module inside the handler or use case that needs it, never at the top of the file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

import gitlab
import gitlab.exceptions
import requests

from chalicelib.errors import GitLabError, GitLabNotFoundError
from chalicelib.events.timestamps import parse_iso
from chalicelib.tracing import Tracing

logger = logging.getLogger(__name__)

RunnerType = Literal["instance_type", "group_type", "project_type"]
HookTrigger = Literal["job_events", "pipeline_events", "push_events"]

#: GitLab caps `per_page` at 100 (REST pagination docs); one request then covers a 100-job pipeline.
MAX_PER_PAGE = 100

#: Our user agent, so GitLab admins can tell the scaler's traffic apart in their logs.
USER_AGENT = "runner-scaler (python-gitlab)"

#: Seconds to hold off after a 429 that names no wait. GitLab's endpoint limits count per minute and "access
#: to the endpoint is restored after one minute" (docs "Rate limits on Projects API"), and their 429s may
#: carry no Retry-After (gitlab-org/gitlab#365728: RateLimit-* headers missing on 429).
DEFAULT_RATE_LIMIT_WAIT = 60.0

#: The longest Retry-After the adapter sleeps through inside one call (when `obey_rate_limit`); a longer
#: one fails the call at once and holds the action off until then.
MAX_RATE_LIMIT_WAIT = 10.0

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------------
# What the adapter returns


@dataclass(frozen=True)
class CreatedRunner:
    """A runner just created through `POST /user/runners`.

    `token` is the runner authentication token (`glrt-...`): GitLab shows it once, so the caller must store
    it (in the machine's secret) right away. It is left out of `repr` so it never reaches a log line.
    """

    id: int
    token: str = field(repr=False)
    token_expires_at: datetime | None


@dataclass(frozen=True)
class RunnerInfo:
    """A runner as GitLab reports it.

    GitLab's list endpoints omit `tag_list`, `contacted_at`, `run_untagged` and `locked`; those fields are
    None when the info came from `list_runners` and filled when it came from `get_runner`.
    `status` is one of online, offline, stale, never_contacted (GitLab 15+).
    """

    id: int
    description: str
    paused: bool
    status: str
    contacted_at: datetime | None
    tag_list: tuple[str, ...] | None
    online: bool | None
    runner_type: str | None = None
    run_untagged: bool | None = None
    locked: bool | None = None


@dataclass(frozen=True)
class JobInfo:
    """A CI job as the Jobs API reports it.

    `tag_list` is None when the endpoint does not return tags (`GET /runners/:id/jobs`), and an empty tuple
    for an untagged job. `runner_id` is None while the job waits for a runner.
    """

    id: int
    project_id: int
    pipeline_id: int | None
    status: str
    tag_list: tuple[str, ...] | None
    stage: str
    name: str
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    runner_id: int | None


@dataclass(frozen=True)
class HookInfo:
    """A project webhook. The secret token is never returned by GitLab, so it is not here either.

    `alert_status` is executable, temporarily_disabled or disabled (GitLab 15.7+; None on older GitLab);
    `disabled_until` is set while a failing hook is temporarily disabled (GitLab's auto-disabling).
    """

    id: int
    project_id: int
    url: str
    job_events: bool
    pipeline_events: bool
    push_events: bool
    enable_ssl_verification: bool
    alert_status: str | None
    disabled_until: datetime | None
    created_at: datetime | None = None

    @property
    def executable(self) -> bool:
        """Whether GitLab currently delivers events to this hook (unknown status counts as yes)."""
        return self.alert_status in (None, "executable")


@dataclass(frozen=True)
class ProjectInfo:
    """A project's settings that decide which runners may take its jobs (`GET /projects/:id`).

    `shared_runners_enabled`: instance runners take its jobs only when true (`builds_for_shared_runner`,
    gitlabhq app/services/ci/queue/builds_table_strategy.rb). `path_with_namespace` places it under its
    groups (`builds_for_group_runner` takes projects of the runner's group and subgroups).
    """

    id: int
    path_with_namespace: str
    shared_runners_enabled: bool


@dataclass(frozen=True)
class ProjectRef:
    """A project found under a group: enough to install its hook and to name it in logs."""

    id: int
    path_with_namespace: str


# --------------------------------------------------------------------------------------------------
# The interface fakes implement


class HooksApi(Protocol):
    """What installing and checking webhooks needs from GitLab (`chalicelib.hook_sync`): a fake does this."""

    def list_project_hooks(self, project_id: int) -> list[HookInfo]: ...

    def create_project_hook(
        self,
        project_id: int,
        *,
        url: str,
        token: str,
        job_events: bool = True,
        pipeline_events: bool = True,
        push_events: bool = False,
        enable_ssl_verification: bool = True,
    ) -> HookInfo: ...

    def update_project_hook(
        self,
        project_id: int,
        hook_id: int,
        *,
        url: str,
        token: str,
        job_events: bool = True,
        pipeline_events: bool = True,
        push_events: bool = False,
        enable_ssl_verification: bool = True,
    ) -> HookInfo: ...

    def test_project_hook(
        self, project_id: int, hook_id: int, trigger: HookTrigger = "job_events"
    ) -> None: ...

    def group_projects(self, group_id: int, *, include_subgroups: bool = True) -> list[ProjectRef]: ...


class GitLabApi(HooksApi, Protocol):
    """Everything the scaler asks of GitLab. `GitLabClient` implements it; in-memory fakes can too."""

    calls: Counter[str]

    def create_runner(
        self,
        *,
        runner_type: RunnerType,
        description: str,
        tag_list: Sequence[str],
        run_untagged: bool,
        locked: bool,
        maintenance_note: str | None = None,
        group_id: int | None = None,
        project_id: int | None = None,
        paused: bool = False,
    ) -> CreatedRunner: ...

    def delete_runner(self, runner_id: int) -> bool: ...

    def pause_runner(self, runner_id: int, paused: bool = True) -> None: ...

    def get_runner(self, runner_id: int) -> RunnerInfo: ...

    def list_runners(
        self,
        description_prefix: str,
        *,
        runner_type: RunnerType | None = None,
        group_id: int | None = None,
        project_id: int | None = None,
        status: str | None = None,
    ) -> list[RunnerInfo]: ...

    def runner_jobs(self, runner_id: int, status: str = "running") -> list[JobInfo]: ...

    def get_job(self, project_id: int, job_id: int) -> JobInfo: ...

    def pipeline_jobs(
        self, project_id: int, pipeline_id: int, *, include_retried: bool = False
    ) -> list[JobInfo]: ...

    def list_jobs(self, project_id: int, scope: Sequence[str] = ("pending",)) -> list[JobInfo]: ...

    def retry_job(self, project_id: int, job_id: int) -> JobInfo: ...

    def cancel_job(self, project_id: int, job_id: int) -> JobInfo: ...


# --------------------------------------------------------------------------------------------------
# The real adapter


class GitLabClient:
    """GitLab through python-gitlab, with python-gitlab's own retry and our error translation.

    Transient errors: python-gitlab retries 500/502/503/504/52x, connection errors and timeouts when
    `retry_transient_errors`, up to `max_retries` times with a 0.1 s * 2**n backoff.

    Rate limits (429) are ours, not python-gitlab's: its `obey_rate_limit` sleeps `Retry-After` (else
    `RateLimit-Reset` - now) uncapped with `time.sleep`, and forgets it once the call gives up
    (python-gitlab 8.6 `gitlab/utils.py` `Retry.handle_retry_on_status`). Here a 429's wait (Retry-After,
    else RateLimit-Reset, else DEFAULT_RATE_LIMIT_WAIT) is obeyed: with `obey_rate_limit` a wait up to
    `max_rate_limit_wait` is slept through (`sleep`) and the call retried; otherwise the call fails with a
    retryable GitLabError(429), and every later call of the same action fails the same way WITHOUT reaching
    GitLab until the wait is over (per action: GitLab's limits are per endpoint). A latency-bound caller
    (the webhook Lambda) passes `obey_rate_limit=False` and leaves the 429 to the next tick.

    The python-gitlab client (and its requests session) is built on first use, once per container, and
    the API token is read then, through `token_provider`; a 401 re-reads the token once, so a rotated
    secret heals without a cold start.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        ca_bundle_path: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        obey_rate_limit: bool = True,
        retry_transient_errors: bool = True,
        per_page: int = MAX_PER_PAGE,
        tracing: Tracing | None = None,
        max_rate_limit_wait: float = MAX_RATE_LIMIT_WAIT,
    ) -> None:
        self._init(
            url,
            lambda: token,
            ca_bundle_path=ca_bundle_path,
            timeout=timeout,
            max_retries=max_retries,
            obey_rate_limit=obey_rate_limit,
            retry_transient_errors=retry_transient_errors,
            per_page=per_page,
            tracing=tracing,
        )
        self.max_rate_limit_wait = max_rate_limit_wait

    @classmethod
    def from_token_provider(
        cls,
        url: str,
        token_provider: Callable[[], str],
        *,
        ca_bundle_path: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        obey_rate_limit: bool = True,
        retry_transient_errors: bool = True,
        per_page: int = MAX_PER_PAGE,
        tracing: Tracing | None = None,
    ) -> GitLabClient:
        """A client that reads its API token lazily (first call, and again after a 401).

        `token_provider` is the secrets adapter's reader; nothing is fetched until GitLab is called.
        """
        client = cls.__new__(cls)
        client._init(
            url,
            token_provider,
            ca_bundle_path=ca_bundle_path,
            timeout=timeout,
            max_retries=max_retries,
            obey_rate_limit=obey_rate_limit,
            retry_transient_errors=retry_transient_errors,
            per_page=per_page,
            tracing=tracing,
        )
        return client

    def _init(
        self,
        url: str,
        token_provider: Callable[[], str],
        *,
        ca_bundle_path: str | None,
        timeout: float,
        max_retries: int,
        obey_rate_limit: bool,
        retry_transient_errors: bool,
        per_page: int,
        tracing: Tracing | None,
    ) -> None:
        self.url = url.rstrip("/")
        self._token_provider = token_provider
        self._ssl_verify: bool | str = ca_bundle_path or True
        self._timeout = timeout
        self._max_retries = max(0, max_retries)
        self._obey_rate_limit = obey_rate_limit
        self._retry_transient_errors = retry_transient_errors
        self._per_page = max(1, min(per_page, MAX_PER_PAGE))
        self._tracing = tracing or Tracing()
        self._lock = threading.Lock()
        self._gl: gitlab.Gitlab | None = None
        self._token: str | None = None
        #: One count per adapter call ("runners.get"), whatever the pages or retries underneath.
        self.calls: Counter[str] = Counter()
        #: Every HTTP response received, pages and retries included (what GitLab actually served).
        self.http_requests = 0
        #: Rate limits: the longest wait slept through in a call, how to sleep, and the clocks (seconds).
        self.max_rate_limit_wait = MAX_RATE_LIMIT_WAIT
        self.sleep: Callable[[float], None] = time.sleep
        self.clock: Callable[[], float] = time.monotonic
        self.wall_clock: Callable[[], float] = time.time
        #: action -> `clock()` before which GitLab asked not to be called again (its Retry-After).
        self.held_until: dict[str, float] = {}
        self._throttle = threading.local()

    def __repr__(self) -> str:
        return f"GitLabClient(url={self.url!r})"

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def ssl_verify(self) -> bool | str:
        """What requests verifies GitLab's certificate with: a CA bundle path, or True (system CAs)."""
        return self._ssl_verify

    def session(self) -> gitlab.Gitlab:
        """The python-gitlab client, built on first use (never at import time)."""
        with self._lock:
            if self._gl is None:
                self._gl = self._build(self._token_provider())
            return self._gl

    def _build(self, token: str) -> gitlab.Gitlab:
        self._token = token
        gl = gitlab.Gitlab(
            self.url,
            private_token=token,
            ssl_verify=self._ssl_verify,
            timeout=self._timeout,
            retry_transient_errors=self._retry_transient_errors,
            per_page=self._per_page,
            user_agent=USER_AGENT,
        )
        gl.session.hooks["response"].append(self._count_response)
        return gl

    def reset(self) -> None:
        """Drop the python-gitlab client; the next call builds a new one and re-reads the token."""
        with self._lock:
            if self._gl is not None:
                self._gl.session.close()
            self._gl = None

    def _count_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        self.http_requests += 1
        if response.status_code == 429:  # python-gitlab's errors carry no headers: keep the wait here
            self._throttle.wait = rate_limit_wait(response.headers, self.wall_clock())
        return response

    def _opts(self) -> dict[str, Any]:
        # 429s are handled in `_attempt` (see the class docstring); python-gitlab keeps the 5xx retries.
        return {"max_retries": self._max_retries, "obey_rate_limit": False}

    def _call(self, action: str, what: str, fn: Callable[[gitlab.Gitlab], _T]) -> _T:
        """Run one adapter action: count it, trace it (`gitlab.<action>`), translate errors, re-read a
        rotated token once on 401. `what` (ids, descriptions) goes into errors, never into the trace."""
        self.calls[action] += 1
        held = self.held_until.get(action, 0.0) - self.clock()
        if held > 0:
            raise GitLabError(
                action, 429, f"not called: GitLab rate-limited it and asked to wait {held:.0f} s more"
            )
        with self._tracing.call("gitlab", action):
            return self._attempt(action, what, fn)

    def _attempt(self, action: str, what: str, fn: Callable[[gitlab.Gitlab], _T]) -> _T:
        reread, waits = False, 0
        while True:
            gl = self.session()
            try:
                return fn(gl)
            except gitlab.exceptions.GitlabAuthenticationError as exc:
                if not reread and self._token_changed():
                    reread = True
                    logger.info(
                        "GitLab answered 401; retrying once with the re-read API token",
                        extra={"action": action},
                    )
                    continue
                raise _translate(action, what, exc) from exc
            except gitlab.exceptions.GitlabError as exc:
                if exc.response_code != 429:
                    raise _translate(action, what, exc) from exc
                wait = float(self._throttle.__dict__.pop("wait", DEFAULT_RATE_LIMIT_WAIT))
                if self._obey_rate_limit and wait <= self.max_rate_limit_wait and waits < self._max_retries:
                    waits += 1
                    self.sleep(wait)
                    continue
                self.held_until[action] = self.clock() + wait
                logger.warning("GitLab rate limit", extra={"action": action, "retry_after_s": wait})
                raise GitLabError(
                    action, 429, f"rate limited; GitLab asks to retry after {wait:.0f} s"
                ) from exc
            except requests.RequestException as exc:
                raise GitLabError(action, 0, f"{type(exc).__name__} talking to {self.url}") from exc

    def _token_changed(self) -> bool:
        """Whether the token provider now returns another token (a rotated secret); rebuilds if so."""
        fresh = self._token_provider()
        if fresh == self._token:
            return False
        with self._lock:
            if self._gl is not None:
                self._gl.session.close()
            self._gl = self._build(fresh)
        return True

    def _get(self, gl: gitlab.Gitlab, path: str, query: dict[str, Any] | None = None) -> dict[str, Any]:
        result = gl.http_get(path, query_data=query, **self._opts())
        return _as_dict(result, path)

    def _list(
        self, gl: gitlab.Gitlab, path: str, query: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every item of a paginated list, following GitLab's `Link: rel="next"` header."""
        query = dict(query or {})
        query.setdefault("per_page", self._per_page)
        pages = gl.http_list(path, query_data=query, iterator=True, **self._opts())
        for item in pages:
            yield _as_dict(item, path)

    # -- runners ----------------------------------------------------------------------------------

    def create_runner(
        self,
        *,
        runner_type: RunnerType,
        description: str,
        tag_list: Sequence[str],
        run_untagged: bool,
        locked: bool,
        maintenance_note: str | None = None,
        group_id: int | None = None,
        project_id: int | None = None,
        paused: bool = False,
    ) -> CreatedRunner:
        """Create a runner linked to the API token's user (`POST /user/runners`, GitLab 15.10+).

        Field names follow GitLab's Users API: `runner_type` (instance_type needs an admin token,
        group_type needs `group_id`, project_type needs `project_id`), `tag_list`, `run_untagged`,
        `locked`, `paused`, `access_level`, `maintenance_note`. The token needs the `create_runner` scope.
        The call goes through `http_post` rather than `gl.user.runners` because the latter first needs
        `GET /user`.
        """
        data: dict[str, Any] = {
            "runner_type": runner_type,
            "description": description,
            "tag_list": list(tag_list),
            "run_untagged": run_untagged,
            "locked": locked,
            "paused": paused,
            # Said, not left to the default (`ci_runners.access_level` defaults to 0, `not_protected`:
            # gitlabhq db/structure.sql; `POST /user/runners` takes an optional `access_level`:
            # lib/api/user_runners.rb). A `ref_protected` runner picks only jobs of protected refs
            # (`Ci::Runner#can_pick?`: `return false if self.ref_protected? && !build.protected?`,
            # app/models/ci/runner.rb), and demand counts jobs of every ref: so our runners take every ref,
            # and demand needs no ref filter.
            "access_level": "not_protected",
        }
        data.update(_runner_scope(runner_type, group_id, project_id))
        if maintenance_note is not None:
            data["maintenance_note"] = maintenance_note

        def create(gl: gitlab.Gitlab) -> CreatedRunner:
            body = _as_dict(gl.http_post("/user/runners", post_data=data, **self._opts()), "/user/runners")
            return CreatedRunner(
                id=int(body["id"]),
                token=str(body["token"]),
                token_expires_at=parse_time(body.get("token_expires_at")),
            )

        created = self._call("runners.create", f"{runner_type} runner {description!r}", create)
        logger.info(
            "created GitLab runner", extra={"runner_id": created.id, "runner_description": description}
        )
        return created

    def delete_runner(self, runner_id: int) -> bool:
        """Delete a runner (`DELETE /runners/:id`); False when it was already gone (idempotent)."""

        def delete(gl: gitlab.Gitlab) -> None:
            gl.http_delete(f"/runners/{int(runner_id)}", **self._opts())

        try:
            self._call("runners.delete", f"runner {runner_id}", delete)
        except GitLabNotFoundError:
            return False
        return True

    def pause_runner(self, runner_id: int, paused: bool = True) -> None:
        """Stop (or let again) a runner taking new jobs (`PUT /runners/:id` with `paused`).

        A job GitLab already assigned keeps running; the caller re-checks `runner_jobs` afterwards.
        """

        def pause(gl: gitlab.Gitlab) -> None:
            gl.http_put(f"/runners/{int(runner_id)}", post_data={"paused": paused}, **self._opts())

        self._call("runners.pause", f"runner {runner_id}", pause)

    def get_runner(self, runner_id: int) -> RunnerInfo:
        """One runner's details (`GET /runners/:id`), tags and last contact included."""
        return self._call(
            "runners.get",
            f"runner {runner_id}",
            lambda gl: runner_info(self._get(gl, f"/runners/{int(runner_id)}")),
        )

    def list_runners(
        self,
        description_prefix: str,
        *,
        runner_type: RunnerType | None = None,
        group_id: int | None = None,
        project_id: int | None = None,
        status: str | None = None,
    ) -> list[RunnerInfo]:
        """Runners whose description starts with `description_prefix` (`runner-scaler/<pool>/`).

        Where to look: `GET /groups/:id/runners` for a group, `GET /projects/:id/runners` for a project,
        else `GET /runners/all` (needs an admin token). GitLab has no description filter, so the prefix
        is matched here; `runner_type` is passed as GitLab's `type` filter, `status` (online, offline,
        stale, never_contacted) as its `status` filter (Runners API, "List all runners").
        """
        if group_id is not None:
            path = f"/groups/{int(group_id)}/runners"
        elif project_id is not None:
            path = f"/projects/{int(project_id)}/runners"
        else:
            path = "/runners/all"
        query: dict[str, str] = {"type": runner_type} if runner_type else {}
        if status:
            query["status"] = status

        def fetch(gl: gitlab.Gitlab) -> list[RunnerInfo]:
            runners = (runner_info(item) for item in self._list(gl, path, query))
            return [r for r in runners if r.description.startswith(description_prefix)]

        return self._call("runners.list", path, fetch)

    def runner_jobs(self, runner_id: int, status: str = "running") -> list[JobInfo]:
        """Jobs a runner runs or ran (`GET /runners/:id/jobs?status=`); this endpoint carries no tags."""
        path = f"/runners/{int(runner_id)}/jobs"

        def fetch(gl: gitlab.Gitlab) -> list[JobInfo]:
            items = self._list(gl, path, {"status": status})
            return [job_info(item, runner_id=runner_id) for item in items]

        return self._call("runners.jobs", f"runner {runner_id}", fetch)

    # -- jobs -------------------------------------------------------------------------------------

    def get_job(self, project_id: int, job_id: int) -> JobInfo:
        """One job (`GET /projects/:id/jobs/:job_id`)."""
        path = f"/projects/{int(project_id)}/jobs/{int(job_id)}"
        return self._call(
            "jobs.get",
            f"job {job_id} of project {project_id}",
            lambda gl: job_info(self._get(gl, path), project_id=project_id),
        )

    def pipeline_jobs(
        self, project_id: int, pipeline_id: int, *, include_retried: bool = False
    ) -> list[JobInfo]:
        """Every job of a pipeline with its tags (`GET /projects/:id/pipelines/:pipeline_id/jobs`).

        One request per 100 jobs. Retried jobs are left out unless `include_retried`, as GitLab does by
        default: a retried job was replaced by a newer one and no longer needs a runner.
        """
        path = f"/projects/{int(project_id)}/pipelines/{int(pipeline_id)}/jobs"
        query = {"include_retried": "true"} if include_retried else {}

        def fetch(gl: gitlab.Gitlab) -> list[JobInfo]:
            return [job_info(item, project_id=project_id) for item in self._list(gl, path, query)]

        return self._call("pipelines.jobs", f"pipeline {pipeline_id} of project {project_id}", fetch)

    def list_jobs(self, project_id: int, scope: Sequence[str] = ("pending",)) -> list[JobInfo]:
        """A project's jobs in the given statuses (`GET /projects/:id/jobs?scope[]=...`), newest first."""
        path = f"/projects/{int(project_id)}/jobs"
        query = {"scope[]": list(scope)} if scope else {}

        def fetch(gl: gitlab.Gitlab) -> list[JobInfo]:
            return [job_info(item, project_id=project_id) for item in self._list(gl, path, query)]

        return self._call("jobs.list", f"jobs of project {project_id}", fetch)

    def retry_job(self, project_id: int, job_id: int) -> JobInfo:
        """Retry a finished job (`POST /projects/:id/jobs/:job_id/retry`); GitLab answers with the NEW job."""
        path = f"/projects/{int(project_id)}/jobs/{int(job_id)}/retry"
        return self._call(
            "jobs.retry",
            f"job {job_id} of project {project_id}",
            lambda gl: job_info(_as_dict(gl.http_post(path, **self._opts()), path), project_id=project_id),
        )

    def cancel_job(self, project_id: int, job_id: int) -> JobInfo:
        """Cancel a job (`POST /projects/:id/jobs/:job_id/cancel`): a job whose machine is gone cannot finish,
        and GitLab retries only finished jobs."""
        path = f"/projects/{int(project_id)}/jobs/{int(job_id)}/cancel"
        return self._call(
            "jobs.cancel",
            f"job {job_id} of project {project_id}",
            lambda gl: job_info(_as_dict(gl.http_post(path, **self._opts()), path), project_id=project_id),
        )

    # -- hooks ------------------------------------------------------------------------------------

    def list_project_hooks(self, project_id: int) -> list[HookInfo]:
        """A project's webhooks (`GET /projects/:id/hooks`)."""
        path = f"/projects/{int(project_id)}/hooks"
        return self._call(
            "hooks.list",
            f"hooks of project {project_id}",
            lambda gl: [hook_info(item, project_id) for item in self._list(gl, path)],
        )

    def create_project_hook(
        self,
        project_id: int,
        *,
        url: str,
        token: str,
        job_events: bool = True,
        pipeline_events: bool = True,
        push_events: bool = False,
        enable_ssl_verification: bool = True,
    ) -> HookInfo:
        """Add a webhook to a project (`POST /projects/:id/hooks`); `token` becomes `X-Gitlab-Token`."""
        path = f"/projects/{int(project_id)}/hooks"
        data = _hook_data(url, token, job_events, pipeline_events, push_events, enable_ssl_verification)
        return self._call(
            "hooks.create",
            f"hook of project {project_id}",
            lambda gl: hook_info(
                _as_dict(gl.http_post(path, post_data=data, **self._opts()), path), project_id
            ),
        )

    def update_project_hook(
        self,
        project_id: int,
        hook_id: int,
        *,
        url: str,
        token: str,
        job_events: bool = True,
        pipeline_events: bool = True,
        push_events: bool = False,
        enable_ssl_verification: bool = True,
    ) -> HookInfo:
        """Edit a project webhook (`PUT /projects/:id/hooks/:hook_id`).

        `url` is required by GitLab, and the token is always re-sent: GitLab resets the secret token
        whenever the URL changes. Editing does NOT re-enable an auto-disabled hook; `test_project_hook` does.
        """
        path = f"/projects/{int(project_id)}/hooks/{int(hook_id)}"
        data = _hook_data(url, token, job_events, pipeline_events, push_events, enable_ssl_verification)
        return self._call(
            "hooks.update",
            f"hook {hook_id} of project {project_id}",
            lambda gl: hook_info(
                _as_dict(gl.http_put(path, post_data=data, **self._opts()), path), project_id
            ),
        )

    def test_project_hook(self, project_id: int, hook_id: int, trigger: HookTrigger = "job_events") -> None:
        """Send a test event to a hook (`POST /projects/:id/hooks/:hook_id/test/:trigger`, GitLab 16.11+).

        GitLab's documented way to re-enable an auto-disabled hook: the hook is enabled again when the
        receiver answers 2xx. GitLab rate-limits this endpoint (5 a minute per hook), so `hooks sync`
        calls it only for hooks whose `alert_status` is not executable.
        """
        path = f"/projects/{int(project_id)}/hooks/{int(hook_id)}/test/{trigger}"

        def test(gl: gitlab.Gitlab) -> None:
            gl.http_post(path, **self._opts())

        self._call("hooks.test", f"hook {hook_id} of project {project_id}", test)

    def get_project(self, project_id: int) -> ProjectInfo:
        """A project's runner-relevant settings (`GET /projects/:id`; GitLab.com: 400 a minute per user)."""
        path = f"/projects/{int(project_id)}"

        def fetch(gl: gitlab.Gitlab) -> ProjectInfo:
            item = self._get(gl, path)
            return ProjectInfo(
                id=int(item["id"]),
                path_with_namespace=str(item.get("path_with_namespace") or ""),
                shared_runners_enabled=bool(item.get("shared_runners_enabled", True)),
            )

        return self._call("projects.get", f"project {project_id}", fetch)

    def group_path(self, group_id: int) -> str:
        """A group's full path (`GET /groups/:id`), e.g. `acme/platform`."""
        path = f"/groups/{int(group_id)}"
        return self._call(
            "groups.get", f"group {group_id}", lambda gl: str(self._get(gl, path).get("full_path") or "")
        )

    def group_projects(self, group_id: int, *, include_subgroups: bool = True) -> list[ProjectRef]:
        """The projects of a group, subgroups included by default (`GET /groups/:id/projects`)."""
        path = f"/groups/{int(group_id)}/projects"
        query = {"include_subgroups": "true" if include_subgroups else "false", "simple": "true"}
        return self._call(
            "groups.projects",
            f"projects of group {group_id}",
            lambda gl: [
                ProjectRef(id=int(item["id"]), path_with_namespace=str(item.get("path_with_namespace", "")))
                for item in self._list(gl, path, query)
            ],
        )


def gitlab_client(
    url: str,
    token_provider: Callable[[], str],
    *,
    ca_bundle_path: str | None = None,
    timeout: float = 10.0,
    max_retries: int = 3,
    obey_rate_limit: bool = True,
    tracing: Tracing | None = None,
) -> GitLabClient:
    """The factory use cases call: a lazy client whose API token comes from the secrets adapter."""
    return GitLabClient.from_token_provider(
        url,
        token_provider,
        ca_bundle_path=ca_bundle_path,
        timeout=timeout,
        max_retries=max_retries,
        obey_rate_limit=obey_rate_limit,
        tracing=tracing,
    )


# --------------------------------------------------------------------------------------------------
# Translation: GitLab JSON in, our dataclasses and errors out


def _translate(action: str, what: str, exc: gitlab.exceptions.GitlabError) -> GitLabError:
    """Our error for a python-gitlab error: 404 becomes GitLabNotFoundError, the rest GitLabError(status)."""
    status = int(exc.response_code or 0)
    message = str(exc.error_message or type(exc).__name__)
    if status == 404:
        return GitLabNotFoundError(action, what, message)
    if isinstance(exc, gitlab.exceptions.GitlabParsingError):
        message = f"GitLab answered with something that is not JSON ({message}); is the URL the GitLab root?"
    elif status == 401:
        message = f"{message}: the API token is wrong, expired or revoked; rotate the GitLab API token secret"
    elif status == 403:
        message = f"{message}: the API token lacks the role or scope for {what}"
    return GitLabError(action, status, message)


def rate_limit_wait(headers: Any, now: float) -> float:
    """Seconds a 429 asks to wait: `Retry-After` (whole seconds, as GitLab sends it), else `RateLimit-Reset`
    (epoch seconds) - `now`, else DEFAULT_RATE_LIMIT_WAIT (docs administration/settings/
    user_and_ip_rate_limits.md, "Response headers"; the order python-gitlab uses too)."""
    retry_after = str(headers.get("Retry-After") or "").strip()
    if retry_after.isdigit():
        return float(retry_after)
    reset = str(headers.get("RateLimit-Reset") or "").strip()
    if reset.isdigit():
        return max(0.0, float(reset) - now)
    return DEFAULT_RATE_LIMIT_WAIT


def _as_dict(result: Any, path: str) -> dict[str, Any]:
    if isinstance(result, dict):
        return result
    raise gitlab.exceptions.GitlabParsingError(error_message=f"expected a JSON object from {path}")


def _runner_scope(runner_type: RunnerType, group_id: int | None, project_id: int | None) -> dict[str, int]:
    """The owner field GitLab requires for the runner type (and refuses for the others)."""
    if runner_type == "group_type":
        if group_id is None:
            raise ValueError("create_runner: runner_type=group_type needs group_id")
        return {"group_id": int(group_id)}
    if runner_type == "project_type":
        if project_id is None:
            raise ValueError("create_runner: runner_type=project_type needs project_id")
        return {"project_id": int(project_id)}
    if runner_type != "instance_type":
        raise ValueError(
            f"create_runner: runner_type must be instance_type, group_type or project_type, "
            f"not {runner_type!r}"
        )
    return {}


def _hook_data(
    url: str,
    token: str,
    job_events: bool,
    pipeline_events: bool,
    push_events: bool,
    enable_ssl_verification: bool,
) -> dict[str, Any]:
    return {
        "url": url,
        "token": token,
        "job_events": job_events,
        "pipeline_events": pipeline_events,
        "push_events": push_events,
        "enable_ssl_verification": enable_ssl_verification,
    }


def parse_time(value: Any) -> datetime | None:
    """A GitLab timestamp as an aware UTC datetime.

    The REST API sends ISO 8601 (`2016-01-25T16:39:48.066Z`); webhooks also send `2016-08-12 15:23:28 UTC`.
    """
    if value in (None, ""):
        return None
    text = str(value).strip()
    if text.endswith(" UTC"):
        text = text[: -len(" UTC")].replace(" ", "T") + "+00:00"
    return parse_iso(text)


def _tags(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, list | tuple):
        return tuple(str(t) for t in value)
    return None


def runner_info(item: dict[str, Any]) -> RunnerInfo:
    """A RunnerInfo from a runner entity (list or details shape)."""
    paused = item.get("paused")
    if paused is None:  # GitLab before 14.8 only had `active`
        paused = not bool(item.get("active", True))
    return RunnerInfo(
        id=int(item["id"]),
        description=str(item.get("description") or ""),
        paused=bool(paused),
        status=str(item.get("status") or ""),
        contacted_at=parse_time(item.get("contacted_at")),
        tag_list=_tags(item.get("tag_list")),
        online=item.get("online"),
        runner_type=item.get("runner_type"),
        run_untagged=item.get("run_untagged"),
        locked=item.get("locked"),
    )


def job_info(item: dict[str, Any], *, project_id: int | None = None, runner_id: int | None = None) -> JobInfo:
    """A JobInfo from a job entity; `project_id`/`runner_id` fill in what the endpoint leaves implicit."""
    pipeline = item.get("pipeline") or {}
    project = item.get("project") or {}
    runner = item.get("runner") or {}
    project_ref = pipeline.get("project_id") or project.get("id") or project_id
    if project_ref is None:
        raise GitLabError("jobs.parse", 0, f"job {item.get('id')} came without a project id")
    runner_ref = runner.get("id") if runner else runner_id
    return JobInfo(
        id=int(item["id"]),
        project_id=int(project_ref),
        pipeline_id=int(pipeline["id"]) if pipeline.get("id") is not None else None,
        status=str(item.get("status") or ""),
        tag_list=_tags(item.get("tag_list")),
        stage=str(item.get("stage") or ""),
        name=str(item.get("name") or ""),
        created_at=parse_time(item.get("created_at")),
        started_at=parse_time(item.get("started_at")),
        finished_at=parse_time(item.get("finished_at")),
        runner_id=int(runner_ref) if runner_ref is not None else None,
    )


def hook_info(item: dict[str, Any], project_id: int) -> HookInfo:
    """A HookInfo from a project hook entity."""
    return HookInfo(
        id=int(item["id"]),
        project_id=int(item.get("project_id") or project_id),
        url=str(item.get("url") or ""),
        job_events=bool(item.get("job_events")),
        pipeline_events=bool(item.get("pipeline_events")),
        push_events=bool(item.get("push_events")),
        enable_ssl_verification=bool(item.get("enable_ssl_verification", True)),
        alert_status=item.get("alert_status"),
        disabled_until=parse_time(item.get("disabled_until")),
        created_at=parse_time(item.get("created_at")),
    )


@contextmanager
def counting(client: GitLabClient) -> Iterator[Counter[str]]:
    """The adapter calls made inside the block (for benchmarks: `with counting(gl) as calls: ...`)."""
    before = Counter(client.calls)
    delta: Counter[str] = Counter()
    try:
        yield delta
    finally:
        delta.update(client.calls - before)
