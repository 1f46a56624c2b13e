"""Decision latency and the drain window are measured on every reconcile and reach the pool's metrics."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from chalicelib import metrics
from chalicelib.aws import AwsClients
from chalicelib.reconcile import Reconciler, ReconcileResult
from tests.builders import T0
from tests.functional.test_reconcile import World, make_config


class SteppingTimer:
    """A monotonic clock that moves 0.25 s each time it is read: every measured span is a known count."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.reads * 0.25


def _emitted(capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    values = {
        m["Name"]: b[m["Name"]] for b in blobs for d in b["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]
    }
    return {name: v[0] if isinstance(v, list) else v for name, v in values.items()}


def test_a_drain_is_timed_from_pause_to_termination_and_reported(
    aws: AwsClients, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a machine that ran its one job (max_use_count = 1)
    world = World(aws, make_config())
    pool = world.config.pools[0]
    world.job(1, "pending")
    world.reconciler().reconcile_pool(pool, T0)
    (machine,) = world.instance_ids()
    world.job(1, "running", machine_id=machine, runner_id=11)
    world.reconciler().reconcile_pool(pool, T0 + timedelta(minutes=1))
    world.job(1, "success", machine_id=machine)
    # WHEN the pool is reconciled with a clock that ticks on every read
    timer = SteppingTimer()
    reconciler = Reconciler(world.config, world.store, world.fleet, world.runners, timer=timer)
    result = reconciler.reconcile_pool(pool, T0 + timedelta(minutes=2))
    capsys.readouterr()
    metrics.emit_reconcile(world.config, [result], aws_calls=0)
    # THEN the machine is drained and terminated, the window spans pause → terminate (one tick of the timer),
    # the reconcile spans its lease (start, window start, window end, finish: three ticks)
    assert result.terminated == [machine]
    assert result.drain_seconds == [0.25]
    assert result.seconds == 0.75
    emitted = _emitted(capsys)
    assert (emitted["DrainSeconds"], emitted["ReconcileSeconds"]) == (0.25, 0.75)
    assert (emitted["InService"], emitted["MachinesBooting"]) == (1, 0)  # seen in service, then drained


def test_a_reconcile_without_drains_reports_no_drain_window(
    aws: AwsClients, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World(aws, make_config())
    world.job(1, "pending")
    reconciler = Reconciler(world.config, world.store, world.fleet, world.runners, timer=SteppingTimer())
    outcome = reconciler.reconcile_pool(world.config.pools[0], T0)
    capsys.readouterr()
    metrics.emit_reconcile(world.config, [outcome], aws_calls=0)
    emitted = _emitted(capsys)
    assert outcome.drain_seconds == [] and "DrainSeconds" not in emitted
    assert emitted["ReconcileSeconds"] == 0.25


def test_in_service_counts_machines_past_their_boot(capsys: pytest.CaptureFixture[str]) -> None:
    seen = ReconcileResult("linux", T0, machines={"booting": 2, "idle": 1, "busy": 3, "draining": 1})
    metrics.emit_reconcile(make_config(), [seen], aws_calls=0)
    emitted = _emitted(capsys)
    assert (emitted["InService"], emitted["MachinesBooting"]) == (5, 2)
