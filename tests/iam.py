"""An IAM evaluator for the test AWS: moto enforces actions, this enforces resources, conditions and the
authorization dependencies of infra/authorization.py.

moto's IAM enforcement (`moto.core.enable_iam_authentication`) checks each request's signature, that the
access key belongs to an IAM user, and that the user's policies allow the request's action; it matches the
Resource element against a real ARN only for SQS and S3 (every other service is checked against `*`) and
evaluates no condition of an identity policy (moto `iam/access_control.py`). `Authorizer` closes that gap at
the client: before each call it derives the resources AWS authorizes the call against (the Service
Authorization Reference's resource types for the action), the condition context AWS sets, and the
dependencies of infra/authorization.py, and evaluates them against the full rendered policy with IAM's
rules: an explicit Deny wins, else an Allow whose Action, Resource and every Condition match, else denied.
A condition key absent from the request context fails its condition, as in AWS ("IAM JSON policy elements:
Condition operators", "...IfExists" and ForAllValues excepted). A call it has no model for fails the test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore import xform_name
from botocore.exceptions import ClientError

from chalicelib.aws import AwsClients
from chalicelib.errors import AwsCallError
from infra.authorization import dependencies_of
from infra.policy import NO_PERMISSION, iam_action

Context = Mapping[str, str | list[str]]


@dataclass(frozen=True)
class Check:
    """One authorization AWS makes for a request: `action` on `resource` in `context`."""

    action: str
    resource: str
    context: Context = field(default_factory=dict)


# -- policy evaluation ----------------------------------------------------------------------------------


def _pattern(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{regex}$", re.IGNORECASE if ignore_case else 0)


def _like(value: str, pattern: str) -> bool:
    return bool(_pattern(pattern).match(value))


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


_OPERATORS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda actual, expected: actual == expected,
    "StringNotEquals": lambda actual, expected: actual != expected,
    "StringLike": _like,
    "ArnEquals": lambda actual, expected: actual == expected,
    "ArnLike": _like,
    "Bool": lambda actual, expected: actual.lower() == str(expected).lower(),
}


def _condition_holds(operator: str, key: str, expected: list[str], context: Context) -> bool:
    qualifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    if base not in _OPERATORS:
        raise NotImplementedError(f"condition operator {operator}: teach tests/iam.py its IAM semantics")
    actual = next((v for k, v in context.items() if k.lower() == key.lower()), None)
    if actual is None:
        return qualifier == "ForAllValues" or if_exists
    test = _OPERATORS[base]
    actuals = _listed(actual)
    if qualifier == "ForAllValues":
        return all(any(test(a, e) for e in expected) for a in actuals)
    if base.startswith("StringNot"):
        return all(test(a, e) for a in actuals for e in expected)
    return any(test(a, e) for a in actuals for e in expected)


def _statement_applies(statement: Mapping[str, Any], check: Check) -> bool:
    if "Action" in statement:
        if not any(_pattern(a, ignore_case=True).match(check.action) for a in _listed(statement["Action"])):
            return False
    elif any(_pattern(a, ignore_case=True).match(check.action) for a in _listed(statement["NotAction"])):
        return False
    if not any(_like(check.resource, r) for r in _listed(statement.get("Resource", "*"))):
        return False
    for operator, pairs in statement.get("Condition", {}).items():
        for key, expected in pairs.items():
            if not _condition_holds(operator, key, [str(e) for e in _listed(expected)], check.context):
                return False
    return True


def allowed(policy: Mapping[str, Any], check: Check) -> bool:
    """IAM's decision for one identity policy: explicit Deny wins, else any matching Allow, else deny."""
    statements = _listed(policy["Statement"])
    applying = [s for s in statements if _statement_applies(s, check)]
    if any(s["Effect"] == "Deny" for s in applying):
        return False
    return any(s["Effect"] == "Allow" for s in applying)


