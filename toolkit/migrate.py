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

from chalicelib.config import DockerOptions, format_duration, parse_duration
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


#: The API token secret a migrated config names: the one docs/deploy.md creates.
API_TOKEN_SECRET = "runner-scaler/gitlab-api-token"

#: `[runners.docker]` keys that mean the same in `[pools.docker]` (gitlab-runner `common/config.go`
#: DockerConfig `toml:` tags; DockerOptions keeps those names).
_DOCKER_KEYS = frozenset(DockerOptions.model_fields) - {"registry_mirrors"}
#: `[runners.docker]` keys of docker+machine's connection to a remote engine (docker.Credentials).
_DOCKER_CONNECTION = frozenset({"host", "tls_verify", "tls_cert_path"})

#: docker-machine amazonec2 options (docker/machine `drivers/amazonec2/amazonec2.go` flag names) and where
#: their job is done now: a CDK context key of infra/, or nowhere.
_EC2_OPTIONS = {
    "amazonec2-access-key": "not needed: the instance profile is used (no static keys)",
    "amazonec2-secret-key": "not needed: the instance profile is used (no static keys)",
    "amazonec2-session-token": "not needed: the instance profile is used (no static keys)",
    "amazonec2-region": "the stack's region: CDK context `region`",
    "amazonec2-vpc-id": "CDK context `vpc_id`",
    "amazonec2-subnet-id": "CDK context `subnets`",
    "amazonec2-zone": "CDK context `subnets` (each subnet names its zone)",
    "amazonec2-security-group": "CDK context `machine_security_groups` (infra/ also makes one, no inbound)",
    "amazonec2-iam-instance-profile": "infra/ makes each pool's instance profile with least privilege",
    "amazonec2-spot-price": "no maximum price: Spot pools use price-capacity-optimized at the Spot price",
    "amazonec2-use-private-address": "machines need no inbound connection: the runner runs on them",
    "amazonec2-private-address-only": "machines need no inbound connection: the runner runs on them",
    "amazonec2-ssh-user": "no SSH: the runner runs on the machine",
    "amazonec2-ssh-keypath": "no SSH: the runner runs on the machine",
    "amazonec2-keypair-name": "no SSH: the runner runs on the machine",
    "amazonec2-tags": "infra/ tags machines; add your own with `cdk.Tags` in infra/",
    "amazonec2-volume-type": "infra/ uses encrypted gp3",
}


class _BadFieldError(ValueError):
    """One setting of config.toml that cannot be read; `where` is its path, as in `runners[0].limit`."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        super().__init__(f"{where}: {problem}")


@dataclass
class _Pool:
    name: str
    asg: str
    comments: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    docker: dict[str, Any] = field(default_factory=dict)
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
    problems: list[str] = []
    for index, runner in enumerate(runners):
        try:
            pool = _migrate_runner(runner, index, source)
        except _BadFieldError as exc:
            problems.append(str(exc))
            continue
        if pool is not None:
            pools.append(pool)
    if problems:
        raise ConfigError(source, problems)
    if not pools:
        raise ConfigError(source, ["no runner uses [runners.machine] or [runners.autoscaler]"])
    if "concurrent" in data:
        header.append(
            f"# concurrent = {data['concurrent']}: no equivalent; each pool is bounded by max_instances"
        )
    return _render(_gitlab_url(runners, gitlab_url, source), header, pools)


def _gitlab_url(runners: list[dict[str, Any]], given: str | None, source: str) -> str:
    """The one GitLab every pool serves: --gitlab-url, else the runners' `url`; never a made-up one."""
    if given:
        return given
    urls = [str(runner.get("url") or "") for runner in runners]
    missing = [f"runners[{i}].url" for i, url in enumerate(urls) if not url]
    if missing:
        raise ConfigError(
            source,
            [
                f"{where}: missing; set it, or pass --gitlab-url https://gitlab.example.com"
                for where in missing
            ],
        )
    if len(set(urls)) > 1:
        raise ConfigError(
            source,
            [
                f"runners serve different GitLab URLs {sorted(set(urls))}: one deployment serves one GitLab; "
                "migrate each URL's runners separately, or pass --gitlab-url"
            ],
        )
    return urls[0]


