"""`runner-scaler plan`: the reconcile plan of the deployed pools, as a dry run through the operator CLI on
moto, with nothing written: the table's items and the groups are the same after it as before."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from chalicelib.eligibility import Eligibility
from chalicelib.events.timestamps import utc_now
from chalicelib.gitlab import ProjectInfo
from chalicelib.reconcile import Reconciler
from chalicelib.resources import Names
from chalicelib.store import JobRecord
from tests.functional.conftest import FIXTURES, Stack, describe_group
from toolkit.cli.main import app

CONFIG = str(FIXTURES / "scaler.toml")


def table_items(stack: Stack) -> list[dict[str, Any]]:
    items = stack.aws.call("dynamodb", "scan", TableName=Names("test").table, ConsistentRead=True)["Items"]
    return sorted(items, key=repr)


def groups(stack: Stack) -> list[dict[str, Any]]:
    return [describe_group(stack.aws, asg) for asg in ("test-linux", "test-gpu")]


def test_plan_prints_each_pools_plan_and_changes_nothing(stack: Stack) -> None:
    rt = stack.runtime
    # GIVEN a deployment with two jobs that just turned pending in "linux" and two in the on-demand pool
    # "gpu" (just: the CLI reads the wall clock, as the operator's machine has it)
    for job_id, pool in ((1, "linux"), (2, "linux"), (3, "gpu"), (4, "gpu")):
        rt.store.record_job(JobRecord(rt.gitlab_host, job_id, "pending", pool=pool), utc_now())
    before = (table_items(stack), groups(stack))
    # WHEN the operator asks for the plan of the deployment named by RUNNER_SCALER_PREFIX
    result = CliRunner().invoke(app, ["plan", "-c", CONFIG, "--json"], env={"RUNNER_SCALER_PREFIX": "test"})
    # THEN each pool's plan is printed: more capacity for the pending jobs, gpu's warm pool to put
    assert result.exit_code == 0, result.output
    plans = {p["pool"]: p for p in json.loads(result.stdout)}
    assert plans["linux"]["desired_before"] == 0 and plans["linux"]["desired"] >= 1
    assert plans["gpu"]["warm_pool"].startswith("put 2 (")
    # AND nothing changed: no job, machine, lease or cache item, and the groups as they were
    assert (table_items(stack), groups(stack)) == before


def test_plan_of_one_pool_as_text(stack: Stack) -> None:
    rt = stack.runtime
    rt.store.record_job(JobRecord(rt.gitlab_host, 1, "pending", pool="linux"), rt.now())
    # WHEN the plan of "linux" only is asked for, as text
    result = CliRunner().invoke(app, ["plan", "-c", CONFIG, "--pool", "linux", "--prefix", "test"])
    # THEN it names that pool's desired change, and no other pool
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("linux: desired 0 -> 1")
    assert "gpu" not in result.stdout
    # AND an unknown pool is refused with the ones the config has
    unknown = CliRunner().invoke(app, ["plan", "-c", CONFIG, "--pool", "nope", "--prefix", "test"])
    assert unknown.exit_code == 2 and "linux, gpu" in unknown.output


class Projects:
    """GitLab's `GET /projects/:id`, as the eligibility check reads it."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def get_project(self, project_id: int) -> ProjectInfo:
        self.asked.append(project_id)
        return ProjectInfo(project_id, f"other/project-{project_id}", shared_runners_enabled=False)

    def group_path(self, group_id: int) -> str:
        return "ours"


def test_a_dry_run_caches_no_project_facts(stack: Stack) -> None:
    rt = stack.runtime
    # GIVEN instance runners, and a pending job of a project whose settings GitLab must be asked for
    settings = stack.config.gitlab.model_copy(update={"runner_type": "instance_type"})
    rt.store.record_job(JobRecord(rt.gitlab_host, 1, "pending", pool="linux", project_id=42), rt.now())
    projects = Projects()
    eligibility = Eligibility(settings, rt.store, projects, rt.gitlab_host)
    reconciler = Reconciler(stack.config, rt.store, rt.fleet, eligibility=eligibility, warm_pools=rt.fleet)
    before = table_items(stack)
    # WHEN the pool is reconciled as a dry run
    result = reconciler.reconcile_pool(stack.config.pool("linux"), rt.now(), dry_run=True)
    # THEN GitLab was asked, the job counted as unpickable (the project takes no instance runner)...
    assert projects.asked == [42] and result.unpickable == 1
    # ...and the facts were not cached: the table holds exactly what it held
    assert table_items(stack) == before
    # AND a real reconcile caches them
    reconciler.reconcile_pool(stack.config.pool("linux"), rt.now())
    assert any("project#" in repr(item) for item in table_items(stack))
