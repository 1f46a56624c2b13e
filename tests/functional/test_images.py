"""Machine images: the Image Builder stack synthesizes cfn-lint clean, and each platform's component checks
every command its boot script runs, so an AMI missing one fails its build, not a machine's boot.

Component documents are AWSTOE YAML (Image Builder User Guide, "Component document syntax": phases build /
validate, `{{ Parameter }}` placeholders filled by the recipe). One synth for the module.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.app import build
from infra.package import package
from infra.stacks.images import PARAMETERS, ImagesSettingsError, component_document, images_settings
from tests.functional.test_infra import CONTEXT, ROOT

PREFIX = "runner-scaler-dev"
HOSTS = "arn:aws:resource-groups:eu-west-1:111111111111:group/runner-scaler-macos-hosts"
IMAGES: dict[str, Any] = {
    "version": "1.2.0",
    "subnet": "subnet-0a1b2c3d4e5f60001",
    "linux": {
        "parent_image": "ami-0a1b2c3d4e5f60111",
        "gitlab_runner_url": "https://mirror.internal/gitlab-runner",
    },
    "windows": {
        "parent_image": "ami-0a1b2c3d4e5f60222",
        "gitlab_runner_url": "https://mirror.internal/gitlab-runner.exe",
        "docker_zip_url": "https://mirror.internal/docker.zip",
        "powershell_msi_url": "https://mirror.internal/pwsh.msi",
        "fast_launch": {"snapshots": 8, "max_parallel_launches": 6},
    },
    "macos": {
        "parent_image": "ami-0a1b2c3d4e5f60333",
        "gitlab_runner_url": "https://mirror.internal/gitlab-runner-darwin-arm64",
        "host_resource_group_arn": HOSTS,
    },
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("images")
    packaged = package(
        workdir / "package", stage=CONTEXT["stage"], prefix=PREFIX, region=CONTEXT["region"],
        with_dependencies=False,
    )  # fmt: skip
    context = {
        **CONTEXT,
        "config": str(ROOT / "examples" / "config.toml"),
        "chalice_package": str(packaged),
        "images": IMAGES,
    }
    with contextlib.chdir(workdir):
        app, _ = build(context, outdir=str(workdir / "cdk.out"), validate=False)
        assembly = app.synth()
    artifact = assembly.get_stack_artifact(f"{PREFIX}-images")
    path = Path(assembly.directory) / artifact.template_file
    return path, json.loads(path.read_text(encoding="utf-8"))


def of_type(raw: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r["Properties"] for r in raw["Resources"].values() if r["Type"] == kind]


def test_the_images_stack_would_deploy_cfn_lint_finds_nothing(template: tuple[Path, dict[str, Any]]) -> None:
    from cfnlint.api import ManualArgs, lint

    path, _ = template
    matches = lint(path.read_text(encoding="utf-8"), config=ManualArgs(regions=[CONTEXT["region"]]))
    assert [f"{m.rule.id} {m.path}: {m.message}" for m in matches] == []


def test_one_pipeline_per_platform_with_its_component_and_urls(template: tuple[Path, dict[str, Any]]) -> None:
    _, raw = template
    assert sorted(p["Name"] for p in of_type(raw, "AWS::ImageBuilder::ImagePipeline")) == [
        f"{PREFIX}-linux", f"{PREFIX}-macos", f"{PREFIX}-windows"
    ]  # fmt: skip
    components = {c["Name"]: c for c in of_type(raw, "AWS::ImageBuilder::Component")}
    assert {c["Platform"] for c in components.values()} == {"Linux", "Windows", "macOS"}
    recipes = {r["Name"]: r for r in of_type(raw, "AWS::ImageBuilder::ImageRecipe")}
    windows = recipes[f"{PREFIX}-windows"]
    assert windows["ParentImage"] == "ami-0a1b2c3d4e5f60222" and windows["Version"] == "1.2.0"
    given = {p["Name"]: p["Value"] for p in windows["Components"][0]["Parameters"]}
    assert given == {
        "GitlabRunnerUrl": ["https://mirror.internal/gitlab-runner.exe"],
        "DockerZipUrl": ["https://mirror.internal/docker.zip"],
        "PowerShellMsiUrl": ["https://mirror.internal/pwsh.msi"],
    }


def test_macos_builds_on_a_dedicated_host(template: tuple[Path, dict[str, Any]]) -> None:
    _, raw = template
    infra = {i["Name"]: i for i in of_type(raw, "AWS::ImageBuilder::InfrastructureConfiguration")}
    assert infra[f"{PREFIX}-macos"]["Placement"] == {"Tenancy": "host", "HostResourceGroupArn": HOSTS}
    assert infra[f"{PREFIX}-macos"]["InstanceTypes"] == ["mac2.metal"]
    assert "Placement" not in infra[f"{PREFIX}-linux"]
    assert all(i["InstanceMetadataOptions"] == {"HttpTokens": "required"} for i in infra.values())


def test_windows_fast_launch_is_enabled_on_the_distribution_when_asked(
    template: tuple[Path, dict[str, Any]],
) -> None:
    """GIVEN context images.windows.fast_launch, WHEN the stack synthesizes, THEN the Windows pipeline
    distributes its AMI with EC2 Fast Launch: pre-provisioned snapshots, launched from a template in the build
    subnet. Property names: CloudFormation Template Reference, "AWS::ImageBuilder::DistributionConfiguration
    FastLaunchConfiguration"; Linux and macOS pipelines keep Image Builder's default distribution."""
    _, raw = template
    [distribution] = of_type(raw, "AWS::ImageBuilder::DistributionConfiguration")
    [target] = distribution["Distributions"]
    [fast] = target["FastLaunchConfigurations"]
    assert fast["Enabled"] is True
    assert fast["SnapshotConfiguration"] == {"TargetResourceCount": 8}
    assert fast["MaxParallelLaunches"] == 6
    assert fast["AccountId"] == {"Ref": "AWS::AccountId"} and target["Region"] == {"Ref": "AWS::Region"}
    template_id = fast["LaunchTemplate"]["LaunchTemplateId"]["Ref"]
    launch = raw["Resources"][template_id]["Properties"]["LaunchTemplateData"]
    assert launch["NetworkInterfaces"][0]["SubnetId"] == IMAGES["subnet"]
    assert launch["InstanceType"] == "m7i.xlarge"
    assert launch["MetadataOptions"] == {"HttpTokens": "required"}
    pipelines = {p["Name"]: p for p in of_type(raw, "AWS::ImageBuilder::ImagePipeline")}
    assert "DistributionConfigurationArn" in pipelines[f"{PREFIX}-windows"]
    assert "DistributionConfigurationArn" not in pipelines[f"{PREFIX}-linux"]
    assert "DistributionConfigurationArn" not in pipelines[f"{PREFIX}-macos"]


