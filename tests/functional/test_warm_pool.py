"""Warm pools through the Chalice app on moto: the tick sizes each on-demand pool's warm pool from demand,
calls PutWarmPool only when what the group reports differs, never puts one on a Spot (mixed-instances) group,
deletes one the config no longer wants, and always keeps ReuseOnScaleIn false.

AWS: PutWarmPool "creates or updates a warm pool", takes MinSize, MaxGroupPreparedCapacity, PoolState and
InstanceReusePolicy, and "cannot be called on an Auto Scaling group that has a mixed instances policy or a
launch template or launch configuration that requests Spot Instances" (Amazon EC2 Auto Scaling API Reference,
PutWarmPool); DescribeAutoScalingGroups reports WarmPoolConfiguration (API Reference, AutoScalingGroup).
"""

from __future__ import annotations

from typing import Any

from chalice.test import Client

from app import app
from chalicelib.capacity.warm import WarmPoolSettings
from chalicelib.config import Platform
from chalicelib.store import JobRecord
from tests.functional.conftest import Stack
from toolkit.status import snapshot


def record(stack: Stack, job_id: int, status: str, pool: str) -> None:
    job = JobRecord("gitlab.example.com", job_id, status, pool=pool)
    stack.runtime.store.record_job(job, stack.runtime.now())


def tick(client: Client) -> dict[str, Any]:
    event = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    payload: dict[str, Any] = client.lambda_.invoke("tick", event).payload
    return payload


def warm_pool(stack: Stack, asg: str) -> dict[str, Any] | None:
    answer = stack.aws.call("autoscaling", "describe_warm_pool", AutoScalingGroupName=asg)
    configuration: dict[str, Any] | None = answer.get("WarmPoolConfiguration")
    return configuration


def stopped_never_reused(size: int) -> dict[str, Any]:
    """A warm pool of exactly `size` stopped machines that never takes a used machine back, as
    DescribeWarmPool answers it."""
    return {
        "MinSize": size,
        "MaxGroupPreparedCapacity": size,
        "PoolState": "Stopped",
        "InstanceReusePolicy": {"ReuseOnScaleIn": False},
    }


def gpu_warm_pool_holds(stack: Stack, size: int) -> None:
    """The gpu group's warm pool as an earlier reconcile left it: `size` stopped machines, never reused."""
    stack.aws.call(
        "autoscaling",
        "put_warm_pool",
        AutoScalingGroupName="test-gpu",
        MinSize=size,
        MaxGroupPreparedCapacity=size,
        InstanceReusePolicy={"ReuseOnScaleIn": False},
    )


def test_the_tick_sizes_an_on_demand_pools_warm_pool_from_its_arrivals(stack: Stack) -> None:
    # GIVEN two jobs that just turned pending in the on-demand pool "gpu" (warm_pool defaults to "auto")
    record(stack, 1, "pending", "gpu")
    record(stack, 2, "pending", "gpu")
    # WHEN the tick runs
    with Client(app) as client:
        tick(client)
    # THEN the group has a warm pool of exactly two stopped machines that never take a used machine back
    assert warm_pool(stack, "test-gpu") == stopped_never_reused(2)
    # AND the Spot pool "linux" (a mixed instances policy: AWS allows no warm pool) has none
    assert warm_pool(stack, "test-linux") is None


def test_put_warm_pool_is_called_only_when_the_size_changes(stack: Stack) -> None:
    # GIVEN a tick has sized the warm pool for one arrival
    record(stack, 1, "pending", "gpu")
    with Client(app) as client:
        tick(client)
        assert stack.runtime.aws.calls["autoscaling.PutWarmPool"] == 1
        # WHEN the next tick sees the same demand THEN it reads the size from the group and calls nothing
        stack.advance(seconds=60)
        tick(client)
        assert stack.runtime.aws.calls["autoscaling.PutWarmPool"] == 1
        # WHEN a second job arrives THEN the pool grows, with one more call
        record(stack, 2, "pending", "gpu")
        tick(client)
    assert stack.runtime.aws.calls["autoscaling.PutWarmPool"] == 2
    assert warm_pool(stack, "test-gpu") == stopped_never_reused(2)


