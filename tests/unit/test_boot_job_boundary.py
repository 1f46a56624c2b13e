"""The boot scripts keep jobs away from the runner token and the instance role (issue 19, docs/security.md).

Each Linux and macOS script is run for real by bash, end to end, against a machine secret: every command
that acts on the machine (curl, aws, iptables, pfctl, useradd, sysadminctl, setpriv, shutdown,
gitlab-runner...) is a stand-in on PATH that logs its arguments, in order, to one file; the absolute
directories the scripts write to are moved under a temporary root. bash stands in for zsh on macOS (the
script is POSIX apart from its shebang). gitlab-runner's stand-in also records its environment and, as its
shell executor does (gitlab-runner executors/shell/shell.go: `bash` looked up on PATH, started with the
runner's environment), starts `bash` from its PATH, so the job-user shim is exercised. No PowerShell here: the
Windows script is checked by its text, in order.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from chalicelib.config import Pool, load_config_file
from infra.userdata import render

EXAMPLE = load_config_file(Path(__file__).resolve().parents[2] / "examples" / "config.toml")
TOKEN = "glrt-secret-token-never-on-argv"
IMDS = "169.254.169.254"
_SYSTEM_DIRS = re.compile(r"(?<![\w/.-])(/etc/|/usr/local/|/Library/)")

_LOG = 'printf "%s\\n" "$(basename "$0") $*" >> "$CALLS"'
STUBS = {
    "curl": 'case "$*" in *api/token*) echo t ;; *instance-id*) echo i-0abc ;; *) echo eu-west-1 ;; esac',
    "aws": _LOG + '\n[ "$2" = get-secret-value ] && cat "$MACHINE_SECRET"; exit 0',
    "iptables": _LOG,
    "useradd": _LOG,
    "id": "exit 1",  # the job user does not exist yet
    "setpriv": _LOG,
    "sysadminctl": _LOG,
    "createhomedir": _LOG,
    "openssl": "echo 0123456789abcdef",
    "pfctl": _LOG + '\n[ "$3" = -f ] && sed "s/^/pf: /" >> "$CALLS"; exit 0',
    "sudo": _LOG,
    "shutdown": _LOG,
    "sleep": "exit 0",
    "systemctl": "exit 0",
    "update-ca-certificates": "exit 0",
    "security": "exit 0",
    # gitlab-runner: its arguments and its token as it sees them, then a shell job the way the shell
    # executor starts one (`bash` from PATH, the runner's environment).
    "gitlab-runner": _LOG
    + '\nprintf "%s" "${CI_SERVER_TOKEN-}" > "$RUNNER_TOKEN_SEEN"'
    + '\ncase "$*" in *"--executor shell"*) bash -c "echo job" ;; esac',
}

needs_jq = pytest.mark.skipif(shutil.which("jq") is None, reason="the boot scripts parse the secret with jq")


@dataclass(frozen=True)
class Boot:
    calls: list[str]
    token_seen: str
    root: Path

    def index(self, prefix: str) -> int:
        """Position of the first call starting with `prefix`."""
        return next(i for i, call in enumerate(self.calls) if call.startswith(prefix))


def boot(pool: Pool, tmp_path: Path) -> Boot:
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    (root / "usr/local/share/ca-certificates").mkdir(parents=True)
    (root / "etc").mkdir()
    bin_dir.mkdir()
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\n{body}\n")
        stub.chmod(0o755)
    secret = tmp_path / "secret.json"
    fields = {"gitlab_url": "https://gitlab.example.com", "runner_token": TOKEN, "ca_bundle": "x"}
    fields |= {"server_cert": "c", "server_key": "k", "gitlab_ca_bundle": ""}
    secret.write_text(json.dumps(fields))
    text = render(pool, "runner-scaler").replace("/usr/bin/sudo", "sudo")
    script = tmp_path / "boot.sh"
    script.write_text(_SYSTEM_DIRS.sub(lambda m: f"{root}{m.group(1)}", text))
    calls, seen = tmp_path / "calls.log", tmp_path / "token-seen"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "MACHINE_SECRET": str(secret),
        "CALLS": str(calls),
        "RUNNER_TOKEN_SEEN": str(seen),
    }
    result = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return Boot(calls.read_text().splitlines(), seen.read_text(), root)


def shell_pool(name: str) -> Pool:
    return EXAMPLE.pool(name).model_copy(update={"executor": "shell"})


UNIX_POOLS = [
    pytest.param(EXAMPLE.pool("linux"), id="linux-docker"),
    pytest.param(shell_pool("linux"), id="linux-shell"),
    pytest.param(EXAMPLE.pool("macos"), id="macos-shell"),
]


@needs_jq
@pytest.mark.parametrize("pool", UNIX_POOLS)
def test_the_runner_gets_its_token_in_its_environment_never_on_a_command_line(
    pool: Pool, tmp_path: Path
) -> None:
    # WHEN a machine boots
    run = boot(pool, tmp_path)
    # THEN gitlab-runner run-single finds the token in CI_SERVER_TOKEN (gitlab-runner common/config.go)
    assert run.token_seen == TOKEN
    runner = run.calls[run.index("gitlab-runner run-single")]
    assert "--token" not in runner.split()
    # AND no command the boot ran had it among its arguments (`ps` shows those to every local user)
    assert not [call for call in run.calls if TOKEN in call]


@needs_jq
@pytest.mark.parametrize("pool", UNIX_POOLS)
def test_the_machine_secret_is_deleted_before_the_runner_starts(pool: Pool, tmp_path: Path) -> None:
    run = boot(pool, tmp_path)
    read = run.index("aws secretsmanager get-secret-value")
    delete = run.index("aws secretsmanager delete-secret")
    assert run.calls[delete] == (
        "aws secretsmanager delete-secret --secret-id runner-scaler/machines/i-0abc "
        "--force-delete-without-recovery"
    )
    assert read < delete < run.index("gitlab-runner run-single")


@needs_jq
@pytest.mark.parametrize("pool", [EXAMPLE.pool("linux"), shell_pool("linux")], ids=["docker", "shell"])
def test_linux_closes_the_metadata_service_to_jobs_before_the_runner_starts(
    pool: Pool, tmp_path: Path
) -> None:
    run = boot(pool, tmp_path)
    runner = run.index("gitlab-runner run-single")
    # THEN the job user's packets and every container's forwarded packets to IMDS are rejected, first
    owner = f"iptables -I OUTPUT -d {IMDS}/32 -m owner --uid-owner runner-job -j REJECT"
    containers = f"iptables -I DOCKER-USER -d {IMDS}/32 -j REJECT"
    assert run.index("useradd") < run.index(owner) < runner
    assert run.index(containers) < runner
    # AND nothing else is filtered: the runner (root) keeps the metadata service for the S3 cache
    assert [c for c in run.calls if c.startswith("iptables -I")] == [owner, containers]


@needs_jq
def test_linux_shell_jobs_run_as_the_job_user_in_a_fresh_environment(tmp_path: Path) -> None:
    # WHEN the shell executor starts a job's bash
    run = boot(shell_pool("linux"), tmp_path)
    # THEN the shim first on the runner's PATH started it as runner-job, without the runner's environment
    # (setpriv --reset-env: so no CI_SERVER_TOKEN), not as root
    job = run.calls[run.index("setpriv")]
    assert job == (
        "setpriv --reuid=runner-job --regid=runner-job --init-groups --reset-env /bin/bash -c echo job"
    )
    assert run.index("gitlab-runner run-single") < run.calls.index(job)
    # AND its builds and caches live in the job user's home
    runner = run.calls[run.index("gitlab-runner run-single")]
    assert "--builds-dir /home/runner-job/builds --cache-dir /home/runner-job/cache" in runner


@needs_jq
def test_linux_docker_jobs_need_no_shim(tmp_path: Path) -> None:
    run = boot(EXAMPLE.pool("linux"), tmp_path)
    assert not (run.root / "usr/local/lib/runner-scaler/bash").exists()
    assert "--builds-dir" not in run.calls[run.index("gitlab-runner run-single")]


@needs_jq
def test_macos_closes_the_metadata_service_to_the_job_user_before_the_runner_starts(tmp_path: Path) -> None:
    run = boot(EXAMPLE.pool("macos"), tmp_path)
    runner = run.index("gitlab-runner run-single")
    # THEN a standard user (no -admin: not in the admin group, so no sudo) is made for jobs
    made = run.calls[run.index("sysadminctl")]
    assert made.startswith("sysadminctl -addUser runner-job -home /Users/runner-job")
    assert "-admin" not in made.split()
    # AND pf drops its packets to IMDS, from an anchor the stock pf.conf evaluates, and pf is on
    assert run.index("pfctl -a com.apple/runner-scaler -f -") < runner
    rule = f"pf: block drop out quick proto {{ tcp, udp }} from any to {IMDS} user runner-job"
    assert run.index(rule) < runner and run.index("pfctl -E") < runner


@needs_jq
def test_macos_jobs_run_as_the_job_user_through_sudo_not_as_the_runner(tmp_path: Path) -> None:
    run = boot(EXAMPLE.pool("macos"), tmp_path)
    runner = run.calls[run.index("gitlab-runner run-single")]
    # THEN the runner no longer runs as ec2-user (passwordless sudo); jobs run as runner-job, started by
    # sudo, whose env_reset leaves the runner's CI_SERVER_TOKEN behind
    assert not [c for c in run.calls if c.startswith("sudo -u ec2-user")]
    assert run.calls[run.index("sudo")] == "sudo -H -u runner-job /bin/bash -c echo job"
    assert "--builds-dir /Users/runner-job/builds --cache-dir /Users/runner-job/cache" in runner


@needs_jq
@pytest.mark.parametrize("pool", UNIX_POOLS)
def test_a_machine_leaves_by_shutting_down_once_its_runner_exits(pool: Pool, tmp_path: Path) -> None:
    run = boot(pool, tmp_path)
    # THEN it uses no AWS right to leave: it shuts down (terminate behaviour), right after its runner
    assert run.calls[-1] == ("shutdown -h now" if pool.platform.value == "macos" else "shutdown -P now")
    assert run.index("gitlab-runner run-single") < len(run.calls) - 1
    assert not [c for c in run.calls if c.startswith("aws autoscaling")]


@needs_jq
def test_the_cache_lives_under_the_pools_prefix(tmp_path: Path) -> None:
    run = boot(EXAMPLE.pool("linux"), tmp_path)
    runner = run.calls[run.index("gitlab-runner run-single")]
    assert "--cache-shared --cache-path linux " in runner


# -- Windows: by its text ------------------------------------------------------------------------------------


def windows(executor: str = "shell") -> str:
    return render(EXAMPLE.pool("windows").model_copy(update={"executor": executor}), "runner-scaler")


def test_windows_never_puts_the_token_on_a_command_line() -> None:
    text = windows()
    assert '"--token"' not in text and "--token" not in text
    # the launcher (run as the job user) reads the token from its file, deletes it, and hands it over
    launcher = text[text.index("$Launcher = @'") : text.index("'@")]
    assert launcher.index("$env:CI_SERVER_TOKEN = Get-Content") < launcher.index("Remove-Item -Force")
    assert launcher.index("Remove-Item -Force") < launcher.index("gitlab-runner.exe")
    # a container pool's runner (SYSTEM) gets it in its environment
    docker = windows("docker-windows")
    assert docker.index("$env:CI_SERVER_TOKEN = $RunnerToken") < docker.index("& $RunnerExe @RunnerArgs")


def test_windows_token_file_is_readable_by_the_job_user_and_system_only() -> None:
    text = windows()
    assert 'icacls $TokenFile /inheritance:r /grant:r "SYSTEM:F" "${JobUser}:(R,D)"' in text


def test_windows_shell_jobs_run_as_a_standard_user_blocked_from_the_metadata_service() -> None:
    text = windows()
    user = text.index("New-LocalUser -Name $JobUser")
    firewall = text.index("New-NetFirewallRule -Name")
    task = text.index('Start-ScheduledTask -TaskName "runner-scaler"')
    # THEN a local user in Users only, never Administrators, runs the runner and so its jobs
    assert 'Add-LocalGroupMember -Group "Users" -Member $JobUser' in text
    assert "Administrators -Member" not in text and "-RunLevel Limited" in text
    assert "Register-ScheduledTask" in text and "-User $JobUser" in text
    # AND its outbound packets to IMDS are blocked before the runner starts
    rule = text[firewall : text.index("\n", text.index("-LocalUser", firewall))]
    assert "-Direction Outbound -Action Block -RemoteAddress 169.254.169.254" in rule
    assert '-LocalUser "D:(A;;CC;;;$Sid)"' in rule
    assert user < firewall < task


def test_windows_deletes_the_secret_before_the_runner_and_leaves_by_shutting_down() -> None:
    text = windows()
    read = text.index("Get-SECSecretValue")
    delete = text.index("Remove-SECSecret -SecretId $SecretId -DeleteWithNoRecovery $true")
    assert read < delete < text.index("Start-ScheduledTask")
    assert "Stop-ASInstanceInAutoScalingGroup" not in text
    assert text.rstrip().splitlines()[-2].strip() == "Stop-Computer -Force"


def test_every_test_the_security_page_names_exists() -> None:
    # docs/security.md backs each line of its threat model with a test: the names must stay real
    root = Path(__file__).resolve().parents[2]
    named = set(
        re.findall(r"`(test_[a-z0-9_]+)`", (root / "docs" / "security.md").read_text(encoding="utf-8"))
    )
    defined = {
        name
        for path in (root / "tests").rglob("test_*.py")
        for name in re.findall(r"^def (test_[a-z0-9_]+)", path.read_text(encoding="utf-8"), re.MULTILINE)
    }
    assert named and named <= defined, sorted(named - defined)
