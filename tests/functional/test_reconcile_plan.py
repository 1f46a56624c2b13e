"""A reconcile reads one snapshot, builds a plan, then applies it: a dry run returns the plan and changes
nothing, and the tick then applies exactly that plan (capacity and terminations), the sweep's removals
included, through the one drain protocol."""

from __future__ import annotations

from typing import Any

from chalice.test import Client

from app import app
from chalicelib.reconcile import Removal
from chalicelib.resources import Names
from chalicelib.store import JobRecord
from tests.functional.conftest import Stack, describe_group


def tick(client: Client) -> dict[str, Any]:
    event = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    payload: dict[str, Any] = client.lambda_.invoke("tick", event).payload
    return payload


def group_state(stack: Stack) -> tuple[int, list[tuple[str, str, bool]]]:
    group = describe_group(stack.aws, "test-linux")
    instances = sorted(
        (i["InstanceId"], i["LifecycleState"], i["ProtectedFromScaleIn"]) for i in group["Instances"]
    )
    return int(group["DesiredCapacity"]), instances


def table_items(stack: Stack) -> list[dict[str, Any]]:
    items = stack.aws.call("dynamodb", "scan", TableName=Names("test").table, ConsistentRead=True)["Items"]
    return sorted(items, key=repr)


def test_a_dry_run_changes_nothing_and_the_tick_applies_the_same_plan(stack: Stack) -> None:
    rt = stack.runtime
    pool = stack.config.pool("linux")
    # GIVEN two machines in service, taken in by a first tick (adopted, protected)...
    rt.fleet.set_desired_capacity("test-linux", 2)
    with Client(app) as client:
        tick(client)
    live = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
    assert len(live) == 2
    # ...three jobs pending, and one machine the sweep marked for removal (its runner never came up)
    for job_id in (1, 2, 3):
        rt.store.record_job(JobRecord("gitlab.example.com", job_id, "pending", pool="linux"), rt.now())
    stuck = live[0]
    assert rt.store.start_draining(stuck, "stuck", rt.now()) is not None
    before = (group_state(stack), table_items(stack))

    # WHEN the pool is reconciled as a dry run
    result = rt.reconciler("dry-run").reconcile_pool(pool, rt.now(), dry_run=True)

    # THEN the plan says what would be done: the sweep's removal with its reason, and more capacity
    plan = result.planned
    assert plan is not None and result.dry_run and not result.errors
    assert plan.removals == (Removal(stuck, "stuck"),)
    assert plan.desired == min(2 - 1 + plan.launch, plan.max_size) and plan.desired > 1
    assert result.desired_after == plan.desired
    # AND nothing changed: not the group (capacity, instances, protection), not one DynamoDB item
    assert (group_state(stack), table_items(stack)) == before

    # WHEN the tick reconciles the same state for real
    with Client(app) as client:
        applied = tick(client)

    # THEN it applied that plan: the planned capacity, and the planned removal drained and terminated
    assert applied["pools"]["linux"]["desired"] == plan.desired
    assert stack.desired("test-linux") == plan.desired
    after = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
    assert stuck not in after and live[1] in after


def test_a_dry_run_of_every_pool_takes_no_lease_and_writes_nothing(stack: Stack) -> None:
    rt = stack.runtime
    rt.store.record_job(JobRecord("gitlab.example.com", 1, "pending", pool="linux"), rt.now())
    rt.store.record_job(JobRecord("gitlab.example.com", 2, "pending", pool="gpu"), rt.now())
    before = table_items(stack)
    results = rt.reconciler("dry-run").reconcile_all(rt.now(), dry_run=True)
    assert {r.pool: r.desired_after for r in results}["linux"] >= 1
    assert all(r.dry_run and r.planned is not None for r in results)
    assert table_items(stack) == before
    assert stack.desired("test-linux") == 0 and stack.desired("test-gpu") == 0
