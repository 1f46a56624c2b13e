"""User data for pool machines, rendered from config: Linux (bash), Windows (PowerShell), macOS (zsh).

Templates live in `infra/templates/`; they hold no secret (each machine reads its own secret at boot).
infra/ renders launch templates with this module, so the deployed and tested scripts are the same.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from string import Template

from chalicelib.config import DockerOptions, Platform, Pool
from chalicelib.resources import LAUNCH_HOOK_TIMEOUT_SECONDS

TEMPLATES = Path(__file__).resolve().parent / "templates"
_FILES = {Platform.LINUX: "linux.sh", Platform.MACOS: "macos.sh", Platform.WINDOWS: "windows.ps1"}

#: Seconds between a booting machine's reads of its own secret.
SECRET_POLL_SECONDS = 5

#: Default job image of docker executors (a job overrides it with its own `image:`); `[pools.docker] image`.
DEFAULT_DOCKER_IMAGE = DockerOptions().image


def render(pool: Pool, prefix: str, *, launch_hook_timeout: int = LAUNCH_HOOK_TIMEOUT_SECONDS) -> str:
    """The pool's boot script; `prefix` is the deployment prefix that names machine secrets.

    The script polls for its secret for at least `launch_hook_timeout` seconds (the launch hook's heartbeat
    timeout): while the hook holds the instance, a deferred launch may still write the secret, and giving up
    sooner would leave an InService machine without a runner ("Amazon EC2 Auto Scaling lifecycle hooks").
    """
    text = (TEMPLATES / _FILES[pool.platform]).read_text(encoding="utf-8")
    values = {
        "secret_tries": str(math.ceil(launch_hook_timeout / SECRET_POLL_SECONDS) + 1),
        "secret_poll": str(SECRET_POLL_SECONDS),
        "prefix": _safe(prefix),
        "pool": _safe(pool.name),
        "executor": _safe(pool.executor),
        "max_builds": str(pool.max_use_count),
        "wait_timeout": str(int(pool.wait_timeout.total_seconds())),
        "cache_bucket": _safe(pool.cache_bucket),
        "docker_args": _docker_args(pool),
        "services_privileged_env": pool.docker.services_privileged_env,
        "registry_mirrors": _single_quoted(json.dumps(list(pool.docker.registry_mirrors)), pool.platform),
        "docker_tcp_tls": "true" if pool.docker_tcp_tls else "false",
        "cache_path": _safe(cache_prefix(pool)),
        # A warm-pool machine runs this script at every boot and starts no runner while it is warm.
        "warm_pool": "true" if pool.warm_pool_on else "false",
        "persist": "\n<persist>true</persist>" if pool.warm_pool_on else "",
        # macOS host reuse: seconds a used Mac waits for its root volume to be replaced before it shuts down.
        "reuse_wait": str(int(pool.hosts.reuse_wait.total_seconds()))
        if pool.reuses_root_volume and pool.hosts is not None
        else "0",
    }
    return Template(text).substitute(values)


def cache_prefix(pool: Pool) -> str:
    """The S3 key prefix of a pool's cache, gitlab-runner's `--cache-path`: the machine role may reach only
    objects under it (infra/policy.py), so one pool's jobs never read or poison another pool's caches."""
    return pool.name


def _safe(value: str) -> str:
    """Config values land inside double quotes in shell and PowerShell: refuse anything that could escape."""
    if any(ch in value for ch in "\"'`$\\\n\r;&|<>"):
        raise ValueError(f"unsafe character in user-data value {value!r}")
    return value


def _docker_args(pool: Pool) -> str:
    """`[pools.docker]` as `run-single` arguments, quoted for the pool's shell; none for other executors.

    Values are quoted, not screened: an image reference or a volume spec may hold characters the `_safe`
    check refuses, and a quoted word is never split or expanded by the shell.
    """
    if not pool.executor.startswith("docker"):
        return ""
    separator = ", " if pool.platform is Platform.WINDOWS else " "  # a PowerShell array, or bash words
    return separator.join(_single_quoted(arg, pool.platform) for arg in pool.docker.run_single_args())


def _single_quoted(value: str, platform: Platform) -> str:
    """One literal word: POSIX shell single quotes, or PowerShell's (where '' is a quote inside)."""
    if platform is Platform.WINDOWS:
        # PowerShell reads the typographic single quotes as quotes too (about_Quoting_Rules): double them all.
        for quote in "'\u2018\u2019\u201a\u201b":
            value = value.replace(quote, quote * 2)
        return "'" + value + "'"
    return shlex.quote(value)
