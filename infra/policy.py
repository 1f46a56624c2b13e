"""Least-privilege IAM for the scaler's Lambda role and the pool machines' instance roles, as plain data.

One list of grants feeds both deploy paths: the CDK stack (ARNs carry CloudFormation tokens) and the
`.chalice/policy-<stage>.json` files that `chalice deploy` uses (region and account left as `*`, names exact).
Every grant says where its need comes from: a call in chalicelib (CODE), an action AWS authorizes as part of
such a call (DEPENDENCY, listed with its source in `infra/authorization.py`), the Lambda service acting with
the function's role (SERVICE), or a handler the architecture plans and the code does not call yet (PLANNED).
`tests/functional/test_infra_policy.py` checks the CODE grants against the `.call(` / `.paginate(` sites, and
`tests/functional/test_authorization.py` checks every call's dependencies.

Imports chalicelib's config and resource names and the standard library only (no CDK). From the repo root:

    python -m infra.policy --config examples/config.toml --write     # regenerate .chalice/policy-*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from chalicelib.capacity.fallback import can_fall_back
from chalicelib.config import Config, Pool, load_config_file
from chalicelib.resources import (
    ENV_PREFIX,
    TAG_DEPLOYMENT,
    TAG_INSTANCE_ARN,
    TAG_MANAGED,
    TAG_POOL,
    Names,
)
from infra.userdata import cache_prefix

ROOT = Path(__file__).resolve().parents[1]
CHALICE_CONFIG = ROOT / ".chalice" / "config.json"

#: Boto3 service names whose IAM prefix differs. Every service chalicelib calls today uses its own name.
IAM_PREFIX = {"elbv2": "elasticloadbalancing", "stepfunctions": "states"}
#: Operations whose IAM action is not the API name (IAM Service Authorization Reference, per service).
IRREGULAR_ACTIONS = {
    ("s3", "list_objects_v2"): "s3:ListBucket",
    ("s3", "head_object"): "s3:GetObject",
    ("s3", "head_bucket"): "s3:ListBucket",
    # SendMessage authorizes the batch too (SQS Developer Guide, "Amazon SQS batch actions").
    ("sqs", "send_message_batch"): "sqs:SendMessage",
    # A transaction's Put and Update actions are authorized as PutItem and UpdateItem on their table, no
    # action of its own (DynamoDB developer guide, "Using IAM with DynamoDB transactions"). The one
    # transaction (Store.register_runner) holds a Put, named here, and an Update (infra/authorization.py).
    ("dynamodb", "transact_write_items"): "dynamodb:PutItem",
}
#: Calls that need no grant at all (the API is open to every signed caller).
NO_PERMISSION = {("sts", "get_caller_identity"): "GetCallerIdentity needs no permission (STS API reference)"}
#: Calls made only when the config names the resource: granted on exactly what it names, else not at all.
CONFIG_GATED = {
    ("license-manager", "get_license_configuration"): "only for host pools naming a license_configuration",
}
#: Secrets Manager appends "-" and six random characters to every secret ARN.
SECRET_SUFFIX = "-??????"


class Origin(StrEnum):
    CODE = "code"  # chalicelib calls it through AwsClients.call / paginate
    DEPENDENCY = "dependency"  # AWS authorizes it as part of a CODE call (infra/authorization.py)
    SERVICE = "service"  # the Lambda service calls it with the function's role (event source, logs)
    PLANNED = "planned"  # a planned handler needs it; the code does not call it yet


@dataclass(frozen=True)
class Grant:
    """One IAM statement, with the reason a reviewer needs, especially for a `*` resource."""

    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    why: str
    origin: Origin = Origin.CODE
    conditions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def statement(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "Sid": self.sid,
            "Effect": "Allow",
            "Action": sorted(self.actions),
            "Resource": list(self.resources) if len(self.resources) != 1 else self.resources[0],
        }
        if self.conditions:
            body["Condition"] = {op: dict(values) for op, values in self.conditions.items()}
        return body


@dataclass(frozen=True)
class Scope:
    """What one deployment's grants are scoped to. `region`/`account` may be CloudFormation tokens or `*`."""

    names: Names
    config: Config
    partition: str = "aws"
    region: str = "*"
    account: str = "*"
    #: ARNs of the log groups the functions write to (CDK: exact; chalice deploy: a name pattern).
    log_groups: tuple[str, ...] = ()
    #: chalice deploy lets Lambda create its log groups; CDK creates them (with retention) itself.
    create_log_groups: bool = False
    #: Pool name -> ARN of its launch template (CDK knows them). Without it (chalice deploy), any launch
    #: template that carries this deployment's tag.
    launch_templates: Mapping[str, str] = field(default_factory=dict)
    #: Pool name -> ARN of its machines' role (CDK). Without it (chalice deploy), roles under the IAM path
    #: `/<prefix>/`, the path infra/ gives them.
    machine_roles: Mapping[str, str] = field(default_factory=dict)
    #: ARN of the rotation function; "" (chalice deploy): `<app>-<stage>-rotate_base_certs` by name.
    rotation_function: str = ""

    def arn(self, service: str, resource: str, *, regional: bool = True) -> str:
        region, account = (self.region, self.account) if regional else ("", "")
        return f"arn:{self.partition}:{service}:{region}:{account}:{resource}"

    @property
    def prefix(self) -> str:
        return self.names.prefix

    @property
    def host_pools(self) -> tuple[Pool, ...]:
        return tuple(p for p in self.config.pools if p.hosts is not None)

    def asg_arn(self, asg: str) -> str:
        # autoScalingGroup:<uuid>:autoScalingGroupName/<name>; the uuid is unknown until the group exists.
        return self.arn("autoscaling", f"autoScalingGroup:*:autoScalingGroupName/{asg}")

    @property
    def retuned_pools(self) -> tuple[Pool, ...]:
        """Pools whose group the instance-type fallback may update (never a host pool)."""
        return tuple(p for p in self.config.pools if can_fall_back(p))

    def launch_template_arns(self, pools: Sequence[Pool]) -> tuple[str, ...]:
        if self.launch_templates:
            return tuple(self.launch_templates[p.name] for p in pools)
        return (self.arn("ec2", "launch-template/*"),)

    def machine_role_arns(self, pools: Sequence[Pool]) -> tuple[str, ...]:
        if self.machine_roles:
            return tuple(self.machine_roles[p.name] for p in pools)
        return (f"arn:{self.partition}:iam::{self.account}:role{machine_role_path(self.prefix)}*",)

    def secret_arn(self, name: str) -> str:
        return self.arn("secretsmanager", f"secret:{name}{SECRET_SUFFIX}")

    def runtime_secret_names(self) -> tuple[str, ...]:
        """Secrets the app reads, by the same rule as `chalicelib.runtime`: config's name, else ours."""
        gitlab = self.config.gitlab
        names = [
            gitlab.api_token_secret or self.names.gitlab_token_secret,
            gitlab.webhook_tokens_secret or self.names.webhook_tokens_secret,
            self.names.base_certs_secret,
        ]
        if gitlab.ca_bundle_secret:
            names.append(gitlab.ca_bundle_secret)
        return tuple(dict.fromkeys(names))


