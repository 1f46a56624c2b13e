"""`runner-scaler status` reads the same state as the Lambda: pools, machines by state, jobs by state."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from chalicelib.store import JobRecord
from tests.functional.conftest import FIXTURES, Stack
from toolkit.cli.main import app
from toolkit.status import snapshot


def test_status_counts_machines_and_jobs_per_pool(stack: Stack) -> None:
    rt = stack.runtime
    for n in (1, 2):
        rt.store.record_job(JobRecord(rt.gitlab_host, n, "pending", pool="linux"), rt.now())
    rt.reconciler("test").reconcile_pool(stack.config.pool("linux"), rt.now())
    machine = sorted(i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].instances)[0]
    rt.reconciler("test").reconcile_pool(
        stack.config.pool("linux"), stack.advance(minutes=1)
    )  # adopt + ready
    rt.store.record_job(JobRecord(rt.gitlab_host, 1, "running", pool="linux", machine_id=machine), rt.now())
    rt.reconciler("test").reconcile_pool(stack.config.pool("linux"), stack.advance(minutes=1))
    rows = {r.pool: r for r in snapshot(stack.config, rt.store, rt.fleet, rt.now())}
    linux = rows["linux"]
    assert (linux.desired, linux.in_service, linux.busy, linux.idle) == (2, 2, 1, 1)
    assert (linux.pending_jobs, linux.running_jobs) == (1, 1)
    assert rows["gpu"].desired == 0 and rows["gpu"].faults == ()


# -- the CLI, as an operator runs it ------------------------------------------------------------------

CONFIG = str(FIXTURES / "scaler.toml")


def test_status_reads_the_deployment_named_by_runner_scaler_prefix(stack: Stack) -> None:
    # GIVEN a deployment with prefix "test"; WHEN status runs with RUNNER_SCALER_PREFIX=test and no --prefix
    result = CliRunner().invoke(app, ["status", "-c", CONFIG, "--json"], env={"RUNNER_SCALER_PREFIX": "test"})
    # THEN it reads that deployment's table and groups
    assert result.exit_code == 0, result.output
    assert {row["pool"] for row in json.loads(result.stdout)} == {p.name for p in stack.config.pools}


def test_status_names_the_table_it_could_not_find(stack: Stack) -> None:
    result = CliRunner().invoke(app, ["status", "-c", CONFIG, "--prefix", "prod"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert (
        'table "prod-state" not found in us-east-1: prefix "prod" (--prefix or RUNNER_SCALER_PREFIX)' in text
    )
    assert "Traceback" not in result.output


def test_status_exits_non_zero_when_a_pools_group_is_missing(stack: Stack) -> None:
    # GIVEN the gpu pool's Auto Scaling group is gone (never deployed, or its asg misspelt)
    stack.aws.call(
        "autoscaling", "delete_auto_scaling_group", AutoScalingGroupName="test-gpu", ForceDelete=True
    )
    # WHEN status runs THEN it still shows every pool, names the missing group, and exits 1
    result = CliRunner().invoke(app, ["status", "-c", CONFIG, "--prefix", "test", "--json"])
    assert result.exit_code == 1
    rows = {row["pool"]: row for row in json.loads(result.stdout)}
    assert rows["gpu"]["group_missing"] is True and rows["linux"]["group_missing"] is False
    assert 'Auto Scaling group not found in us-east-1: "test-gpu" (pool gpu)' in " ".join(
        result.output.split()
    )


def test_status_table_keeps_whole_names_when_stdout_is_not_a_terminal(stack: Stack) -> None:
    """In a log or a CI job rich cannot ask a terminal for its width: the table must not be cut at 80."""
    # GIVEN a deployment; WHEN status prints its table to a pipe (CliRunner's output is not a terminal)
    result = CliRunner().invoke(app, ["status", "-c", CONFIG, "--prefix", "test"], env={"COLUMNS": None})
    # THEN every pool name and every column header is whole, on one line
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for pool in stack.config.pools:
        assert any(f" {pool.name} " in line for line in lines), (pool.name, result.output)
    header = next(line for line in lines if " pool " in line)
    columns = ("platform", "desired", "in service", "booting", "draining", "pending", "running", "faults")
    for column in columns:
        assert f" {column} " in header, (column, result.output)
    assert "…" not in result.output
