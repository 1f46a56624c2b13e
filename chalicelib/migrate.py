"""Translate a gitlab-runner config.toml (docker+machine or docker-autoscaler) into a runner-scaler config.

Pure: TOML text in, TOML text out, with a comment for every setting that has no equivalent.
Imports the standard library and config (to validate the result) only.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from chalicelib.config import format_duration
from chalicelib.errors import ConfigError

# docker+machine settings that have no runner-scaler equivalent, and why.
_MACHINE_DROPPED = {
    "MachineDriver": "machines come from the pool's Auto Scaling group / launch template, not a driver",
    "MachineName": "instances are named by the Auto Scaling group",
    "OffPeakPeriods": "removed from gitlab-runner; use [[pools.policy]] periods",
    "OffPeakTimezone": "removed from gitlab-runner; use [[pools.policy]] timezone",
    "OffPeakIdleCount": "removed from gitlab-runner; use [[pools.policy]]",
    "OffPeakIdleTime": "removed from gitlab-runner; use [[pools.policy]]",
}


@dataclass
class _Pool:
    name: str
    asg: str
    comments: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    policies: list[dict[str, Any]] = field(default_factory=list)


def migrate(text: str, source: str, gitlab_url: str | None = None) -> str:
    """The runner-scaler TOML for a gitlab-runner config.toml; raises ConfigError naming `source`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    runners = data.get("runners") or []
    if not runners:
        raise ConfigError(source, ["no [[runners]] section: nothing to migrate"])
    pools: list[_Pool] = []
    header: list[str] = []
    for index, runner in enumerate(runners):
        pool = _migrate_runner(runner, index, source)
        if pool is not None:
            pools.append(pool)
    if not pools:
        raise ConfigError(source, ["no runner uses [runners.machine] or [runners.autoscaler]"])
    if "concurrent" in data:
        header.append(
            f"# concurrent = {data['concurrent']}: no equivalent; each pool is bounded by max_instances"
        )
    url = gitlab_url or runners[0].get("url") or "https://gitlab.example.com"
    return _render(url, header, pools)


def _migrate_runner(runner: dict[str, Any], index: int, source: str) -> _Pool | None:
    name = _slug(runner.get("name") or f"pool-{index}")
    if "machine" in runner:
        return _from_docker_machine(name, runner, runner["machine"])
    if "autoscaler" in runner:
        return _from_autoscaler(name, runner, runner["autoscaler"])
    return None


def _common(pool: _Pool, runner: dict[str, Any]) -> None:
    pool.comments.append(
        "tags: gitlab-runner keeps a runner's tags in GitLab, not config.toml; list them here"
    )
    pool.settings["tags"] = []
    pool.settings["run_untagged"] = True
    executor = str(runner.get("executor", "docker")).replace("+machine", "").replace("-autoscaler", "")
    pool.settings["executor"] = executor
    if runner.get("token"):
        pool.comments.append("token: not copied; runner-scaler creates one runner (and token) per machine")
    if "cache" in runner and runner["cache"].get("s3", {}).get("BucketName"):
        pool.settings["cache_bucket"] = runner["cache"]["s3"]["BucketName"]
        pool.comments.append("cache: static S3 keys are never copied; machines use their instance profile")


def _from_docker_machine(name: str, runner: dict[str, Any], machine: dict[str, Any]) -> _Pool:
    pool = _Pool(name=name, asg=f"runner-scaler-{name}")
    pool.comments.append(f'asg: docker+machine has no Auto Scaling group; "{pool.asg}" is created by infra/')
    _common(pool, runner)
    pool.settings["max_use_count"] = int(machine.get("MaxBuilds", 0))
    if runner.get("limit"):
        pool.settings["max_instances"] = int(runner["limit"])
    else:
        pool.settings["max_instances"] = 10
        pool.comments.append("max_instances: the runner had no limit; 10 is a safe start, raise it as needed")
    if machine.get("MaxGrowthRate"):
        pool.settings["max_growth_rate"] = int(machine["MaxGrowthRate"])
    for option in machine.get("MachineOptions", []):
        key, _, value = str(option).partition("=")
        if key.endswith("instance-type"):
            pool.settings["instance_types"] = [value]
        else:
            pool.comments.append(f'MachineOptions "{key}": set it in the launch template (infra/)')
    for key, why in _MACHINE_DROPPED.items():
        if key in machine:
            pool.comments.append(f"{key}: {why}")
    pool.policies.append(_machine_policy(machine, ("* * * * *",), None))
    for section in machine.get("autoscaling", []):
        periods = tuple(_cron5(p, pool.comments) for p in section.get("Periods", ["* * * * * * *"]))
        pool.policies.append(_machine_policy(section, periods, section.get("Timezone")))
    return pool