def iam_action(service: str, operation: str) -> str:
    """`("autoscaling", "set_desired_capacity")` -> `"autoscaling:SetDesiredCapacity"`."""
    irregular = IRREGULAR_ACTIONS.get((service, operation))
    if irregular:
        return irregular
    pascal = "".join(part[:1].upper() + part[1:] for part in operation.split("_"))
    return f"{IAM_PREFIX.get(service, service)}:{pascal}"


def lambda_grants(scope: Scope) -> list[Grant]:
    """Everything the scaler's functions may do, each grant scoped to this deployment's resources."""
    names = scope.names
    table = scope.arn("dynamodb", f"table/{names.table}")
    queue = scope.arn("sqs", names.queue)
    asgs = tuple(scope.asg_arn(p.asg) for p in scope.config.pools)
    deployment_tag = {"StringEquals": {f"autoscaling:ResourceTag/{TAG_DEPLOYMENT}": scope.prefix}}
    grants = [
        Grant(
            "StateTable",
            (
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                "dynamodb:Query",
                "dynamodb:BatchWriteItem",
            ),
            (table, f"{table}/index/*"),
            "jobs, machines, events and pool leases live in the one table (chalicelib/store.py)",
        ),
        Grant(
            "DirtyQueueSend",
            ("sqs:SendMessage", "sqs:GetQueueUrl"),
            (queue,),
            "webhooks and the tick mark a pool dirty (chalicelib/queue.py, runtime.py)",
        ),
        Grant(
            "DirtyQueueConsume",
            ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"),
            (queue,),
            "the Lambda event source mapping polls the queue with the function's role",
            Origin.SERVICE,
        ),
        Grant(
            "DeadLetterRedrive",
            ("sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:DeleteMessage"),
            (scope.arn("sqs", names.dead_letter_queue),),
            "the dead-letter alarm moves failed pool-dirty messages back to the queue (chalicelib/alarms.py)",
        ),
        Grant(
            "FailedEventsDestination",
            ("sqs:SendMessage",),
            (scope.arn("sqs", names.failed_events_queue),),
            "Lambda sends an asynchronous invocation that failed every retry to the on-failure destination "
            "with the function's role (AWS Lambda Developer Guide, \"Capturing records of Lambda "
            'asynchronous invocations")',
            Origin.SERVICE,
        ),
        Grant(
            "ConfigParameter",
            ("ssm:GetParameter",),
            (scope.arn("ssm", f"parameter{names.config_parameter}"),),
            "the pools' TOML config (chalicelib/runtime.py)",
        ),
        Grant(
            "ReadSecrets",
            ("secretsmanager:GetSecretValue",),
            tuple(scope.secret_arn(n) for n in scope.runtime_secret_names()),
            "GitLab API token, webhook tokens, custom CA, and the fleet's base certs (signing server certs)",
        ),
        Grant(
            "DescribeFleet",
            (
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeAutoScalingInstances",
                "ec2:DescribeInstances",
                "ec2:DescribeHosts",
            ),
            ("*",),
            "AWS forces `*`: these Describe calls support no resource-level permission (Service "
            "Authorization Reference); scoped to this region instead",
            conditions=_region_condition(scope),
        ),
        Grant(
            "ManageOwnGroups",
            (
                "autoscaling:SetDesiredCapacity",
                "autoscaling:SetInstanceProtection",
                "autoscaling:TerminateInstanceInAutoScalingGroup",
                "autoscaling:CompleteLifecycleAction",
                "autoscaling:PutWarmPool",
                "autoscaling:DeleteWarmPool",
            ),
            asgs,
            "the pools' groups by name, and only while they carry this deployment's tag; the reconcile sizes "
            "each group's warm pool (fleet.put_warm_pool / delete_warm_pool)",
            conditions=deployment_tag,
        ),
        Grant(
            "MachineSecrets",
            (
                "secretsmanager:CreateSecret",
                "secretsmanager:PutSecretValue",
                "secretsmanager:TagResource",
                "secretsmanager:DeleteSecret",
                "secretsmanager:DescribeSecret",
            ),
            (scope.secret_arn(f"{scope.prefix}/machines/*"),),
            "lifecycle: each machine's runner token and server cert, deleted at terminate (secrets.py)",
        ),
        Grant(
            "RotateBaseCerts",
            (
                "secretsmanager:CreateSecret",
                "secretsmanager:TagResource",
                "secretsmanager:DescribeSecret",
                "secretsmanager:PutSecretValue",
                "secretsmanager:UpdateSecretVersionStage",
                "secretsmanager:RotateSecret",
            ),
            (scope.secret_arn(names.base_certs_secret),),
            "rotation: the four Secrets Manager rotation steps of the fleet's Docker TLS CA, and the tick "
            "creates the (tagged) secret when it is missing (rotation.py)",
        ),
        Grant(
            "InvokeRotation",
            ("lambda:InvokeFunction",),
            (
                scope.rotation_function
                or scope.arn("lambda", f"function:{scope.names.prefix}-rotate_base_certs"),
            ),
            "RotateSecret needs lambda:InvokeFunction on the secret's rotation function (Secrets Manager "
            'user guide, "Permissions for rotation"; RotateSecret API reference)',
            Origin.DEPENDENCY,
        ),
    ]
    grants += _retune_grants(scope)
    grants += _host_grants(scope)
    grants += _log_grants(scope)
    grants.append(
        Grant(
            "Tracing",
            ("xray:PutTraceSegments", "xray:PutTelemetryRecords"),
            ("*",),
            "active tracing (.chalice/config.json `xray`): Lambda's X-Ray daemon sends the functions' "
            "segments and chalicelib.tracing's subsegments with the function's role. AWS forces `*`: X-Ray "
            "has no resource-level permission for these actions (Service Authorization Reference)",
            Origin.SERVICE,
        )
    )
    return grants


