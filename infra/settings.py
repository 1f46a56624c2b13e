"""The deployment's inputs, read once from CDK context into a frozen value (no account lookups, ever).

`cdk synth` must run offline in CI, so everything a lookup would find is given as context: account, region,
VPC and subnets (with their zones), AMI ids per platform. Errors name the context key and how to set it.
Imports chalicelib's config/resources and the standard library only (no CDK): the stack takes a Settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.config import Config, Platform, Pool, load_config_file
from chalicelib.resources import ENV_PREFIX, LAUNCH_HOOK_TIMEOUT_SECONDS, Names
from infra.policy import CHALICE_CONFIG, chalice_stage_env

#: Powertools adds this service name as a `service` dimension to every EMF metric it writes.
POWERTOOLS_SERVICE = "POWERTOOLS_SERVICE_NAME"

INFRA = Path(__file__).resolve().parent
ROOT = INFRA.parent

#: Root volume of each platform's usual AMI (Amazon Linux, Windows Server, EC2 Mac): device and size (GiB).
DEFAULT_ROOT_VOLUMES: dict[str, dict[str, Any]] = {
    "linux": {"device": "/dev/xvda", "size_gib": 40},
    "windows": {"device": "/dev/sda1", "size_gib": 100},
    "macos": {"device": "/dev/sda1", "size_gib": 200},
}

#: A Linux AMI's root device name depends on the distribution (EC2 User Guide, "Device names on Linux
#: instances": /dev/xvda on Amazon Linux, /dev/sda1 on Ubuntu and most others). A launch template mapping
#: another name adds a second, empty volume and leaves the AMI's 8 GiB root, so Linux AMIs must name theirs.
ROOT_DEVICE_BY_DISTRIBUTION = {"amazon-linux": "/dev/xvda", "ubuntu": "/dev/sda1"}
_ROOT_DEVICE = re.compile(r"/dev/(sd[a-z]1?|xvd[a-z])")


class SettingsError(ValueError):
    """A context value is missing or malformed; the message names the key and the fix."""


@dataclass(frozen=True)
class Subnet:
    id: str
    availability_zone: str


@dataclass(frozen=True)
class RootVolume:
    device: str
    size_gib: int


@dataclass(frozen=True)
class FunctionsVpc:
    """Where the Lambda functions run when GitLab is private: their subnets and security groups."""

    subnet_ids: tuple[str, ...]
    security_group_ids: tuple[str, ...]


@dataclass(frozen=True)
class Settings:
    """Everything one stack needs besides the code: where, with what, named how."""

    stage: str
    account: str
    region: str
    config_file: Path
    config: Config
    names: Names
    vpc_id: str
    subnets: tuple[Subnet, ...]
    amis: Mapping[str, str]
    root_volumes: Mapping[str, RootVolume]
    #: A directory made by `python -m infra.package` (sam.json + deployment.zip); None packages at synth.
    chalice_package: Path | None = None
    cache_expiration_days: int = 14
    log_retention_days: int = 30
    #: Seconds the launch / terminate lifecycle hooks wait for the scaler before their default result.
    launch_hook_timeout: int = LAUNCH_HOOK_TIMEOUT_SECONDS
    terminate_hook_timeout: int = 300
    #: Spot pools: share of on-demand capacity above the base (0 = all Spot), and the on-demand base.
    on_demand_percentage: int = 0
    on_demand_base: int = 0
    machine_security_groups: tuple[str, ...] = field(default=())
    #: The functions' POWERTOOLS_SERVICE_NAME: a dimension of every metric the app emits ("" = none).
    metrics_service: str = ""
    #: The functions' VPC placement (a private GitLab); None runs them outside any VPC, as Lambda does.
    functions_vpc: FunctionsVpc | None = None

    @property
    def prefix(self) -> str:
        return self.names.prefix

    def metric_dimensions(self, **dimensions: str) -> dict[str, str]:
        """The dimensions the app's EMF metrics carry: the given ones plus Powertools' `service`."""
        return {**dimensions, "service": self.metrics_service} if self.metrics_service else dict(dimensions)

    def root_volume(self, pool: Pool) -> RootVolume:
        """The pool's root volume: its platform's device (named by its AMI) and the pool's own size if set."""
        volume = self.root_volumes[pool.platform.value]
        return RootVolume(volume.device, pool.root_volume_gib or volume.size_gib)

    def subnets_for(self, zones: tuple[str, ...]) -> tuple[str, ...]:
        """Subnet ids in `zones` (all subnets when no zone is named)."""
        chosen = [s.id for s in self.subnets if not zones or s.availability_zone in zones]
        if not chosen:
            raise SettingsError(f"no subnet in zones {list(zones)}: add one to context `subnets`")
        return tuple(chosen)


