"""Every AWS call chalicelib makes is granted with the dependencies AWS authorizes behind it, on the right
resources, in both rendered policies: the `.chalice/policy-<stage>.json` files and the CDK stack's role.

The calls come from the source (`code_calls`, the `.call(` / `.paginate(` sites); the dependencies from
infra/authorization.py, each with its AWS documentation source; the decision from tests/iam.py's evaluator
(IAM's rules, conditions included). No AWS, no CDK: fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.resources import TAG_DEPLOYMENT, TAG_POOL, Names, queue_attributes
from infra.authorization import DEPENDENCIES, Dependency, dependencies_of
from infra.policy import CHALICE_CONFIG, Scope, chalice_stage_prefix, lambda_grants, policy_document
from tests.functional.test_infra_policy import EXAMPLE, code_calls, needs_grant
from tests.iam import Check, allowed

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT, REGION = "123456789012", "eu-west-1"
TEMPLATE = f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/lt-0123456789abcdef0"
FOREIGN_TEMPLATE = f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/lt-0fedcba9876543210"


def _chalice(stage: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The committed policy file of a stage, and the ARNs of its deployment's resources by kind."""
    prefix = chalice_stage_prefix(stage)
    app = json.loads(CHALICE_CONFIG.read_text(encoding="utf-8"))["app_name"]
    policy = json.loads((ROOT / ".chalice" / f"policy-{stage}.json").read_text(encoding="utf-8"))
    resources = {
        "launch-template": TEMPLATE,
        "role": f"arn:aws:iam::{ACCOUNT}:role/{prefix}/linux-machine-role",
        "function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{app}-{stage}-rotate_base_certs",
        "secret": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{prefix}/docker-base-certs-AbCdEf",
        "table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{Names(prefix).table}",
        "prefix": prefix,
    }
    return policy, resources


def _cdk() -> tuple[dict[str, Any], dict[str, str]]:
    """The CDK role's policy, rendered with the ARNs the stack passes (infra/stacks/scaler.py)."""
    prefix = "runner-scaler-dev"
    role = f"arn:aws:iam::{ACCOUNT}:role/{prefix}/scaler-PoolsPoollinuxMachineRole-ABC"
    function = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{prefix}-rotate_base_certs"
    scope = Scope(
        names=Names(prefix),
        config=EXAMPLE,
        region=REGION,
        account=ACCOUNT,
        launch_templates={p.name: TEMPLATE for p in EXAMPLE.pools},
        machine_roles={p.name: role for p in EXAMPLE.pools},
        rotation_function=function,
    )
    resources = {
        "launch-template": TEMPLATE,
        "role": role,
        "function": function,
        "secret": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{prefix}/docker-base-certs-AbCdEf",
        "table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{Names(prefix).table}",
        "prefix": prefix,
    }
    return policy_document(lambda_grants(scope)), resources


PATHS = {"chalice-dev": lambda: _chalice("dev"), "chalice-prod": lambda: _chalice("prod"), "cdk": _cdk}


