"""The one builder of GitLab webhook payloads and headers: the fake GitLab sends what it builds (so the demo
and the replay get these shapes through the fake), and the simulator and tests call it directly.

Pure: standard library and chalicelib.events only; `now` is always passed in. Not imported by app.py.
Shapes copy lib/gitlab/data_builder/{build,pipeline}.rb and the "Webhook events" doc samples, including
GitLab's quirks: job hooks carry no job tag list (only the runner's tags, once a runner picked the job),
`commit.id` in a job hook is the pipeline id, and the two hooks spell timestamps differently. Every value
the fake knows (project path, runner, times, sha) can be given; what is not given is derived from `status`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from chalicelib.events.gitlab import JobStatus
from chalicelib.events.timestamps import format_gitlab_iso, format_gitlab_iso_seconds, format_gitlab_legacy

DEFAULT_INSTANCE = "https://gitlab.example.com"
_STARTED = frozenset({JobStatus.RUNNING, JobStatus.CANCELING, JobStatus.SUCCESS, JobStatus.FAILED})
_FINISHED = frozenset({JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELED})
#: Statuses without a queue time: the job never waited for a runner yet (Ci::Build#queued_duration is nil).
_NOT_QUEUED = frozenset({"created", "manual", "scheduled", "skipped"})

TimeFormat = Literal["iso", "utc"]


@dataclass(frozen=True)
class RunnerSample:
    """The `runner` of a hook (`build_runner` in lib/gitlab/data_builder/build.rb)."""

    id: int
    description: str = ""
    runner_type: str = "project_type"
    active: bool = True
    tags: Sequence[str] = field(default_factory=tuple)

    def attrs(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "description": self.description or f"runner-scaler-{self.id}",
            "runner_type": self.runner_type,
            "active": self.active,
            "is_shared": self.runner_type == "instance_type",
            "tags": list(self.tags),
        }


@dataclass(frozen=True)
class PipelineSample:
    """What a job hook's `commit` says about its pipeline (the pipeline's id, sha, status and times)."""

    status: str
    name: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class BuildSample:
    """One job of a pipeline hook sample; unset times are derived from the status and the hook's `now`."""

    build_id: int
    status: JobStatus | str
    stage: str
    name: str
    runner_id: int | None = None
    tags: Sequence[str] = field(default_factory=tuple)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queued_at: datetime | None = None
    when: str = "on_success"
    allow_failure: bool = False
    failure_reason: str | None = None
    runner: RunnerSample | None = None


@dataclass(frozen=True)
class _Times:
    status: str
    created: datetime
    started: datetime | None
    finished: datetime | None
    queued: datetime | None
    now: datetime

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return ((self.finished or self.now) - self.started).total_seconds()

    @property
    def queued_duration(self) -> float | None:
        if self.status in _NOT_QUEUED or (self.started is None and self.finished is not None):
            return None
        return ((self.started or self.now) - (self.queued or self.created)).total_seconds()


def _times(
    status: str,
    now: datetime,
    created: datetime | None,
    started: datetime | None,
    finished: datetime | None,
    queued: datetime | None = None,
) -> _Times:
    """Timestamps GitLab would hold for a job in `status` at `now` (started when a runner had it, etc.)."""
    created = created or now
    if started is None and status in _STARTED:
        started = now if status in {JobStatus.RUNNING, JobStatus.CANCELING} else created
    if finished is None and status in _FINISHED:
        finished = now
    return _Times(status, created=created, started=started, finished=finished, queued=queued, now=now)


def _status(value: JobStatus | str) -> str:
    """Any status string: GitLab adds statuses over time, and the builder must send what GitLab sends."""
    return value.value if isinstance(value, JobStatus) else str(value)


def _job_time(value: datetime | None, time_format: TimeFormat) -> str | None:
    """Job Hook `build_*_at`: "iso" (docs: `2021-02-23T02:41:37.886Z`) or "utc" (older GitLab)."""
    if value is None:
        return None
    return format_gitlab_legacy(value) if time_format == "utc" else format_gitlab_iso(value)


def _iso_s(value: datetime | None) -> str | None:
    return format_gitlab_iso_seconds(value) if value is not None else None


def _sha(seed: int) -> str:
    return hashlib.sha1(str(seed).encode(), usedforsecurity=False).hexdigest()


def _runner(runner: RunnerSample | None, runner_id: int | None, tags: Sequence[str]) -> dict[str, Any] | None:
    if runner is not None:
        return runner.attrs()
    return RunnerSample(runner_id, tags=tuple(tags)).attrs() if runner_id is not None else None


