"""One Auto Scaling group per pool, shaped for a scaler that decides everything itself.

Each group starts at zero, protects every new machine from scale-in (the scaler picks what to terminate),
never rebalances zones on its own, and holds launches and terminations on lifecycle hooks until the scaler
has prepared or retired the machine. Host pools (macOS, Windows BYOL) launch into a License Manager host
resource group. Imports CDK, chalicelib (config, user data, tags) and infra's policy and settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_resourcegroups as resourcegroups
from aws_cdk import custom_resources as cr
from constructs import Construct

from chalicelib.capacity.warm import POOL_STATES
from chalicelib.config import HostManagement, Platform, Pool
from chalicelib.resources import TAG_DEPLOYMENT, TAG_MANAGED, TAG_POOL
from infra.policy import Scope, machine_grants, machine_role_path, policy_document
from infra.settings import Settings
from infra.userdata import render

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
#: EC2's user data limit: 16 KB before base64 (RunInstances).
USER_DATA_LIMIT = 16 * 1024
#: Dedicated-host licences count what the host has (a Mac host: one socket; Windows BYOL: physical cores).
LICENSE_COUNTING = {Platform.MACOS: "Socket", Platform.WINDOWS: "Core", Platform.LINUX: "Core"}


@dataclass(frozen=True)
class HostGroup:
    group: resourcegroups.CfnGroup
    license_arn: str


class Pools(Construct):
    """Every pool of the config: role + instance profile, launch template, group, and host group if any."""

    def __init__(self, scope: Construct, construct_id: str, settings: Settings, grant_scope: Scope) -> None:
        super().__init__(scope, construct_id)
        self.security_group = ec2.CfnSecurityGroup(
            self,
            "MachineSecurityGroup",
            vpc_id=settings.vpc_id,
            group_description=f"{settings.prefix} machines: no inbound (jobs run on the machine)",
            security_group_egress=[
                ec2.CfnSecurityGroup.EgressProperty(ip_protocol="-1", cidr_ip="0.0.0.0/0", description="all")
            ],
        )
        self.groups: dict[str, autoscaling.CfnAutoScalingGroup] = {}
        self.host_groups: dict[str, HostGroup] = {}
        #: Pool name -> its launch template's ARN / its machine role's ARN (the scaler's fallback grants).
        self.launch_templates: dict[str, str] = {}
        self.machine_roles: dict[str, str] = {}
        for pool in settings.config.pools:
            machines = PoolGroup(
                self, f"Pool-{pool.name}", settings, grant_scope, pool, self.security_group.attr_group_id
            )
            self.groups[pool.name] = machines.group
            self.launch_templates[pool.name] = grant_scope.arn(
                "ec2", f"launch-template/{machines.template.ref}"
            )
            self.machine_roles[pool.name] = machines.role.attr_arn
            if machines.host_group is not None:
                self.host_groups[pool.name] = machines.host_group
        cdk.Tags.of(self).add(TAG_DEPLOYMENT, settings.prefix)


class PoolGroup(Construct):
    """A pool's machines: instance role, launch template, Auto Scaling group, AZRebalance suspended."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        settings: Settings,
        grant_scope: Scope,
        pool: Pool,
        security_group_id: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.CfnRole(
            self,
            "MachineRole",
            assume_role_policy_document=_trust("ec2.amazonaws.com"),
            # The path lets the chalice deploy policy scope iam:PassRole to these roles (infra/policy.py).
            path=machine_role_path(settings.prefix),
            description=f"runner-scaler machine of pool {pool.name}: its own secret, its pool's cache prefix",
            policies=[
                iam.CfnRole.PolicyProperty(
                    policy_name="machine", policy_document=policy_document(machine_grants(grant_scope, pool))
                )
            ],
        )
        profile = iam.CfnInstanceProfile(self, "InstanceProfile", roles=[self.role.ref])
        self.host_group = _host_group(self, settings, pool) if pool.hosts else None
        self.template = _launch_template(self, settings, pool, profile, security_group_id, self.host_group)
        self.group = _auto_scaling_group(self, settings, pool, self.template)
        self.warm_pool = _warm_pool(self, pool, self.group)
        _suspend_az_rebalance(self, grant_scope, pool, self.group)


def _trust(service: str) -> dict[str, object]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    }


def _user_data(settings: Settings, pool: Pool) -> str:
    text = render(pool, settings.prefix, launch_hook_timeout=settings.launch_hook_timeout)
    if len(text.encode("utf-8")) > USER_DATA_LIMIT:
        raise ValueError(f"pool {pool.name}: user data is over EC2's 16 KB limit")
    return text


