"""The issue's done-when, as an operator meets it: a docker+machine config with Docker-in-Docker, Spot, a
private GitLab URL, an existing cache bucket and an Ubuntu AMI migrates, validates, and synthesizes into a
stack that would deploy (cfn-lint clean), with each of those five carried into the template.

One synth for the module (about 20 s), as in test_infra. Root device names: EC2 User Guide, "Device names on
Linux instances" (/dev/xvda on Amazon Linux, /dev/sda1 on Ubuntu). Functions in a VPC: Lambda Developer
Guide, "Giving Lambda functions access to resources in an Amazon VPC" (VpcConfig, the role's ec2 actions).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chalicelib.config import load_config_file
from infra.app import build
from infra.package import package
from infra.settings import SettingsError, load_settings
from infra.stacks.chalice_app import ENV_CONFIG_SHA, config_digest
from infra.userdata import render
from tests.functional.test_infra import CONTEXT, ROOT, Synth, statements
from toolkit.cli.main import app

DIND = ROOT / "examples" / "gitlab-runner-docker-machine-dind.toml"
PREFIX = "runner-scaler-dev"
UBUNTU_AMI = "ami-0f1e2d3c4b5a69788"
FUNCTIONS_VPC = {"subnets": ["subnet-0f0e0d0c0b0a09081", "subnet-0f0e0d0c0b0a09082"],
                 "security_groups": ["sg-0f0e0d0c0b0a09083"]}  # fmt: skip


def adoption_context(config: Path, **changes: Any) -> dict[str, Any]:
    """cdk.json's context with the shop's own inputs: its Ubuntu AMI and private subnets for the functions."""
    context = {
        **CONTEXT,
        "config": str(config),
        "amis": {"linux": {"id": UBUNTU_AMI, "distribution": "ubuntu"}},
        "functions_vpc": FUNCTIONS_VPC,
    }
    context.update(changes)
    return context


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`runner-scaler migrate` of the DinD example, written where the operator would keep it."""
    out = tmp_path_factory.mktemp("adoption") / "scaler.toml"
    result = CliRunner().invoke(app, ["migrate", str(DIND), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def stack(migrated: Path, tmp_path_factory: pytest.TempPathFactory) -> Synth:
    from aws_cdk.assertions import Template

    workdir = tmp_path_factory.mktemp("adoption-synth")
    packaged = package(
        workdir / "package", stage=CONTEXT["stage"], prefix=PREFIX, region=CONTEXT["region"],
        with_dependencies=False,
    )  # fmt: skip
    context = adoption_context(migrated, chalice_package=str(packaged))
    with contextlib.chdir(workdir):
        cdk_app, built = build(context, outdir=str(workdir / "cdk.out"), validate=False)
        assembly = cdk_app.synth()
    path = Path(assembly.directory) / assembly.get_stack_artifact(built.artifact_id).template_file
    return Synth(Template.from_stack(built), json.loads(path.read_text(encoding="utf-8")), path)


def test_the_migrated_dind_config_validates(migrated: Path) -> None:
    result = CliRunner().invoke(app, ["validate-config", str(migrated)])
    assert result.exit_code == 0, result.output
    resolved = json.loads(result.stdout)
    pool = resolved["pools"][0]
    assert resolved["gitlab"]["url"] == "https://gitlab.internal.example.com"
    assert (pool["spot"], pool["cache_bucket_existing"], pool["root_volume_gib"]) == (True, True, 80)
    assert pool["docker"]["privileged"] is True


def test_the_stack_would_deploy_cfn_lint_finds_nothing(stack: Synth) -> None:
    from cfnlint.api import ManualArgs, lint

    matches = lint(stack.path.read_text(encoding="utf-8"), config=ManualArgs(regions=[CONTEXT["region"]]))
    found = [f"{m.rule.id} {m.path}: {m.message}" for m in matches if m.rule.id != "W3005"]
    assert found == [], "\n".join(found)


def test_the_existing_bucket_is_granted_to_the_machines_never_created(stack: Synth) -> None:
    assert [
        b
        for b in stack.resources("AWS::S3::Bucket").values()
        if b["Properties"].get("BucketName") == "acme-ci-cache"
    ] == []
    granted = [s for _, s in statements(stack.raw) if ":s3:::acme-ci-cache/" in json.dumps(s.get("Resource"))]
    assert granted and all("s3:PutObject" in s["Action"] for s in granted)


def test_the_ubuntu_ami_gets_its_root_device_at_the_pools_size(stack: Synth) -> None:
    _, template = stack.one("AWS::EC2::LaunchTemplate", LaunchTemplateName=f"{PREFIX}-dind-spot")
    data = template["Properties"]["LaunchTemplateData"]
    assert data["ImageId"] == UBUNTU_AMI
    [mapping] = data["BlockDeviceMappings"]
    assert mapping["DeviceName"] == "/dev/sda1"  # not /dev/xvda: that would be a second, empty volume
    assert (mapping["Ebs"]["VolumeSize"], mapping["Ebs"]["Encrypted"]) == (80, True)


def test_the_machines_boot_dind_capable_with_the_mirror_and_no_secret(stack: Synth, migrated: Path) -> None:
    _, template = stack.one("AWS::EC2::LaunchTemplate", LaunchTemplateName=f"{PREFIX}-dind-spot")
    user_data = template["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
    assert user_data == render(load_config_file(migrated).pools[0], PREFIX)
    assert "--docker-privileged" in user_data and "--docker-image docker:27" in user_data
    assert "https://mirror.internal.example.com" in user_data
    assert "REDACTED" not in user_data and "glrt-" not in user_data


def test_spot_is_a_mixed_instances_policy(stack: Synth) -> None:
    [group] = stack.resources("AWS::AutoScaling::AutoScalingGroup").values()
    policy = group["Properties"]["MixedInstancesPolicy"]
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == ["m7i.xlarge"]


def test_every_function_runs_in_the_private_subnets_and_may_make_its_interfaces(stack: Synth) -> None:
    functions = stack.resources("AWS::Serverless::Function") | stack.resources("AWS::Lambda::Function")
    ours = {k: f for k, f in functions.items() if "VpcConfig" in f["Properties"]}
    assert ours and len(ours) >= len(functions) - 1  # CDK's own custom-resource helper may sit outside
    for function in ours.values():
        assert function["Properties"]["VpcConfig"] == {
            "SubnetIds": FUNCTIONS_VPC["subnets"],
            "SecurityGroupIds": FUNCTIONS_VPC["security_groups"],
        }
    vpc = [s for _, s in statements(stack.raw) if s.get("Sid") == "FunctionsInVpc"]
    assert len(vpc) == 1 and "ec2:CreateNetworkInterface" in vpc[0]["Action"]


# -- settings that cannot be checked against AWS offline are checked against what the context says -----------


def test_a_linux_ami_without_its_root_device_is_refused_at_synth(migrated: Path) -> None:
    context = adoption_context(migrated, amis={"linux": UBUNTU_AMI})
    with pytest.raises(SettingsError, match=r"amis.linux.*root device.*/dev/sda1. on Ubuntu"):
        load_settings(context)


@pytest.mark.parametrize(
    ("amis", "expected"),
    [
        ({"linux": {"id": UBUNTU_AMI, "distribution": "ubuntu"}}, "/dev/sda1"),
        ({"linux": {"id": UBUNTU_AMI, "distribution": "amazon-linux"}}, "/dev/xvda"),
        ({"linux": {"id": UBUNTU_AMI, "root_device": "/dev/sdb1"}}, "/dev/sdb1"),
    ],
)
def test_the_root_device_comes_from_what_the_context_says_of_the_ami(
    migrated: Path, amis: dict[str, Any], expected: str
) -> None:
    settings = load_settings(adoption_context(migrated, amis=amis))
    assert settings.root_volume(settings.config.pools[0]).device == expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"amis": {"linux": {"id": UBUNTU_AMI, "distribution": "centos"}}}, "amis.linux.distribution"),
        ({"amis": {"linux": {"id": UBUNTU_AMI, "root_device": "sda1"}}}, "is not a device name"),
        (
            {"functions_vpc": {"subnets": [], "security_groups": ["sg-0f0e0d0c0b0a09083"]}},
            "functions_vpc.subnets",
        ),
        ({"functions_vpc": {"subnets": ["subnet-0f0e0d0c0b0a09081"]}}, "functions_vpc.security_groups"),
    ],
)
def test_bad_adoption_context_names_its_key(migrated: Path, changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(SettingsError, match=expected):
        load_settings(adoption_context(migrated, **changes))


def test_every_function_carries_the_fingerprint_of_its_config(stack: Synth, migrated: Path) -> None:
    # A new config changes every function's configuration, so Lambda retires the warm containers that read
    # the old one; an unchanged config leaves the functions alone.
    expected = config_digest(migrated)
    functions = stack.resources("AWS::Serverless::Function")
    assert functions
    for function in functions.values():
        assert function["Properties"]["Environment"]["Variables"][ENV_CONFIG_SHA] == expected