def moto_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The rendered policy as moto can enforce it: the same Allow actions; resources only where moto knows
    the real ARN (SQS), `*` elsewhere since moto checks those services against `*`; no conditions (moto
    evaluates none on identity policies). The rest is `Authorizer`'s job."""
    statements = []
    for statement in _listed(policy["Statement"]):
        resources = _listed(statement.get("Resource", "*"))
        actions = _listed(statement["Action"])
        if all(r.startswith("arn:aws:sqs:") for r in resources):
            # moto finds the queue from QueueUrl; GetQueueUrl carries QueueName, so moto checks it against `*`
            unresolved = [a for a in actions if a in MOTO_UNRESOLVED]
            if unresolved:
                statements.append({"Effect": statement["Effect"], "Action": unresolved, "Resource": "*"})
            kept = [a for a in actions if a not in MOTO_UNRESOLVED]
            if kept:
                statements.append({"Effect": statement["Effect"], "Action": kept, "Resource": resources})
        else:
            statements.append({"Effect": statement["Effect"], "Action": actions, "Resource": "*"})
        if statement["Effect"] == "Allow" and set(actions) >= MOTO_TRANSACTION_ACTIONS:
            # moto names a request's action after its operation (`iam/access_control.py`), so it checks a
            # "dynamodb:TransactWriteItems" that IAM does not have: AWS authorizes the transaction's actions
            # as PutItem and UpdateItem ("Using IAM with DynamoDB transactions"), which Authorizer checks.
            statements.append({"Effect": "Allow", "Action": ["dynamodb:TransactWriteItems"], "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": statements}


#: The actions AWS authorizes the app's one transaction (a Put and an Update) against.
MOTO_TRANSACTION_ACTIONS = frozenset({"dynamodb:PutItem", "dynamodb:UpdateItem"})


#: SQS actions moto authorizes against `*` although AWS authorizes them against the queue.
MOTO_UNRESOLVED = frozenset({"sqs:GetQueueUrl"})


# -- requests -> checks ---------------------------------------------------------------------------------


class Authorizer:
    """Derives and evaluates every check of an app call; registered on the app's boto3 session.

    `admin` reads the test AWS (group tags, a template's role) to build the context AWS would have.
    `checked` records every check made, so a test can assert what was authorized.
    """

    def __init__(self, policy: Mapping[str, Any], admin: AwsClients, account: str, region: str) -> None:
        self.policy = policy
        self._admin = admin
        self._account = account
        self._region = region
        self.checked: list[Check] = []
        self.denied: list[Check] = []

    def register(self, session: Any) -> None:
        session.events.register("before-parameter-build", self._before_call)

    def _before_call(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        service = model.service_model.service_name
        operation = xform_name(model.name)
        if (service, operation) in NO_PERMISSION:
            return
        for check in self.checks(service, operation, params):
            self.checked.append(check)
            if not allowed(self.policy, check):
                self.denied.append(check)
                raise ClientError(
                    {
                        "Error": {
                            "Code": "AccessDenied" if service != "ec2" else "UnauthorizedOperation",
                            "Message": f"not authorized to perform {check.action} on {check.resource}",
                        },
                        "ResponseMetadata": {"HTTPStatusCode": 403},
                    },
                    model.name,
                )

    def checks(self, service: str, operation: str, params: Mapping[str, Any]) -> list[Check]:
        action = iam_action(service, operation)
        base = {"aws:RequestedRegion": self._region}
        own = [Check(action, r, {**base, **ctx}) for r, ctx in self._resources(service, operation, params)]
        for dependency in dependencies_of(service, operation):
            for resource, ctx in self._dependency_resources(dependency.resource, service, params):
                own.append(Check(dependency.action, resource, {**base, **ctx, **dependency.context}))
        return own

    # Each resource AWS authorizes the action against, with its resource-tag context.
    def _resources(self, service: str, operation: str, p: Mapping[str, Any]) -> list[tuple[str, Context]]:
        arn = f"{self._region}:{self._account}"
        if service == "dynamodb":
            tables = self._tables(p)
            suffix = f"/index/{p['IndexName']}" if p.get("IndexName") else ""
            return [(f"arn:aws:dynamodb:{arn}:table/{t}{suffix}", {}) for t in tables]
        if service == "sqs":
            name = p["QueueName"] if "QueueName" in p else str(p["QueueUrl"]).rstrip("/").rsplit("/", 1)[-1]
            return [(f"arn:aws:sqs:{arn}:{name}", {})]
        if service == "ssm":
            name = str(p["Name"])
            return [(f"arn:aws:ssm:{arn}:parameter{name if name.startswith('/') else '/' + name}", {})]
        if service == "secretsmanager":
            return [self._secret(str(p.get("SecretId") or p["Name"]), p)]
        if service == "autoscaling":
            if operation.startswith("describe_"):
                return [("*", {})]
            return [self._group(p)]
        if service == "ec2" and operation.startswith("describe_"):
            return [("*", {})]
        raise NotImplementedError(f"no IAM model for {service}.{operation}: add it to tests/iam.py")

    @staticmethod
    def _tables(p: Mapping[str, Any]) -> list[str]:
        """The tables a DynamoDB call acts on: a batch's, a transaction's actions', or its one table."""
        if "RequestItems" in p:
            return list(p["RequestItems"])
        if "TransactItems" in p:
            return list(dict.fromkeys(a["TableName"] for item in p["TransactItems"] for a in item.values()))
        return [p["TableName"]]

    def _secret(self, secret: str, p: Mapping[str, Any]) -> tuple[str, Context]:
        context: dict[str, str | list[str]] = {}
        tags = {t["Key"]: t["Value"] for t in p.get("Tags", [])}
        if tags:
            context["aws:TagKeys"] = list(tags)
            context.update({f"aws:RequestTag/{k}": v for k, v in tags.items()})
        if secret.startswith("arn:"):
            arn = secret
        else:
            arn = f"arn:aws:secretsmanager:{self._region}:{self._account}:secret:{secret}-AbCdEf"
        try:
            described = self._admin.call("secretsmanager", "describe_secret", SecretId=secret)
        except AwsCallError:  # a secret about to be created has no tags yet
            return arn, context
        context.update(
            {f"secretsmanager:ResourceTag/{t['Key']}": t["Value"] for t in described.get("Tags", [])}
        )
        return str(described["ARN"]), context

    def _describe_group(self, p: Mapping[str, Any]) -> dict[str, Any]:
        name = p.get("AutoScalingGroupName")
        if not name:
            found = self._admin.call(
                "autoscaling", "describe_auto_scaling_instances", InstanceIds=[p["InstanceId"]]
            )["AutoScalingInstances"]
            name = found[0]["AutoScalingGroupName"]
        groups = self._admin.call("autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[name])
        return dict(groups["AutoScalingGroups"][0])

    def _group(self, p: Mapping[str, Any]) -> tuple[str, Context]:
        group = self._describe_group(p)
        tags = {f"autoscaling:ResourceTag/{t['Key']}": t["Value"] for t in group.get("Tags", [])}
        return str(group["AutoScalingGroupARN"]), tags

    def _dependency_resources(
        self, kind: str, service: str, p: Mapping[str, Any]
    ) -> Iterable[tuple[str, Context]]:
        region, account = self._region, self._account
        if kind == "function":
            function = p.get("RotationLambdaARN") or self._admin.call(
                "secretsmanager", "describe_secret", SecretId=p["SecretId"]
            ).get("RotationLambdaARN")
            return [(str(function), {})] if function else []
        if kind == "secret":
            return [self._secret(str(p["Name"]), p)]
        if kind in {"launch-template", "instance", "role"}:
            template, data = self._template(self._describe_group(p))
            if kind == "launch-template":
                return [(template["arn"], template["tags"])]
            if kind == "instance":
                return [
                    (f"arn:aws:ec2:{region}:{account}:{k}/*", {"ec2:LaunchTemplate": template["arn"]})
                    for k in ("instance", "volume")
                ]
            profile = data.get("IamInstanceProfile", {})
            return [(role, {}) for role in self._profile_roles(profile)]
        if kind == "dedicated-host":
            return [(f"arn:aws:ec2:{region}:{account}:dedicated-host/*", {})]
        if kind == "table":
            return [(f"arn:aws:dynamodb:{region}:{account}:table/{t}", {}) for t in self._tables(p)]
        raise NotImplementedError(f"no resource model for dependency kind {kind!r}")

    def _template(self, group: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = (
            group.get("LaunchTemplate")
            or group["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"]
        )
        key = (
            {"LaunchTemplateIds": [spec["LaunchTemplateId"]]}
            if spec.get("LaunchTemplateId")
            else {"LaunchTemplateNames": [spec["LaunchTemplateName"]]}
        )
        template = self._admin.call("ec2", "describe_launch_templates", **key)["LaunchTemplates"][0]
        versions = self._admin.call(
            "ec2",
            "describe_launch_template_versions",
            LaunchTemplateId=template["LaunchTemplateId"],
            Versions=["$Latest"],
        )["LaunchTemplateVersions"]
        arn = f"arn:aws:ec2:{self._region}:{self._account}:launch-template/{template['LaunchTemplateId']}"
        # DescribeTags, not the template's own Tags: moto leaves those empty after CreateTags.
        described = self._admin.call(
            "ec2",
            "describe_tags",
            Filters=[{"Name": "resource-id", "Values": [template["LaunchTemplateId"]]}],
        )["Tags"]
        tags = {f"aws:ResourceTag/{t['Key']}": t["Value"] for t in described}
        return {"arn": arn, "tags": tags}, dict(versions[0]["LaunchTemplateData"])

    def _profile_roles(self, profile: Mapping[str, Any]) -> list[str]:
        if not profile:
            return []
        name = profile.get("Name") or str(profile["Arn"]).rsplit("/", 1)[-1]
        got = self._admin.call("iam", "get_instance_profile", InstanceProfileName=name)["InstanceProfile"]
        return [str(r["Arn"]) for r in got["Roles"]]


def policy_json(policy: Mapping[str, Any]) -> str:
    return json.dumps(policy)


# -- the enforcing test AWS -------------------------------------------------------------------------------

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
#: What `chalice deploy` names the rotation function in the test's Chalice config (`<app>-<stage>-<name>`).
CHALICE_APP, CHALICE_STAGE = "runner-scaler", "dev"
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass(frozen=True)
class PoolResources:
    """What infra/ makes per pool that the fallback's dependencies are checked against."""

    launch_templates: dict[str, str]  # pool -> launch template ARN
    machine_roles: dict[str, str]  # pool -> role ARN


def dress_pools(admin: AwsClients, config: Any, prefix: str) -> PoolResources:
    """Give the bootstrap's launch templates what infra/ gives them: an instance profile whose role sits
    under `/<prefix>/`, tag specifications for instances and volumes, and the deployment tag."""
    from chalicelib.resources import TAG_DEPLOYMENT
    from infra.policy import machine_role_path

    templates: dict[str, str] = {}
    roles: dict[str, str] = {}
    trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
    )
    for pool in config.pools:
        name = f"{prefix}-{pool.name}"
        role = admin.call(
            "iam",
            "create_role",
            RoleName=f"{name}-machine",
            Path=machine_role_path(prefix),
            AssumeRolePolicyDocument=trust,
        )["Role"]
        admin.call("iam", "create_instance_profile", InstanceProfileName=f"{name}-machine")
        admin.call(
            "iam",
            "add_role_to_instance_profile",
            InstanceProfileName=f"{name}-machine",
            RoleName=role["RoleName"],
        )
        template = admin.call("ec2", "describe_launch_templates", LaunchTemplateNames=[name])[
            "LaunchTemplates"
        ][0]
        tags = [{"Key": TAG_DEPLOYMENT, "Value": prefix}]
        admin.call(
            "ec2",
            "create_launch_template_version",
            LaunchTemplateId=template["LaunchTemplateId"],
            SourceVersion="$Latest",
            LaunchTemplateData={
                "IamInstanceProfile": {"Name": f"{name}-machine"},
                "TagSpecifications": [{"ResourceType": k, "Tags": tags} for k in ("instance", "volume")],
            },
        )
        admin.call("ec2", "create_tags", Resources=[template["LaunchTemplateId"]], Tags=tags)
        templates[pool.name] = (
            f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/{template['LaunchTemplateId']}"
        )
        roles[pool.name] = str(role["Arn"])
    return PoolResources(templates, roles)


def user_session(admin: AwsClients, name: str, policy: Mapping[str, Any]) -> Any:
    """A boto3 session signed as a new IAM user whose one inline policy is `policy`."""
    import boto3

    admin.call("iam", "create_user", UserName=name)
    admin.call(
        "iam", "put_user_policy", UserName=name, PolicyName="policy", PolicyDocument=json.dumps(policy)
    )
    key = admin.call("iam", "create_access_key", UserName=name)["AccessKey"]
    return boto3.session.Session(
        aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"], region_name=REGION
    )