def rotation_function_name(prefix: str) -> str:
    """The rotation function's fixed name in the CDK stack: the role's lambda:InvokeFunction grant
    (RotateSecret needs it) names it without referring to the function, which would make the role and the
    function depend on each other."""
    return f"{prefix}-rotate_base_certs"


def machine_role_path(prefix: str) -> str:
    """The IAM path of the pools' machine roles: lets the chalice deploy policy name them without ids."""
    return f"/{prefix}/"


def _retune_grants(scope: Scope) -> list[Grant]:
    """The instance-type fallback (fleet.set_instance_types) and what AWS checks behind it.

    UpdateAutoScalingGroup on a group with a launch template is also authorized against the template's
    contents: the caller must be allowed ec2:RunInstances with it, iam:PassRole of its instance profile's
    role, and ec2:CreateTags for its tag specifications (Auto Scaling user guide, "Control Amazon EC2 launch
    template usage in Auto Scaling groups"; infra/authorization.py).
    """
    pools = scope.retuned_pools
    if not pools:
        return []
    deployment_tag = {"StringEquals": {f"autoscaling:ResourceTag/{TAG_DEPLOYMENT}": scope.prefix}}
    templates = scope.launch_template_arns(pools)
    template_scope: dict[str, Mapping[str, Any]] = (
        {}
        if scope.launch_templates
        else {"StringEquals": {f"aws:ResourceTag/{TAG_DEPLOYMENT}": scope.prefix}}
    )
    launched = tuple(scope.arn("ec2", f"{kind}/*") for kind in ("instance", "volume", "network-interface"))
    used = tuple(scope.arn("ec2", f"{kind}/*") for kind in ("subnet", "security-group"))
    image = (f"arn:{scope.partition}:ec2:{scope.region}::image/*",)
    return [
        Grant(
            "RetuneGroups",
            ("autoscaling:UpdateAutoScalingGroup",),
            tuple(scope.asg_arn(p.asg) for p in pools),
            "instance-type fallback: reorder a Spot group's instance types (fleet.set_instance_types); "
            "host pools never",
            conditions=deployment_tag,
        ),
        Grant(
            "LaunchPoolTemplates",
            ("ec2:RunInstances",),
            templates,
            "UpdateAutoScalingGroup checks the caller may launch the group's template: these templates only",
            Origin.DEPENDENCY,
            conditions=template_scope,
        ),
        Grant(
            "LaunchFromPoolTemplates",
            ("ec2:RunInstances",),
            launched + used + image,
            "the instances, volumes and interfaces a launch creates and the subnets, security groups and "
            "images it uses, only through the pools' templates. AWS forces `*` ids: they are not known yet",
            Origin.DEPENDENCY,
            conditions={"ArnLike": {"ec2:LaunchTemplate": list(templates)}},
        ),
        Grant(
            "PassMachineRoles",
            ("iam:PassRole",),
            scope.machine_role_arns(pools),
            "the template's instance profile role, and only to EC2",
            Origin.DEPENDENCY,
            conditions={"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        ),
        Grant(
            "TagLaunchedMachines",
            ("ec2:CreateTags",),
            tuple(scope.arn("ec2", f"{kind}/*") for kind in ("instance", "volume")),
            "the template's tag specifications tag instances and volumes, only as part of RunInstances",
            Origin.DEPENDENCY,
            conditions={"StringEquals": {"ec2:CreateAction": "RunInstances"}},
        ),
    ]


def _host_grants(scope: Scope) -> list[Grant]:
    """Dedicated hosts of macOS / Windows pools: only hosts tagged with one of our host pools."""
    pools = scope.host_pools
    if not pools:
        return []
    hosts = (scope.arn("ec2", "dedicated-host/*"),)
    pool_names = sorted(p.name for p in pools)
    groups = tuple(
        scope.arn("resource-groups", f"group/{p.hosts.host_resource_group}") for p in pools if p.hosts
    )
    grants = [
        Grant(
            "AllocateHosts",
            ("ec2:AllocateHosts",),
            hosts,
            "a new host must be tagged, at allocation, with one of our host pools",
            conditions={
                "StringEquals": {
                    f"aws:RequestTag/{TAG_POOL}": pool_names,
                    f"aws:RequestTag/{TAG_MANAGED}": "true",
                }
            },
        ),
        Grant(
            "TagHostsAtAllocation",
            ("ec2:CreateTags",),
            hosts,
            "AllocateHosts with TagSpecifications needs CreateTags, only as part of that call",
            conditions={"StringEquals": {"ec2:CreateAction": "AllocateHosts"}},
        ),
        Grant(
            "ManageOwnHosts",
            ("ec2:ReleaseHosts", "ec2:CreateTags", "ec2:DeleteTags"),
            hosts,
            "release and mark only hosts of our host pools, and only our own tag keys",
            conditions={
                "StringEquals": {
                    f"ec2:ResourceTag/{TAG_POOL}": pool_names,
                    f"ec2:ResourceTag/{TAG_MANAGED}": "true",
                },
                "ForAllValues:StringLike": {"aws:TagKeys": ["runner-scaler:*"]},
            },
        ),
        Grant(
            "HostResourceGroups",
            (
                "resource-groups:GetTags",
                "resource-groups:Tag",
                "resource-groups:Untag",
                "resource-groups:GroupResources",
                "resource-groups:ListGroupResources",
            ),
            groups,
            "the pools' host resource groups by name",
        ),
    ]
    mac_pools = sorted(p.name for p in pools if p.reuses_root_volume)
    if mac_pools:
        # Host reuse (chalicelib.hosts.Ec2Hosts.replace_root_volume): only instances of our macOS pools,
        # tagged by their group at launch. The Service Authorization Reference ("Actions, resources, and
        # condition keys for Amazon EC2", ec2:CreateReplaceRootVolumeTask) requires three resource types:
        # instance*, replace-root-volume-task* and volume* (the replacement root volume the task creates,
        # which has no tags yet, so the IfExists condition lets it through). image and snapshot are checked
        # only when the call names an ImageId or SnapshotId, which the reuse never does; ec2:CreateTags is
        # a dependency only with TagSpecifications, which it never passes. A refusal still shows as an
        # AwsCallError naming the action, and the machine is then terminated as before.
        grants += [
            Grant(
                "ReplaceMacRootVolume",
                ("ec2:CreateReplaceRootVolumeTask",),
                (
                    scope.arn("ec2", "instance/*"),
                    scope.arn("ec2", "replace-root-volume-task/*"),
                    scope.arn("ec2", "volume/*"),
                ),
                "restore a used Mac's root volume on its host instead of a terminate and a host scrub",
                conditions={"StringEqualsIfExists": {f"aws:ResourceTag/{TAG_POOL}": mac_pools}},
            ),
            Grant(
                "ReadMacRootVolumeTasks",
                ("ec2:DescribeReplaceRootVolumeTasks",),
                ("*",),
                "AWS forces `*`: EC2's Describe calls support no resource-level permission (Service "
                "Authorization Reference); the reconcile polls its reused Macs' replacement tasks",
                conditions=_region_condition(scope),
            ),
        ]
    licenses = tuple(
        sorted({p.hosts.license_configuration for p in pools if p.hosts and p.hosts.license_configuration})
    )
    if licenses:
        grants.append(
            Grant(
                "LicenseRoom",
                ("license-manager:GetLicenseConfiguration",),
                licenses,
                "licence headroom of the configured licence configurations",
            )
        )
    return grants


def _log_grants(scope: Scope) -> list[Grant]:
    if not scope.log_groups:
        return []
    actions: tuple[str, ...] = ("logs:CreateLogStream", "logs:PutLogEvents")
    if scope.create_log_groups:
        actions += ("logs:CreateLogGroup",)
    resources = tuple(arn for group in scope.log_groups for arn in (group, f"{group}:*"))
    return [Grant("FunctionLogs", actions, resources, "the functions' own log groups", Origin.SERVICE)]


def _region_condition(scope: Scope) -> dict[str, dict[str, Any]]:
    return {} if scope.region == "*" else {"StringEquals": {"aws:RequestedRegion": scope.region}}


def machine_grants(scope: Scope, pool: Pool) -> list[Grant]:
    """A pool machine: read, then delete, its own secret; its pool's prefix of the cache bucket. Nothing else.

    No right reaches another instance: the machine leaves by shutting itself down (the launch template's
    instance-initiated shutdown behaviour is terminate) and the scaler decrements its group
    (docs/security.md).
    Only root on the machine uses these grants; jobs never reach the metadata service that serves them.
    """
    own_secret = {
        "StringEquals": {f"secretsmanager:ResourceTag/{TAG_INSTANCE_ARN}": "${ec2:SourceInstanceARN}"}
    }
    grants = [
        Grant(
            "OwnMachineSecret",
            ("secretsmanager:GetSecretValue", "secretsmanager:DeleteSecret"),
            (scope.secret_arn(f"{scope.prefix}/machines/*"),),
            f"only the secret tagged {TAG_INSTANCE_ARN} = this instance's ARN (ec2:SourceInstanceARN is set "
            "on every request signed with an instance profile's credentials): read once at boot, then "
            "deleted so that nothing on the machine reads it again",
            conditions=own_secret,
        ),
    ]
    if pool.cache_bucket:
        bucket = f"arn:{scope.partition}:s3:::{pool.cache_bucket}"
        grants += [
            Grant(
                "CacheList",
                ("s3:ListBucket",),
                (bucket,),
                "gitlab-runner's S3 cache asks for objects under its pool's prefix (a missing object is then "
                "404, not 403)",
                conditions={"StringLike": {"s3:prefix": [f"{cache_prefix(pool)}/*"]}},
            ),
            Grant(
                "CacheObjects",
                ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"),
                (f"{bucket}/{cache_prefix(pool)}/*",),
                "gitlab-runner's S3 cache (iam authentication) under `--cache-path <pool>`: object keys "
                "are <path>/project/<id>/<key> (gitlab-runner cache/cache.go): no pool reaches another's",
            ),
        ]
    return grants


def policy_document(grants: Iterable[Grant]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [g.statement() for g in grants]}


# -- .chalice/policy-<stage>.json ---------------------------------------------------------------------------


def chalice_stage_env(stage: str, chalice_config: Path = CHALICE_CONFIG) -> dict[str, str]:
    """The environment a Chalice stage's functions get: top-level variables, then the stage's."""
    data = json.loads(chalice_config.read_text(encoding="utf-8"))
    stage_env = data.get("stages", {}).get(stage, {}).get("environment_variables", {})
    return {**data.get("environment_variables", {}), **stage_env}


def chalice_stage_prefix(stage: str, chalice_config: Path = CHALICE_CONFIG) -> str:
    """The deployment prefix a Chalice stage runs with (its RUNNER_SCALER_PREFIX), as infra/ uses it."""
    prefix = chalice_stage_env(stage, chalice_config).get(ENV_PREFIX)
    if not prefix:
        raise SystemExit(f".chalice/config.json: stage {stage!r} sets no {ENV_PREFIX}")
    return str(prefix)


def chalice_policy(stage: str, config: Config, chalice_config: Path = CHALICE_CONFIG) -> dict[str, Any]:
    """The policy `chalice deploy --stage <stage>` attaches: same grants, any region and account."""
    app_name = json.loads(chalice_config.read_text(encoding="utf-8"))["app_name"]
    names = Names(chalice_stage_prefix(stage, chalice_config))
    # chalice deploy names functions <app>-<stage>-<handler>; Lambda creates /aws/lambda/<function> itself.
    logs = (f"arn:aws:logs:*:*:log-group:/aws/lambda/{app_name}-{stage}-*",)
    rotation = f"arn:aws:lambda:*:*:function:{app_name}-{stage}-rotate_base_certs"
    scope = Scope(
        names=names, config=config, log_groups=logs, create_log_groups=True, rotation_function=rotation
    )
    return policy_document(lambda_grants(scope))


def _stages(chalice_config: Path) -> list[str]:
    return sorted(json.loads(chalice_config.read_text(encoding="utf-8")).get("stages", {}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "examples" / "config.toml"), help="pools TOML file")
    parser.add_argument("--stage", action="append", help="Chalice stage (default: every stage)")
    parser.add_argument("--write", action="store_true", help="write .chalice/policy-<stage>.json")
    args = parser.parse_args(argv)
    config = load_config_file(args.config)
    for stage in args.stage or _stages(CHALICE_CONFIG):
        text = json.dumps(chalice_policy(stage, config), indent=2) + "\n"
        if args.write:
            (CHALICE_CONFIG.parent / f"policy-{stage}.json").write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def functions_vpc_grants() -> list[Grant]:
    """What Lambda needs, with the functions' role, to place them in a VPC (`functions_vpc` context).

    The Lambda Developer Guide ("Giving Lambda functions access to resources in an Amazon VPC") lists these
    actions, as does the AWS managed policy AWSLambdaVPCAccessExecutionRole; DescribeNetworkInterfaces only
    works on `*`, and Lambda creates the interfaces before their ids exist, so the grant is on `*`.
    """
    return [
        Grant(
            "FunctionsInVpc",
            (
                "ec2:CreateNetworkInterface",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeSubnets",
                "ec2:DeleteNetworkInterface",
                "ec2:AssignPrivateIpAddresses",
                "ec2:UnassignPrivateIpAddresses",
            ),
            ("*",),
            "Lambda creates and removes the functions' network interfaces in functions_vpc's subnets; AWS "
            "forces `*` (DescribeNetworkInterfaces has no resource type; interface ids do not exist yet)",
            Origin.SERVICE,
        )
    ]
