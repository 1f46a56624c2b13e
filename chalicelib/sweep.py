"""Use case run by the tick: sweep what crashed Lambdas, lost events and outside deletions left behind.

Runners are known by the id stored with their machine, never by their description (users may edit it, and two
deployments on one GitLab name theirs alike): only runners this deployment recorded are ever deleted.
- A recorded runner whose instance is gone is deleted with its machine secret and record.
- A live machine in service past `boot_timeout` whose runner never reached GitLab (none recorded, or GitLab's
  `never_contacted`) is marked for removal ("stuck").
- A live machine whose runner GitLab no longer has (deleted outside the scaler, or by GitLab's stale-runner
  cleanup) is marked for removal ("runner-gone"): its `run-single` would otherwise ask for jobs forever.
The sweep terminates no machine itself: it marks it draining with its reason (only if its record shows no
job), and the pool's reconcile plans that removal with the others and runs it through the one drain protocol
(chalicelib.drain: pause, re-check in GitLab, terminate).
Nothing is acted on from one read: a suspicion must be seen again `orphan_confirm_after` later, and the record
is read again consistently before anything is removed (the pool index may be stale). No boto3 here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chalicelib.config import Config, Pool
from chalicelib.drain import runner_gone
from chalicelib.errors import AwsCallError, GitLabError
from chalicelib.fleet import GroupView, Instance
from chalicelib.lifecycle import MachineSecrets
from chalicelib.resources import Names
from chalicelib.store import MachineRecord, Store

if TYPE_CHECKING:
    from chalicelib.gitlab import GitLabApi

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    suspected: list[str] = field(default_factory=list)
    deleted_runners: list[int] = field(default_factory=list)
    #: Machines marked for removal (draining, with the reason): the pool's reconcile plans and drains them.
    marked: list[str] = field(default_factory=list)
    #: Jobs GitLab still shows running on a runner whose machine is gone: they cannot finish.
    stranded_jobs: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Sweep:
    config: Config
    names: Names
    store: Store
    gitlab: GitLabApi
    secrets: MachineSecrets
    now: datetime
    report: SweepReport

    def seen_twice(self, key: str, subject: str) -> bool:
        """True once the suspicion `key` was first noted at least `orphan_confirm_after` ago."""
        if self.now - self.store.suspect(key, self.now) < self.config.scaler.orphan_confirm_after:
            self.report.suspected.append(subject)
            return False
        return True


def sweep(
    config: Config,
    names: Names,
    store: Store,
    gitlab: GitLabApi,
    secrets: MachineSecrets,
    groups: Mapping[str, GroupView],
    now: datetime,
) -> SweepReport:
    """Delete this deployment's runners of vanished instances; mark for removal the machines whose runner
    never came up or is gone from GitLab. Reads the groups it is given and ends no machine: the reconcile
    terminates what it marked, so it takes no fleet."""
    report = SweepReport()
    live = {i.instance_id for g in groups.values() for i in g.live_instances()}
    try:
        # Every runner in scope, whatever its description: runners are matched by the ids we stored.
        runners = {int(r.id): r for r in gitlab.list_runners("", **_scope(config))}
    except GitLabError as exc:
        report.errors.append(str(exc))
        return report
    run = _Sweep(config, names, store, gitlab, secrets, now, report)
    for pool in config.pools:
        group = groups.get(pool.asg)
        if group is None:
            continue  # a group we could not read says nothing about its instances
        records = store.machines(pool.name)
        for record in records:
            if record.instance_id not in live and record.runner_id is not None:
                _sweep_orphan(run, record)
        by_id = {r.instance_id: r for r in records}
        for instance in group.live_instances():
            known = by_id.get(instance.instance_id)
            if known is not None:
                _sweep_machine(run, pool, instance, known, runners)
    return report


def _sweep_orphan(run: _Sweep, record: MachineRecord) -> None:
    """The runner of an instance that is gone: delete it (and the machine's secret and record) once sure."""
    runner_id = record.runner_id
    assert runner_id is not None
    key = f"orphan-runner#{runner_id}"
    if not run.seen_twice(key, record.instance_id):
        return
    fresh = run.store.get_machine(record.instance_id)
    if fresh is None or fresh.runner_id != runner_id:
        run.store.clear_suspect(key)
        return
    try:
        try:
            running = run.gitlab.runner_jobs(runner_id, "running")
        except GitLabError as exc:
            if not runner_gone(exc):
                raise
            running = []
        if running:
            # Its machine is gone, so these jobs cannot finish: report them (GitLab fails them once the
            # runner stops updating them). The runner is deleted at a later sweep, when they have ended.
            run.report.stranded_jobs.extend(int(j.id) for j in running)
            logger.warning(
                "jobs still running on the runner of a vanished machine",
                extra={
                    "runner_id": runner_id,
                    "instance_id": record.instance_id,
                    "jobs": [j.id for j in running],
                },
            )
            return
        run.gitlab.delete_runner(runner_id)
        run.secrets.delete_machine_secret(run.names.machine_secret(record.instance_id))
        run.store.delete_machine(record.instance_id)
    except (GitLabError, AwsCallError) as exc:
        run.report.errors.append(str(exc))
        return
    run.store.clear_suspect(key)
    run.report.deleted_runners.append(runner_id)
    logger.warning(
        "deleted an orphaned runner", extra={"runner_id": runner_id, "instance_id": record.instance_id}
    )


def _sweep_machine(
    run: _Sweep, pool: Pool, instance: Instance, record: MachineRecord, runners: Mapping[int, Any]
) -> None:
    """A live machine that cannot serve a job: its runner never came up, or GitLab no longer has it."""
    if record.draining_since is not None or not instance.in_service:
        return
    runner = runners.get(record.runner_id) if record.runner_id is not None else None
    if record.runner_id is not None and runner is None:
        _sweep_runner_gone(run, instance.instance_id, record.runner_id)
        return
    silent = runner is None or runner.status == "never_contacted"
    if not silent or record.job_ids or run.now - record.launched_at <= pool.boot_timeout:
        return
    key = f"silent-machine#{instance.instance_id}"
    if not run.seen_twice(key, instance.instance_id):
        return
    fresh = run.store.get_machine(instance.instance_id)  # the index may be stale: the record decides
    if fresh is None or fresh.job_ids or fresh.runner_id != record.runner_id:
        run.store.clear_suspect(key)
        return
    if _mark_for_removal(run, instance.instance_id, "stuck"):
        run.store.clear_suspect(key)


def _sweep_runner_gone(run: _Sweep, instance_id: str, runner_id: int) -> None:
    """GitLab's listing lacks the machine's runner. It may have been deleted (then `run-single` loops on
    403s, logging "Runner is not healthy!" and sleeping, forever: gitlab-runner `commands/single.go`,
    `processBuild`; `common.NotHealthyCheckInterval` is 300 s), or the listing missed it: GitLab says
    which, by a 404 on the runner itself, before the machine is marked for removal."""
    key = f"runner-gone#{runner_id}"
    if not run.seen_twice(key, instance_id):
        return
    try:
        run.gitlab.runner_jobs(runner_id, "running")
    except GitLabError as exc:
        if not runner_gone(exc):
            run.report.errors.append(str(exc))
            return
        if _mark_for_removal(run, instance_id, "runner-gone"):
            run.store.clear_suspect(key)
        return
    run.store.clear_suspect(key)  # it exists: the listing missed it


def _mark_for_removal(run: _Sweep, instance_id: str, reason: str) -> bool:
    """Step 1 of the drain protocol (chalicelib.drain): mark the machine draining with `reason`, only if its
    record shows no job. The pool's reconcile plans every draining machine's removal and drains it (pause,
    re-check in GitLab, terminate): one terminate path. True when the machine is marked."""
    try:
        record = run.store.start_draining(instance_id, reason, run.now)
    except AwsCallError as exc:
        run.report.errors.append(str(exc))
        return False
    if record is None:
        return False  # a job landed on it since the index was read: it can serve, so it stays
    run.report.marked.append(instance_id)
    logger.warning("machine marked for removal", extra={"instance_id": instance_id, "reason": reason})
    return True


def _scope(config: Config) -> dict[str, Any]:
    settings = config.gitlab
    return {
        "runner_type": settings.runner_type,
        "group_id": settings.group_id,
        "project_id": settings.project_id,
    }
