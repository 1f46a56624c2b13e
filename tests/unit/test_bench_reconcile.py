"""The reconcile benchmark on a tiny fleet: its counts are the real adapters' counts, its fleet's
decisions are right at scale (busy machines stay, used-up and idle ones go, bursting pools grow), inline
and fanned out alike, and its results file has the figures the issue asks for. Behaviour only: no figure
of CPU time is asserted."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from chalicelib.store import DynamoStore
from sim.bench_reconcile import TABLE, Bench, Shape, Tick, layout, run
from sim.fake_aws import T0

SMALL = Shape("3x100", 3, 100)  # every kind of MIX at least once per pool


@pytest.fixture(scope="module")
def scale_tick() -> tuple[Bench, Tick]:
    bench = Bench.build(SMALL)
    return bench, bench.tick()


def test_busy_machine_is_never_terminated_at_scale(scale_tick: tuple[Bench, Tick]) -> None:
    # GIVEN a seeded fleet with busy, used-up, stuck, draining and long-idle machines
    bench, tick = scale_tick
    terminated = set(tick.terminated)
    # THEN no machine with a job went, and every machine that had to go went
    assert bench.seeded.busy
    assert not terminated & bench.seeded.busy
    assert bench.seeded.must_go <= terminated


def test_quiet_pools_shed_idle_machines_and_bursting_pools_grow(scale_tick: tuple[Bench, Tick]) -> None:
    bench, tick = scale_tick
    terminated = set(tick.terminated)
    for result in tick.results:
        pool = bench.seeded.config.pools[int(result.pool.rsplit("-", 1)[1])]
        group = bench.fake.state.groups[pool.asg]
        # THEN the group's desired capacity is what the reconciler decided, within max_instances
        assert group.desired == result.desired_after <= pool.max_instances
        if pool.name in bench.seeded.bursting:
            assert result.launched > 0 and result.desired_after > result.desired_before
            assert not bench.seeded.idle_old[pool.name] & terminated  # needed for the pending jobs
        else:
            assert result.launched == 0
            assert bench.seeded.idle_old[pool.name] <= terminated
    assert not tick.errors


def test_calls_are_the_real_adapters_counts_by_operation(scale_tick: tuple[Bench, Tick]) -> None:
    bench, tick = scale_tick
    calls = tick.aws_calls
    # one batched read of the groups, two queries (machines, jobs) and a lease per pool, the pool's faults
    # coming with its lease (no query of their own); launch times only for the instances without a record
    # (a lost launch event), one read per pool that has any
    assert calls["autoscaling.DescribeAutoScalingGroups"] == 1
    assert layout(SMALL.machines).count("orphan") > 0
    assert calls["ec2.DescribeInstances"] == SMALL.pools
    assert calls["dynamodb.Query"] == 2 * SMALL.pools
    assert calls["dynamodb.UpdateItem"] >= 2 * SMALL.pools  # the lease taken and given back
    assert calls["autoscaling.TerminateInstanceInAutoScalingGroup"] == len(tick.terminated)
    assert calls["autoscaling.SetDesiredCapacity"] == len(bench.seeded.bursting)
    assert calls["autoscaling.SetInstanceProtection"] == SMALL.pools  # each pool has an unprotected one
    # every removal was re-checked with GitLab before its instance was terminated
    assert tick.gitlab_calls["gitlab.runner_jobs"] == len(tick.terminated)


def test_converged_fleet_writes_nothing_but_its_leases() -> None:
    # GIVEN a fleet ticked until it settled
    bench = Bench.build(SMALL)
    for _ in range(3):
        bench.tick()
    # WHEN it ticks again at the same instant
    tick = bench.tick()
    # THEN it reads, takes and gives back each pool's lease, and changes nothing
    assert tick.writes == 2 * SMALL.pools
    assert not tick.launched and not tick.terminated
    assert set(tick.aws_calls) == {
        "autoscaling.DescribeAutoScalingGroups",
        "dynamodb.Query",
        "dynamodb.UpdateItem",
    }
    assert tick.aws_calls["dynamodb.Query"] == 2 * SMALL.pools


def test_fanned_out_minute_decides_as_the_inline_tick_one_pool_per_invocation() -> None:
    # GIVEN two copies of the seeded fleet
    inline, fanned = Bench.build(SMALL), Bench.build(SMALL)
    # WHEN one ticks inline and the other fans out
    tick, minute = inline.tick(), fanned.fan_out()
    # THEN the tick's own invocation only queues (one message per pool, ten per call)...
    assert dict(minute.tick.aws_calls) == {"sqs.SendMessageBatch": 1}
    assert fanned.fake.state.queued == [p.name for p in fanned.seeded.config.pools]
    # ...each pool invocation reconciles its pool alone, reading just its group...
    assert [[r.pool for r in t.results] for t in minute.pools] == [[p] for p in fanned.fake.state.queued]
    assert all(t.aws_calls["autoscaling.DescribeAutoScalingGroups"] == 1 for t in minute.pools)
    # ...and the fleet ends where the inline tick left it, busy machines untouched
    merged = minute.merged()
    assert sorted(merged.terminated) == sorted(tick.terminated)
    assert not set(merged.terminated) & fanned.seeded.busy
    assert [r.desired_after for r in merged.results] == [r.desired_after for r in tick.results]


def test_fake_dynamodb_refuses_what_dynamodb_refuses() -> None:
    # GIVEN the real DynamoStore on the fake: a busy machine and a held lease
    bench = Bench.build(Shape("1x10", 1, 10))
    store = DynamoStore(bench.aws, TABLE)
    busy = sorted(bench.seeded.busy)[0]
    # THEN the conditional writes fail as on DynamoDB, and succeed when their condition holds
    assert not store.start_draining(busy, "idle", T0)
    assert store.acquire_lease("pool-000", "a", T0, timedelta(seconds=50))
    assert not store.acquire_lease("pool-000", "b", T0, timedelta(seconds=50))
    assert store.acquire_lease("pool-000", "b", T0 + timedelta(minutes=2), timedelta(seconds=50))
    store.machine_job_finished(busy, 7, T0)
    record = store.get_machine(busy)
    assert record is not None and 7 in record.job_ids and record.last_busy_at == T0


def test_results_file_holds_each_shape_its_ticks_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "reconcile.json"
    run((Shape("baseline", 1, 10), Shape("2x30", 2, 30)), 1, out)
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report["shapes"]) == {"baseline", "2x30"}
    for tick in ("scale_event", "steady"):
        figures = report["shapes"]["2x30"][tick]
        assert {"cpu_ms", "scaler_cpu_ms", "aws_calls", "aws_calls_by_operation", "store"} <= set(figures)
        assert figures["aws_calls"] == sum(figures["aws_calls_by_operation"].values())
        assert figures["decisions"]["busy_terminated"] == 0
        fan = report["shapes"]["2x30"]["fan_out"][tick]
        assert fan["pool_invocations"] == 2 and fan["tick"]["aws_calls_by_operation"] == {
            "sqs.SendMessageBatch": 1
        }
        assert {"scaler_cpu_ms_median", "scaler_cpu_ms_max", "aws_calls_median", "aws_calls_max"} <= set(
            fan["pool"]
        )
        assert fan["minute_scaler_cpu_ms"] >= fan["pool"]["scaler_cpu_ms_max"]
        assert fan["decisions"]["busy_terminated"] == 0
        assert set(report["ratios_to_baseline"]["2x30"][tick]) == {
            "cpu",
            "aws_calls",
            "fan_out_largest_invocation_cpu",
            "fan_out_pool_invocation_aws_calls_max",
            "fan_out_minute_cpu",
        }
    assert report["ratios_to_baseline"]["2x30"]["pools"] == 2