def test_a_warm_pool_someone_set_to_reuse_machines_is_put_back_to_never_reuse(stack: Stack) -> None:
    # GIVEN an operator turned on ReuseOnScaleIn by hand: a machine that ran a job would go back to the pool
    stack.aws.call(
        "autoscaling",
        "put_warm_pool",
        AutoScalingGroupName="test-gpu",
        MinSize=1,
        MaxGroupPreparedCapacity=1,
        PoolState="Stopped",
        InstanceReusePolicy={"ReuseOnScaleIn": True},
    )
    # WHEN the tick runs with no demand
    with Client(app) as client:
        tick(client)
    # THEN the scaler puts ReuseOnScaleIn back to false (same size: the quiet floor of one machine)
    assert warm_pool(stack, "test-gpu") == stopped_never_reused(1)


def test_a_pool_turned_off_loses_its_warm_pool(stack: Stack) -> None:
    # GIVEN the gpu group has a warm pool and the config now says warm_pool = "off"
    stack.aws.call(
        "autoscaling", "put_warm_pool", AutoScalingGroupName="test-gpu", MinSize=2, MaxGroupPreparedCapacity=2
    )
    pools = tuple(
        p.model_copy(update={"warm_pool": "off"}) if p.name == "gpu" else p for p in stack.config.pools
    )
    stack.config = stack.config.model_copy(update={"pools": pools})
    stack.runtime.config = stack.config
    # WHEN the tick runs
    with Client(app) as client:
        tick(client)
    # THEN the warm pool is deleted (Auto Scaling terminates its stopped machines)
    assert warm_pool(stack, "test-gpu") is None
    assert stack.runtime.aws.calls["autoscaling.DeleteWarmPool"] == 1


def test_status_shows_the_warm_pool_the_tick_set_without_an_extra_call(stack: Stack) -> None:
    """The operator sees each pool's warm pool (now/target) from the DescribeAutoScalingGroups answer the
    status already reads: no DescribeWarmPool, which the scaler's role is not granted."""
    # GIVEN the tick sized gpu's warm pool for two arrivals
    record(stack, 1, "pending", "gpu")
    record(stack, 2, "pending", "gpu")
    with Client(app) as client:
        tick(client)
    calls_before = sum(stack.runtime.aws.calls.values())
    # WHEN the operator reads the status
    rows = {
        r.pool: r
        for r in snapshot(stack.config, stack.runtime.store, stack.runtime.fleet, stack.runtime.now())
    }
    # THEN gpu shows its target of two (moto starts no warm instance) and the Spot pool shows none
    assert (rows["gpu"].warm, rows["gpu"].warm_target) == (0, 2)
    assert rows["linux"].warm_target is None
    assert stack.runtime.aws.calls["autoscaling.DescribeWarmPool"] == 0
    assert sum(stack.runtime.aws.calls.values()) > calls_before  # it did read the groups


def test_a_busy_pool_keeps_its_warm_pool_through_a_lull_and_a_quiet_one_keeps_one(stack: Stack) -> None:
    # GIVEN the gpu group's warm pool holds 2 (the last burst's, its max_instances) and one job still runs
    gpu_warm_pool_holds(stack, 2)
    now = stack.runtime.now()
    running = JobRecord("gitlab.example.com", 1, "running", pool="gpu", created_at=now, started_at=now)
    stack.runtime.store.record_job(running, now)
    puts = stack.runtime.aws.calls["autoscaling.PutWarmPool"]  # the setup's own
    with Client(app) as client:
        # WHEN the tick runs THEN the pool is busy: it keeps the 2, not the 1 its one job asks for (a refill
        # would cost a cold boot, a stopped machine costs only its EBS volumes), with no call
        tick(client)
        assert warm_pool(stack, "test-gpu")["MinSize"] == 2  # type: ignore[index]
        assert stack.runtime.aws.calls["autoscaling.PutWarmPool"] == puts
        # WHEN the job ends and the pool goes quiet THEN the pool keeps one stopped machine for the next job
        record(stack, 1, "success", "gpu")
        for _ in range(3):
            stack.advance(seconds=60)
            tick(client)
    assert warm_pool(stack, "test-gpu") == stopped_never_reused(1)


