"""The instance-type fallback through the Chalice app (issue 24, defect 1).

A failing fallback (AccessDenied: UpdateAutoScalingGroup with a launch template is also authorized against
the template's contents, Auto Scaling user guide "Control Amazon EC2 launch template usage in Auto Scaling
groups") is a pool fault, never the end of the reconcile. The fallback only reorders the types of a
mixed-instances group; the Spot / on-demand split (base and percentage) is never rewritten, because changing
the purchasing options can replace running instances (UpdateAutoScalingGroup API reference).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.aws import AwsClients, fault
from chalicelib.capacity.fallback import can_fall_back, preferred_types
from chalicelib.runtime import Runtime, install
from chalicelib.store import Fault, JobRecord, MachineRecord
from tests.builders import pool
from tests.functional.conftest import Stack, describe_group
from tests.unit.test_ports import RecordedMetrics


def sqs_event(client: Client, name: str) -> dict[str, Any]:
    body = json.dumps({"pool": name, "reason": "job"})
    return client.events.generate_sqs_event(message_bodies=[body], queue_name="test-dirty.fifo")


def denied_retune(service: str, operation: str) -> dict[str, Any] | None:
    """AWS's answer to UpdateAutoScalingGroup when the role may not launch the group's launch template."""
    if (service, operation) == ("autoscaling", "UpdateAutoScalingGroup"):
        return fault("AccessDenied", 403)
    return None


@pytest.fixture
def denied(stack: Stack) -> Iterator[Stack]:
    """The stack redeployed with a role that may not retune the group (a fresh container)."""
    aws = AwsClients(region="us-east-1", sleep=lambda _s: None, fault_injector=denied_retune)
    stack.runtime = Runtime(
        dict(stack.runtime.environ),
        aws=aws,
        config=stack.config,
        clock=stack.runtime.clock,
        metrics=RecordedMetrics(),
    )
    install(stack.runtime)
    yield stack


def test_a_denied_fallback_is_a_pool_fault_and_the_reconcile_still_launches_protects_and_drains(
    denied: Stack,
) -> None:
    stack = denied
    rt = stack.runtime
    # GIVEN two machines in service, one that lost its scale-in protection and one used up (its job is done)
    stack.aws.call(
        "autoscaling", "set_desired_capacity", AutoScalingGroupName="test-linux", DesiredCapacity=2
    )
    ids = [i["InstanceId"] for i in describe_group(stack.aws, "test-linux")["Instances"]]
    stack.aws.call(
        "autoscaling",
        "set_instance_protection",
        AutoScalingGroupName="test-linux",
        InstanceIds=[ids[0]],
        ProtectedFromScaleIn=False,
    )
    launched = rt.now()
    rt.store.put_machine(MachineRecord(ids[0], "linux", launched, ready_at=launched))
    rt.store.put_machine(
        MachineRecord(
            ids[1], "linux", launched, job_ids=frozenset({7}), ready_at=launched, last_busy_at=launched
        )
    )
    # AND a capacity fault on the preferred type, and two pending jobs
    until = launched + timedelta(minutes=30)
    rt.store.put_fault(Fault("linux", "instance_type", "m7i.large", until, "no capacity"))
    for job_id in (1, 2):
        rt.store.record_job(JobRecord(rt.gitlab_host, job_id, "pending", pool="linux"), rt.now())
    # WHEN the pool is reconciled through the app, and the role may not update the group
    with Client(app) as client:
        response = client.lambda_.invoke("pool_dirty", sqs_event(client, "linux"))
    # THEN the message succeeded: the fallback's failure did not end the reconcile
    assert response.payload == {"batchItemFailures": []}
    group = describe_group(stack.aws, "test-linux")
    live = {i["InstanceId"]: i for i in group["Instances"] if i["LifecycleState"] == "InService"}
    # AND the used-up machine was terminated, the unprotected one protected again, and one more launched
    # (the idle machine takes one of the two jobs)
    assert ids[1] not in live
    assert live[ids[0]]["ProtectedFromScaleIn"] is True
    assert group["DesiredCapacity"] == 2
    # AND the group kept its order, and the failure shows as a pool fault metric, emitted through the
    # container's metrics port (the reconciler's as every use case's, not a module-level EMF line)
    overrides = group["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    assert [o["InstanceType"] for o in overrides] == ["m7i.large", "m6i.large"]
    assert isinstance(rt.metrics, RecordedMetrics)
    assert [c for c in rt.metrics.counts if c[0] == "FallbackFailed"] == [("FallbackFailed", 1, "linux")]


def test_the_fallback_reorders_types_and_keeps_the_on_demand_base_and_percentage(stack: Stack) -> None:
    # GIVEN a Spot group with an on-demand base of 1 and 25 % on-demand above it
    group = describe_group(stack.aws, "test-linux")
    mixed = group["MixedInstancesPolicy"]
    distribution = {**mixed["InstancesDistribution"], "OnDemandBaseCapacity": 1}
    distribution["OnDemandPercentageAboveBaseCapacity"] = 25
    template = mixed["LaunchTemplate"]
    spec = {"LaunchTemplateName": "test-linux", "Version": "$Latest"}
    stack.aws.call(
        "autoscaling",
        "update_auto_scaling_group",
        AutoScalingGroupName="test-linux",
        MixedInstancesPolicy={
            "LaunchTemplate": {"LaunchTemplateSpecification": spec, "Overrides": template["Overrides"]},
            "InstancesDistribution": distribution,
        },
    )
    # AND capacity faults on the preferred type and on Spot
    rt = stack.runtime
    until = stack.clock[0] + timedelta(hours=1)
    rt.store.put_fault(Fault("linux", "instance_type", "m7i.large", until, "no capacity"))
    rt.store.put_fault(Fault("linux", "spot", "", until, "no Spot capacity"))
    # WHEN the pool is reconciled
    result = rt.reconciler("t").reconcile_pool(stack.config.pool("linux"), stack.advance(seconds=30))
    # THEN the types are reordered, and the split is exactly the operator's
    assert result.errors == [] and result.fallback == "instance types m6i.large, m7i.large"
    after = describe_group(stack.aws, "test-linux")["MixedInstancesPolicy"]
    assert [o["InstanceType"] for o in after["LaunchTemplate"]["Overrides"]] == ["m6i.large", "m7i.large"]
    assert after["InstancesDistribution"] == distribution


def test_a_plain_launch_template_group_is_never_turned_into_a_mixed_instances_group(stack: Stack) -> None:
    # GIVEN the gpu pool's group uses its launch template alone, and a pool config listing two types
    config = stack.config.model_copy(
        update={
            "pools": tuple(
                p.model_copy(update={"instance_types": ("g5.xlarge", "g6.xlarge")}) if p.name == "gpu" else p
                for p in stack.config.pools
            )
        }
    )
    rt = Runtime(dict(stack.runtime.environ), aws=stack.aws, config=config, clock=stack.runtime.clock)
    rt.store.put_fault(
        Fault("gpu", "instance_type", "g5.xlarge", stack.clock[0] + timedelta(hours=1), "no capacity")
    )
    # WHEN it is reconciled
    result = rt.reconciler("t").reconcile_pool(config.pool("gpu"), stack.advance(seconds=30))
    # THEN the group is left as it is: a new mixed-instances policy could replace running instances
    assert result.errors == [] and result.fallback == ""
    assert "MixedInstancesPolicy" not in describe_group(stack.aws, "test-gpu")


def test_host_pools_never_fall_back() -> None:
    mac = pool(
        name="mac",
        platform="macos",
        instance_types=("mac2.metal", "mac2-m2.metal"),
        hosts={
            "instance_type": "mac2.metal",
            "host_resource_group": "g",
            "availability_zones": ("us-east-1a",),
        },
    )
    assert not can_fall_back(mac)
    assert can_fall_back(pool(instance_types=("m7i.large", "m6i.large")))


def test_a_spot_fault_changes_no_order_and_no_split() -> None:
    linux = pool(instance_types=("m7i.large", "m6i.large"), spot=True)
    assert preferred_types(linux, [("spot", "")]) == ("m7i.large", "m6i.large")
    assert preferred_types(linux, [("launch", "")]) == ("m6i.large", "m7i.large")
    assert preferred_types(linux, [("instance_type", "m7i.large")]) == ("m6i.large", "m7i.large")