def _project(project_id: int, instance: str, path: str | None = None) -> dict[str, Any]:
    """The hook's `project` (Project#hook_attrs)."""
    path = path or f"group/project-{project_id}"
    namespace, _, name = path.rpartition("/")
    host = instance.split("://")[-1].split("/")[0]
    return {
        "id": project_id,
        "name": name,
        "description": "",
        "web_url": f"{instance}/{path}",
        "avatar_url": None,
        "git_ssh_url": f"git@{host}:{path}.git",
        "git_http_url": f"{instance}/{path}.git",
        "namespace": namespace,
        "visibility_level": 0,
        "path_with_namespace": path,
        "default_branch": "main",
        "ci_config_path": None,
    }


def _project_name(path: str) -> str:
    """Project#full_name: the namespace and project names joined by " / " (here the names are the paths)."""
    return path.replace("/", " / ")


_USER = {"id": 1, "name": "Administrator", "username": "root", "avatar_url": None, "email": "[REDACTED]"}


def job_hook_payload(
    build_id: int,
    status: JobStatus | str,
    *,
    project_id: int,
    pipeline_id: int,
    stage: str,
    name: str,
    now: datetime,
    tags: Sequence[str] = (),
    runner_id: int | None = None,
    created_at: datetime | None = None,
    started_at: datetime | None = None,
    retries_count: int = 0,
    ref: str = "main",
    instance: str = DEFAULT_INSTANCE,
    project_path: str | None = None,
    sha: str | None = None,
    runner: RunnerSample | None = None,
    queued_at: datetime | None = None,
    finished_at: datetime | None = None,
    allow_failure: bool = False,
    failure_reason: str | None = None,
    pipeline: PipelineSample | None = None,
    time_format: TimeFormat = "iso",
) -> dict[str, Any]:
    """A Job hook body as GitLab sends it when job `build_id` reaches `status` at `now`.

    `tags` land in `runner.tags` and only when `runner_id` (or `runner`) is given: that is where GitLab puts
    tags (the runner's), a job waiting for a runner carries none. Durations are in seconds. `time_format`
    picks the `build_*_at` spelling ("iso" as documented for 16/17, "utc" for older GitLab); the `*_iso`
    fields are always sent.
    """
    job_status = _status(status)
    times = _times(job_status, now, created_at, started_at, finished_at, queued_at)
    sha = sha or _sha(pipeline_id)
    project = _project(project_id, instance, project_path)
    if failure_reason is None:
        failure_reason = "script_failure" if job_status == JobStatus.FAILED else "unknown_failure"
    commit_status = pipeline.status if pipeline else ("running" if job_status in _STARTED else "pending")
    return {
        "object_kind": "build",
        "ref": ref,
        "tag": False,
        "before_sha": "0" * 40,
        "sha": sha,
        "retries_count": retries_count,
        "build_id": build_id,
        "build_name": name,
        "build_stage": stage,
        "build_status": job_status,
        "build_created_at": _job_time(times.created, time_format),
        "build_created_at_iso": _iso_s(times.created),
        "build_started_at": _job_time(times.started, time_format),
        "build_started_at_iso": _iso_s(times.started),
        "build_finished_at": _job_time(times.finished, time_format),
        "build_finished_at_iso": _iso_s(times.finished),
        "build_duration": times.duration,
        "build_queued_duration": times.queued_duration,
        "build_allow_failure": allow_failure,
        "build_failure_reason": failure_reason,
        "pipeline_id": pipeline_id,
        "runner": _runner(runner, runner_id, tags),
        "project_id": project_id,
        "project_name": _project_name(project["path_with_namespace"]),
        "user": dict(_USER),
        "commit": {
            "id": pipeline_id,  # the PIPELINE id (lib/gitlab/data_builder/build.rb: "commit.id is actually")
            "name": pipeline.name if pipeline else None,
            "sha": sha,
            "message": "Update .gitlab-ci.yml\n",
            "author_name": "Administrator",
            "author_email": "admin@example.com",
            "author_url": f"{instance}/root",
            "status": commit_status,
            "duration": _span(pipeline.started_at, pipeline.finished_at) if pipeline else None,
            "started_at": _job_time(pipeline.started_at, time_format) if pipeline else None,
            "started_at_iso": _iso_s(pipeline.started_at) if pipeline else None,
            "finished_at": _job_time(pipeline.finished_at, time_format) if pipeline else None,
            "finished_at_iso": _iso_s(pipeline.finished_at) if pipeline else None,
        },
        "repository": {
            "name": project["name"],
            "url": project["git_ssh_url"],
            "description": "",
            "homepage": project["web_url"],
            "git_http_url": project["git_http_url"],
            "git_ssh_url": project["git_ssh_url"],
            "visibility_level": 0,
        },
        "project": project,
        "environment": None,
    }


