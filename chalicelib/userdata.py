"""User data for pool machines, rendered from config: Linux (bash), Windows (PowerShell), macOS (zsh).

Templates live in `chalicelib/templates/`; they hold no secret (each machine reads its own secret at boot).
infra/ renders launch templates with this module, so the deployed and tested scripts are the same.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

from chalicelib.config import Platform, Pool

TEMPLATES = Path(__file__).resolve().parent / "templates"
_FILES = {Platform.LINUX: "linux.sh", Platform.MACOS: "macos.sh", Platform.WINDOWS: "windows.ps1"}

#: Default job image of docker executors (a pool's runners may override it in the job's `image:`).
DEFAULT_DOCKER_IMAGE = "alpine:3.20"


def render(pool: Pool, prefix: str) -> str:
    """The pool's boot script; `prefix` is the deployment prefix that names machine secrets."""
    text = (TEMPLATES / _FILES[pool.platform]).read_text(encoding="utf-8")
    values = {
        "prefix": _safe(prefix),
        "pool": _safe(pool.name),
        "executor": _safe(pool.executor),
        "max_builds": str(pool.max_use_count),
        "wait_timeout": str(int(pool.wait_timeout.total_seconds())),
        "docker_image": DEFAULT_DOCKER_IMAGE,
        "cache_bucket": _safe(pool.cache_bucket),
    }
    return Template(text).substitute(values)


def _safe(value: str) -> str:
    """Config values land inside double quotes in shell and PowerShell: refuse anything that could escape."""
    if any(ch in value for ch in "\"'`$\\\n\r;&|<>"):
        raise ValueError(f"unsafe character in user-data value {value!r}")
    return value
