"""Config: pydantic models of pools and policies in gitlab-runner's own vocabulary, loaded from TOML.

Parsed once per container into a frozen object. Errors name the file, the field path and the fix.
Imports pydantic, croniter and the standard library only (no boto3: SSM text is passed in).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from chalicelib.errors import ConfigError

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """A Go `time.ParseDuration` string ("30m", "1h30m", "720h", "0s") as a timedelta.

    gitlab-runner's config uses Go durations, so operators paste them unchanged. Bare numbers are seconds.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    text = value.strip()
    if text in {"0", ""}:
        return timedelta(0)
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(
            f'"{value}" is not a duration; write it as Go does, e.g. "30m", "1h30m", "720h", "45s"'
        )
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    """The Go-style spelling of a duration (round seconds), for printing resolved configs."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
#: A TOML boolean only: pydantic's lax mode would read `spot = "yes"` or `privileged = 1` as true, and a typo
#: in a quoted value would then switch a pool's behaviour without a word.
Bool = Annotated[bool, Strict()]
#: A TOML integer only: `max_instances = "40"` or `3.5` is a mistake worth reporting, not a value to coerce.
Int = Annotated[int, Strict()]
#: A TOML number (an integer is a fine float); never a quoted string.
Float = Annotated[float, Strict()]


class Platform(StrEnum):
    LINUX = "linux"
    WINDOWS = "windows"
    MACOS = "macos"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Policy(_Model):
    """One `[[pools.policy]]`: gitlab-runner's `[[runners.autoscaler.policy]]`, same names and defaults."""

    periods: tuple[str, ...] = ("* * * * *",)
    timezone: str = "UTC"
    idle_count: Int = Field(0, ge=0)
    idle_time: Duration = timedelta(minutes=5)
    scale_factor: Float = Field(0.0, ge=0.0)
    scale_factor_limit: Int = Field(0, ge=0)

    @field_validator("periods")
    @classmethod
    def _periods_are_cron(cls, periods: tuple[str, ...]) -> tuple[str, ...]:
        if not periods:
            raise ValueError('at least one period is needed; "* * * * *" means always')
        for period in periods:
            if len(period.split()) != 5 or not croniter.is_valid(period):
                raise ValueError(
                    f'"{period}" is not a 5-field cron expression '
                    "(minute hour day-of-month month day-of-week), "
                    'e.g. "* 8-18 * * mon-fri"'
                )
        return periods

    @field_validator("timezone")
    @classmethod
    def _timezone_exists(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            close = difflib.get_close_matches(name, _zone_names(), n=1)
            hint = f'; did you mean "{close[0]}"?' if close else '; use an IANA name such as "Europe/Paris"'
            raise ValueError(f'unknown time zone "{name}"{hint}') from None
        return name

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def matches(self, now: datetime) -> bool:
        """Whether `now` (aware) falls in one of the periods, read in the policy's own time zone."""
        local = now.astimezone(self.zone).replace(second=0, microsecond=0)
        return any(croniter.match(period, local) for period in self.periods)


PullPolicy = Literal["always", "if-not-present", "never"]


def _one_or_many(value: Any) -> Any:
    """gitlab-runner's `StringOrArray`: `pull_policy = "always"` is `pull_policy = ["always"]`."""
    return (value,) if isinstance(value, str) else value


class DockerOptions(_Model):
    """`[pools.docker]`: gitlab-runner's `[runners.docker]`, same key names, passed to `run-single` as flags.

    Every key is a field of gitlab-runner's `DockerConfig` (gitlab-runner `common/config.go`, `toml:` tags);
    `RUN_SINGLE_FLAGS` gives the flag each one becomes (the struct's `long:` tag under the `docker`
    namespace of `RunnerSettings`, hence `--docker-<long>`). `registry_mirrors` is ours: it goes to the
    machine's Docker daemon (`/etc/docker/daemon.json` "registry-mirrors"), not to gitlab-runner.
    """

    #: The image of jobs that name none (`image:` absent in .gitlab-ci.yml).
    image: str = "alpine:3.20"
    #: Docker-in-Docker needs it; on a pool whose machines run one job each (max_use_count = 1).
    privileged: Bool = False
    #: None follows `privileged`, as in gitlab-runner.
    services_privileged: Bool | None = None
    allowed_privileged_images: tuple[str, ...] = ()
    allowed_privileged_services: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    cache_dir: str = ""
    disable_cache: Bool = False
    pull_policy: Annotated[tuple[PullPolicy, ...], BeforeValidator(_one_or_many)] = ()
    allowed_pull_policies: tuple[PullPolicy, ...] = ()
    allowed_images: tuple[str, ...] = ()
    allowed_services: tuple[str, ...] = ()
    #: Bytes, as in gitlab-runner (`shm_size = 268435456` is 256 MiB).
    shm_size: Int = Field(0, ge=0)
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()
    network_mode: str = ""
    cpus: str = ""
    memory: str = ""
    memory_swap: str = ""
    memory_reservation: str = ""
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    user: str = ""
    helper_image: str = ""
    wait_for_services_timeout: Int = Field(0, ge=0)
    oom_kill_disable: Bool = False
    runtime: str = ""
    gpus: str = ""
    registry_mirrors: tuple[str, ...] = ()

    #: Field -> `run-single` flag, from the `long:` tags of gitlab-runner `common/config.go` `DockerConfig`.
    #: (`services_privileged` keeps its underscore there, like `--cache-s3-authentication_type`.)
    RUN_SINGLE_FLAGS: ClassVar[dict[str, str]] = {
        "image": "--docker-image",
        "privileged": "--docker-privileged",
        "services_privileged": "--docker-services_privileged",
        "allowed_privileged_images": "--docker-allowed-privileged-images",
        "allowed_privileged_services": "--docker-allowed-privileged-services",
        "volumes": "--docker-volumes",
        "cache_dir": "--docker-cache-dir",
        "disable_cache": "--docker-disable-cache",
        "pull_policy": "--docker-pull-policy",
        "allowed_pull_policies": "--docker-allowed-pull-policies",
        "allowed_images": "--docker-allowed-images",
        "allowed_services": "--docker-allowed-services",
        "shm_size": "--docker-shm-size",
        "dns": "--docker-dns",
        "dns_search": "--docker-dns-search",
        "extra_hosts": "--docker-extra-hosts",
        "network_mode": "--docker-network-mode",
        "cpus": "--docker-cpus",
        "memory": "--docker-memory",
        "memory_swap": "--docker-memory-swap",
        "memory_reservation": "--docker-memory-reservation",
        "cap_add": "--docker-cap-add",
        "cap_drop": "--docker-cap-drop",
        "security_opt": "--docker-security-opt",
        "devices": "--docker-devices",
        "user": "--docker-user",
        "helper_image": "--docker-helper-image",
        "wait_for_services_timeout": "--docker-wait-for-services-timeout",
        "oom_kill_disable": "--docker-oom-kill-disable",
        "runtime": "--docker-runtime",
        "gpus": "--docker-gpus",
    }

    @field_validator("image")
    @classmethod
    def _image_named(cls, image: str) -> str:
        if not image.strip():
            raise ValueError('the default image cannot be empty; e.g. image = "alpine:3.20"')
        return image

    @field_validator("registry_mirrors")
    @classmethod
    def _mirrors_are_urls(cls, mirrors: tuple[str, ...]) -> tuple[str, ...]:
        for mirror in mirrors:
            if not re.match(r"^https?://[^\s]+$", mirror):
                raise ValueError(
                    f'registry mirror "{mirror}" must be a URL, e.g. "https://mirror.example.com"'
                )
        return mirrors

    def machine_owning_options(self) -> tuple[str, ...]:
        """The options that make a job root on its machine (docs/security.md), as the config spells them.

        A privileged container (or privileged services beside it) is root on the host; a container on the
        host's network is not behind the rule that closes the metadata service to containers (DOCKER-USER
        filters forwarded traffic only); a mounted Docker socket starts any container it likes.
        """
        owned: list[str] = []
        if self.privileged:
            owned.append("privileged = true")
        if self.services_privileged:
            owned.append("services_privileged = true")
        if self.network_mode == "host":
            owned.append('network_mode = "host"')
        if any("docker.sock" in volume or "docker_engine" in volume for volume in self.volumes):
            owned.append("a Docker socket in volumes")
        return tuple(owned)

    def run_single_args(self) -> tuple[str, ...]:
        """The `gitlab-runner run-single` arguments for these options, in field order.

        A list repeats its flag per item (go-flags slices: `--docker-volumes a --docker-volumes b`); a true
        boolean is the bare flag; unset values (empty, 0, false) are left out, so gitlab-runner's defaults
        apply.
        `services_privileged = false` has no flag spelling and goes by `services_privileged_env` instead.
        """
        args: list[str] = []
        for name, flag in self.RUN_SINGLE_FLAGS.items():
            value = getattr(self, name)
            if isinstance(value, bool):
                args += [flag] if value else []
            elif isinstance(value, tuple):
                for item in value:
                    args += [flag, str(item)]
            elif value:
                args += [flag, str(value)]
        return tuple(args)

    @property
    def services_privileged_env(self) -> str:
        """`DOCKER_SERVICES_PRIVILEGED` (its `env:` tag in gitlab-runner `common/config.go`): "false" when
        services must stay unprivileged beside a privileged job container, else "" (flag or default)."""
        return "false" if self.services_privileged is False else ""


def _warm_pool_size(value: Any) -> Any:
    """`warm_pool`: "auto", "off" or a whole number of machines, one error line, not pydantic's two."""
    if value in ("auto", "off") or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError(f'{value!r} is not a warm pool size: write "auto", "off", or a number of machines: 2')


class HostManagement(StrEnum):
    SCALER = "scaler"
    AUTO = "auto"


class HostsConfig(_Model):
    """Dedicated-host settings of a macOS or Windows (BYOL) pool."""

    instance_type: str
    host_family: str = ""
    host_resource_group: str
    license_configuration: str = ""
    #: Machines one host takes. Left unset, AWS's own count is used (see `slots_derived`); 1 is the fallback.
    slots_per_host: Int = Field(1, ge=1)
    min_hosts: Int = Field(0, ge=0)
    max_hosts: Int = Field(1, ge=1)
    scrub_time: Duration = timedelta(minutes=50)
    min_allocation: Duration = timedelta(hours=24)
    allocate_after: Duration = timedelta(minutes=2)
    host_management: HostManagement = HostManagement.SCALER
    availability_zones: tuple[str, ...] = ()
    #: macOS only: a used Mac whose host is inside its minimum allocation, with a job waiting, gets a fresh
    #: root volume (CreateReplaceRootVolumeTask) and a new runner instead of a termination and a host scrub
    #: (docs/windows-macos.md, "Host reuse").
    reuse_root_volume: Bool = True
    #: How long a used Mac waits, once `run-single` has exited, for the scaler to replace its root volume
    #: before it shuts itself down as before (the boot script's tail): a lost scaler never strands an idle
    #: Mac.
    reuse_wait: Duration = timedelta(minutes=10)
    #: macOS only: every host the pool keeps (inside its minimum allocation, or past it and used within the
    #: active policy's `idle_time`) holds a booted Mac waiting for a job, and a used Mac on such a host is
    #: reused at once. AWS bills the host, not the instance on it, so a waiting Mac costs only the unbilled
    #: scrub a termination would have started, and a job takes it without the 6-20 minute boot
    #: (docs/windows-macos.md, "Standby Macs").
    keep_ready: Bool = True

    @property
    def slots_derived(self) -> bool:
        """`slots_per_host` was left unset, so the host's own capacity decides it, not the default of 1.

        A Windows host packs as many machines as its size allows (AWS reports it per instance type); the
        operator rarely knows the number and a wrong 1 allocates a host per machine. A value set in the file,
        even 1, is the operator packing fewer on purpose and always wins.
        """
        return "slots_per_host" not in self.model_fields_set

    @model_validator(mode="after")
    def _bounds(self) -> HostsConfig:
        if self.min_hosts > self.max_hosts:
            raise ValueError(f"min_hosts ({self.min_hosts}) is above max_hosts ({self.max_hosts})")
        if self.host_management is HostManagement.SCALER and not self.availability_zones:
            raise ValueError(
                'host_management "scaler" allocates hosts itself: set availability_zones, e.g. ["us-east-1a"]'
            )
        return self


class Pool(_Model):
    """One `[[pools]]`: an Auto Scaling group of identical machines, each a fresh GitLab runner."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    asg: str
    platform: Platform = Platform.LINUX
    executor: str = "docker"
    tags: tuple[str, ...] = ()
    run_untagged: Bool = False
    locked: Bool = True
    capacity_per_instance: Int = Field(1, ge=1)
    max_use_count: Int = Field(1, ge=0)
    max_instances: Int = Field(ge=1)
    boot_timeout: Duration = timedelta(minutes=15)
    max_growth_rate: Int = Field(0, ge=0)
    instance_types: tuple[str, ...] = ()
    spot: Bool = False
    #: Root volume size in GiB (docker-machine's `amazonec2-root-size`); None takes infra's platform default.
    root_volume_gib: Int | None = Field(None, ge=1, le=16384)
    cache_bucket: str = ""
    #: The cache bucket is yours and exists already (migrated from [runners.cache.s3]): infra/ only grants the
    #: machines access to it. False: infra/ creates and owns a bucket of that name.
    cache_bucket_existing: Bool = False
    retry_interrupted_jobs: Bool = True
    #: `run-single --wait-timeout`: 0 waits for jobs as long as the machine lives, so idle machines go only by
    #: the scaler's idle policy (a positive value makes an idle machine leave by itself after it).
    wait_timeout: Duration = timedelta(0)
    prewarm: Bool = False
    prewarm_max: Int = Field(2, ge=0)
    prewarm_confidence: Float = Field(0.8, gt=0.0, le=1.0)
    hosts: HostsConfig | None = None
    #: gitlab-runner's `[runners.docker]` for docker executors (see DockerOptions).
    docker: DockerOptions = DockerOptions()
    #: Docker also listens on tcp://0.0.0.0:2376 with TLS (server certificate from the fleet CA), as
    #: docker+machine's engines did for the runner manager. Nothing in runner-scaler connects there: the
    #: runner runs on the machine and uses the local socket, so it is off unless your own tooling needs it.
    docker_tcp_tls: Bool = False
    #: An EC2 Auto Scaling warm pool beside the pool's group: stopped (or hibernated) machines that start in
    #: seconds instead of booting cold. "auto" (the default) lets the scaler size it from the demand forecast
    #: on every reconcile (chalicelib/capacity/warm.py), and resolves to "off" where AWS allows no warm pool
    #: (Spot pools, whose group has a mixed instances policy) and on dedicated-host pools; "off" never has
    #: one; a number is a fixed size (machines).
    warm_pool: Annotated[Literal["auto", "off"] | int, BeforeValidator(_warm_pool_size)] = "auto"
    #: Where warm machines wait: "stopped" (only their EBS volumes are billed) or "hibernated" (RAM kept on
    #: the root volume; the launch template and AMI must meet EC2's hibernation prerequisites).
    warm_pool_state: Literal["stopped", "hibernated"] = "stopped"
    policy: tuple[Policy, ...] = (Policy(),)

    @model_validator(mode="before")
    @classmethod
    def _prewarm_standby_macs(cls, data: Any) -> Any:
        """`prewarm` left unset on a macOS pool that keeps its hosts ready (`keep_ready`) means on: a standby
        Mac is only ready if its host was there before the job, and the pipeline forecast is what allocates
        a host a boot ahead of a later stage's jobs (docs/windows-macos.md, "Standby Macs"). Set `prewarm =
        false` to turn it off; every other pool keeps `false` as its default."""
        if (
            not isinstance(data, dict)
            or "prewarm" in data
            or data.get("platform") not in ("macos", Platform.MACOS)
        ):
            return data
        hosts = data.get("hosts")
        keep_ready = (
            hosts.get("keep_ready", True) if isinstance(hosts, dict) else getattr(hosts, "keep_ready", False)
        )
        return {**data, "prewarm": True} if hosts is not None and keep_ready is not False else data

    @field_validator("tags")
    @classmethod
    def _tags_clean(cls, tags: tuple[str, ...]) -> tuple[str, ...]:
        for tag in tags:
            if not tag.strip() or tag != tag.strip():
                raise ValueError(f'tag "{tag}" is empty or has surrounding spaces')
        return tags

    @model_validator(mode="after")
    def _pool_rules(self) -> Pool:
        if not self.tags and not self.run_untagged:
            raise ValueError("a pool with no tags must set run_untagged = true, or it can never take a job")
        if self.platform is Platform.MACOS and self.hosts is None:
            raise ValueError("macos pools run on dedicated hosts: add a [pools.hosts] table")
        if self.cache_bucket_existing and not self.cache_bucket:
            raise ValueError("cache_bucket_existing = true needs cache_bucket, the existing bucket's name")
        if self.hosts and self.platform is Platform.MACOS and self.hosts.slots_per_host != 1:
            raise ValueError("an EC2 Mac host holds exactly one instance: slots_per_host must be 1")
        if self.docker != DockerOptions() and (
            not self.executor.startswith("docker") or self.platform is Platform.MACOS
        ):
            raise ValueError(
                "[pools.docker] applies to docker executors on Linux or Windows, not executor "
                f'"{self.executor}" on {self.platform.value}: remove the table, or set executor = "docker"'
            )
        if self.platform is Platform.WINDOWS and self.executor == "shell" and self.cache_bucket:
            # Its runner runs as the jobs' user, which the firewall keeps off the metadata service, so it has
            # no role credentials to sign cache URLs with (docs/security.md).
            raise ValueError(
                "a Windows shell pool cannot use cache_bucket: its runner runs as the jobs' user, who has no "
                'instance-role credentials; remove cache_bucket, or use executor = "docker-windows"'
            )
        self._warm_pool_allowed()
        owned = self.docker.machine_owning_options() if self.executor.startswith("docker") else ()
        if owned and self.max_use_count != 1:
            # A job there is root on its machine: what it takes over must end with it (docs/security.md).
            raise ValueError(
                f"{', '.join(owned)} gives a job its whole machine: set max_use_count = 1, so that the "
                "machine ends with that job"
            )
        return self

    def _warm_pool_allowed(self) -> None:
        """A warm pool asked for by number where AWS or the pool's kind allows none is an error; "auto" there
        quietly means "off".

        PutWarmPool "cannot be called on an Auto Scaling group that has a mixed instances policy or a launch
        template or launch configuration that requests Spot Instances" (earlier editions of the Amazon EC2
        Auto Scaling API Reference, PutWarmPool; the current one no longer says so, and the rule is kept until
        the user guide's limitations are read to allow it: docs/configuration.md), and a Spot pool's
        group is a mixed-instances group (infra/stacks/pools.py). A dedicated-host pool's machines are placed
        by its host resource group: a stopped one still holds a host slot, so host pools keep none.
        """
        if not isinstance(self.warm_pool, int) or self.warm_pool == 0:
            return
        if self.spot:
            raise ValueError(
                f"warm_pool = {self.warm_pool} on a Spot pool: AWS allows no warm pool on a group with a "
                'mixed instances policy or Spot ("Warm pools for Amazon EC2 Auto Scaling", limitations); '
                'set warm_pool = "off" (or "auto", which is off here), or spot = false'
            )
        if self.hosts is not None:
            raise ValueError(
                f"warm_pool = {self.warm_pool} on a dedicated-host pool: its machines keep host slots even "
                'when stopped, so host pools have no warm pool; set warm_pool = "off" (or "auto", which '
                "is off here)"
            )

    @property
    def reuses_root_volume(self) -> bool:
        """A macOS pool on hosts with `reuse_root_volume` on: its used Macs may be reused (host reuse)."""
        return self.platform is Platform.MACOS and self.hosts is not None and self.hosts.reuse_root_volume

    @property
    def keeps_hosts_ready(self) -> bool:
        """A macOS pool on hosts with `keep_ready` on: each host it keeps holds a booted Mac (standby)."""
        return self.platform is Platform.MACOS and self.hosts is not None and self.hosts.keep_ready

    @property
    def warm_pool_on(self) -> bool:
        """Whether the pool's group gets a warm pool: "auto" or a number, on an on-demand, non-host pool."""
        if self.warm_pool == "off" or self.spot or self.hosts is not None:
            return False
        return self.warm_pool == "auto" or self.warm_pool > 0

    def active_policy(self, now: datetime) -> Policy:
        """gitlab-runner's rule: every policy is checked, the last one whose periods match wins.

        With no match, a policy that keeps nothing idle applies (idle_count 0), as taskscaler does.
        """
        chosen = _NO_MATCH_POLICY
        for candidate in self.policy:
            if candidate.matches(now):
                chosen = candidate
        return chosen

    def remaining_uses(self, jobs_started: int) -> int | None:
        """Jobs a machine may still start; None when `max_use_count` is 0 (unlimited, as in gitlab-runner)."""
        if self.max_use_count == 0:
            return None
        return max(0, self.max_use_count - jobs_started)


_NO_MATCH_POLICY = Policy(idle_count=0, idle_time=timedelta(0))


RunnerType = Literal["instance_type", "group_type", "project_type"]


class GitLabConfig(_Model):
    """Where GitLab is and where its credentials live (secret names, never the secrets)."""

    url: str = Field(pattern=r"^https?://")
    api_token_secret: str = ""
    webhook_tokens_secret: str = ""
    ca_bundle_secret: str = ""
    runner_type: RunnerType = "instance_type"
    group_id: Int | None = None
    project_id: Int | None = None
    projects: tuple[int | str, ...] = ()
    groups: tuple[int | str, ...] = ()
    webhook_url: str = ""
    lost_job_scan_interval: Duration = timedelta(minutes=5)
    stale_job_after: Duration = timedelta(minutes=10)

    @model_validator(mode="after")
    def _runner_owner(self) -> GitLabConfig:
        if self.runner_type == "group_type" and self.group_id is None:
            raise ValueError('runner_type "group_type" needs group_id')
        if self.runner_type == "project_type" and self.project_id is None:
            raise ValueError('runner_type "project_type" needs project_id')
        return self


CertKeyAlgorithm = Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]


#: The drain's default wait between pausing a runner and asking GitLab what it runs. GitLab's
#: `POST /jobs/request` checks `active?` once, then `Ci::RegisterJobService` assigns a job without checking
#: again (gitlabhq `lib/api/ci/runner.rb`, `app/services/ci/register_job_service.rb`), so a request in flight
#: at the pause can still be given a job. The long poll does not widen that window: Workhorse holds a
#: runner's request *before* it reaches Rails and answers 204 itself when the runner's queue key changes
#: (workhorse `internal/builds/register.go`), and a pause changes it (`Ci::Runners::UpdateRunnerService`
#: calls `tick_runner_queue`). The window is a request already inside Rails, between `active?` and
#: `build.run!`: a queue walk of at most 45 builds, read from a replica, so seconds. 60 s is a conservative
#: bound on it, longer than GitLab.com's 50 s long poll (GitLab docs, "Long polling") and far shorter than
#: gitlab-runner's own request timeouts (`network/client.go` ResponseHeaderTimeout 10 min).
DRAIN_WINDOW = timedelta(seconds=60)


class ScalerConfig(_Model):
    """Scaler-wide knobs."""

    regenerate_before: Duration = timedelta(hours=720)
    cert_validity: Duration = timedelta(days=365 * 3)
    #: Key type of new base certs (chalicelib.certs.KeyAlgorithm values, spelled here so config loads
    #: without cryptography); None keeps the current material's, and makes new material ECDSA P-256.
    cert_key_algorithm: CertKeyAlgorithm | None = None
    orphan_confirm_after: Duration = timedelta(minutes=2)
    lease_duration: Duration = timedelta(seconds=50)
    #: How long after pausing a runner the drain waits before its GitLab re-check (two-phase: the machine is
    #: terminated by a later reconcile). See DRAIN_WINDOW; machines that provably take no job skip the wait
    #: (chalicelib.drain.takes_no_job). 0 re-checks at once, in the reconcile that paused: a job assigned
    #: after the pause may then land on a machine being terminated.
    drain_window: Duration = DRAIN_WINDOW
    #: Up to this many pools the tick reconciles them itself; above, it queues one "pool dirty" message per
    #: pool, so each reconcile runs in its own invocation and one invocation's CPU never grows with the fleet.
    tick_inline_pools: Int = Field(10, ge=0)


class Prices(_Model):
    """USD per hour, for the simulator's cost figures (instances by type, dedicated hosts by type)."""

    instances: dict[str, float] = Field(default_factory=dict)
    hosts: dict[str, float] = Field(default_factory=dict)
    default_instance: float = 0.10


class Config(_Model):
    """The whole runner-scaler config."""

    gitlab: GitLabConfig
    scaler: ScalerConfig = ScalerConfig()
    prices: Prices = Prices()
    pools: tuple[Pool, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_pools(self) -> Config:
        for attribute in ("name", "asg"):
            seen: set[str] = set()
            for pool in self.pools:
                value = getattr(pool, attribute)
                if value in seen:
                    raise ValueError(f'two pools share {attribute} "{value}"; each pool needs its own')
                seen.add(value)
        owned = {p.cache_bucket for p in self.pools if p.cache_bucket and not p.cache_bucket_existing}
        existing = {p.cache_bucket for p in self.pools if p.cache_bucket and p.cache_bucket_existing}
        for bucket in sorted(owned & existing):
            raise ValueError(
                f'cache bucket "{bucket}" is existing in one pool and created in another: '
                "set cache_bucket_existing the same way in every pool that names it"
            )
        return self

    @model_validator(mode="after")
    def _one_job_per_machine(self) -> Config:
        """A machine runs one `gitlab-runner run-single`, which takes one job, runs it to the end, then asks
        for the next (gitlab-runner `commands/single.go`: Execute loops over processBuild): a second slot
        on the machine would be counted free and never used. So capacity_per_instance is 1; the same peak
        concurrency comes from more machines (docs/configuration.md says why not N runners per machine)."""
        for index, pool in enumerate(self.pools):
            if pool.capacity_per_instance != 1:
                slots, machines = pool.capacity_per_instance, pool.max_instances * pool.capacity_per_instance
                raise ValueError(
                    f"pools[{index}] ({pool.name}): capacity_per_instance = {slots}, but a machine runs "
                    "one run-single, which takes one job at a time: set capacity_per_instance = 1 and "
                    f"max_instances = {machines} for the same number of concurrent jobs"
                )
        return self

    def pool(self, name: str) -> Pool:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)


def deployment_problems(config: Config) -> list[str]:
    """What makes a well-formed config fail once deployed, each with its field path and fix.

    The model accepts these (tests and the demo run without an API token, and a pool's instance type may come
    from its hosts), so `validate-config` asks here before it says a file is good.
    """
    problems: list[str] = []
    if not config.gitlab.api_token_secret.strip():
        problems.append(
            "gitlab.api_token_secret: empty, so no job can be routed (the scaler reads job tags with this "
            'token); name the Secrets Manager secret that holds it, e.g. "runner-scaler/gitlab-api-token"'
        )
    for field_name in ("groups", "projects"):
        for index, ref in enumerate(getattr(config.gitlab, field_name)):
            if not (isinstance(ref, int) or str(ref).strip().isdigit()):
                problems.append(
                    f'gitlab.{field_name}[{index}]: "{ref}" is a path; write the numeric id (shown on its '
                    "overview page): the tick's lost-job scan looks them up by id and skips paths"
                )
    for index, pool in enumerate(config.pools):
        if not pool.instance_types and pool.hosts is None:
            problems.append(
                f'pools[{index}].instance_types: empty; the launch template needs one, e.g. ["m7i.large"]'
            )
    problems += _shadowed_pools(config.pools)
    return problems


def _shadowed_pools(pools: tuple[Pool, ...]) -> list[str]:
    """Pools that can never get a job: an earlier pool takes every job they would (routing takes the first
    pool, in config order, whose runners would pick the job: chalicelib/capacity/routing.py)."""
    problems = []
    for later_index, later in enumerate(pools):
        for earlier_index, earlier in enumerate(pools[:later_index]):
            if set(later.tags) <= set(earlier.tags) and (earlier.run_untagged or not later.run_untagged):
                problems.append(
                    f'pools[{later_index}] "{later.name}": never gets a job, because pools[{earlier_index}] '
                    f'"{earlier.name}" (earlier) takes every job it would; give it a tag "{earlier.name}" '
                    "lacks, or move it before that pool"
                )
                break
    return problems


def parse_config(text: str, source: str) -> Config:
    """Parse TOML text; `source` (file path or SSM parameter name) is named in every error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    return config_from_dict(data, source)


def config_from_dict(data: Mapping[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(error) for error in _root_causes(exc.errors())]) from None


def _root_causes(errors: list[Any]) -> list[Any]:
    """Drop a list's "too short" error when one of its items failed: pydantic counts only the items that
    validated, so one bad pool would also print "pools: Tuple should have at least 1 item", which is false."""
    failed_items = {tuple(e["loc"][:i]) for e in errors for i in range(1, len(e["loc"]))}
    return [e for e in errors if not (e["type"] == "too_short" and tuple(e["loc"]) in failed_items)]


def load_config_file(path: str | Path) -> Config:
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    return parse_config(_decode(data, str(path)), str(path))


def _decode(data: bytes, source: str) -> str:
    """TOML is UTF-8 (TOML spec v1.0.0, "A TOML file must be a valid UTF-8 encoded Unicode document").

    A PowerShell `>` redirect writes UTF-16 with a byte-order mark: say so and how to fix it, not a traceback.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(
            source,
            [
                "the file is UTF-16 (as PowerShell's `>` writes it), and TOML must be UTF-8: re-save it as "
                "UTF-8, e.g. `Get-Content in.toml | Set-Content -Encoding utf8 out.toml`"
            ],
        )
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            source,
            [
                f"line {line}: byte {data[exc.start]:#04x} is not UTF-8, and TOML must be UTF-8: "
                "re-save the file as UTF-8"
            ],
        ) from None


def load_config(environ: Mapping[str, str], read_parameter: Callable[[str], str]) -> Config:
    """The deployed config: file RUNNER_SCALER_CONFIG, else the SSM parameter RUNNER_SCALER_CONFIG_PARAM."""
    from chalicelib.resources import ENV_CONFIG_FILE, ENV_CONFIG_PARAM

    if environ.get(ENV_CONFIG_FILE):
        return load_config_file(environ[ENV_CONFIG_FILE])
    if environ.get(ENV_CONFIG_PARAM):
        name = environ[ENV_CONFIG_PARAM]
        return parse_config(read_parameter(name), f"ssm:{name}")
    raise ConfigError(
        "environment", [f"set {ENV_CONFIG_FILE} (a TOML file) or {ENV_CONFIG_PARAM} (an SSM parameter name)"]
    )


def _describe(error: Any) -> str:
    """One pydantic error as `pools[1].policy[0].timezone: <what is wrong and what is allowed>`."""
    path = _path(error["loc"])
    if error["type"] == "extra_forbidden":
        field = str(error["loc"][-1])
        known = _known_fields(error["loc"])
        close = difflib.get_close_matches(field, known, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else f" (allowed: {', '.join(sorted(known))})"
        return f"{path}: unknown field{hint}"
    if error["type"] == "missing":
        return f"{path}: required field is missing"
    if error["type"] in _STRICT_FIXES:
        return f"{path}: {error['input']!r} is not {_STRICT_FIXES[error['type']]}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{path}: {message}" if path else message


#: What a strict field wanted, and how to write it (TOML: quotes make a string).
_STRICT_FIXES = {
    "bool_type": "a TOML boolean: write true or false, without quotes",
    "int_type": "a TOML integer: write a whole number without quotes, e.g. 10",
    "float_type": "a TOML number: write it without quotes, e.g. 0.5",
}


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"function-after[_pool_rules()]"} or str(part).startswith(("function-", "json-")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            break
        nested = _model_of(field.annotation)
        if nested is None:
            break
        model = nested
    return list(model.model_fields)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _zone_names() -> list[str]:
    from zoneinfo import available_timezones

    return sorted(available_timezones())
