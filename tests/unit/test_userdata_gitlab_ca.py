"""The boot scripts hand a self-hosted GitLab's CA (the machine secret's `gitlab_ca_bundle`) to gitlab-runner
as `--tls-ca-file`, and pass no such flag without one.

Linux and macOS scripts are run for real by bash, with stand-in commands on PATH (curl, aws, systemctl,
gitlab-runner...) and their absolute directories moved under a temporary root; gitlab-runner's stand-in
records its arguments. bash stands in for zsh on macOS (the script is POSIX apart from its shebang). No
PowerShell here: the Windows script is checked by its text.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from chalicelib.config import load_config_file
from infra.userdata import render

EXAMPLE = load_config_file(Path(__file__).resolve().parents[2] / "examples" / "config.toml")
BUNDLE = "-----BEGIN CERTIFICATE-----\nR0lUTEFC\n-----END CERTIFICATE-----\n" * 2
#: Absolute directories the scripts write to, moved under the test's root (a match must not follow a path
#: character, so "/usr/local/etc/" moves once, as a whole).
_SYSTEM_DIRS = re.compile(r"(?<![\w/.-])(/etc/|/usr/local/|/Library/)")

STUBS = {
    "curl": 'case "$*" in *api/token*) echo t ;; *instance-id*) echo i-1 ;; *) echo eu-west-1 ;; esac',
    "aws": '[ "$1" = secretsmanager ] && cat "$MACHINE_SECRET"; exit 0',
    "gitlab-runner": 'printf "%s\\n" "$@" > "$RUNNER_ARGS"',
    "sudo": 'shift 2; exec "$@"',  # sudo -u ec2-user CMD...
    "sleep": "exit 0",
    "systemctl": "exit 0",
    "update-ca-certificates": "exit 0",
    "security": "exit 0",
    # Jobs kept off the metadata service, and the way out (tests/unit/test_boot_job_boundary.py)
    "iptables": "exit 0",
    "useradd": "exit 0",
    "sysadminctl": "exit 0",
    "createhomedir": "exit 0",
    "pfctl": "exit 0",
    "shutdown": "exit 0",
}

needs_jq = pytest.mark.skipif(shutil.which("jq") is None, reason="the boot scripts parse the secret with jq")


def boot(platform: str, gitlab_ca: str, tmp_path: Path) -> list[str]:
    """Run the pool's boot script against a machine secret; gitlab-runner's arguments, one per item."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    (root / "usr/local/share/ca-certificates").mkdir(parents=True)  # the Debian/Ubuntu AMI has it
    (root / "etc").mkdir()
    bin_dir.mkdir()
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\n{body}\n")
        stub.chmod(0o755)
    secret = tmp_path / "secret.json"
    fields = {"gitlab_url": "https://gitlab.example.com", "runner_token": "glrt-test", "ca_bundle": "x"}
    fields |= {"server_cert": "c", "server_key": "k", "gitlab_ca_bundle": gitlab_ca}
    secret.write_text(json.dumps(fields))
    script = tmp_path / "boot.sh"
    text = render(EXAMPLE.pool(platform), "runner-scaler")
    script.write_text(_SYSTEM_DIRS.sub(lambda m: f"{root}{m.group(1)}", text))
    args = tmp_path / "runner-args"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MACHINE_SECRET": str(secret), "RUNNER_ARGS": str(args)}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return args.read_text().splitlines()


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


@needs_jq
@pytest.mark.parametrize("platform", ["linux", "macos"])
def test_a_gitlab_ca_reaches_gitlab_runner_as_tls_ca_file(platform: str, tmp_path: Path) -> None:
    # WHEN a machine boots with a GitLab CA bundle in its secret
    args = boot(platform, BUNDLE, tmp_path)
    # THEN run-single gets --tls-ca-file, naming a file that holds the whole bundle
    assert args[0] == "run-single"
    ca_file = flag(args, "--tls-ca-file")
    assert ca_file is not None and ca_file.startswith(str(tmp_path / "root"))
    assert Path(ca_file).read_text() == BUNDLE


@needs_jq
def test_on_macos_the_runner_user_can_read_the_gitlab_ca(tmp_path: Path) -> None:
    # GIVEN an EC2 Mac whose /usr/local has no etc/ (Apple silicon without an Intel Homebrew)
    args = boot("macos", BUNDLE, tmp_path)
    # THEN the script made the directory, and the CA (public) is readable by the jobs' user:
    # not 0600 root as the script's umask 077 would make it
    ca_file = Path(str(flag(args, "--tls-ca-file")))
    assert stat.S_IMODE(ca_file.stat().st_mode) == 0o644
    assert stat.S_IMODE(ca_file.parent.stat().st_mode) == 0o755


@needs_jq
@pytest.mark.parametrize("platform", ["linux", "macos"])
def test_without_a_gitlab_ca_no_tls_ca_file_is_passed(platform: str, tmp_path: Path) -> None:
    args = boot(platform, "", tmp_path)
    assert args[0] == "run-single" and "--tls-ca-file" not in args


def test_windows_passes_the_gitlab_ca_file_to_gitlab_runner() -> None:
    text = render(EXAMPLE.pool("windows"), "runner-scaler")
    block = re.search(r"if \(\$Secret\.gitlab_ca_bundle\) \{(?P<body>.*?)\n\}", text, re.DOTALL)
    assert block is not None, "the script must act on gitlab_ca_bundle only when it is set"
    body = block["body"]
    # the bundle is written to $CaFile, trusted machine-wide, and $CaFile goes to the runner's arguments
    assert "Set-Content -Path $CaFile -Value $Secret.gitlab_ca_bundle" in body
    assert "Cert:\\LocalMachine\\Root" in body
    assert '$RunnerArgs += @("--tls-ca-file", $CaFile)' in body
    runner = text.rindex("gitlab-runner.exe")
    assert text.index("@RunnerArgs", runner) > runner > block.end()
