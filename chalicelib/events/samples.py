"""GitLab webhook payloads and headers in GitLab's exact shape, for the fake GitLab, the simulator and tests.

Pure: standard library and chalicelib.events only; `now` is always passed in. Not imported by app.py.
Shapes copy lib/gitlab/data_builder/{build,pipeline}.rb and the "Webhook events" doc samples, including
GitLab's quirks: job hooks carry no job tag list (only the runner's tags, once a runner picked the job),
`commit.id` in a job hook is the pipeline id, and the two hooks spell timestamps differently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chalicelib.events.gitlab import JobStatus
from chalicelib.events.timestamps import format_gitlab_iso, format_gitlab_iso_seconds, format_gitlab_legacy

DEFAULT_INSTANCE = "https://gitlab.example.com"
_STARTED = frozenset({JobStatus.RUNNING, JobStatus.CANCELING, JobStatus.SUCCESS, JobStatus.FAILED})
_FINISHED = frozenset({JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELED})


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


@dataclass(frozen=True)
class _Times:
    created: datetime
    started: datetime | None
    finished: datetime | None
    now: datetime

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return ((self.finished or self.now) - self.started).total_seconds()

    @property
    def queued_duration(self) -> float | None:
        if self.started is None and self.finished is not None:
            return None
        return ((self.started or self.now) - self.created).total_seconds()


def _times(
    status: JobStatus,
    now: datetime,
    created: datetime | None,
    started: datetime | None,
    finished: datetime | None,
) -> _Times:
    """Timestamps GitLab would hold for a job in `status` at `now` (started when a runner had it, etc.)."""
    created = created or now
    if started is None and status in _STARTED:
        started = now if status in {JobStatus.RUNNING, JobStatus.CANCELING} else created
    if finished is None and status in _FINISHED:
        finished = now
    return _Times(created=created, started=started, finished=finished, now=now)


def _sha(seed: int) -> str:
    return hashlib.sha1(str(seed).encode(), usedforsecurity=False).hexdigest()


def _runner(runner_id: int | None, tags: Sequence[str]) -> dict[str, Any] | None:
    if runner_id is None:
        return None
    return {
        "id": runner_id,
        "description": f"runner-scaler-{runner_id}",
        "runner_type": "project_type",
        "active": True,
        "is_shared": False,
        "tags": list(tags),
    }


def _project(project_id: int, instance: str) -> dict[str, Any]:
    path = f"group/project-{project_id}"
    return {
        "id": project_id,
        "name": f"project-{project_id}",
        "description": "",
        "web_url": f"{instance}/{path}",
        "avatar_url": None,
        "git_ssh_url": f"git@{instance.split('://')[-1]}:{path}.git",
        "git_http_url": f"{instance}/{path}.git",
        "namespace": "group",
        "visibility_level": 0,
        "path_with_namespace": path,
        "default_branch": "main",
        "ci_config_path": None,
    }


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
) -> dict[str, Any]:
    """A Job hook body as GitLab sends it when job `build_id` reaches `status` at `now`.

    `tags` land in `runner.tags` and only when `runner_id` is given: that is where GitLab puts tags (the
    runner's), a job waiting for a runner carries none. Durations are in seconds.
    """
    job_status = JobStatus(status)
    times = _times(job_status, now, created_at, started_at, None)
    sha = _sha(pipeline_id)
    project = _project(project_id, instance)
    iso = {
        "created": format_gitlab_iso(times.created),
        "started": format_gitlab_iso(times.started) if times.started else None,
        "finished": format_gitlab_iso(times.finished) if times.finished else None,
    }
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
        "build_status": job_status.value,
        "build_created_at": iso["created"],
        "build_created_at_iso": format_gitlab_iso_seconds(times.created),
        "build_started_at": iso["started"],
        "build_started_at_iso": format_gitlab_iso_seconds(times.started) if times.started else None,
        "build_finished_at": iso["finished"],
        "build_finished_at_iso": format_gitlab_iso_seconds(times.finished) if times.finished else None,
        "build_duration": times.duration,
        "build_queued_duration": times.queued_duration,
        "build_allow_failure": False,
        "build_failure_reason": "script_failure" if job_status is JobStatus.FAILED else "unknown_failure",
        "pipeline_id": pipeline_id,
        "runner": _runner(runner_id, tags),
        "project_id": project_id,
        "project_name": f"Group / project-{project_id}",
        "user": dict(_USER),
        "commit": {
            "id": pipeline_id,
            "name": None,
            "sha": sha,
            "message": "Update .gitlab-ci.yml\n",
            "author_name": "Administrator",
            "author_email": "admin@example.com",
            "author_url": f"{instance}/root",
            "status": "running" if job_status in _STARTED else "pending",
            "duration": None,
            "started_at": None,
            "finished_at": None,
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


def _build_attrs(build: BuildSample, now: datetime) -> dict[str, Any]:
    status = JobStatus(build.status)
    times = _times(status, now, build.created_at, build.started_at, build.finished_at)
    return {
        "id": build.build_id,
        "stage": build.stage,
        "name": build.name,
        "status": status.value,
        "created_at": format_gitlab_legacy(times.created),
        "started_at": format_gitlab_legacy(times.started) if times.started else None,
        "finished_at": format_gitlab_legacy(times.finished) if times.finished else None,
        "duration": times.duration,
        "queued_duration": times.queued_duration,
        "failure_reason": "script_failure" if status is JobStatus.FAILED else None,
        "when": "manual" if status is JobStatus.MANUAL else "on_success",
        "manual": status is JobStatus.MANUAL,
        "allow_failure": False,
        "user": dict(_USER),
        "runner": _runner(build.runner_id, build.tags),
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
) -> dict[str, Any]:
    """A Pipeline hook body as GitLab sends it when pipeline `pipeline_id` reaches `status` at `now`.

    `stages` follow the order in which `builds` first name them; times use GitLab's "... UTC" spelling.
    """
    pipeline_status = JobStatus(status)
    created = created_at or min((b.created_at for b in builds if b.created_at), default=now)
    finished = now if pipeline_status in _FINISHED else None
    stages = list(dict.fromkeys(build.stage for build in builds))
    sha = _sha(pipeline_id)
    return {
        "object_kind": "pipeline",
        "object_attributes": {
            "id": pipeline_id,
            "iid": iid if iid is not None else pipeline_id,
            "name": None,
            "ref": ref,
            "tag": False,
            "sha": sha,
            "before_sha": "0" * 40,
            "source": source,
            "status": pipeline_status.value,
            "detailed_status": pipeline_status.value,
            "stages": stages,
            "created_at": format_gitlab_legacy(created),
            "finished_at": format_gitlab_legacy(finished) if finished else None,
            "duration": int((finished - created).total_seconds()) if finished else None,
            "queued_duration": None,
            "protected_ref": True,
            "variables": [],
            "url": f"{instance}/group/project-{project_id}/-/pipelines/{pipeline_id}",
        },
        "merge_request": None,
        "user": dict(_USER),
        "project": _project(project_id, instance),
        "commit": {
            "id": sha,
            "message": "Update .gitlab-ci.yml\n",
            "title": "Update .gitlab-ci.yml",
            "timestamp": created.isoformat(),
            "url": f"{instance}/group/project-{project_id}/-/commit/{sha}",
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
