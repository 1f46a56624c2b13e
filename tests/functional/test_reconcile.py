"""The reconciler moves real (moto) Auto Scaling groups: scale up, protect, remove used-up and idle machines,
never a busy one; under throttling it converges; two reconciles of one pool never both apply."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from chalicelib.aws import AwsClients, fault
from chalicelib.config import Config, config_from_dict
from chalicelib.fleet import LIVE_STATES, AsgFleet, Fleet, GroupView
from chalicelib.reconcile import Reconciler, ReconcileResult
from chalicelib.resources import Names
from chalicelib.store import DynamoStore, JobRecord
from tests.builders import T0
from tests.functional.conftest import describe_group
from tests.stale_index import StaleIndexAws
from toolkit.devtools.bootstrap import create_pool_group, ensure_table

NAMES = Names("test")


def make_config(**pool: Any) -> Config:
    base: dict[str, Any] = {
        "name": "linux",
        "asg": "asg-linux",
        "tags": ["linux"],
        "max_instances": 5,
        "max_use_count": 1,
        "policy": [{"idle_count": 0, "idle_time": "10m"}],
    }
    base.update(pool)
    return config_from_dict({"gitlab": {"url": "https://gitlab.example.com"}, "pools": [base]}, "test")


@dataclass
class FakeRunners:
    """GitLab's side of the drain: which runners run a job right now (a fake with the RunnerControl shape)."""

    running: dict[int, list[int]] = field(default_factory=dict)
    paused: dict[int, bool] = field(default_factory=dict)
    assign_on_pause: dict[int, int] = field(default_factory=dict)

    def pause_runner(self, runner_id: int, paused: bool = True) -> None:
        self.paused[runner_id] = paused
        if paused and runner_id in self.assign_on_pause:  # the race: a job lands just before the pause
            self.running.setdefault(runner_id, []).append(self.assign_on_pause.pop(runner_id))

    def runner_jobs(self, runner_id: int, status: str = "running") -> Sequence[Any]:
        return self.running.get(runner_id, [])

    described: dict[str, int] = field(default_factory=dict)

    def list_runners(self, description_prefix: str, **scope: Any) -> Sequence[Any]:
        return [
            SimpleNamespace(id=runner_id, description=description)
            for description, runner_id in self.described.items()
            if description.startswith(description_prefix)
        ]


class World:
    def __init__(self, aws: AwsClients, config: Config, observer: AwsClients | None = None) -> None:
        self.aws = observer or aws  # the test's own reads never go through injected faults
        self.config = config
        ensure_table(self.aws, NAMES.table)
        subnet = self.aws.call("ec2", "describe_subnets")["Subnets"][0]["SubnetId"]
        for pool in config.pools:
            create_pool_group(self.aws, pool, NAMES, subnet)
        self.store = DynamoStore(aws, NAMES.table)
        self.fleet = AsgFleet(aws)
        self.runners = FakeRunners()

    def reconciler(self, owner: str = "test") -> Reconciler:
        return Reconciler(self.config, self.store, self.fleet, self.runners, owner=owner)

    def job(self, job_id: int, status: str, machine_id: str = "", **kw: Any) -> None:
        record = JobRecord("gitlab.example.com", job_id, status, pool="linux", machine_id=machine_id, **kw)
        self.store.record_job(record, T0)

    def group(self) -> dict[str, Any]:
        return describe_group(self.aws, "asg-linux")

    def instance_ids(self) -> list[str]:
        return sorted(
            i["InstanceId"] for i in self.group()["Instances"] if i["LifecycleState"] == "InService"
        )


@pytest.fixture
def world(aws: AwsClients) -> World:
    return World(aws, make_config())


def test_pending_jobs_raise_desired_capacity_and_machines_are_protected(world: World) -> None:
    # GIVEN two pending jobs and an empty pool
    world.job(1, "pending")
    world.job(2, "pending")
    # WHEN the pool is reconciled
    result = world.reconciler().reconcile_pool(world.config.pools[0], T0)
    # THEN the ASG wants two machines, and they are protected from scale-in
    assert result.ok and result.desired_after == 2
    group = world.group()
    assert group["DesiredCapacity"] == 2
    assert len(group["Instances"]) == 2
    assert all(i["ProtectedFromScaleIn"] for i in group["Instances"])


def test_used_up_machine_is_terminated_and_capacity_drops(world: World) -> None:
    world.job(1, "pending")
    world.reconciler().reconcile_pool(world.config.pools[0], T0)
    (machine,) = world.instance_ids()
    # WHEN its one job (max_use_count = 1) runs and succeeds
    world.job(1, "running", machine_id=machine, runner_id=11)
    world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=1))
    assert world.store.get_machine(machine).jobs_started == 1  # type: ignore[union-attr]
    world.job(1, "success", machine_id=machine)
    result = world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=2))
    # THEN the machine is terminated with a decrement
    assert result.terminated == [machine]
    assert world.group()["DesiredCapacity"] == 0
    assert world.instance_ids() == []


