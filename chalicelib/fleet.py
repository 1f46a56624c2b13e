"""EC2 Auto Scaling adapter: read pools, set capacity, protect machines, terminate chosen machines.

The only module that calls Auto Scaling for pools; every call goes through `AwsClients` (counted, retried,
translated). Holds no policy: the reconciler decides, this module does exactly what it is told.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from chalicelib.aws import AwsClients
from chalicelib.capacity.warm import WarmPoolSettings
from chalicelib.errors import AwsCallError

# Lifecycle states in which an instance still belongs to the pool (Terminating* and Detach* do not). No
# Warmed:* state: a warm-pool instance is not part of the group's desired capacity ("Warm pools for Amazon
# EC2 Auto Scaling"), never runs a job, and leaves only by Auto Scaling's sizing of the pool; counted here,
# it would be adopted as a booting machine, removed as "stuck" and terminated with a decrement that takes a
# machine from the group.
LIVE_STATES = frozenset(
    {
        "Pending",
        "Pending:Wait",
        "Pending:Proceed",
        "InService",
        "Standby",
        "EnteringStandby",
    }
)
# DescribeAutoScalingGroups takes at most this many names per call.
_NAMES_PER_CALL = 50
_IDS_PER_DESCRIBE = 500


@dataclass(frozen=True)
class Instance:
    instance_id: str
    lifecycle_state: str
    protected: bool
    healthy: bool = True
    instance_type: str = ""
    availability_zone: str = ""

    @property
    def live(self) -> bool:
        return self.lifecycle_state in LIVE_STATES

    @property
    def in_service(self) -> bool:
        return self.lifecycle_state == "InService"


@dataclass(frozen=True)
class GroupView:
    """One Auto Scaling group as read now."""

    asg: str
    desired: int
    min_size: int
    max_size: int
    instances: tuple[Instance, ...]
    instance_types: tuple[str, ...] = ()  # mixed-instances overrides, in priority order
    on_demand_percentage: int | None = None  # None: not a mixed-instances group
    launch_template: dict[str, str] | None = None
    #: The mixed-instances group's InstancesDistribution exactly as read (None: not a mixed-instances group).
    instances_distribution: Mapping[str, Any] | None = None
    #: The group's warm pool as DescribeAutoScalingGroups reports it (WarmPoolConfiguration); None: it has
    #: none, or one marked for deletion (Status PendingDelete).
    warm_pool: WarmPoolSettings | None = None
    #: Instances in the warm pool now (WarmPoolSize): never part of `instances`, never in service.
    warm_size: int = 0

    def live_instances(self) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.live)


class Fleet(Protocol):
    """What the reconciler needs from the machines' provider (ASG here, simulated in sim/)."""

    def read_groups(self, asgs: Sequence[str]) -> dict[str, GroupView]:
        """Every named group in as few calls as the API allows (calls grow with pools, not machines).

        Without launch times: a machine record carries its own, so only `launch_times` asks for them.
        """
        ...

    def launch_times(self, instance_ids: Sequence[str]) -> dict[str, datetime]:
        """When each instance launched; one that no longer exists is left out.

        Asked only for instances the scaler has no record of (a lost launch event), so a steady fleet
        makes no such call.
        """
        ...

    def set_desired_capacity(self, asg: str, desired: int) -> None: ...

    def protect(self, asg: str, instance_ids: Sequence[str]) -> None:
        """Protect from scale-in: the scaler, never the ASG, chooses what to terminate."""
        ...

    def terminate(self, instance_id: str, states: frozenset[str] = LIVE_STATES) -> bool:
        """Terminate one machine and decrement the group's desired capacity, once, if its lifecycle state is
        one of `states`.

        False when the machine was already leaving (it ended itself, or another reconcile ended it): nothing
        was decremented, and the caller re-reads the group before it sets a capacity.
        """
        ...

    def complete_lifecycle_action(
        self, asg: str, hook: str, token: str, instance_id: str, result: str
    ) -> None:
        """Let a launching/terminating instance go on (CONTINUE) or fail it (ABANDON)."""
        ...

    def set_instance_types(self, group: GroupView, types: Sequence[str]) -> None:
        """Reorder a mixed-instances group's instance types (first = preferred); its Spot/on-demand split
        (base, percentage, strategies) stays exactly as it is."""
        ...

    def instance_addresses(self, instance_id: str) -> list[str]:
        """Private IP and DNS names: the SANs of the machine's Docker server certificate."""
        ...


class WarmPools(Protocol):
    """A group's warm pool (EC2 Auto Scaling); a port of its own, so a fleet without warm pools (the
    simulator's) needs none of it."""

    def put_warm_pool(self, asg: str, settings: WarmPoolSettings) -> None: ...

    def delete_warm_pool(self, asg: str) -> None: ...