def _launch_template(
    scope: Construct,
    settings: Settings,
    pool: Pool,
    profile: iam.CfnInstanceProfile,
    security_group_id: str,
    host_group: HostGroup | None,
) -> ec2.CfnLaunchTemplate:
    platform = pool.platform.value
    volume = settings.root_volume(pool)
    tags = [cdk.CfnTag(key=k, value=v) for k, v in _machine_tags(settings, pool).items()]
    data = ec2.CfnLaunchTemplate.LaunchTemplateDataProperty(
        image_id=settings.amis[platform],
        instance_type=_instance_type(pool),
        iam_instance_profile=ec2.CfnLaunchTemplate.IamInstanceProfileProperty(arn=profile.attr_arn),
        security_group_ids=[security_group_id, *settings.machine_security_groups],
        # A machine leaves by shutting itself down once its runner exits: EC2 then terminates it (Amazon EC2
        # User Guide, "Change the instance initiated shutdown behavior"), and the scaler decrements the
        # group. So the machine's role needs no right to end an instance (docs/security.md).
        instance_initiated_shutdown_behavior="terminate",
        # IMDSv2 only, and one hop: job containers (one more hop away) never reach the instance credentials.
        metadata_options=ec2.CfnLaunchTemplate.MetadataOptionsProperty(
            http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
        ),
        block_device_mappings=[
            ec2.CfnLaunchTemplate.BlockDeviceMappingProperty(
                device_name=volume.device,
                ebs=ec2.CfnLaunchTemplate.EbsProperty(
                    encrypted=True, volume_type="gp3", volume_size=volume.size_gib, delete_on_termination=True
                ),
            )
        ],
        user_data=cdk.Fn.base64(_user_data(settings, pool)),
        # A hibernated warm pool needs instances launched with hibernation configured (and an encrypted
        # root volume large enough for the RAM): EC2 User Guide, "Hibernate your Amazon EC2 instance",
        # prerequisites. Without it, the stop that should hibernate is a plain stop.
        hibernation_options=(
            ec2.CfnLaunchTemplate.HibernationOptionsProperty(configured=True)
            if pool.warm_pool_on and pool.warm_pool_state == "hibernated"
            else None
        ),
        tag_specifications=[
            ec2.CfnLaunchTemplate.TagSpecificationProperty(resource_type=kind, tags=tags)
            for kind in ("instance", "volume")
        ],
        placement=(
            ec2.CfnLaunchTemplate.PlacementProperty(
                tenancy="host", host_resource_group_arn=host_group.group.attr_arn
            )
            if host_group
            else None
        ),
        license_specifications=(
            [
                ec2.CfnLaunchTemplate.LicenseSpecificationProperty(
                    license_configuration_arn=host_group.license_arn
                )
            ]
            if host_group
            else None
        ),
    )
    return ec2.CfnLaunchTemplate(
        scope,
        "LaunchTemplate",
        launch_template_name=f"{settings.prefix}-{pool.name}",
        launch_template_data=data,
    )


def _instance_type(pool: Pool) -> str:
    if pool.hosts:
        return pool.hosts.instance_type
    if not pool.instance_types:
        raise ValueError(f"pool {pool.name}: set instance_types (the launch template needs one)")
    return pool.instance_types[0]


def _machine_tags(settings: Settings, pool: Pool) -> dict[str, str]:
    return {
        "Name": f"{settings.prefix}-{pool.name}",
        TAG_POOL: pool.name,
        TAG_DEPLOYMENT: settings.prefix,
        TAG_MANAGED: "true",
    }


def _auto_scaling_group(
    scope: Construct, settings: Settings, pool: Pool, template: ec2.CfnLaunchTemplate
) -> autoscaling.CfnAutoScalingGroup:
    spec = autoscaling.CfnAutoScalingGroup.LaunchTemplateSpecificationProperty(
        launch_template_id=template.ref, version=template.attr_latest_version_number
    )
    mixed = _spot_policy(settings, pool, spec) if pool.spot and not pool.hosts else None
    zones = pool.hosts.availability_zones if pool.hosts else ()
    return autoscaling.CfnAutoScalingGroup(
        scope,
        "Group",
        auto_scaling_group_name=pool.asg,
        min_size="0",
        max_size=str(pool.max_instances),
        # No DesiredCapacity: it starts at MinSize (0), and a template value would be written back on every
        # stack update, undoing the scaler's decision while jobs run.
        vpc_zone_identifier=list(settings.subnets_for(zones)),
        launch_template=None if mixed else spec,
        mixed_instances_policy=mixed,
        new_instances_protected_from_scale_in=True,
        # Spot rebalance recommendations go to the scaler (drain, then replace), not to the group.
        capacity_rebalance=False,
        lifecycle_hook_specification_list=[
            autoscaling.CfnAutoScalingGroup.LifecycleHookSpecificationProperty(
                lifecycle_hook_name="launch",
                lifecycle_transition=LAUNCHING,
                heartbeat_timeout=settings.launch_hook_timeout,
                # A machine the scaler could not prepare (no runner, no secret) is useless: let it go.
                default_result="ABANDON",
            ),
            autoscaling.CfnAutoScalingGroup.LifecycleHookSpecificationProperty(
                lifecycle_hook_name="terminate",
                lifecycle_transition=TERMINATING,
                heartbeat_timeout=settings.terminate_hook_timeout,
                # Never keep a dying machine waiting on the scaler: the orphan sweep cleans up later.
                default_result="CONTINUE",
            ),
        ],
        metrics_collection=[autoscaling.CfnAutoScalingGroup.MetricsCollectionProperty(granularity="1Minute")],
        tags=[
            autoscaling.CfnAutoScalingGroup.TagPropertyProperty(key=k, value=v, propagate_at_launch=True)
            for k, v in _machine_tags(settings, pool).items()
        ],
    )


