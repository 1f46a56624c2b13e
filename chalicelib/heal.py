"""Use case run by the tick: repair what lost, late or duplicate webhooks left in the job store.

Two repairs, both bounded per tick: (1) active jobs not heard of for a while are looked up in GitLab and
moved forward (or closed when GitLab no longer has them); (2) pending jobs no webhook announced are found by
listing pending jobs of known projects, at a slow interval shared by all containers. Imports adapters'
Protocols, config and the routing rule; no boto3.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from chalicelib.capacity import pool_for_tags
from chalicelib.config import Config
from chalicelib.errors import GitLabError, GitLabNotFoundError
from chalicelib.jobs import DirtyMarker
from chalicelib.store import ACTIVE, JobRecord, Store, rank

logger = logging.getLogger(__name__)

#: Projects with jobs in this window are searched for jobs no webhook announced.
PROJECT_WINDOW = timedelta(days=7)

#: Project job lists (`GET /projects/:id/jobs?scope[]=pending`) one lost-job scan may ask for. GitLab.com
#: allows 600 of these a minute per user (docs "GitLab.com settings", rate limits: project jobs API, the
#: `project_jobs_api_rate_limit` application setting). A scan runs at most once per
#: `lost_job_scan_interval` (>= 1 minute) across all containers, and a project with up to 100 pending jobs
#: is one request (per_page 100); so 100 lists use a sixth of a minute's allowance, leaving the rest to the
#: tick's job lookups (`max_lookups`, same endpoint family) and to anything else using the token. With more
#: known projects than that, successive scans take the next 100 in turn (every project within
#: ceil(projects / 100) scans). The first 429 ends the scan: the adapter holds the endpoint off anyway.
MAX_SCAN_LISTS = 100


class JobsApi(Protocol):
    def get_job(self, project_id: int, job_id: int) -> Any: ...

    def list_jobs(self, project_id: int, scope: Sequence[str] = ("pending",)) -> list[Any]: ...

    def group_projects(self, group_id: int, *, include_subgroups: bool = True) -> list[Any]: ...


@dataclass
class HealReport:
    refreshed: list[int] = field(default_factory=list)  # job ids moved forward from GitLab's answer
    closed: list[int] = field(default_factory=list)  # job ids GitLab no longer has
    discovered: list[int] = field(default_factory=list)  # pending job ids no webhook announced
    long_pending: dict[str, int] = field(default_factory=dict)  # pool -> jobs pending too long
    scanned_projects: int = 0
    errors: list[str] = field(default_factory=list)
    #: Each pool's jobs as heal read them, for the pools it wrote no job of (refreshed, closed, discovered):
    #: the same tick's reconcile takes this list instead of reading the pool's jobs again.
    unchanged: dict[str, tuple[JobRecord, ...]] = field(default_factory=dict)


def heal(
    config: Config,
    store: Store,
    gitlab: JobsApi,
    dirty: DirtyMarker,
    now: datetime,
    *,
    gitlab_host: str,
    max_lookups: int = 50,
    max_scan_lists: int = MAX_SCAN_LISTS,
    scan_claimed: bool | None = None,
) -> HealReport:
    """Refresh stale jobs (at most `max_lookups` job lookups), then, once per scan interval across all
    containers, discover lost ones (at most `max_scan_lists` project job lists: see MAX_SCAN_LISTS).

    `scan_claimed`: whether the caller already claimed this scan window (the tick claims all its periodic
    steps in one write, `Store.claim_windows`); None claims it here."""
    report = HealReport()
    projects: set[int] = set()
    lookups = 0
    for pool in config.pools:
        jobs = store.pool_jobs(pool.name)
        projects.update(j.project_id for j in jobs if j.project_id)
        changed = len(report.refreshed) + len(report.closed)
        for job in _stale(jobs, now, config.gitlab.stale_job_after):
            if lookups >= max_lookups:
                break
            lookups += 1
            _refresh(job, store, gitlab, dirty, now, report)
        if len(report.refreshed) + len(report.closed) == changed:
            report.unchanged[pool.name] = tuple(jobs)
        waiting = [j for j in jobs if j.status == "pending" and _age(j, now) > config.gitlab.stale_job_after]
        if waiting:
            report.long_pending[pool.name] = len(waiting)
    if projects:
        store.note_projects(gitlab_host, projects, now)
    scan = scan_window(config, now)
    if scan_claimed is None:
        scan_claimed = store.first_seen(f"lost-job-scan#{gitlab_host}#{scan}", now)
    if scan_claimed:
        _discover(config, store, gitlab, dirty, now, gitlab_host, report, turn=(scan, max_scan_lists))
    return report


def scan_window(config: Config, now: datetime) -> int:
    """The number of the lost-job scan window `now` falls in (`lost_job_scan_interval`, at least a minute)."""
    return int(now.timestamp()) // max(60, int(config.gitlab.lost_job_scan_interval.total_seconds()))


def _share(projects: Sequence[int], scan: int, budget: int) -> list[int]:
    """This scan's turn of the projects: `budget` of them, starting where the previous scan stopped."""
    if len(projects) <= budget:
        return list(projects)
    start = (scan * budget) % len(projects)
    return [projects[(start + i) % len(projects)] for i in range(budget)]