def _check(dependency: Dependency, resources: dict[str, str]) -> Check:
    context: dict[str, str | list[str]] = {"aws:RequestedRegion": REGION, **dependency.context}
    kind = dependency.resource
    if kind == "launch-template":
        context[f"aws:ResourceTag/{TAG_DEPLOYMENT}"] = resources["prefix"]
        return Check(dependency.action, resources[kind], context)
    if kind == "instance":
        context["ec2:LaunchTemplate"] = resources["launch-template"]
        return Check(dependency.action, f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*", context)
    if kind == "dedicated-host":
        return Check(dependency.action, f"arn:aws:ec2:{REGION}:{ACCOUNT}:dedicated-host/*", context)
    return Check(dependency.action, resources[kind], context)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_dependency_of_every_call_in_code_is_granted(path: str) -> None:
    policy, resources = PATHS[path]()
    missing = [
        f"{call} -> {d.action} on {d.resource} ({d.source})"
        for call in code_calls()
        if needs_grant(call)
        for d in dependencies_of(*call)
        if not allowed(policy, _check(d, resources))
    ]
    assert missing == []


@pytest.mark.parametrize("path", sorted(PATHS))
def test_the_dependency_grants_are_scoped_to_the_deployments_own_resources(path: str) -> None:
    policy, resources = PATHS[path]()
    region = {"aws:RequestedRegion": REGION}
    # a launch template that is not the deployment's (no tag, or another id on the CDK path)
    foreign = Check("ec2:RunInstances", FOREIGN_TEMPLATE, region)
    assert not allowed(policy, foreign)
    # instances launched without one of our templates
    bare = Check("ec2:RunInstances", f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*", region)
    assert not allowed(policy, bare)
    # the machine role passed to anything but EC2, and any other role
    to_lambda = Check(
        "iam:PassRole", resources["role"], {**region, "iam:PassedToService": "lambda.amazonaws.com"}
    )
    other = Check(
        "iam:PassRole",
        f"arn:aws:iam::{ACCOUNT}:role/admin",
        {**region, "iam:PassedToService": "ec2.amazonaws.com"},
    )
    assert not allowed(policy, to_lambda) and not allowed(policy, other)
    # tags on instances outside a launch, and invoking any other function
    retag = Check("ec2:CreateTags", f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123", region)
    assert not allowed(policy, retag)
    other_function = Check(
        "lambda:InvokeFunction", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:anything", region
    )
    assert not allowed(policy, other_function)


#: The resource types the Service Authorization Reference marks required (`*`) for
#: ec2:CreateReplaceRootVolumeTask ("Actions, resources, and condition keys for Amazon EC2"): the
#: instance, the task the call creates, and the replacement root volume it creates. `image` and `snapshot`
#: are checked only when the call names an ImageId or SnapshotId, which the reuse never does
#: (chalicelib/hosts.py).
REPLACE_ROOT_VOLUME_RESOURCES = ("instance/i-0123456789abcdef0", "replace-root-volume-task/*", "volume/*")


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_used_mac_s_root_volume_replacement_is_granted_on_every_resource_aws_checks(path: str) -> None:
    """IAM authorizes CreateReplaceRootVolumeTask on each required resource type: a grant that misses one is
    refused in a real account (moto has no such call, so only this check sees it)."""
    # GIVEN the rendered policy, and a used Mac of the example's macOS pool (tagged with its pool at launch)
    policy, _ = PATHS[path]()
    mac = next(p for p in EXAMPLE.pools if p.reuses_root_volume)
    region = {"aws:RequestedRegion": REGION}
    tagged = {**region, f"aws:ResourceTag/{TAG_POOL}": mac.name}
    # WHEN IAM checks the call on the instance, the new task and the new volume (which carry no tag yet)
    checks = [
        Check("ec2:CreateReplaceRootVolumeTask", f"arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}", ctx)
        for kind, ctx in zip(REPLACE_ROOT_VOLUME_RESOURCES, (tagged, region, region), strict=True)
    ]
    # THEN every check is allowed
    assert [c.resource for c in checks if not allowed(policy, c)] == []
    # AND an instance of another pool is refused
    other = next(p for p in EXAMPLE.pools if not p.reuses_root_volume)
    foreign = {**region, f"aws:ResourceTag/{TAG_POOL}": other.name}
    assert not allowed(policy, Check("ec2:CreateReplaceRootVolumeTask", checks[0].resource, foreign))


def test_host_pools_get_no_update_auto_scaling_group() -> None:
    """The fallback never touches a host pool, so its group is not granted the update (nor its launches)."""
    policy, _ = _chalice("dev")
    retune = next(s for s in policy["Statement"] if s["Sid"] == "RetuneGroups")
    host_asgs = [p.asg for p in EXAMPLE.pools if p.hosts]
    assert host_asgs and not any(asg in json.dumps(retune["Resource"]) for asg in host_asgs)


def test_every_dependency_names_its_aws_source_and_a_call_the_code_makes() -> None:
    calls = code_calls()
    for dependency in DEPENDENCIES:
        assert dependency.call in calls, f"{dependency.call}: no such call in chalicelib"
        assert "Guide" in dependency.source or "API reference" in dependency.source, dependency


def test_dependencies_avoided_by_design_stay_avoided() -> None:
    """KMS permissions are needed only with a customer managed key: none of our resources names one."""
    avoided = [d for d in DEPENDENCIES if not d.applies]
    assert avoided and all(d.avoided_by for d in avoided)
    assert not any("kms" in key.lower() for key in queue_attributes("arn:aws:sqs:r:a:dlq"))
    for source in ("infra/stacks/state.py", "chalicelib/secrets.py", "chalicelib/resources.py"):
        text = (ROOT / source).read_text(encoding="utf-8")
        assert "KmsKeyId" not in text and "kms_key" not in text and "KmsMasterKeyId" not in text, source