def _span(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start is not None and end is not None else None


def _build_attrs(build: BuildSample, now: datetime) -> dict[str, Any]:
    status = _status(build.status)
    times = _times(status, now, build.created_at, build.started_at, build.finished_at, build.queued_at)
    manual = build.when == "manual" or status == JobStatus.MANUAL
    failure_reason = build.failure_reason
    if failure_reason is None and status == JobStatus.FAILED:
        failure_reason = "script_failure"
    return {
        "id": build.build_id,
        "stage": build.stage,
        "name": build.name,
        "status": status,
        "created_at": format_gitlab_legacy(times.created),
        "started_at": format_gitlab_legacy(times.started) if times.started else None,
        "finished_at": format_gitlab_legacy(times.finished) if times.finished else None,
        "duration": times.duration,
        "queued_duration": times.queued_duration,
        "failure_reason": failure_reason,
        "when": "manual" if manual else build.when,
        "manual": manual,
        "allow_failure": build.allow_failure or manual,
        "user": dict(_USER),
        "runner": _runner(build.runner, build.runner_id, build.tags),
        "artifacts_file": {"filename": None, "size": None},
        "environment": None,
    }


def pipeline_hook_payload(
    pipeline_id: int,
    status: JobStatus | str,
    *,
    project_id: int,
    builds: Sequence[BuildSample],
    now: datetime,
    created_at: datetime | None = None,
    iid: int | None = None,
    ref: str = "main",
    source: str = "push",
    instance: str = DEFAULT_INSTANCE,
    project_path: str | None = None,
    sha: str | None = None,
    name: str | None = None,
    stages: Sequence[str] | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    protected_ref: bool = True,
) -> dict[str, Any]:
    """A Pipeline hook body as GitLab sends it when pipeline `pipeline_id` reaches `status` at `now`.

    `stages` default to the order in which `builds` first name them; times use GitLab's "... UTC" spelling.
    `duration` runs from `started_at` (else creation) to the end; `queued_duration` from creation to start.
    """
    pipeline_status = _status(status)
    created = created_at or min((b.created_at for b in builds if b.created_at), default=now)
    finished = finished_at or (now if pipeline_status in _FINISHED else None)
    stages = list(stages) if stages is not None else list(dict.fromkeys(build.stage for build in builds))
    sha = sha or _sha(pipeline_id)
    project = _project(project_id, instance, project_path)
    duration = _span(started_at or created, finished)
    queued = _span(created, started_at)
    return {
        "object_kind": "pipeline",
        "object_attributes": {
            "id": pipeline_id,
            "iid": iid if iid is not None else pipeline_id,
            "name": name,
            "ref": ref,
            "tag": False,
            "sha": sha,
            "before_sha": "0" * 40,
            "source": source,
            "status": pipeline_status,
            "detailed_status": pipeline_status,
            "stages": stages,
            "created_at": format_gitlab_legacy(created),
            "finished_at": format_gitlab_legacy(finished) if finished else None,
            "duration": int(duration) if duration is not None else None,
            "queued_duration": int(queued) if queued is not None else None,
            "protected_ref": protected_ref,
            "variables": [],
            "url": f"{project['web_url']}/-/pipelines/{pipeline_id}",
        },
        "merge_request": None,
        "user": dict(_USER),
        "project": project,
        "commit": {
            "id": sha,
            "message": "Update .gitlab-ci.yml\n",
            "title": "Update .gitlab-ci.yml",
            "timestamp": created.isoformat(),
            "url": f"{project['web_url']}/-/commit/{sha}",
            "author": {"name": "Administrator", "email": "admin@example.com"},
        },
        "builds": [_build_attrs(build, now) for build in builds],
    }


def webhook_headers(
    event: str,
    *,
    token: str | None = None,
    idempotency_key: str | None = None,
    event_uuid: str | None = None,
    webhook_uuid: str | None = None,
    instance: str = DEFAULT_INSTANCE,
    version: str = "17.4.0",
) -> dict[str, str]:
    """The headers GitLab's WebHookService sends with a delivery (`event` is e.g. "Job Hook")."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"GitLab/{version}",
        "X-Gitlab-Event": event,
        "X-Gitlab-Instance": instance,
    }
    optional = {
        "X-Gitlab-Token": token,
        "Idempotency-Key": idempotency_key,
        "X-Gitlab-Event-UUID": event_uuid,
        "X-Gitlab-Webhook-UUID": webhook_uuid,
    }
    headers.update({name: value for name, value in optional.items() if value is not None})
    return headers