def test_idle_machine_goes_only_after_idle_time(aws: AwsClients) -> None:
    world = World(aws, make_config(max_use_count=0, policy=[{"idle_count": 1, "idle_time": "10m"}]))
    pool = world.config.pools[0]
    world.reconciler().reconcile_pool(pool, T0)  # idle_count 1 -> one warm machine
    assert len(world.instance_ids()) == 1
    world.config = make_config(max_use_count=0, policy=[{"idle_count": 0, "idle_time": "10m"}])
    pool = world.config.pools[0]
    # the machine is first seen in service (ready) at +5 min; idle_time counts from there
    early = world.reconciler().reconcile_pool(pool, T0 + timedelta(minutes=5))
    assert early.terminated == [] and len(world.instance_ids()) == 1
    still = world.reconciler().reconcile_pool(pool, T0 + timedelta(minutes=14))
    assert still.terminated == []
    late = world.reconciler().reconcile_pool(pool, T0 + timedelta(minutes=16))
    assert len(late.terminated) == 1 and world.instance_ids() == []


def test_busy_machine_is_never_terminated_even_when_capacity_must_fall(world: World) -> None:
    for n in range(3):
        world.job(n, "pending")
    world.reconciler().reconcile_pool(world.config.pools[0], T0)
    machines = world.instance_ids()
    for n, machine in enumerate(machines):
        world.job(n, "running", machine_id=machine, runner_id=100 + n)
    # WHEN the pool shrinks to max_instances 1 while all three run jobs, hours later
    world.config = make_config(max_instances=1)
    result = world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(hours=5))
    # THEN nothing is terminated
    assert result.terminated == [] and world.instance_ids() == machines


def test_only_instances_without_a_record_cost_a_launch_time_read(world: World) -> None:
    # GIVEN a machine launched for a pending job, whose launch event never reached the scaler
    world.job(1, "pending")
    world.reconciler().reconcile_pool(world.config.pools[0], T0)
    (machine,) = world.instance_ids()
    world.aws.calls.clear()
    # WHEN the next reconcile adopts it, and a third one runs
    world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=1))
    adopting = world.aws.calls["ec2.DescribeInstances"]
    world.aws.calls.clear()
    world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=2))
    known = world.aws.calls["ec2.DescribeInstances"]
    # THEN the adoption asked EC2 for that one launch time, and the record keeps it: the pool, now
    # fully known, reads no launch time at all
    reservations = world.aws.call("ec2", "describe_instances", InstanceIds=[machine])["Reservations"]
    record = world.store.get_machine(machine)
    assert record is not None and record.launched_at == reservations[0]["Instances"][0]["LaunchTime"]
    assert (adopting, known) == (1, 0)


def test_job_landing_during_the_drain_cancels_the_removal(aws: AwsClients) -> None:
    world = World(aws, make_config(max_use_count=0))
    world.job(1, "pending")
    world.reconciler().reconcile_pool(world.config.pools[0], T0)
    world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=1))  # adopts the machine
    (machine,) = world.instance_ids()
    record = world.store.get_machine(machine)
    assert record is not None
    world.store.put_machine(replace(record, runner_id=55))
    world.job(1, "canceled")  # the job went away: the machine is idle...
    world.runners.assign_on_pause[55] = 999  # ...but GitLab hands it a job as we pause it
    paused = world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=30))
    assert paused.terminated == [] and world.runners.paused[55] is True  # the drain waits out the window
    result = world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=31))
    assert result.drain_cancelled == [machine] and result.terminated == []
    assert world.instance_ids() == [machine]
    assert world.runners.paused[55] is False  # unpaused, left to finish
    assert world.store.get_machine(machine).draining_since is None  # type: ignore[union-attr]


class GatedFleet:
    """The real fleet, except that the first `set_desired_capacity` waits until the test opens the gate.

    It holds the first reconcile inside its apply step, lease held, for as long as the test needs.
    """

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._lock = threading.Lock()
        self._first = True
        self.applying = threading.Event()  # set when the first apply is parked at the gate
        self.gate = threading.Event()  # opened by the test
        self.gate_timed_out = False

    def read_groups(self, asgs: Sequence[str]) -> dict[str, GroupView]:
        return self._fleet.read_groups(asgs)

    def launch_times(self, instance_ids: Sequence[str]) -> dict[str, datetime]:
        return self._fleet.launch_times(instance_ids)

    def set_desired_capacity(self, asg: str, desired: int) -> None:
        with self._lock:
            first, self._first = self._first, False
        if first:
            self.applying.set()
            self.gate_timed_out = not self.gate.wait(30)  # a safety net only: the test opens it at once
        self._fleet.set_desired_capacity(asg, desired)

    def protect(self, asg: str, instance_ids: Sequence[str]) -> None:
        self._fleet.protect(asg, instance_ids)

    def terminate(self, instance_id: str, states: frozenset[str] = LIVE_STATES) -> bool:
        return self._fleet.terminate(instance_id, states)

    def complete_lifecycle_action(
        self, asg: str, hook: str, token: str, instance_id: str, result: str
    ) -> None:
        self._fleet.complete_lifecycle_action(asg, hook, token, instance_id, result)

    def set_instance_types(self, group: GroupView, types: Sequence[str]) -> None:
        self._fleet.set_instance_types(group, types)

    def instance_addresses(self, instance_id: str) -> list[str]:
        return self._fleet.instance_addresses(instance_id)