def _migrate_runner(runner: dict[str, Any], index: int, source: str) -> _Pool | None:
    name = _slug(runner.get("name") or f"pool-{index}")
    if "machine" in runner:
        return _from_docker_machine(name, runner, runner["machine"], index)
    if "autoscaler" in runner:
        return _from_autoscaler(name, runner, runner["autoscaler"], index)
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
        pool.settings["cache_bucket_existing"] = True
        pool.comments.append(
            "cache_bucket: your existing bucket; infra/ only grants the machines access to it "
            "(cache_bucket_existing = false would make infra/ create it)"
        )
        pool.comments.append("cache: static S3 keys are never copied; machines use their instance profile")
    _docker(pool, runner.get("docker") or {}, executor)


def _docker(pool: _Pool, docker: dict[str, Any], executor: str) -> None:
    """[runners.docker] -> [pools.docker], key for key; what has no place here is named in a comment."""
    if not docker or not executor.startswith("docker"):
        return
    for key, value in docker.items():
        if key in _DOCKER_KEYS:
            pool.docker[key] = value
        elif key in _DOCKER_CONNECTION:
            pool.comments.append(
                f"docker.{key}: docker+machine's remote engine connection; the runner here uses the "
                "machine's own Docker socket"
            )
        elif key == "services":
            pool.comments.append("docker.services: set services in .gitlab-ci.yml; run-single takes none")
        else:
            pool.comments.append(f"docker.{key}: not carried over (no run-single flag for it here)")


def _from_docker_machine(name: str, runner: dict[str, Any], machine: dict[str, Any], index: int) -> _Pool:
    pool = _Pool(name=name, asg=f"runner-scaler-{name}")
    pool.comments.append(f'asg: docker+machine has no Auto Scaling group; "{pool.asg}" is created by infra/')
    _common(pool, runner)
    where = f"runners[{index}]"
    pool.settings["max_use_count"] = _int(machine, "MaxBuilds", f"{where}.machine")
    if runner.get("limit"):
        pool.settings["max_instances"] = _int(runner, "limit", where)
    else:
        pool.settings["max_instances"] = 10
        pool.comments.append("max_instances: the runner had no limit; 10 is a safe start, raise it as needed")
    if machine.get("MaxGrowthRate"):
        pool.settings["max_growth_rate"] = _int(machine, "MaxGrowthRate", f"{where}.machine")
    _machine_options(pool, machine.get("MachineOptions", []), f"{where}.machine.MachineOptions")
    for key, why in _MACHINE_DROPPED.items():
        if key in machine:
            pool.comments.append(f"{key}: {why}")
    pool.policies.append(_machine_policy(machine, ("* * * * *",), None, f"{where}.machine"))
    for number, section in enumerate(machine.get("autoscaling", [])):
        at = f"{where}.machine.autoscaling[{number}]"
        periods = tuple(_cron5(p, pool.comments) for p in _periods(section, at))
        timezone = section.get("Timezone")
        if not timezone:
            # gitlab-runner `helpers/timeperiod`: "if not set, default to system setting" (time.Local).
            timezone = "UTC"
            pool.comments.append(
                f"{at}.Timezone: not set, so docker+machine read its Periods in the runner manager's local "
                'time zone; written as "UTC": set timezone to that zone (e.g. "Europe/Paris")'
            )
        pool.policies.append(_machine_policy(section, periods, timezone, at))
    return pool