class AsgFleet:
    """Fleet on EC2 Auto Scaling."""

    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    def read_groups(self, asgs: Sequence[str]) -> dict[str, GroupView]:
        views: dict[str, GroupView] = {}
        names = list(dict.fromkeys(asgs))
        for start in range(0, len(names), _NAMES_PER_CALL):
            groups = self._aws.paginate(
                "autoscaling",
                "describe_auto_scaling_groups",
                "AutoScalingGroups",
                AutoScalingGroupNames=names[start : start + _NAMES_PER_CALL],
            )
            for group in groups:
                view = _group_view(group)
                views[view.asg] = view
        return views

    def launch_times(self, instance_ids: Sequence[str]) -> dict[str, datetime]:
        """LaunchTime per instance: DescribeAutoScalingGroups does not carry it, DescribeInstances does."""
        ids = list(dict.fromkeys(instance_ids))
        times: dict[str, datetime] = {}
        for start in range(0, len(ids), _IDS_PER_DESCRIBE):
            chunk = ids[start : start + _IDS_PER_DESCRIBE]
            try:
                reservations = self._aws.paginate(
                    "ec2", "describe_instances", "Reservations", InstanceIds=chunk
                )
            except AwsCallError as exc:
                if exc.code != "InvalidInstanceID.NotFound":
                    raise
                continue  # an instance vanished between the two reads: the next tick sees the truth
            for reservation in reservations:
                for inst in reservation.get("Instances", []):
                    times[inst["InstanceId"]] = inst["LaunchTime"]
        return times

    def set_desired_capacity(self, asg: str, desired: int) -> None:
        self._aws.call(
            "autoscaling",
            "set_desired_capacity",
            AutoScalingGroupName=asg,
            DesiredCapacity=desired,
            HonorCooldown=False,
        )

    def protect(self, asg: str, instance_ids: Sequence[str]) -> None:
        ids = list(instance_ids)
        for start in range(0, len(ids), 50):
            self._aws.call(
                "autoscaling",
                "set_instance_protection",
                AutoScalingGroupName=asg,
                InstanceIds=ids[start : start + 50],
                ProtectedFromScaleIn=True,
            )

    def terminate(self, instance_id: str, states: frozenset[str] = LIVE_STATES) -> bool:
        """A machine ends itself (its user data calls this same API with a decrement once run-single exits),
        so the scaler's own call may meet one already leaving. Calling again would decrement twice, so the
        instance is read first (DescribeAutoScalingInstances: its group and lifecycle state), and the call is
        made only while it is still live. An instance that left between the read and the call is answered
        with a ValidationError "Instance Id not found - No managed instance found for instance ID ..."
        (EC2 Auto Scaling API reference, TerminateInstanceInAutoScalingGroup, Errors: ValidationError): that
        too means "already gone", never a failure.
        """
        found = self._aws.call(
            "autoscaling", "describe_auto_scaling_instances", InstanceIds=[instance_id]
        ).get("AutoScalingInstances", [])
        if not found or found[0].get("LifecycleState") not in states:
            return False
        try:
            self._aws.call(
                "autoscaling",
                "terminate_instance_in_auto_scaling_group",
                InstanceId=instance_id,
                ShouldDecrementDesiredCapacity=True,
            )
        except AwsCallError as exc:
            if exc.code == "ValidationError" and "not found" in str(exc).lower():
                return False
            raise
        return True

    def set_instance_types(self, group: GroupView, types: Sequence[str]) -> None:
        """UpdateAutoScalingGroup: the same launch template and distribution, only the overrides reordered.

        Only a group that already has a mixed-instances policy: turning a plain launch-template group into
        one "may replace existing instances to match the new purchasing options", and so may changing the
        split (UpdateAutoScalingGroup API reference). The distribution read from the group is sent back
        unchanged, so `on_demand_base` and `on_demand_percentage` stay the operator's. "Existing instances
        continue to run with the configuration that they were originally launched with" (same page): a new
        order steers only the next launches.
        """
        if group.launch_template is None or group.instances_distribution is None:
            raise AwsCallError(
                "autoscaling",
                "update_auto_scaling_group",
                "NotMixedInstances",
                f"group {group.asg} has no mixed-instances policy whose types could be reordered",
                retryable=False,
            )
        self._aws.call(
            "autoscaling",
            "update_auto_scaling_group",
            AutoScalingGroupName=group.asg,
            MixedInstancesPolicy={
                "LaunchTemplate": {
                    "LaunchTemplateSpecification": group.launch_template,
                    "Overrides": [{"InstanceType": t} for t in types],
                },
                "InstancesDistribution": dict(group.instances_distribution),
            },
        )

    def complete_lifecycle_action(
        self, asg: str, hook: str, token: str, instance_id: str, result: str
    ) -> None:
        # moto does not implement this call: tests stub it with botocore's Stubber at this seam.
        self._aws.call(
            "autoscaling",
            "complete_lifecycle_action",
            AutoScalingGroupName=asg,
            LifecycleHookName=hook,
            LifecycleActionToken=token,
            LifecycleActionResult=result,
            InstanceId=instance_id,
        )

    def put_warm_pool(self, asg: str, settings: WarmPoolSettings) -> None:
        """PutWarmPool "creates or updates a warm pool" (Amazon EC2 Auto Scaling API Reference, PutWarmPool):
        the same call sizes it. It is refused on a group with a mixed instances policy or Spot (earlier
        editions of that page; "Warm pools for Amazon EC2 Auto Scaling", Limitations, 2023 edition): the
        caller never asks there, and a refusal is an AwsCallError like any other."""
        self._aws.call(
            "autoscaling",
            "put_warm_pool",
            AutoScalingGroupName=asg,
            MinSize=settings.min_size,
            MaxGroupPreparedCapacity=-1
            if settings.max_group_prepared_capacity is None
            else settings.max_group_prepared_capacity,
            PoolState=settings.pool_state,
            InstanceReusePolicy={"ReuseOnScaleIn": settings.reuse_on_scale_in},
        )

    def delete_warm_pool(self, asg: str) -> None:
        """DeleteWarmPool without ForceDelete: Auto Scaling terminates the warm instances itself, after
        their lifecycle actions complete (API Reference, DeleteWarmPool)."""
        self._aws.call("autoscaling", "delete_warm_pool", AutoScalingGroupName=asg)

    def instance_addresses(self, instance_id: str) -> list[str]:
        reservations = self._aws.call("ec2", "describe_instances", InstanceIds=[instance_id]).get(
            "Reservations", []
        )
        out: list[str] = []
        for reservation in reservations:
            for inst in reservation.get("Instances", []):
                for key in ("PrivateIpAddress", "PrivateDnsName", "PublicIpAddress", "PublicDnsName"):
                    value = inst.get(key)
                    if value and value not in out:
                        out.append(str(value))
        return out