def load_settings(context: Mapping[str, Any], base: Path = INFRA) -> Settings:
    """Settings from CDK context (cdk.json plus `-c key=value`); relative paths are relative to `base`."""
    stage = _text(context, "stage")
    stage_env = chalice_stage_env(stage, CHALICE_CONFIG)
    prefix = str(context.get("prefix") or stage_env.get(ENV_PREFIX) or "")
    if not prefix:
        raise SettingsError(
            f"context `prefix` is missing and .chalice/config.json stage {stage!r} sets no {ENV_PREFIX}"
        )
    config_file = (base / _text(context, "config")).resolve()
    config = load_config_file(config_file)
    platforms = {pool.platform.value for pool in config.pools}
    amis, devices = _amis(_mapping(context, "amis"), platforms)
    volumes = {p: dict(v) for p, v in DEFAULT_ROOT_VOLUMES.items()}
    for platform, given in dict(context.get("root_volumes") or {}).items():
        volumes.setdefault(platform, {}).update(given)
    for platform, device in devices.items():
        volumes[platform]["device"] = device
    _check_root_devices(volumes, platforms, explicit=set(devices) | set(context.get("root_volumes") or {}))
    package = context.get("chalice_package")
    return Settings(
        stage=stage,
        account=_matching(context, "account", r"\d{12}", "a 12-digit account id"),
        region=_matching(context, "region", r"[a-z]{2}(-[a-z]+)+-\d", 'a region such as "eu-west-1"'),
        config_file=config_file,
        config=config,
        names=Names(prefix),
        vpc_id=_matching(context, "vpc_id", r"vpc-[0-9a-f]{8,17}", 'the VPC id ("vpc-...")'),
        subnets=_subnets(context),
        amis=amis,
        root_volumes={p: RootVolume(str(v["device"]), int(v["size_gib"])) for p, v in volumes.items()},
        chalice_package=(base / str(package)).resolve() if package else None,
        cache_expiration_days=int(context.get("cache_expiration_days", 14)),
        log_retention_days=int(context.get("log_retention_days", 30)),
        launch_hook_timeout=int(context.get("launch_hook_timeout", LAUNCH_HOOK_TIMEOUT_SECONDS)),
        terminate_hook_timeout=int(context.get("terminate_hook_timeout", 300)),
        on_demand_percentage=int(context.get("on_demand_percentage", 0)),
        on_demand_base=int(context.get("on_demand_base", 0)),
        machine_security_groups=tuple(str(g) for g in context.get("machine_security_groups") or ()),
        metrics_service=stage_env.get(POWERTOOLS_SERVICE, ""),
        functions_vpc=_functions_vpc(context),
    )


def _amis(raw: Mapping[str, Any], platforms: set[str]) -> tuple[dict[str, str], dict[str, str]]:
    """AMI ids per platform, and the root devices the context names: `"ami-..."`, or
    `{"id": "ami-...", "root_device": "/dev/sda1"}`, or `{"id": "ami-...", "distribution": "ubuntu"}`."""
    amis: dict[str, str] = {}
    devices: dict[str, str] = {}
    for platform in sorted(platforms):
        value = raw.get(platform, "")
        entry = dict(value) if isinstance(value, Mapping) else {"id": value}
        if not re.fullmatch(r"ami-[0-9a-f]{8,17}", str(entry.get("id", ""))):
            raise SettingsError(f'context `amis.{platform}`: give the AMI id of {platform} pools ("ami-...")')
        amis[platform] = str(entry["id"])
        distribution = str(entry.get("distribution", ""))
        if distribution and distribution not in ROOT_DEVICE_BY_DISTRIBUTION:
            raise SettingsError(
                f"context `amis.{platform}.distribution` = {distribution!r}: one of "
                f"{sorted(ROOT_DEVICE_BY_DISTRIBUTION)}, or give `root_device` itself"
            )
        device = str(entry.get("root_device") or ROOT_DEVICE_BY_DISTRIBUTION.get(distribution, ""))
        if device:
            devices[platform] = device
    return amis, devices