def test_two_concurrent_reconciles_never_both_apply(world: World) -> None:
    # GIVEN four pending jobs, and a fleet that parks the first reconcile in the middle of its apply
    for n in range(4):
        world.job(n, "pending")
    fleet = GatedFleet(world.fleet)
    pool = world.config.pools[0]

    def reconciler(owner: str) -> Reconciler:
        return Reconciler(world.config, world.store, fleet, world.runners, owner=owner)

    first: list[ReconcileResult] = []
    worker = threading.Thread(target=lambda: first.append(reconciler("worker-1").reconcile_pool(pool, T0)))
    worker.start()
    assert fleet.applying.wait(30), "the first reconcile never reached its apply step"
    # WHEN a second reconcile of the same pool runs to completion while the first is still applying
    try:
        second = reconciler("worker-2").reconcile_pool(pool, T0)
    finally:
        fleet.gate.set()
        worker.join(30)
    # THEN the second backed off on the lease, the first applied, and capacity is set once, to four
    assert not fleet.gate_timed_out and not worker.is_alive()
    (applied,) = first
    assert applied.ok and applied.desired_after == 4
    assert "lease" in second.skipped and second.plan is None and second.desired_after == 0
    assert world.group()["DesiredCapacity"] == 4


def test_fleet_converges_under_throttling_and_5xx(mocked_aws: None) -> None:
    rng = random.Random(7)

    def injector(service: str, operation: str) -> dict[str, Any] | None:
        if service != "autoscaling" or rng.random() >= 0.2:
            return None
        return fault("Throttling") if rng.random() < 0.5 else fault("InternalFailure", 500)

    # AND DynamoDB index reads that answer with the table as it was 30 s ago (tests/stale_index)
    clock = [T0]
    flaky = StaleIndexAws(
        clock=lambda: clock[0],
        lag=timedelta(seconds=30),
        sleep=lambda _s: None,
        attempts=1,
        fault_injector=injector,
    )
    world = World(flaky, make_config(max_instances=6), observer=AwsClients(region="us-east-1"))
    pool = world.config.pools[0]
    now = T0
    busy: set[str] = set()
    for tick in range(50):
        now += timedelta(minutes=1)
        clock[0] = now
        if tick == 0:
            for n in range(8):
                world.job(n, "pending")
        if tick == 10:  # every machine takes a job
            for n, machine in enumerate(world.instance_ids()):
                world.job(n, "running", machine_id=machine, runner_id=200 + n)
                busy.add(machine)
        if tick == 25:
            for n, machine in enumerate(sorted(busy)):
                world.job(n, "success", machine_id=machine)
            busy.clear()
        before = set(world.instance_ids())
        world.reconciler().reconcile_pool(pool, now)
        after = set(world.instance_ids())
        assert not (busy & (before - after)), "a busy machine was terminated"
        assert len(after) <= 6
    # Two jobs never got a machine before tick 25 (max 6); they do now. The fleet settles at exactly 2.
    assert len(world.instance_ids()) == 2 and flaky.stale_reads > 0


def test_machine_whose_launch_event_was_lost_is_still_drained_through_gitlab(aws: AwsClients) -> None:
    # GIVEN a machine the scaler adopted without a runner id (its launch event never arrived)...
    world = World(aws, make_config(max_use_count=0))
    world.job(1, "pending")
    world.reconciler().reconcile_pool(world.config.pools[0], T0)
    world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=1))
    (machine,) = world.instance_ids()
    assert world.store.get_machine(machine).runner_id is None  # type: ignore[union-attr]
    # ...whose runner GitLab knows by its description, and which just got a job GitLab has not reported yet
    world.runners.described[f"runner-scaler/linux/{machine}"] = 77
    world.runners.running[77] = [123]
    world.job(1, "canceled")
    world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=30))  # pauses it
    result = world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=31))
    # THEN the drain asks GitLab once the window has passed, finds the job, and keeps the machine
    assert result.terminated == [] and result.drain_cancelled == [machine]
    assert world.runners.paused[77] is False