def _age(job: JobRecord, now: datetime) -> timedelta:
    seen = job.updated_at or job.created_at or now
    return now - seen


def _stale(jobs: Sequence[JobRecord], now: datetime, after: timedelta) -> list[JobRecord]:
    stale = [j for j in jobs if j.status in ACTIVE and _age(j, now) > after]
    return sorted(stale, key=lambda j: (j.updated_at or now, j.job_id))


def _refresh(
    job: JobRecord, store: Store, gitlab: JobsApi, dirty: DirtyMarker, now: datetime, report: HealReport
) -> None:
    try:
        info = gitlab.get_job(job.project_id, job.job_id)
    except GitLabNotFoundError:
        store.record_job(_with(job, "canceled", finished_at=now), now)
        report.closed.append(job.job_id)
        dirty.mark_dirty(job.pool, f"job {job.job_id} gone from GitLab", now)
        return
    except GitLabError as exc:
        report.errors.append(str(exc))
        return
    status = str(info.status)
    if rank(status) > rank(job.status):
        updated = _with(job, status, started_at=info.started_at, finished_at=info.finished_at)
        if store.record_job(updated, now):
            report.refreshed.append(job.job_id)
            dirty.mark_dirty(job.pool, f"job {job.job_id} {status} (from GitLab)", now)


def _with(job: JobRecord, status: str, **times: datetime | None) -> JobRecord:
    return JobRecord(
        gitlab=job.gitlab,
        job_id=job.job_id,
        status=status,
        project_id=job.project_id,
        pipeline_id=job.pipeline_id,
        pool=job.pool,
        tags=job.tags,
        runner_id=job.runner_id,
        machine_id=job.machine_id,
        name=job.name,
        stage=job.stage,
        created_at=job.created_at,
        started_at=times.get("started_at") or job.started_at,
        finished_at=times.get("finished_at") or job.finished_at,
    )


def _discover(
    config: Config,
    store: Store,
    gitlab: JobsApi,
    dirty: DirtyMarker,
    now: datetime,
    gitlab_host: str,
    report: HealReport,
    *,
    turn: tuple[int, int],
) -> None:
    """Pending jobs of known projects that the store has never seen, or holds without a pool (GitLab could
    not tell their tags when their hook came), become pending jobs of their pool. `turn` is (scan number,
    project lists allowed): which share of the known projects this scan lists."""
    scan, budget = turn
    for project_id in _share(_projects(config, store, gitlab, now, gitlab_host, report), scan, budget):
        try:
            pending = gitlab.list_jobs(project_id, ("pending",))
        except GitLabError as exc:
            report.errors.append(str(exc))
            if exc.status == 429:
                break  # GitLab asked to wait: the rest of this turn waits for the next scan
            continue
        report.scanned_projects += 1
        for info in pending:
            known = store.get_job(gitlab_host, int(info.id))
            pool = pool_for_tags(tuple(info.tag_list or ()), config.pools)
            if known is not None and known.status != "skipped" and (known.pool or pool is None):
                continue  # already routed, or not ours (another runner's tags): nothing to write
            record = JobRecord(
                gitlab=gitlab_host,
                job_id=int(info.id),
                status="pending",
                project_id=project_id,
                pipeline_id=int(info.pipeline_id or 0),
                pool=pool.name if pool else "",
                tags=tuple(info.tag_list or ()),
                name=str(info.name or ""),
                stage=str(info.stage or ""),
                created_at=info.created_at,
            )
            reopen = known is not None and known.status == "skipped"
            written = store.reopen_skipped(record, now) if reopen else store.record_job(record, now)
            if written and pool is not None:
                report.unchanged.pop(pool.name, None)
                report.discovered.append(int(info.id))
                dirty.mark_dirty(pool.name, f"job {info.id} found pending by the tick", now)
                logger.warning("found a pending job no webhook announced", extra={"job_id": info.id})


def _projects(
    config: Config, store: Store, gitlab: JobsApi, now: datetime, gitlab_host: str, report: HealReport
) -> list[int]:
    projects = {int(p) for p in config.gitlab.projects if isinstance(p, int) or str(p).isdigit()}
    for group in config.gitlab.groups:
        if not (isinstance(group, int) or str(group).isdigit()):
            continue
        try:
            projects.update(int(p.id) for p in gitlab.group_projects(int(group)))
        except GitLabError as exc:
            report.errors.append(str(exc))
    projects.update(store.recent_projects(gitlab_host, now, PROJECT_WINDOW))
    return sorted(projects)