def _machine_options(pool: _Pool, options: list[Any], where: str) -> None:
    """docker-machine's amazonec2 and engine options: the ones with a home here move, the rest are named."""
    for option in options:
        key, has_value, value = str(option).partition("=")
        if key == "amazonec2-instance-type":
            pool.settings["instance_types"] = [value]
        elif key == "amazonec2-request-spot-instance":
            # A docker-machine BoolFlag: the bare flag, or "=true", requests Spot.
            pool.settings["spot"] = not has_value or value.strip().lower() in {"true", "1", "yes"}
        elif key == "amazonec2-root-size":
            if not value.strip().isdigit():
                raise _BadFieldError(where, f'"{option}": the root size is a whole number of GiB')
            pool.settings["root_volume_gib"] = int(value)
        elif key == "engine-registry-mirror":
            pool.docker.setdefault("registry_mirrors", []).append(value)
        elif key == "amazonec2-ami":
            pool.comments.append(
                f'amazonec2-ami: set CDK context amis.linux = "{value}" and its root device (infra/README.md)'
            )
        elif key == "amazonec2-device-name":
            pool.comments.append(f'amazonec2-device-name: set CDK context root_devices.linux = "{value}"')
        elif key in _EC2_OPTIONS:
            pool.comments.append(f"{key}: {_EC2_OPTIONS[key]}")
        else:
            pool.comments.append(f'MachineOptions "{key}": set it in the launch template (infra/)')


def _int(section: dict[str, Any], key: str, where: str) -> int:
    """An integer setting of config.toml, as gitlab-runner's Go struct reads it (no quotes, no units)."""
    value = section.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadFieldError(
            f"{where}.{key}", f"{value!r} is not a whole number (gitlab-runner refuses it too)"
        )
    return value


def _seconds(section: dict[str, Any], key: str, where: str) -> int:
    """docker+machine's IdleTime: an integer of seconds (gitlab-runner `common/config.go` `IdleTime int`)."""
    value = section.get(key, 0)
    if isinstance(value, str):
        try:
            hint = f"; write {key} = {int(parse_duration(value).total_seconds())}"
        except ValueError:
            hint = ""
        raise _BadFieldError(
            f"{where}.{key}",
            f"{value!r} is not a number of seconds (docker+machine's {key} is an integer){hint}",
        )
    return _int(section, key, where)


def _number(section: dict[str, Any], key: str, where: str) -> float:
    value = section.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadFieldError(f"{where}.{key}", f"{value!r} is not a number, e.g. 0.5")
    return float(value)


def _periods(section: dict[str, Any], where: str) -> list[str]:
    """`Periods` is a list of cron expressions; gitlab-runner refuses a string (its field is `[]string`), and
    reading one character by character turned a working-hours policy into 22 copies of "* * * * *"."""
    periods = section.get("Periods", ["* * * * * * *"])
    if isinstance(periods, str):
        raise _BadFieldError(
            f"{where}.Periods",
            f'a string; write a list, Periods = ["{periods}"] (gitlab-runner refuses a string)',
        )
    return [str(p) for p in periods]


def _machine_policy(
    section: dict[str, Any], periods: tuple[str, ...], tz: str | None, where: str
) -> dict[str, Any]:
    """docker+machine's IdleCount/IdleCountMin/IdleScaleFactor as taskscaler's idle policy.

    With IdleScaleFactor, docker+machine keeps between IdleCountMin and IdleCount idle machines,
    scaled by machines in use: exactly idle_count = IdleCountMin, scale_factor_limit = IdleCount.
    """
    policy: dict[str, Any] = {"periods": list(periods)}
    if tz:
        policy["timezone"] = tz
    factor = _number(section, "IdleScaleFactor", where)
    if factor > 0:
        # With IdleScaleFactor, docker+machine keeps at least one idle machine whatever IdleCountMin says
        # (gitlab-runner `executors/docker/machine/idle_limit_strategy.go`, idleCountMinFulfilled: "forced to
        # be at least 1"; `common/config.go`: "Defaults to 1").
        policy["idle_count"] = max(1, _int(section, "IdleCountMin", where))
        policy["scale_factor"] = factor
        policy["scale_factor_limit"] = _int(section, "IdleCount", where)
    else:
        policy["idle_count"] = _int(section, "IdleCount", where)
    policy["idle_time"] = format_duration(timedelta(seconds=_seconds(section, "IdleTime", where)))
    return policy


