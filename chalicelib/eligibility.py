"""Which pending jobs this deployment's runners can ever take, so demand never counts the others.

GitLab gives a runner only jobs it may pick (gitlabhq app/services/ci/register_job_service.rb `each_build`,
app/services/ci/queue/build_queue_service.rb): an instance runner only jobs of projects with shared runners
enabled (`builds_for_shared_runner`: `where(projects: { shared_runners_enabled: true })`,
app/services/ci/queue/builds_table_strategy.rb), a group runner only jobs of projects in its group or a
subgroup (`builds_for_group_runner`), a project runner only its project's (`builds_for_project_runner`).
A protected runner (`access_level: ref_protected`) takes only protected refs (Ci::Runner#can_pick?,
app/models/ci/runner.rb); the scaler creates its runners `not_protected`, explicitly (chalicelib.gitlab
`create_runner`), so that rule never excludes a job here. A per-pool `ref_protected` option is not offered:
the Job hook carries the job's `ref` but no protected flag (gitlabhq lib/gitlab/data_builder/build.rb); only
the Pipeline hook has `object_attributes.protected_ref` (lib/gitlab/data_builder/pipeline.rb), and pipeline
events are not required of the hooks.

The project facts come from GitLab once per project (`GET /projects/:id`) and are cached in the store for
FACTS_TTL, never asked per job. Imports config, the store Protocol and the GitLab adapter's dataclasses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from chalicelib.config import GitLabConfig
from chalicelib.errors import GitLabError
from chalicelib.store import Store

logger = logging.getLogger(__name__)

#: How long a project's settings are trusted: a project that turns shared runners on is served within it.
FACTS_TTL = timedelta(hours=1)

#: Project lookups one reconcile may make (GitLab.com allows 400 `GET /projects/:id` a minute per user);
#: a project not looked up yet counts as pickable until a later reconcile learns it.
MAX_LOOKUPS = 20


class ProjectsApi(Protocol):
    def get_project(self, project_id: int) -> Any: ...

    def group_path(self, group_id: int) -> str: ...


@dataclass(frozen=True)
class ProjectFacts:
    """What decides whether our runners may take a project's jobs."""

    project_id: int
    path_with_namespace: str
    shared_runners_enabled: bool


def unpickable_reason(settings: GitLabConfig, facts: ProjectFacts, group_path: str | None) -> str | None:
    """Why the deployment's runners can never take this project's jobs, or None when they can. Pure."""
    if settings.runner_type == "instance_type" and not facts.shared_runners_enabled:
        return "shared runners disabled"
    if settings.runner_type == "project_type" and facts.project_id != settings.project_id:
        return "another project"
    outside = group_path is not None and not facts.path_with_namespace.startswith(group_path + "/")
    if settings.runner_type == "group_type" and outside:
        return "outside the runners' group"
    return None


@dataclass
class Eligibility:
    """Splits a pool's pending jobs into those our runners may pick and those they never can."""

    settings: GitLabConfig
    store: Store
    gitlab: ProjectsApi
    gitlab_host: str
    max_lookups: int = MAX_LOOKUPS
    lookups: int = field(default=0, init=False)

    def unpickable(self, project_ids: Iterable[int], now: datetime, *, cache: bool = True) -> dict[int, str]:
        """project id -> reason, for the given projects whose jobs our runners can never take. `cache` False
        (a dry run) reads the cached facts but writes none of those it had to ask GitLab for."""
        if self.settings.runner_type == "project_type":
            return {p: "another project" for p in set(project_ids) if p != self.settings.project_id}
        self.lookups = 0
        group_path = self._group_path(now, cache) if self.settings.runner_type == "group_type" else None
        reasons: dict[int, str] = {}
        for project_id in sorted(set(project_ids)):
            facts = self._facts(project_id, now, cache)
            reason = unpickable_reason(self.settings, facts, group_path) if facts else None
            if reason is not None:
                reasons[project_id] = reason
        return reasons

    def _facts(self, project_id: int, now: datetime, cache: bool) -> ProjectFacts | None:
        key = f"project#{self.gitlab_host}#{project_id}"
        cached = self.store.get_facts(key, now)
        if cached is None:
            if self.lookups >= self.max_lookups:
                return None
            self.lookups += 1
            try:
                info = self.gitlab.get_project(project_id)
            except GitLabError as exc:  # unknown stays pickable: a wasted machine beats a starved job
                logger.warning(
                    "project settings unknown", extra={"project_id": project_id, "error": str(exc)}
                )
                return None
            cached = {"path": info.path_with_namespace, "shared_runners": bool(info.shared_runners_enabled)}
            if cache:
                self.store.put_facts(key, cached, now + FACTS_TTL)
        return ProjectFacts(project_id, str(cached["path"]), bool(cached["shared_runners"]))

    def _group_path(self, now: datetime, cache: bool) -> str | None:
        group_id = self.settings.group_id
        if group_id is None:
            return None
        key = f"group#{self.gitlab_host}#{group_id}"
        cached = self.store.get_facts(key, now)
        if cached is None:
            try:
                path = self.gitlab.group_path(int(group_id))
            except GitLabError as exc:
                logger.warning("runner group path unknown", extra={"group_id": group_id, "error": str(exc)})
                return None
            cached = {"path": path}
            if cache:
                self.store.put_facts(key, cached, now + FACTS_TTL)
        return str(cached["path"]) or None