def _warm_pool(
    scope: Construct, pool: Pool, group: autoscaling.CfnAutoScalingGroup
) -> autoscaling.CfnWarmPool | None:
    """`AWS::AutoScaling::WarmPool` beside a pool's group when its `warm_pool` is not off (never on a Spot or
    dedicated-host pool: `Pool.warm_pool_on`).

    The stack creates it empty ("auto") or at its fixed size, stopped or hibernated, and never reusing a
    machine on scale-in. With "auto" the scaler then sizes it on every reconcile (PutWarmPool), so its
    MinSize and MaxGroupPreparedCapacity are the scaler's. CloudFormation writes the template's values again
    only when these properties change in the template; the next reconcile then resizes it (a tick of warm
    capacity at most, never a busy machine: warm machines run no job).
    """
    if not pool.warm_pool_on:
        return None
    size = pool.warm_pool if isinstance(pool.warm_pool, int) else 0
    size = min(size, pool.max_instances)
    warm = autoscaling.CfnWarmPool(
        scope,
        "WarmPool",
        auto_scaling_group_name=pool.asg,
        min_size=size,
        max_group_prepared_capacity=size,
        pool_state=POOL_STATES[pool.warm_pool_state],
        instance_reuse_policy=autoscaling.CfnWarmPool.InstanceReusePolicyProperty(reuse_on_scale_in=False),
    )
    warm.add_dependency(group)
    return warm


def _spot_policy(
    settings: Settings,
    pool: Pool,
    spec: autoscaling.CfnAutoScalingGroup.LaunchTemplateSpecificationProperty,
) -> autoscaling.CfnAutoScalingGroup.MixedInstancesPolicyProperty:
    """Spot across every listed type (price-capacity-optimized), with on-demand for the configured share.

    The types listed in order also rank the on-demand fallback (prioritized). Auto Scaling does not switch a
    group to on-demand when Spot runs dry; the launch-failure alarm tells the scaler, which can raise
    `on_demand_percentage` (see infra/README.md).
    """
    return autoscaling.CfnAutoScalingGroup.MixedInstancesPolicyProperty(
        launch_template=autoscaling.CfnAutoScalingGroup.LaunchTemplateProperty(
            launch_template_specification=spec,
            overrides=[
                autoscaling.CfnAutoScalingGroup.LaunchTemplateOverridesProperty(instance_type=t)
                for t in pool.instance_types
            ],
        ),
        instances_distribution=autoscaling.CfnAutoScalingGroup.InstancesDistributionProperty(
            on_demand_base_capacity=settings.on_demand_base,
            on_demand_percentage_above_base_capacity=settings.on_demand_percentage,
            on_demand_allocation_strategy="prioritized",
            spot_allocation_strategy="price-capacity-optimized",
        ),
    )


def _suspend_az_rebalance(
    scope: Construct, grant_scope: Scope, pool: Pool, group: autoscaling.CfnAutoScalingGroup
) -> None:
    """Suspend AZRebalance: rebalancing terminates running machines, busy ones included.

    CloudFormation has no property for suspended processes, so a deploy-time SDK call does it.
    """
    call = cr.AwsSdkCall(
        service="AutoScaling",
        action="suspendProcesses",
        parameters={"AutoScalingGroupName": pool.asg, "ScalingProcesses": ["AZRebalance"]},
        physical_resource_id=cr.PhysicalResourceId.of(f"{pool.asg}/AZRebalance"),
    )
    suspend = cr.AwsCustomResource(
        scope,
        "SuspendAZRebalance",
        on_create=call,
        on_update=call,
        install_latest_aws_sdk=False,
        policy=cr.AwsCustomResourcePolicy.from_statements(
            [
                iam.PolicyStatement(
                    actions=["autoscaling:SuspendProcesses"],
                    resources=[grant_scope.asg_arn(pool.asg)],
                )
            ]
        ),
    )
    suspend.node.add_dependency(group)