def _cron5(period: str, comments: list[str]) -> str:
    """A docker+machine period as 5-field cron (minute hour day-of-month month day-of-week).

    gitlab-runner parses periods with gorhill/cronexpr (`helpers/timeperiod`), whose README says: 7 fields are
    second ... year; with 6 "a 0 second field is prepended", so 6 fields are minute ... year, not second ...
    day-of-week; with 5 a 0 second and a wildcard year are added. The second (minute resolution here) and the
    year have no place in 5 fields: a value other than `*`/`0` (second) or `*` (year) is named in a comment.
    """
    fields = period.split()
    if len(fields) == 5:
        return period
    if len(fields) == 6:
        minute_to_weekday, second, year = fields[:5], "0", fields[5]
    elif len(fields) == 7:
        minute_to_weekday, second, year = fields[1:6], fields[0], fields[6]
    else:
        comments.append(f'period "{period}": not a cron expression, replaced by "* * * * *"')
        return "* * * * *"
    if second not in {"*", "0"}:
        comments.append(f'period "{period}": second field "{second}" dropped (minute resolution)')
    if year != "*":
        comments.append(
            f'period "{period}": year field "{year}" dropped, so this policy now applies every year; '
            "remove it once that year is over"
        )
    return " ".join(minute_to_weekday)


def _from_autoscaler(name: str, runner: dict[str, Any], autoscaler: dict[str, Any], index: int) -> _Pool:
    plugin = autoscaler.get("plugin_config", {})
    asg = plugin.get("name") or f"runner-scaler-{name}"
    pool = _Pool(name=name, asg=asg)
    _common(pool, runner)
    for key in ("capacity_per_instance", "max_use_count", "max_instances"):
        if key in autoscaler:
            pool.settings[key] = _int(autoscaler, key, f"runners[{index}].autoscaler")
    if "max_instances" not in pool.settings:
        pool.settings["max_instances"] = (
            _int(runner, "limit", f"runners[{index}]") if runner.get("limit") else 10
        )
    _one_job_per_machine(pool)
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


def _one_job_per_machine(pool: _Pool) -> None:
    """docker-autoscaler runs several jobs on one instance; a runner-scaler machine runs one run-single, which
    takes one job at a time (gitlab-runner `commands/single.go`). Same peak: more machines, one slot each."""
    slots = int(pool.settings.get("capacity_per_instance", 1))
    if slots <= 1:
        return
    machines = int(pool.settings["max_instances"]) * slots
    pool.settings["capacity_per_instance"] = 1
    pool.settings["max_instances"] = machines
    pool.comments.append(
        f"capacity_per_instance = {slots}: a machine runs one run-single, which takes one job at a time, so "
        f"capacity_per_instance = 1 and max_instances = {machines} (was {machines // slots}) keep the same "
        "number of concurrent jobs on smaller machines: pick instance_types for one job each"
    )


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (slug or "pool")[:63]


def _render(url: str, header: list[str], pools: list[_Pool]) -> str:
    lines = ["# Migrated by `runner-scaler migrate`. Review every comment before deploying.", *header, ""]
    lines += [
        "[gitlab]",
        f"url = {_value(url)}",
        "# api_token_secret: create this Secrets Manager secret holding a GitLab token (docs/deploy.md), or",
        "# name yours; without one no job can be routed to a pool",
        f"api_token_secret = {_value(API_TOKEN_SECRET)}",
        "",
    ]
    for pool in pools:
        lines.append("[[pools]]")
        lines += [f"# {c}" for c in pool.comments]
        lines.append(f"name = {_value(pool.name)}")
        lines.append(f"asg = {_value(pool.asg)}")
        lines += [f"{k} = {_value(v)}" for k, v in pool.settings.items()]
        if pool.docker:
            lines += ["", "  [pools.docker]"]
            lines += [f"  {k} = {_value(v)}" for k, v in pool.docker.items()]
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
