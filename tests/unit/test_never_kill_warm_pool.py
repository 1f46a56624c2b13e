"""Never kill a busy machine, with warm pools on: the reconciler (in-memory store, a fleet double) over random
groups, jobs and warm machines. Warm machines are never busy, never group capacity, and never removed by the
scaler: they leave only through Auto Scaling (the warm pool's size), and a group machine leaves only through
the drain protocol.

AWS: a warm instance is listed by DescribeWarmPool ("The instances that are currently in the warm pool",
API Reference, DescribeWarmPool) in the Warmed:* lifecycle states (Warmed:Pending, Warmed:Pending:Wait,
Warmed:Stopped, Warmed:Hibernated, ...: API Reference, Instance / DescribeWarmPool response); it does not
count in the group's desired capacity ("Warm pools for Amazon EC2 Auto Scaling"), so terminating one with
ShouldDecrementDesiredCapacity would take a machine from the group. The double lists warm machines among the
group's instances on purpose: the scaler must stay safe even if they showed up there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from botocore.stub import Stubber
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.aws import AwsClients
from chalicelib.capacity.warm import WarmPoolSettings
from chalicelib.config import Config, config_from_dict
from chalicelib.errors import AwsCallError
from chalicelib.fleet import LIVE_STATES, AsgFleet, GroupView, Instance, _group_view
from chalicelib.reconcile import Reconciler
from chalicelib.store import JobRecord, MachineRecord, MemoryStore
from tests.builders import T0

WARM_STATES = (
    "Warmed:Pending",
    "Warmed:Pending:Wait",
    "Warmed:Stopped",
    "Warmed:Hibernated",
    "Warmed:Running",
)


@dataclass
class FleetDouble:
    """A group held in memory (Fleet + WarmPools): records every write the reconciler asks for."""

    view: GroupView
    launched: dict[str, datetime]
    terminated: list[str] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)
    desired: list[int] = field(default_factory=list)
    warm_puts: list[WarmPoolSettings] = field(default_factory=list)

    def read_groups(self, asgs: Sequence[str]) -> dict[str, GroupView]:
        return {self.view.asg: self.view}

    def launch_times(self, instance_ids: Sequence[str]) -> dict[str, datetime]:
        return {i: self.launched[i] for i in instance_ids if i in self.launched}

    def set_desired_capacity(self, asg: str, desired: int) -> None:
        self.desired.append(desired)

    def protect(self, asg: str, instance_ids: Sequence[str]) -> None:
        self.protected.extend(instance_ids)

    def terminate(self, instance_id: str, states: frozenset[str] = LIVE_STATES) -> bool:
        self.terminated.append(instance_id)
        return True

    def complete_lifecycle_action(
        self, asg: str, hook: str, token: str, instance_id: str, result: str
    ) -> None:
        raise AssertionError("the reconcile completes no lifecycle action")

    def set_instance_types(self, group: GroupView, types: Sequence[str]) -> None:
        raise AssertionError("no fallback on a plain group")

    def instance_addresses(self, instance_id: str) -> list[str]:
        return []

    def put_warm_pool(self, asg: str, settings: WarmPoolSettings) -> None:
        self.warm_puts.append(settings)

    def delete_warm_pool(self, asg: str) -> None:
        pass


def make_config(max_instances: int, idle: int, warm: str | int) -> Config:
    pool = {
        "name": "linux",
        "asg": "asg-linux",
        "tags": ["linux"],
        "max_instances": max_instances,
        "max_use_count": 1,
        "warm_pool": warm,
        "policy": [{"idle_count": idle, "idle_time": "5m"}],
    }
    return config_from_dict({"gitlab": {"url": "https://gitlab.example.com"}, "pools": [pool]}, "test")


machine_st = st.tuples(
    st.sampled_from(("InService", "Pending", *WARM_STATES)),
    st.booleans(),  # has a record (launched through the lifecycle) - warm ones never do
    st.booleans(),  # runs a job (only a recorded in-service machine can)
    st.integers(0, 240),  # minutes since launch
    st.booleans(),  # its runner has contacted GitLab
)


@settings(max_examples=120, deadline=None)
@given(
    machines=st.lists(machine_st, max_size=10),
    pending=st.integers(0, 6),
    max_instances=st.integers(1, 12),
    idle=st.integers(0, 3),
    warm=st.sampled_from(("auto", "off", 0, 2, 5)),
    minutes=st.integers(0, 120),
)
def test_no_busy_and_no_warm_machine_is_ever_terminated(
    machines: list[tuple[str, bool, bool, int, bool]],
    pending: int,
    max_instances: int,
    idle: int,
    warm: str | int,
    minutes: int,
) -> None:
    # GIVEN a group whose instances include warm ones, some group machines running jobs, and pending jobs
    config = make_config(max_instances, idle, warm)
    store = MemoryStore()
    instances, launched, busy, warm_ids = [], {}, set(), set()
    for n, (state, recorded, running, age, contacted) in enumerate(machines):
        instance_id = f"i-{n:04d}"
        launched[instance_id] = T0 - timedelta(minutes=age)
        instances.append(Instance(instance_id, state, protected=True))
        if state.startswith("Warmed:"):
            warm_ids.add(instance_id)
            continue
        if recorded:
            store.put_machine(
                MachineRecord(
                    instance_id,
                    "linux",
                    launched[instance_id],
                    runner_id=n + 1,
                    ready_at=launched[instance_id] if contacted else None,
                    prepared_at=launched[instance_id],
                )
            )
            if running and state == "InService":
                job = JobRecord(
                    "gitlab.example.com", 1000 + n, "running", pool="linux", machine_id=instance_id
                )
                store.record_job(job, T0)
                busy.add(instance_id)
    for n in range(pending):
        store.record_job(JobRecord("gitlab.example.com", n + 1, "pending", pool="linux"), T0)
    live = [i for i in instances if i.instance_id not in warm_ids]
    view = GroupView(
        "asg-linux", desired=len(live), min_size=0, max_size=max_instances, instances=tuple(instances)
    )
    fleet = FleetDouble(view, launched)
    reconciler = Reconciler(config, store, fleet, None, warm_pools=fleet)
    # WHEN it reconciles, now and later
    for step in (0, minutes):
        result = reconciler.reconcile_pool(config.pools[0], T0 + timedelta(minutes=step))
        assert not result.errors
    # THEN no busy machine and no warm machine was terminated, and no warm machine was adopted as capacity
    assert not busy & set(fleet.terminated)
    assert not warm_ids & set(fleet.terminated)
    assert not warm_ids & set(store.machine_records)
    # AND every warm pool put never reuses a machine and stays within max_instances
    for put in fleet.warm_puts:
        assert put.reuse_on_scale_in is False
        assert put.min_size == put.max_group_prepared_capacity
        assert put.min_size <= max_instances
    # AND desired capacity never counts warm machines
    assert all(d <= max_instances for d in fleet.desired)


def test_a_warm_instance_in_a_group_listing_is_not_live() -> None:
    # GIVEN a group answer that lists a warm machine beside an in-service one
    group = {
        "AutoScalingGroupName": "g",
        "DesiredCapacity": 1,
        "MinSize": 0,
        "MaxSize": 3,
        "Instances": [
            {"InstanceId": "i-1", "LifecycleState": "InService"},
            {"InstanceId": "i-2", "LifecycleState": "Warmed:Pending"},
        ],
    }
    # THEN only the in-service machine is group capacity
    assert [i.instance_id for i in _group_view(group).live_instances()] == ["i-1"]


def test_the_fleet_never_terminates_a_warm_machine_with_a_decrement() -> None:
    """TerminateInstanceInAutoScalingGroup with ShouldDecrementDesiredCapacity on a warm machine would lower
    the group's desired capacity for a machine it never counted: the adapter reads the instance first
    (DescribeAutoScalingInstances) and makes no call for a Warmed:* one. Checked at the seam with Stubber."""
    aws = AwsClients(region="us-east-1", sleep=lambda _s: None)
    client = aws.client("autoscaling")
    with Stubber(client) as stub:
        stub.add_response(
            "describe_auto_scaling_instances",
            {
                "AutoScalingInstances": [
                    {
                        "InstanceId": "i-0123456789abcdef0",
                        "AutoScalingGroupName": "asg-linux",
                        "AvailabilityZone": "us-east-1a",
                        "LifecycleState": "Warmed:Pending",
                        "HealthStatus": "HEALTHY",
                        "ProtectedFromScaleIn": False,
                    }
                ]
            },
            {"InstanceIds": ["i-0123456789abcdef0"]},
        )
        assert AsgFleet(aws).terminate("i-0123456789abcdef0") is False
        stub.assert_no_pending_responses()


def test_a_group_given_a_mixed_instances_policy_gets_no_warm_pool() -> None:
    """PutWarmPool "cannot be called on an Auto Scaling group that has a mixed instances policy" (API
    Reference, PutWarmPool): an on-demand pool whose group someone else made a mixed-instances group is left
    without one, and says why, rather than failing every reconcile."""
    config = make_config(max_instances=4, idle=2, warm="auto")
    view = GroupView(
        "asg-linux",
        0,
        0,
        4,
        instances=(),
        instance_types=("m7i.large", "m6i.large"),
        on_demand_percentage=100,
        launch_template={"LaunchTemplateName": "lt", "Version": "$Latest"},
        instances_distribution={"OnDemandPercentageAboveBaseCapacity": 100},
    )
    fleet = FleetDouble(view, {})
    result = Reconciler(config, MemoryStore(), fleet, None, warm_pools=fleet).reconcile_pool(
        config.pools[0], T0
    )
    assert fleet.warm_puts == [] and result.warm_pool == "skipped: the group has a mixed instances policy"
    assert not result.errors and not result.faults


class RefusingWarmPools(FleetDouble):
    def put_warm_pool(self, asg: str, settings: WarmPoolSettings) -> None:
        raise AwsCallError("autoscaling", "put_warm_pool", "ValidationError", "refused", retryable=False)


def test_a_refused_warm_pool_is_a_pool_fault_and_the_scale_up_still_happens() -> None:
    # GIVEN two pending jobs and a group that refuses PutWarmPool
    config = make_config(max_instances=4, idle=0, warm=2)
    store = MemoryStore()
    for n in range(2):
        store.record_job(JobRecord("gitlab.example.com", n + 1, "pending", pool="linux"), T0)
    fleet = RefusingWarmPools(GroupView("asg-linux", 0, 0, 4, instances=()), {})
    # WHEN the pool reconciles
    result = Reconciler(config, store, fleet, None, warm_pools=fleet).reconcile_pool(config.pools[0], T0)
    # THEN the two machines are asked for, and the warm pool failure is a fault, not a failed reconcile
    assert fleet.desired == [2] and not result.errors
    assert result.warm_pool == "failed: ValidationError"
    assert len(result.faults) == 1 and result.faults[0].startswith("warm pool: ")