def _host_group(scope: Construct, settings: Settings, pool: Pool) -> HostGroup:
    """The pool's host resource group (Resource Groups type AWS::EC2::HostManagement) and its licence."""
    hosts = pool.hosts
    assert hosts is not None
    license_arn = hosts.license_configuration or _license_configuration(scope, settings, pool)
    auto = "true" if hosts.host_management is HostManagement.AUTO else "false"
    management = [
        _parameter("allowed-host-based-license-configurations", [license_arn]),
        # "scaler": runner-scaler allocates and releases hosts (24 h minimum, scrubbing); "auto": License
        # Manager does.
        _parameter("auto-allocate-host", [auto]),
        _parameter("auto-release-host", [auto]),
    ]
    if hosts.host_family:
        management.insert(0, _parameter("allowed-host-families", [hosts.host_family]))
    group = resourcegroups.CfnGroup(
        scope,
        "HostResourceGroup",
        name=hosts.host_resource_group,
        description=f"runner-scaler dedicated hosts of pool {pool.name}",
        configuration=[
            resourcegroups.CfnGroup.ConfigurationItemProperty(
                type="AWS::EC2::HostManagement", parameters=management
            ),
            resourcegroups.CfnGroup.ConfigurationItemProperty(
                type="AWS::ResourceGroups::Generic",
                parameters=[
                    _parameter("allowed-resource-types", ["AWS::EC2::Host"]),
                    _parameter("deletion-protection", ["UNLESS_EMPTY"]),
                ],
            ),
        ],
    )
    return HostGroup(group=group, license_arn=license_arn)


def _license_configuration(scope: Construct, settings: Settings, pool: Pool) -> str:
    """A self-managed, host-based licence configuration; returns its ARN.

    Made by a deploy-time SDK call: `AWS::LicenseManager::LicenseConfiguration` exists in a few regions only
    (cfn-lint 1.58's schemas: us-east-1, us-west-2, eu-central-1, ap-south-1, ...), and the CloudFormation
    types every region has (`License`, `Grant`) model granted licences, not a configuration of your own.
    """
    name = f"{settings.prefix}-{pool.name}"
    create = cr.AwsSdkCall(
        service="LicenseManager",
        action="createLicenseConfiguration",
        parameters={
            "Name": name,
            "Description": f"runner-scaler pool {pool.name}: host-based licence of its host resource group",
            "LicenseCountingType": LICENSE_COUNTING[pool.platform],
            "LicenseRules": ["#allowedTenancy=EC2-DedicatedHost"],
            "Tags": [
                {"Key": TAG_DEPLOYMENT, "Value": settings.prefix},
                {"Key": TAG_POOL, "Value": pool.name},
            ],
        },
        physical_resource_id=cr.PhysicalResourceId.from_response("LicenseConfigurationArn"),
    )
    delete = cr.AwsSdkCall(
        service="LicenseManager",
        action="deleteLicenseConfiguration",
        parameters={"LicenseConfigurationArn": cr.PhysicalResourceIdReference()},
    )
    licence = cr.AwsCustomResource(
        scope,
        "LicenseConfiguration",
        on_create=create,
        on_delete=delete,
        install_latest_aws_sdk=False,
        policy=cr.AwsCustomResourcePolicy.from_statements(
            [
                # CreateLicenseConfiguration has no resource type to scope to (Service Authorization
                # Reference): AWS forces `*`. Deploy time only, on the custom resource's own role.
                iam.PolicyStatement(actions=["license-manager:CreateLicenseConfiguration"], resources=["*"]),
                iam.PolicyStatement(
                    actions=["license-manager:DeleteLicenseConfiguration"],
                    resources=[
                        cdk.Stack.of(scope).format_arn(
                            service="license-manager",
                            resource="license-configuration",
                            resource_name="*",
                            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                        )
                    ],
                ),
            ]
        ),
    )
    # The physical id is the ARN: unlike a response field, it survives updates that make no call.
    resource = licence.node.default_child
    assert isinstance(resource, cdk.CustomResource)
    return resource.ref


def _parameter(name: str, values: list[str]) -> resourcegroups.CfnGroup.ConfigurationParameterProperty:
    return resourcegroups.CfnGroup.ConfigurationParameterProperty(name=name, values=values)