def _instance(raw: Mapping[str, Any]) -> Instance:
    """One instance as DescribeAutoScalingGroups lists it (DescribeWarmPool lists warm ones alike)."""
    return Instance(
        instance_id=str(raw["InstanceId"]),
        lifecycle_state=str(raw["LifecycleState"]),
        protected=bool(raw.get("ProtectedFromScaleIn", False)),
        healthy=raw.get("HealthStatus", "Healthy") == "Healthy",
        instance_type=str(raw.get("InstanceType", "")),
        availability_zone=str(raw.get("AvailabilityZone", "")),
    )


def _group_view(group: dict[str, object]) -> GroupView:
    raw_instances = group.get("Instances", [])
    assert isinstance(raw_instances, list)
    instances = tuple(_instance(i) for i in raw_instances)
    mixed = group.get("MixedInstancesPolicy")
    types: tuple[str, ...] = ()
    on_demand: int | None = None
    distribution: dict[str, Any] | None = None
    template = group.get("LaunchTemplate")
    if isinstance(mixed, dict):
        spec = mixed.get("LaunchTemplate", {})
        types = tuple(str(o["InstanceType"]) for o in spec.get("Overrides", []) if o.get("InstanceType"))
        distribution = dict(mixed.get("InstancesDistribution", {}))
        on_demand = int(distribution.get("OnDemandPercentageAboveBaseCapacity", 100))
        template = spec.get("LaunchTemplateSpecification", template)
    return GroupView(
        asg=str(group["AutoScalingGroupName"]),
        desired=int(str(group["DesiredCapacity"])),
        min_size=int(str(group["MinSize"])),
        max_size=int(str(group["MaxSize"])),
        instances=instances,
        instance_types=types,
        on_demand_percentage=on_demand,
        launch_template=_template_spec(template),
        instances_distribution=distribution,
        warm_pool=_warm_pool_settings(group.get("WarmPoolConfiguration")),
        warm_size=int(str(group.get("WarmPoolSize") or 0)),
    )


def _warm_pool_settings(raw: object) -> WarmPoolSettings | None:
    """WarmPoolConfiguration (API Reference, WarmPoolConfiguration): MinSize defaults to 0, PoolState to
    Stopped, and a MaxGroupPreparedCapacity of -1 or none means "the group's maximum size"."""
    if not isinstance(raw, dict) or raw.get("Status") == "PendingDelete":
        return None
    prepared = raw.get("MaxGroupPreparedCapacity")
    reuse = raw.get("InstanceReusePolicy") or {}
    return WarmPoolSettings(
        min_size=int(raw.get("MinSize") or 0),
        max_group_prepared_capacity=None if prepared in (None, -1) else int(prepared),
        pool_state=str(raw.get("PoolState") or "Stopped"),
        reuse_on_scale_in=bool(reuse.get("ReuseOnScaleIn", False)),
    )


def _template_spec(template: object) -> dict[str, str] | None:
    """The launch template reference UpdateAutoScalingGroup accepts (by id, else by name)."""
    if not isinstance(template, dict):
        return None
    version = str(template.get("Version", "$Latest"))
    if template.get("LaunchTemplateId"):
        return {"LaunchTemplateId": str(template["LaunchTemplateId"]), "Version": version}
    if template.get("LaunchTemplateName"):
        return {"LaunchTemplateName": str(template["LaunchTemplateName"]), "Version": version}
    return None
