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

from chalicelib.config import Config, Platform, load_config_file
from chalicelib.resources import ENV_PREFIX, Names
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
    launch_hook_timeout: int = 600
    terminate_hook_timeout: int = 300
    #: Spot pools: share of on-demand capacity above the base (0 = all Spot), and the on-demand base.
    on_demand_percentage: int = 0
    on_demand_base: int = 0
    machine_security_groups: tuple[str, ...] = field(default=())
    #: The functions' POWERTOOLS_SERVICE_NAME: a dimension of every metric the app emits ("" = none).
    metrics_service: str = ""

    @property
    def prefix(self) -> str:
        return self.names.prefix

    def metric_dimensions(self, **dimensions: str) -> dict[str, str]:
        """The dimensions the app's EMF metrics carry: the given ones plus Powertools' `service`."""
        return {**dimensions, "service": self.metrics_service} if self.metrics_service else dict(dimensions)

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
    amis = dict(_mapping(context, "amis"))
    for platform in sorted(platforms):
        if not re.fullmatch(r"ami-[0-9a-f]{8,17}", str(amis.get(platform, ""))):
            raise SettingsError(f'context `amis.{platform}`: give the AMI id of {platform} pools ("ami-...")')
    volumes = {**DEFAULT_ROOT_VOLUMES, **dict(context.get("root_volumes") or {})}
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
        amis={p: str(amis[p]) for p in sorted(platforms)},
        root_volumes={p: RootVolume(str(v["device"]), int(v["size_gib"])) for p, v in volumes.items()},
        chalice_package=(base / str(package)).resolve() if package else None,
        cache_expiration_days=int(context.get("cache_expiration_days", 14)),
        log_retention_days=int(context.get("log_retention_days", 30)),
        launch_hook_timeout=int(context.get("launch_hook_timeout", 600)),
        terminate_hook_timeout=int(context.get("terminate_hook_timeout", 300)),
        on_demand_percentage=int(context.get("on_demand_percentage", 0)),
        on_demand_base=int(context.get("on_demand_base", 0)),
        machine_security_groups=tuple(str(g) for g in context.get("machine_security_groups") or ()),
        metrics_service=stage_env.get(POWERTOOLS_SERVICE, ""),
    )


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
