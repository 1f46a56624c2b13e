"""The drain protocol at its edges: a runner GitLab no longer has (404) means its machine goes; a machine that
ended itself is never terminated or decremented a second time; the sweep removes a machine whose runner was
deleted outside the scaler, through the same protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from chalice.test import Client

from app import app
from chalicelib.aws import AwsClients
from chalicelib.devtools.fake_gitlab import FakeGitLab
from chalicelib.errors import GitLabNotFoundError
from chalicelib.store import MachineRecord
from tests.builders import T0
from tests.functional.conftest import Stack
from tests.functional.test_reconcile import FakeRunners, World, make_config


class DeletedRunners(FakeRunners):
    """GitLab after an admin deleted some runners: every call naming one answers 404."""

    def __init__(self, deleted: set[int]) -> None:
        super().__init__()
        self.deleted = deleted

    def pause_runner(self, runner_id: int, paused: bool = True) -> None:
        if runner_id in self.deleted:
            raise GitLabNotFoundError("runners.pause", f"runner {runner_id}", "404 Not found")
        super().pause_runner(runner_id, paused)

    def runner_jobs(self, runner_id: int, status: str = "running") -> Sequence[Any]:
        if runner_id in self.deleted:
            raise GitLabNotFoundError("runners.jobs", f"runner {runner_id}", "404 Not found")
        return super().runner_jobs(runner_id, status)


def idle_machine(world: World) -> str:
    """One machine, adopted, given runner 55, its only job gone: idle, and past idle_time at T0 + 30 min."""
    world.job(1, "pending")
    world.reconciler().reconcile_pool(world.config.pools[0], T0)
    world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=1))
    (machine,) = world.instance_ids()
    record = world.store.get_machine(machine)
    assert record is not None
    world.store.put_machine(replace(record, runner_id=55))
    world.job(1, "canceled")
    return machine


def test_a_404_on_pause_means_the_runner_is_gone_and_its_machine_is_removed(aws: AwsClients) -> None:
    # GIVEN an idle machine past idle_time whose runner an admin deleted in GitLab
    world = World(aws, make_config(max_use_count=0))
    machine = idle_machine(world)
    world.runners = DeletedRunners({55})
    # WHEN the reconcile drains it (pause: 404)
    result = world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=30))
    # THEN the reconcile carries on and removes the machine: a deleted runner can take no job
    assert result.ok, result.errors
    assert result.terminated == [machine] and world.instance_ids() == []
    assert world.group()["DesiredCapacity"] == 0


def test_a_machine_that_ended_itself_is_neither_terminated_nor_decremented_twice(aws: AwsClients) -> None:
    # GIVEN two machines: one used up (its job finished), one running a job
    world = World(aws, make_config(max_use_count=1))
    pool = world.config.pools[0]
    world.job(1, "pending")
    world.job(2, "pending")
    world.reconciler().reconcile_pool(pool, T0)
    used, busy = world.instance_ids()
    world.job(1, "running", machine_id=used)
    world.job(2, "running", machine_id=busy)
    world.reconciler().reconcile_pool(pool, T0 + timedelta(minutes=1))
    world.job(1, "success", machine_id=used)
    # ...as the reconcile reads the group, the used-up machine ends itself, decrementing the group (its user
    # data calls TerminateInstanceInAutoScalingGroup once run-single exits)
    group = world.fleet.read_groups([pool.asg])[pool.asg]
    aws.call(
        "autoscaling",
        "terminate_instance_in_auto_scaling_group",
        InstanceId=used,
        ShouldDecrementDesiredCapacity=True,
    )
    assert world.group()["DesiredCapacity"] == 1
    # WHEN that reconcile, on its now stale view, removes the used-up machine
    result = world.reconciler().reconcile_pool(pool, T0 + timedelta(minutes=2), group=group)
    # THEN it counts the machine as already gone: no error, no second decrement, the busy machine stays
    assert result.ok, result.errors
    assert result.already_gone == [used] and result.terminated == []
    assert world.group()["DesiredCapacity"] == 1 and world.instance_ids() == [busy]


def tick(client: Client) -> None:
    client.lambda_.invoke("tick", client.events.generate_cw_event("Scheduled Event", "aws.events", {}, []))


def test_a_machine_whose_runner_was_deleted_outside_the_scaler_is_removed_by_the_sweep(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN a machine prepared at launch whose runner came up...
    rt = gitlab_stack.runtime
    rt.fleet.set_desired_capacity("test-linux", 1)
    (instance,) = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].instances]
    runner, _ = fake_gitlab.register_runner(
        description=f"runner-scaler/linux/{instance}", tag_list=("linux",)
    )
    rt.store.put_machine(MachineRecord(instance, "linux", rt.now(), runner_id=runner))
    fake_gitlab.runner_contact(runner)
    # ...and was then deleted in GitLab (an admin, or GitLab's stale-runner cleanup): run-single now loops
    # on 403s forever (gitlab-runner commands/single.go) while the machine counts as capacity
    fake_gitlab.delete_runner(runner)
    with Client(app) as client:
        # WHEN the sweep sees it once, then again orphan_confirm_after later (before idle_time ends it)
        tick(client)
        live = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
        assert live == [instance]  # one observation is only a suspicion
        gitlab_stack.advance(minutes=5)
        tick(client)
    # THEN the machine is removed
    live = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
    assert live == []
