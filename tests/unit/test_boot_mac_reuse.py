"""The macOS boot script's tail (infra/templates/macos.sh): once `run-single` has exited, a Mac that ran a job
waits `reuse_wait` for the scaler (which may replace its root volume, or terminate it) before it shuts itself
down as before; one that ran no job, or a pool that does not reuse hosts, shuts down at once.

Run for real by bash as tests/unit/test_boot_job_boundary.py runs the boot scripts: every command that acts on
the machine is a stand-in on PATH that logs its arguments, `sleep` included; the absolute directories the
script writes to, the job user's home too, are moved under a temporary root. gitlab-runner's stand-in makes
the builds directory when it "runs a job" (the shell executor checks a job's source out there: gitlab-runner
docs/executors/shell.md).
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from chalicelib.config import Pool
from infra.userdata import render
from tests.unit.test_boot_job_boundary import _LOG, EXAMPLE, STUBS, TOKEN, needs_jq

_MOVED = re.compile(r"(?<![\w/.-])(/etc/|/usr/local/|/Library/|/Users/)")


def tail(pool: Pool, tmp_path: Path, *, ran_a_job: bool) -> list[str]:
    """The commands the macOS boot ran, in order (the last ones are its tail)."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    (root / "Users").mkdir(parents=True)
    bin_dir.mkdir()
    runner = _LOG + (f'\nmkdir -p "{root}/Users/runner-job/builds/abc123/0/acme/app"' if ran_a_job else "")
    for name, body in {**STUBS, "sleep": _LOG, "gitlab-runner": runner}.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\n{body}\n")
        stub.chmod(0o755)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"gitlab_url": "https://gitlab.example.com", "runner_token": TOKEN}))
    script = tmp_path / "boot.sh"
    text = render(pool, "runner-scaler").replace("/usr/bin/sudo", "sudo")
    script.write_text(_MOVED.sub(lambda m: f"{root}{m.group(1)}", text))
    calls = tmp_path / "calls.log"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "MACHINE_SECRET": str(secret),
        "CALLS": str(calls),
        "RUNNER_TOKEN_SEEN": str(tmp_path / "seen"),
    }
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return calls.read_text().splitlines()


def without_reuse() -> Pool:
    mac = EXAMPLE.pool("macos")
    assert mac.hosts is not None
    return mac.model_copy(update={"hosts": mac.hosts.model_copy(update={"reuse_root_volume": False})})


@needs_jq
def test_a_mac_that_ran_a_job_waits_for_the_scaler_then_shuts_down(tmp_path: Path) -> None:
    # GIVEN a macOS pool that reuses hosts (the example's: reuse_wait 10 min by default)
    pool = EXAMPLE.pool("macos")
    assert pool.hosts is not None and pool.hosts.reuse_wait == timedelta(minutes=10)
    # WHEN its runner ran a job and exited
    calls = tail(pool, tmp_path, ran_a_job=True)
    # THEN after run-single the machine waits 600 s (its root volume may be replaced meanwhile, which reboots
    # it onto a fresh volume), and only then shuts itself down as before: a lost scaler strands no idle Mac
    runner = next(i for i, c in enumerate(calls) if c.startswith("gitlab-runner run-single"))
    assert calls[runner + 1 :] == ["sleep 600", "shutdown -h now"]


@needs_jq
def test_a_mac_that_ran_no_job_shuts_down_at_once(tmp_path: Path) -> None:
    # WHEN run-single exits without a job (its wait timeout, an error)
    calls = tail(EXAMPLE.pool("macos"), tmp_path, ran_a_job=False)
    # THEN nothing is left to reuse: it shuts down right after its runner, as before
    assert calls[-2].startswith("gitlab-runner run-single") and calls[-1] == "shutdown -h now"
    assert not [c for c in calls if c.startswith("sleep")]


@needs_jq
def test_a_pool_that_does_not_reuse_hosts_shuts_down_at_once(tmp_path: Path) -> None:
    calls = tail(without_reuse(), tmp_path, ran_a_job=True)
    assert calls[-2].startswith("gitlab-runner run-single") and calls[-1] == "shutdown -h now"


@pytest.mark.parametrize("platform", ["linux", "windows"])
def test_only_the_macos_script_waits(platform: str) -> None:
    # Linux and Windows machines hold several per host or none: nothing is reused, nothing waits
    assert "REUSE_WAIT" not in render(EXAMPLE.pool(platform), "runner-scaler")