def test_a_dry_run_shows_the_warm_pool_its_plan_would_put_and_puts_nothing(stack: Stack) -> None:
    # GIVEN two jobs that just turned pending in the on-demand pool "gpu"
    record(stack, 1, "pending", "gpu")
    record(stack, 2, "pending", "gpu")
    rt = stack.runtime
    # WHEN the pool is reconciled as a dry run
    result = rt.reconciler("dry-run").reconcile_pool(stack.config.pool("gpu"), rt.now(), dry_run=True)
    # THEN the plan carries the warm pool to put (the sizing is decided in the plan, not while applying)...
    plan = result.planned
    assert plan is not None and plan.warm_pool is not None
    assert plan.warm_pool.put == WarmPoolSettings(2, 2, "Stopped", reuse_on_scale_in=False)
    assert result.warm_pool.startswith("put 2 (")
    # ...and nothing was put
    assert rt.aws.calls["autoscaling.PutWarmPool"] == 0
    assert warm_pool(stack, "test-gpu") is None
    # WHEN the tick runs THEN it puts what the plan said
    with Client(app) as client:
        tick(client)
    assert warm_pool(stack, "test-gpu") == stopped_never_reused(2)


def use_pool(stack: Stack, name: str, **update: object) -> None:
    """The stack's config with pool `name` changed (as a new config version would)."""
    pools = tuple(p.model_copy(update=update) if p.name == name else p for p in stack.config.pools)
    stack.config = stack.config.model_copy(update={"pools": pools})
    stack.runtime.config = stack.config


def test_a_pool_that_never_had_a_job_keeps_one_stopped_machine_from_the_first_tick(stack: Stack) -> None:
    # GIVEN the on-demand pool "gpu" (warm_pool "auto", no idle_count) has had no job yet
    # WHEN the first tick runs
    with Client(app) as client:
        tick(client)
    # THEN its warm pool holds one stopped machine (its quiet floor), so its first job starts warm
    assert warm_pool(stack, "test-gpu") == stopped_never_reused(1)
    # AND no machine runs idle in the group
    assert stack.desired("test-gpu") == 0


def test_a_quiet_pool_keeps_what_it_held_only_where_a_refill_is_a_long_cold_boot(stack: Stack) -> None:
    # GIVEN the gpu group's warm pool holds 2 (a day's burst) and the pool is quiet (no job)
    gpu_warm_pool_holds(stack, 2)
    # WHEN gpu is a Windows pool (a refill is a 5-15 minute cold boot) and the tick runs
    use_pool(stack, "gpu", platform=Platform.WINDOWS)
    with Client(app) as client:
        tick(client)
    # THEN it keeps its 2 stopped machines, with no call
    assert warm_pool(stack, "test-gpu")["MinSize"] == 2  # type: ignore[index]
    assert stack.runtime.aws.calls["autoscaling.PutWarmPool"] == 1  # the setup's own
    # WHEN it is a Linux pool again (a refill is about a minute) and the tick runs
    use_pool(stack, "gpu", platform=Platform.LINUX)
    with Client(app) as client:
        stack.advance(seconds=60)
        tick(client)
    # THEN the warm pool shrinks to its quiet floor: AWS terminates the surplus stopped machine
    assert warm_pool(stack, "test-gpu")["MinSize"] == 1  # type: ignore[index]


def test_the_warm_pool_the_tick_puts_never_exceeds_max_growth_rate(stack: Stack) -> None:
    # GIVEN gpu may hold 10 machines but boot only 2 at once, and 5 jobs just turned pending
    use_pool(stack, "gpu", max_instances=10, max_growth_rate=2)
    for job_id in range(1, 6):
        record(stack, job_id, "pending", "gpu")
    # WHEN the tick runs
    with Client(app) as client:
        tick(client)
    # THEN the warm pool it puts holds 2: a larger one would have Auto Scaling boot more in parallel
    assert warm_pool(stack, "test-gpu")["MinSize"] == 2  # type: ignore[index]
    assert warm_pool(stack, "test-gpu")["MaxGroupPreparedCapacity"] == 2  # type: ignore[index]