def test_without_fast_launch_no_distribution_is_made() -> None:
    windows = {k: v for k, v in IMAGES["windows"].items() if k != "fast_launch"}
    settings = images_settings({**IMAGES, "windows": windows}, PREFIX)
    assert all(p.fast_launch is None for p in settings.platforms)


@pytest.mark.parametrize("platform", ["linux", "windows", "macos"])
def test_each_component_is_awstoe_yaml_whose_parameters_the_recipe_fills(platform: str) -> None:
    document = yaml.safe_load(component_document(platform))
    assert [phase["name"] for phase in document["phases"]] == ["build", "validate"]
    declared = {name for item in document["parameters"] for name in item}
    used = set(re.findall(r"\{\{ (\w+) \}\}", component_document(platform)))
    assert declared == used == set(PARAMETERS[platform].values())


def _validate_text(platform: str) -> str:
    document = yaml.safe_load(component_document(platform))
    [validate] = [phase for phase in document["phases"] if phase["name"] == "validate"]
    return json.dumps(validate)


def test_the_linux_image_is_checked_for_every_command_its_boot_script_runs() -> None:
    # The external commands linux.sh runs (its stand-ins in test_userdata_gitlab_ca, plus python3 and docker)
    boot = (ROOT / "infra" / "templates" / "linux.sh").read_text(encoding="utf-8")
    checked = _validate_text("linux")
    commands = ("gitlab-runner", "aws", "jq", "curl", "python3", "update-ca-certificates", "systemctl")
    # ...and what keeps jobs off the metadata service and the machine's way out (docs/security.md)
    for command in (*commands, "iptables", "setpriv", "useradd", "shutdown"):
        assert re.search(rf"(^|[\s(]){re.escape(command)}\b", boot), f"linux.sh no longer runs {command}?"
        assert command in checked, f"the Linux image build does not check {command}"
    assert "/usr/bin/dockerd" in boot and "test -x /usr/bin/dockerd" in checked


def test_the_macos_image_is_checked_for_every_command_its_boot_script_runs() -> None:
    boot = (ROOT / "infra" / "templates" / "macos.sh").read_text(encoding="utf-8")
    checked = _validate_text("macos")
    for command in ("gitlab-runner", "jq", "aws", "curl", "pfctl", "sysadminctl", "createhomedir", "openssl"):
        assert re.search(rf"(^|[\s($]){re.escape(command)}\b", boot), f"macos.sh no longer runs {command}?"
        assert command in checked, f"the macOS image build does not check {command}"


def test_the_windows_image_is_checked_for_what_its_boot_script_uses() -> None:
    boot = (ROOT / "infra" / "templates" / "windows.ps1").read_text(encoding="utf-8")
    checked = _validate_text("windows")
    assert "C:\\\\GitLab-Runner\\\\gitlab-runner.exe" in json.dumps(boot) and "gitlab-runner.exe" in checked
    assert "Restart-Service docker" in boot and "Get-Service -Name docker" in checked
    for cmdlet in ("Get-SECSecretValue", "Remove-SECSecret"):
        assert cmdlet in boot and "AWS.Tools.SecretsManager" in checked
    # a machine leaves by shutting down: no Auto Scaling call, so no AWS.Tools.AutoScaling
    assert "Stop-AS" not in boot and "AWS.Tools.AutoScaling" not in checked
    assert "PowerShell 7" in checked


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"subnet": "nope"}, "images.subnet"),
        ({"linux": {"parent_image": "ami-0a1b2c3d4e5f60111"}}, "images.linux.gitlab_runner_url"),
        ({"macos": {**IMAGES["macos"], "host_resource_group_arn": ""}}, "dedicated hosts"),
        ({"version": "1"}, "images.version"),
        ({"windows": {**IMAGES["windows"], "fast_launch": {"snapshots": 0}}}, "fast_launch.snapshots"),
        (
            {"windows": {**IMAGES["windows"], "fast_launch": {"snapshots": 4, "max_parallel_launches": 2}}},
            "6 or more",
        ),
        ({"linux": {**IMAGES["linux"], "fast_launch": {"snapshots": 4}}}, "Windows AMIs only"),
    ],
)
def test_a_bad_images_context_names_its_key(change: dict[str, Any], expected: str) -> None:
    with pytest.raises(ImagesSettingsError, match=expected):
        images_settings({**IMAGES, **change}, PREFIX)
