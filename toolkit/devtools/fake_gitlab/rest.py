"""The fake GitLab's REST API (v4): routing, authentication, pagination, rate limits, injected failures,
entities in GitLab's JSON shapes, and the endpoints the adapter and the runners call.

Part of the fake GitLab (`toolkit.devtools.fake_gitlab`); a mixin over `hooks.HookDelivery`.
"""

from __future__ import annotations

import fnmatch
import json
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from toolkit.devtools.fake_gitlab.model import (
    ADMIN_USER,
    DEFAULT_PER_PAGE,
    MAX_PER_PAGE,
    FakeHook,
    FakeJob,
    FakeProject,
    FakeRunner,
    RequestRecord,
    Route,
    _bool,
    _HttpError,
    _Outgoing,
    _Response,
    _seconds,
    _tag_list,
    iso_ms,
)

if TYPE_CHECKING:
    from toolkit.devtools.fake_gitlab.hooks import HookDelivery as _Base
else:
    _Base = object


class RestApi(_Base):
    """GitLab's REST API v4 as the adapter calls it: routing, pagination headers, rate limits, injected
    failures, the JSON shapes of each entity, and the endpoints. Mixed into `FakeGitLab`."""

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
