"""Use case run by the tick: sweep what crashed Lambdas and lost events left behind.

Runners named `runner-scaler/<pool>/<instance>` whose instance is gone are deleted with their machine secret;
in-service instances whose runner never reached GitLab within `boot_timeout` (none recorded, or GitLab's
`never_contacted`) are terminated. Nothing is
declared orphan on one read: a suspicion must be seen again `orphan_confirm_after` later. No boto3 here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chalicelib.config import Config
from chalicelib.errors import AwsCallError, GitLabError
from chalicelib.fleet import Fleet, GroupView
from chalicelib.jobs import RUNNER_DESCRIPTION
from chalicelib.lifecycle import MachineSecrets, RunnerAdmin
from chalicelib.resources import Names
from chalicelib.store import Store

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    suspected: list[str] = field(default_factory=list)
    deleted_runners: list[int] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def sweep(
    config: Config,
    names: Names,
    store: Store,
    fleet: Fleet,
    gitlab: RunnerAdmin,
    secrets: MachineSecrets,
    groups: Mapping[str, GroupView],
    now: datetime,
) -> SweepReport:
    """Delete runners of vanished instances; terminate instances whose runner never came up."""
    report = SweepReport()
    live = {i.instance_id: g.asg for g in groups.values() for i in g.live_instances()}
    try:
        runners = gitlab.list_runners("runner-scaler/", **_scope(config))
    except GitLabError as exc:
        report.errors.append(str(exc))
        return report
    mute: set[str] = set()
    for runner in runners:
        match = RUNNER_DESCRIPTION.match(runner.description or "")
        if match is None:
            continue
        if runner.status == "never_contacted":
            mute.add(match["instance"])
        _sweep_runner(runner, match["instance"], live, config, names, store, gitlab, secrets, now, report)
    _sweep_silent_machines(config, store, fleet, groups, mute, now, report)
    return report


def _sweep_runner(
    runner: Any,
    instance_id: str,
    live: Mapping[str, str],
    config: Config,
    names: Names,
    store: Store,
    gitlab: RunnerAdmin,
    secrets: MachineSecrets,
    now: datetime,
    report: SweepReport,
) -> None:
    key = f"orphan-runner#{runner.id}"
    if instance_id in live:
        store.clear_suspect(key)
        return
    first = store.suspect(key, now)
    if now - first < config.scaler.orphan_confirm_after:
        report.suspected.append(instance_id)
        return
    try:
        if gitlab.runner_jobs(runner.id, "running"):
            return  # it still runs a job: an instance we cannot see is not proof it is gone
        gitlab.delete_runner(runner.id)
        secrets.delete_machine_secret(names.machine_secret(instance_id))
        store.delete_machine(instance_id)
    except (GitLabError, AwsCallError) as exc:
        report.errors.append(str(exc))
        return
    store.clear_suspect(key)
    report.deleted_runners.append(int(runner.id))
    logger.warning("deleted an orphaned runner", extra={"runner_id": runner.id, "instance_id": instance_id})


def _sweep_silent_machines(
    config: Config,
    store: Store,
    fleet: Fleet,
    groups: Mapping[str, GroupView],
    mute: set[str],
    now: datetime,
    report: SweepReport,
) -> None:
    """A machine in service past boot_timeout without a job never came up: replace it. That is a machine
    with no runner recorded, or one whose runner GitLab says never contacted it (`mute`: the user data
    failed, so its idle slot would be counted as capacity that takes no job)."""
    for pool in config.pools:
        group = groups.get(pool.asg)
        if group is None:
            continue
        records = {m.instance_id: m for m in store.machines(pool.name)}
        for instance in group.live_instances():
            record = records.get(instance.instance_id)
            if record is None or record.job_ids or record.draining_since:
                continue
            if record.runner_id is not None and instance.instance_id not in mute:
                continue
            if not instance.in_service or now - record.launched_at <= pool.boot_timeout:
                continue
            key = f"silent-machine#{instance.instance_id}"
            if now - store.suspect(key, now) < config.scaler.orphan_confirm_after:
                report.suspected.append(instance.instance_id)
                continue
            if store.start_draining(instance.instance_id, "stuck", now):
                try:
                    fleet.terminate(instance.instance_id)
                except AwsCallError as exc:
                    report.errors.append(str(exc))
                    continue
                report.terminated.append(instance.instance_id)
                store.clear_suspect(key)


def _scope(config: Config) -> dict[str, Any]:
    settings = config.gitlab
    return {
        "runner_type": settings.runner_type,
        "group_id": settings.group_id,
        "project_id": settings.project_id,
    }