def _check_root_devices(
    volumes: Mapping[str, Mapping[str, Any]], platforms: set[str], explicit: set[str]
) -> None:
    """Each device is a Linux block device name; a Linux AMI's is named, since distributions differ."""
    for platform in sorted(platforms):
        device = str(volumes[platform].get("device", ""))
        if not _ROOT_DEVICE.fullmatch(device):
            raise SettingsError(
                f'context: root device {device!r} of {platform} is not a device name such as "/dev/xvda"'
            )
        if platform == "linux" and "linux" not in explicit:
            raise SettingsError(
                'context `amis.linux`: name the AMI\'s root device, {"id": "ami-...", "root_device": '
                '"/dev/xvda"} on Amazon Linux or "/dev/sda1" on Ubuntu (or "distribution": "ubuntu"); '
                "`aws ec2 describe-images --image-ids ami-... --query Images[0].RootDeviceName` shows it. "
                "A wrong name leaves an 8 GiB root and adds the big volume beside it"
            )


def _functions_vpc(context: Mapping[str, Any]) -> FunctionsVpc | None:
    """`functions_vpc`: {"subnets": ["subnet-..."], "security_groups": ["sg-..."]}, for a private GitLab."""
    raw = context.get("functions_vpc")
    if not raw:
        return None
    if not isinstance(raw, Mapping):
        raise SettingsError('context `functions_vpc` must be {"subnets": [...], "security_groups": [...]}')
    subnets = tuple(str(s) for s in raw.get("subnets") or ())
    groups = tuple(str(g) for g in raw.get("security_groups") or ())
    if not subnets or not all(re.fullmatch(r"subnet-[0-9a-f]{8,17}", s) for s in subnets):
        raise SettingsError(
            'context `functions_vpc.subnets`: list private subnet ids ("subnet-..."), ideally in two zones '
            "or more; they need a route to GitLab and to the AWS APIs (NAT or VPC endpoints, docs/deploy.md)"
        )
    if not groups or not all(re.fullmatch(r"sg-[0-9a-f]{8,17}", g) for g in groups):
        raise SettingsError(
            'context `functions_vpc.security_groups`: list security group ids ("sg-...") allowing outbound '
            "HTTPS to GitLab and the AWS endpoints"
        )
    return FunctionsVpc(subnets, groups)


def platform_of(value: Platform | str) -> str:
    return value.value if isinstance(value, Platform) else str(value)


def _text(context: Mapping[str, Any], key: str) -> str:
    value = context.get(key)
    if not isinstance(value, str) or not value:
        raise SettingsError(f"context `{key}` is missing: set it in infra/cdk.json or with -c {key}=...")
    return value


def _matching(context: Mapping[str, Any], key: str, pattern: str, what: str) -> str:
    value = _text(context, key)
    if not re.fullmatch(pattern, value):
        raise SettingsError(f"context `{key}` = {value!r} is not {what}")
    return value


def _mapping(context: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = context.get(key)
    if not isinstance(value, Mapping):
        raise SettingsError(f'context `{key}` must be an object, e.g. {{"linux": "ami-..."}}')
    return value


def _subnets(context: Mapping[str, Any]) -> tuple[Subnet, ...]:
    raw = context.get("subnets")
    if not isinstance(raw, list) or not raw:
        raise SettingsError(
            'context `subnets` must list the machines\' subnets: [{"id": "subnet-...", "az": "eu-west-1a"}]'
        )
    subnets = []
    for item in raw:
        if (
            not isinstance(item, Mapping)
            or not str(item.get("id", "")).startswith("subnet-")
            or not item.get("az")
        ):
            raise SettingsError(f'context `subnets`: {item!r} needs "id" ("subnet-...") and "az"')
        subnets.append(Subnet(str(item["id"]), str(item["az"])))
    return tuple(subnets)