def _machine_policy(section: dict[str, Any], periods: tuple[str, ...], tz: str | None) -> dict[str, Any]:
    """docker+machine's IdleCount/IdleCountMin/IdleScaleFactor as taskscaler's idle policy.

    With IdleScaleFactor, docker+machine keeps between IdleCountMin and IdleCount idle machines,
    scaled by machines in use: exactly idle_count = IdleCountMin, scale_factor_limit = IdleCount.
    """
    policy: dict[str, Any] = {"periods": list(periods)}
    if tz:
        policy["timezone"] = tz
    factor = float(section.get("IdleScaleFactor", 0.0))
    if factor > 0:
        policy["idle_count"] = int(section.get("IdleCountMin", 0))
        policy["scale_factor"] = factor
        policy["scale_factor_limit"] = int(section.get("IdleCount", 0))
    else:
        policy["idle_count"] = int(section.get("IdleCount", 0))
    policy["idle_time"] = format_duration(timedelta(seconds=int(section.get("IdleTime", 0))))
    return policy


def _cron5(period: str, comments: list[str]) -> str:
    """docker+machine periods have 7 fields (second ... year); drop the second and the year."""
    fields = period.split()
    if len(fields) == 5:
        return period
    if len(fields) in (6, 7):
        if fields[0] not in {"*", "0"}:
            comments.append(f'period "{period}": second field "{fields[0]}" dropped (minute resolution)')
        return " ".join(fields[1:6])
    comments.append(f'period "{period}": not a cron expression, replaced by "* * * * *"')
    return "* * * * *"


def _from_autoscaler(name: str, runner: dict[str, Any], autoscaler: dict[str, Any]) -> _Pool:
    plugin = autoscaler.get("plugin_config", {})
    asg = plugin.get("name") or f"runner-scaler-{name}"
    pool = _Pool(name=name, asg=asg)
    _common(pool, runner)
    for key in ("capacity_per_instance", "max_use_count", "max_instances"):
        if key in autoscaler:
            pool.settings[key] = int(autoscaler[key])
    pool.settings.setdefault("max_instances", int(runner.get("limit") or 10))
    if autoscaler.get("plugin"):
        pool.comments.append(f'plugin "{autoscaler["plugin"]}": runner-scaler drives the ASG itself')
    if autoscaler.get("connector_config"):
        pool.comments.append("connector_config: machines run their own runner; no SSH/WinRM connector needed")
    for policy in autoscaler.get("policy", []):
        pool.policies.append({k: v for k, v in policy.items() if k in _POLICY_KEYS})
        for extra in sorted(set(policy) - _POLICY_KEYS):
            pool.comments.append(f"policy.{extra}: no equivalent")
    if not pool.policies:
        pool.policies.append({"idle_count": 0})
    return pool


_POLICY_KEYS = {"periods", "timezone", "idle_count", "idle_time", "scale_factor", "scale_factor_limit"}


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (slug or "pool")[:63]


def _render(url: str, header: list[str], pools: list[_Pool]) -> str:
    lines = ["# Migrated by `runner-scaler migrate`. Review every comment before deploying.", *header, ""]
    lines += ["[gitlab]", f"url = {_value(url)}", ""]
    for pool in pools:
        lines.append("[[pools]]")
        lines += [f"# {c}" for c in pool.comments]
        lines.append(f"name = {_value(pool.name)}")
        lines.append(f"asg = {_value(pool.asg)}")
        lines += [f"{k} = {_value(v)}" for k, v in pool.settings.items()]
        for policy in pool.policies:
            lines += ["", "  [[pools.policy]]"]
            lines += [f"  {k} = {_value(v)}" for k, v in policy.items()]
        lines.append("")
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
