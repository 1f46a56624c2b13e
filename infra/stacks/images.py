"""Machine images: one EC2 Image Builder pipeline per platform, baking what the boot scripts expect.

The boot scripts (infra/templates) install nothing; these pipelines make the AMIs they run on. Each
platform gets its component (infra/images/<platform>.yml, an AWSTOE document whose validate phase checks every
command its boot script uses), a recipe on the operator's parent image, an infrastructure configuration
(instance profile, subnet, and dedicated-host placement for macOS) and a pipeline started on demand.
Download URLs are context, not code: pin the versions you trust, or point at your own mirror.
Imports CDK and the standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_imagebuilder as imagebuilder
from constructs import Construct

COMPONENTS = Path(__file__).resolve().parents[1] / "images"
#: Component parameters each platform needs, by context key (their meaning: infra/images/<platform>.yml).
PARAMETERS = {
    "linux": {"gitlab_runner_url": "GitlabRunnerUrl"},
    "windows": {
        "gitlab_runner_url": "GitlabRunnerUrl",
        "docker_zip_url": "DockerZipUrl",
        "powershell_msi_url": "PowerShellMsiUrl",
    },
    "macos": {"gitlab_runner_url": "GitlabRunnerUrl"},
}
DEFAULT_INSTANCE_TYPES = {"linux": ("m7i.large",), "windows": ("m7i.xlarge",), "macos": ("mac2.metal",)}
#: Managed policies of an Image Builder build instance (Image Builder User Guide, "Prerequisites": its
#: profile needs EC2InstanceProfileForImageBuilder and AmazonSSMManagedInstanceCore; SSM runs components).
BUILD_INSTANCE_POLICIES = ("EC2InstanceProfileForImageBuilder", "AmazonSSMManagedInstanceCore")
COMPONENT_PLATFORM = {"linux": "Linux", "windows": "Windows", "macos": "macOS"}


class ImagesSettingsError(ValueError):
    """Context `images` is malformed; the message names the key and the fix."""


@dataclass(frozen=True)
class PlatformImage:
    platform: str
    parent_image: str
    parameters: Mapping[str, str]
    instance_types: tuple[str, ...]
    #: macOS builds on a dedicated host: a host resource group's ARN (EC2 Mac needs `tenancy = host`).
    host_resource_group_arn: str = ""
    #: Windows only, opt-in: EC2 Fast Launch on each new AMI (None: off, as before).
    fast_launch: FastLaunch | None = None


@dataclass(frozen=True)
class FastLaunch:
    """EC2 Fast Launch for the Windows AMI: pre-provisioned snapshots shorten a cold Windows boot.

    Each snapshot costs EBS snapshot storage, and EC2 launches billed instances to make them (and to replenish
    them as launches use them), so it is off unless context `images.windows.fast_launch` asks for it
    (docs/windows-macos.md, "Windows Fast Launch").
    """

    #: Pre-provisioned snapshots kept ready: about one per Windows launch expected in a burst.
    snapshots: int
    #: Instances EC2 may launch at once to make snapshots; EnableFastLaunch takes 6 or more (EC2 API
    #: Reference, "EnableFastLaunch": MaxParallelLaunches).
    max_parallel_launches: int = 6


@dataclass(frozen=True)
class ImagesSettings:
    prefix: str
    version: str
    subnet_id: str
    security_group_ids: tuple[str, ...]
    platforms: tuple[PlatformImage, ...]


def images_settings(raw: Any, prefix: str) -> ImagesSettings:
    """Context `images`: {"version": "1.0.0", "subnet": "subnet-...", "linux": {"parent_image": ...,
    "gitlab_runner_url": ...}, "windows": {...}, "macos": {...}}; only the platforms named are built."""
    if not isinstance(raw, Mapping):
        raise ImagesSettingsError(
            'context `images` must be an object, e.g. {"subnet": "subnet-...", "linux": {...}}'
        )
    subnet = str(raw.get("subnet", ""))
    if not re.fullmatch(r"subnet-[0-9a-f]{8,17}", subnet):
        raise ImagesSettingsError(
            'context `images.subnet`: the build instances\' subnet ("subnet-..."), with a route to the '
            "download URLs, the package repositories and the Systems Manager endpoints"
        )
    version = str(raw.get("version", "1.0.0"))
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ImagesSettingsError(f"context `images.version` = {version!r}: a semantic version such as 1.0.0")
    platforms = tuple(_platform(p, raw[p]) for p in ("linux", "windows", "macos") if p in raw)
    if not platforms:
        raise ImagesSettingsError("context `images`: name at least one of linux, windows, macos")
    groups = tuple(str(g) for g in raw.get("security_groups") or ())
    return ImagesSettings(prefix, version, subnet, groups, platforms)


def _platform(platform: str, raw: Any) -> PlatformImage:
    where = f"context images.{platform}"
    if not isinstance(raw, Mapping):
        raise ImagesSettingsError(f"{where} must be an object with parent_image and the download URLs")
    parent = str(raw.get("parent_image", ""))
    if not (re.fullmatch(r"ami-[0-9a-f]{8,17}", parent) or parent.startswith("arn:")):
        raise ImagesSettingsError(
            f'{where}.parent_image: an AMI id ("ami-...") or an Image Builder image ARN'
        )
    parameters = {}
    for key, name in PARAMETERS[platform].items():
        url = str(raw.get(key, ""))
        if not url.startswith("https://"):
            raise ImagesSettingsError(
                f"{where}.{key}: an https:// URL ({name} of infra/images/{platform}.yml)"
            )
        parameters[name] = url
    group_arn = str(raw.get("host_resource_group_arn", ""))
    if platform == "macos" and not group_arn.startswith("arn:"):
        raise ImagesSettingsError(
            f"{where}.host_resource_group_arn: EC2 Mac instances run on dedicated hosts; give the ARN of a "
            "host resource group with a mac host (the macOS pool's one works)"
        )
    types = tuple(str(t) for t in raw.get("instance_types") or DEFAULT_INSTANCE_TYPES[platform])
    return PlatformImage(platform, parent, parameters, types, group_arn, _fast_launch(platform, raw))


def _fast_launch(platform: str, raw: Mapping[str, Any]) -> FastLaunch | None:
    """Context `images.windows.fast_launch`: {"snapshots": 10, "max_parallel_launches": 6}; absent: off."""
    if "fast_launch" not in raw:
        return None
    where = f"context images.{platform}.fast_launch"
    if platform != "windows":
        raise ImagesSettingsError(f"{where}: EC2 Fast Launch exists for Windows AMIs only")
    value = raw["fast_launch"]
    if not isinstance(value, Mapping):
        raise ImagesSettingsError(f'{where} must be an object, e.g. {{"snapshots": 10}}')
    snapshots, parallel = value.get("snapshots"), value.get("max_parallel_launches", 6)
    if not isinstance(snapshots, int) or isinstance(snapshots, bool) or snapshots < 1:
        raise ImagesSettingsError(f"{where}.snapshots: how many pre-provisioned snapshots to keep, 1 or more")
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 6:
        raise ImagesSettingsError(f"{where}.max_parallel_launches: 6 or more (EnableFastLaunch's minimum)")
    return FastLaunch(snapshots, parallel)


class ImagesStack(cdk.Stack):
    """The machine images of one deployment prefix: a pipeline per platform, started by hand or by CI."""

    def __init__(
        self, scope: Construct, construct_id: str, settings: ImagesSettings, env: cdk.Environment
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            env=env,
            description=f"runner-scaler {settings.prefix}: machine images (EC2 Image Builder, infra/images)",
        )
        role = iam.CfnRole(
            self,
            "BuildInstanceRole",
            assume_role_policy_document={
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ec2.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            },
            managed_policy_arns=[
                f"arn:{cdk.Aws.PARTITION}:iam::aws:policy/{name}" for name in BUILD_INSTANCE_POLICIES
            ],
            description=f"{settings.prefix} image builds: Image Builder and SSM on the build instance",
        )
        profile = iam.CfnInstanceProfile(self, "BuildInstanceProfile", roles=[role.ref])
        self.pipelines = {
            image.platform: _pipeline(self, settings, image, profile) for image in settings.platforms
        }


def component_document(platform: str) -> str:
    return (COMPONENTS / f"{platform}.yml").read_text(encoding="utf-8")


def _pipeline(
    scope: Construct, settings: ImagesSettings, image: PlatformImage, profile: iam.CfnInstanceProfile
) -> imagebuilder.CfnImagePipeline:
    platform, name = image.platform, f"{settings.prefix}-{image.platform}"
    component = imagebuilder.CfnComponent(
        scope,
        f"Component-{platform}",
        name=name,
        platform=COMPONENT_PLATFORM[platform],
        version=settings.version,
        data=component_document(platform),
        description=f"what infra/templates boot script of {platform} expects on the AMI",
    )
    recipe = imagebuilder.CfnImageRecipe(
        scope,
        f"Recipe-{platform}",
        name=name,
        version=settings.version,
        parent_image=image.parent_image,
        components=[
            imagebuilder.CfnImageRecipe.ComponentConfigurationProperty(
                component_arn=component.attr_arn,
                parameters=[
                    imagebuilder.CfnImageRecipe.ComponentParameterProperty(name=k, value=[v])
                    for k, v in image.parameters.items()
                ],
            )
        ],
        # No block device mapping: the AMI keeps its parent's root, and each pool's launch template sizes the
        # root volume on the device its AMI names (infra/settings.py), so the image needs no device name.
    )
    infrastructure = imagebuilder.CfnInfrastructureConfiguration(
        scope,
        f"Infrastructure-{platform}",
        name=name,
        instance_profile_name=profile.ref,
        instance_types=list(image.instance_types),
        subnet_id=settings.subnet_id,
        security_group_ids=list(settings.security_group_ids) or None,
        terminate_instance_on_failure=True,
        instance_metadata_options=imagebuilder.CfnInfrastructureConfiguration.InstanceMetadataOptionsProperty(
            http_tokens="required"
        ),
        placement=(
            imagebuilder.CfnInfrastructureConfiguration.PlacementProperty(
                tenancy="host", host_resource_group_arn=image.host_resource_group_arn
            )
            if image.host_resource_group_arn
            else None
        ),
    )
    distribution = (
        _fast_launch_distribution(scope, settings, image, image.fast_launch) if image.fast_launch else None
    )
    return imagebuilder.CfnImagePipeline(
        scope,
        f"Pipeline-{platform}",
        name=name,
        image_recipe_arn=recipe.attr_arn,
        infrastructure_configuration_arn=infrastructure.attr_arn,
        distribution_configuration_arn=distribution.attr_arn if distribution else None,
        # No schedule: started on demand (`aws imagebuilder start-image-pipeline-execution`), since a new AMI
        # is a deploy decision (its id goes into context `amis`).
        status="ENABLED",
        image_tests_configuration=imagebuilder.CfnImagePipeline.ImageTestsConfigurationProperty(
            image_tests_enabled=True, timeout_minutes=60
        ),
    )


def _fast_launch_distribution(
    scope: Construct, settings: ImagesSettings, image: PlatformImage, fast: FastLaunch
) -> imagebuilder.CfnDistributionConfiguration:
    """The Windows AMI's distribution with EC2 Fast Launch enabled in this account and region.

    Properties: CloudFormation Template Reference, "AWS::ImageBuilder::DistributionConfiguration
    FastLaunchConfiguration" (AccountId, Enabled, LaunchTemplate, MaxParallelLaunches, SnapshotConfiguration
    .TargetResourceCount). The pre-provisioning instances launch from the template below, in the build subnet:
    without one EC2 uses the default VPC, which a runner account may not have (EC2 Windows Guide, "Configure
    EC2 Fast Launch settings for your Windows Server AMI").
    """
    name = f"{settings.prefix}-{image.platform}"
    template = ec2.CfnLaunchTemplate(
        scope,
        f"FastLaunchTemplate-{image.platform}",
        launch_template_name=f"{name}-fast-launch",
        launch_template_data=ec2.CfnLaunchTemplate.LaunchTemplateDataProperty(
            instance_type=image.instance_types[0],
            network_interfaces=[
                ec2.CfnLaunchTemplate.NetworkInterfaceProperty(
                    device_index=0,
                    subnet_id=settings.subnet_id,
                    groups=list(settings.security_group_ids) or None,
                )
            ],
            metadata_options=ec2.CfnLaunchTemplate.MetadataOptionsProperty(http_tokens="required"),
        ),
    )
    fast_launch = imagebuilder.CfnDistributionConfiguration.FastLaunchConfigurationProperty(
        account_id=cdk.Aws.ACCOUNT_ID,
        enabled=True,
        max_parallel_launches=fast.max_parallel_launches,
        snapshot_configuration=imagebuilder.CfnDistributionConfiguration.FastLaunchSnapshotConfigurationProperty(
            target_resource_count=fast.snapshots
        ),
        launch_template=imagebuilder.CfnDistributionConfiguration.FastLaunchLaunchTemplateSpecificationProperty(
            launch_template_id=template.ref, launch_template_version=template.attr_latest_version_number
        ),
    )
    return imagebuilder.CfnDistributionConfiguration(
        scope,
        f"Distribution-{image.platform}",
        name=name,
        description=f"{image.platform} AMI in this region, with EC2 Fast Launch (images.windows.fast_launch)",
        distributions=[
            imagebuilder.CfnDistributionConfiguration.DistributionProperty(
                region=cdk.Aws.REGION,
                ami_distribution_configuration={"Name": f"{name}-{{{{ imagebuilder:buildDate }}}}"},
                fast_launch_configurations=[fast_launch],
            )
        ],
    )
