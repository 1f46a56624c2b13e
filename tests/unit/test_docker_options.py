"""`[pools.docker]`: gitlab-runner's `[runners.docker]` keys, checked at load, given to `run-single` as flags.

The flag names come from the `long:` tags of gitlab-runner `common/config.go` `DockerConfig`, under the
`docker` namespace of `RunnerSettings` (so `image` is `--docker-image`). The Linux boot script is run for real
by bash with stand-in commands (as in test_userdata_gitlab_ca), its absolute directories moved under a
temporary root, so the daemon.json merge and the runner's argv are observed, not grepped.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from chalicelib.config import Pool, parse_config
from chalicelib.errors import ConfigError
from infra.userdata import render
from tests.unit.test_userdata_gitlab_ca import _SYSTEM_DIRS
from tests.unit.test_userdata_gitlab_ca import STUBS as BOOT_STUBS

BASE = """
[gitlab]
url = "https://gitlab.example.com"

[[pools]]
name = "dind"
asg = "runner-scaler-dind"
tags = ["docker"]
max_instances = 5
instance_types = ["m7i.large"]
"""

DIND = (
    BASE
    + """
  [pools.docker]
  image = "docker:27"
  privileged = true
  services_privileged = false
  volumes = ["/certs/client", "/cache"]
  pull_policy = ["always", "if-not-present"]
  shm_size = 268435456
  dns = ["10.0.0.2"]
  extra_hosts = ["gitlab.internal:10.0.0.10"]
  allowed_images = ["docker:*", "registry.internal/*"]
  disable_cache = true
  cpus = "1.5"
  memory = "3g"
  registry_mirrors = ["https://mirror.internal"]
"""
)

#: The boot script's stand-ins, shared with the GitLab CA boot tests (kept in step with what linux.sh runs);
#: gitlab-runner's also records DOCKER_SERVICES_PRIVILEGED.
STUBS = {
    **BOOT_STUBS,
    "gitlab-runner": 'printf "%s\\n" "$@" > "$RUNNER_ARGS"\n'
    'echo "${DOCKER_SERVICES_PRIVILEGED:-unset}" > "$RUNNER_ENV"',
}


def pool_of(text: str) -> Pool:
    return parse_config(text, "scaler.toml").pools[0]


def test_docker_options_read_like_gitlab_runners_runners_docker() -> None:
    # GIVEN a DinD pool written with [runners.docker]'s own keys
    docker = pool_of(DIND).docker
    # THEN each key keeps gitlab-runner's meaning; pull_policy is a list, or one string as in gitlab-runner
    assert (docker.image, docker.privileged, docker.services_privileged) == ("docker:27", True, False)
    assert docker.pull_policy == ("always", "if-not-present")
    assert pool_of(DIND.replace('["always", "if-not-present"]', '"never"')).docker.pull_policy == ("never",)


def test_without_a_docker_table_jobs_without_image_run_the_default_image() -> None:
    docker = pool_of(BASE).docker
    assert docker.image == "alpine:3.20" and not docker.privileged
    assert docker.run_single_args() == ("--docker-image", "alpine:3.20")


def test_docker_options_become_run_single_flags_in_gitlab_runners_spelling() -> None:
    args = pool_of(DIND).docker.run_single_args()
    pairs = list(itertools.pairwise(args))
    assert ("--docker-image", "docker:27") in pairs
    assert "--docker-privileged" in args and "--docker-disable-cache" in args
    # a list repeats its flag once per item (go-flags slices)
    assert ("--docker-volumes", "/certs/client") in pairs and ("--docker-volumes", "/cache") in pairs
    assert ("--docker-pull-policy", "always") in pairs and ("--docker-pull-policy", "if-not-present") in pairs
    assert ("--docker-shm-size", "268435456") in pairs and ("--docker-dns", "10.0.0.2") in pairs
    assert ("--docker-extra-hosts", "gitlab.internal:10.0.0.10") in pairs
    assert ("--docker-allowed-images", "docker:*") in pairs
    assert ("--docker-cpus", "1.5") in pairs and ("--docker-memory", "3g") in pairs
    # false has no flag spelling; the mirrors go to the daemon, not to gitlab-runner
    assert "--docker-services_privileged" not in args and not any("mirror" in a for a in args)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            'privileged = "yes"',
            "pools[0].docker.privileged: 'yes' is not a TOML boolean: write true or false",
        ),
        ("shm_size = 2.5", "pools[0].docker.shm_size: 2.5 is not a TOML integer"),
        ('pull_policy = "sometimes"', "pools[0].docker.pull_policy[0]: Input should be 'always'"),
        ("privilegd = true", 'pools[0].docker.privilegd: unknown field (did you mean "privileged"?)'),
        ('registry_mirrors = ["mirror.internal"]', 'registry mirror "mirror.internal" must be a URL'),
        ('image = ""', "the default image cannot be empty"),
    ],
)
def test_a_bad_docker_option_names_the_file_the_field_and_the_fix(line: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + f"\n  [pools.docker]\n  {line}\n", "scaler.toml")
    message = str(caught.value)
    assert "scaler.toml" in message and expected in message
    # one bad pool is one error, not also "pools: Tuple should have at least 1 item"
    assert "at least 1 item" not in message


def test_docker_options_on_a_shell_pool_are_refused_not_ignored() -> None:
    text = BASE.replace('tags = ["docker"]', 'tags = ["docker"]\nexecutor = "shell"')
    with pytest.raises(
        ConfigError, match=r'\[pools.docker\] applies to docker executors.*executor = "docker"'
    ):
        parse_config(text + '\n  [pools.docker]\n  image = "x"\n', "scaler.toml")


def boot_linux(pool: Pool, tmp_path: Path, baked_daemon: Mapping[str, object]) -> tuple[list[str], str, dict]:
    """Run the pool's Linux boot script; gitlab-runner's argv, its DOCKER_SERVICES_PRIVILEGED, daemon.json."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    (root / "usr/local/share/ca-certificates").mkdir(parents=True)
    (root / "etc/docker").mkdir(parents=True)
    (root / "etc/docker/daemon.json").write_text(json.dumps(baked_daemon))
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    secret = tmp_path / "secret.json"
    secret.write_text(
        json.dumps(
            {
                "gitlab_url": "https://gitlab.example.com",
                "runner_token": "glrt-secret",
                "ca_bundle": "x",
                "server_cert": "c",
                "server_key": "k",
                "gitlab_ca_bundle": "",
            }
        )
    )
    text = render(pool, "runner-scaler")
    script = tmp_path / "boot.sh"
    script.write_text(_SYSTEM_DIRS.sub(lambda m: f"{root}{m.group(1)}", text))
    args, env_file = tmp_path / "runner-args", tmp_path / "runner-env"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "MACHINE_SECRET": str(secret),
        "RUNNER_ARGS": str(args),
        "RUNNER_ENV": str(env_file),
    }
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    daemon = json.loads((root / "etc/docker/daemon.json").read_text())
    return args.read_text().splitlines(), env_file.read_text().strip(), daemon


@pytest.mark.skipif(shutil.which("jq") is None, reason="the boot script parses the secret with jq")
def test_a_dind_machine_boots_with_the_pools_docker_flags_and_keeps_the_amis_daemon_settings(
    tmp_path: Path,
) -> None:
    # GIVEN a DinD pool, and an AMI whose daemon.json already names a mirror and a log driver
    pool = pool_of(DIND)
    baked = {"registry-mirrors": ["https://baked.mirror"], "log-driver": "journald"}
    # WHEN a machine boots
    args, services_privileged, daemon = boot_linux(pool, tmp_path, baked)
    # THEN run-single gets every docker option, in gitlab-runner's flag spelling, exactly as configured
    docker_args = list(pool.docker.run_single_args())
    start = args.index("--docker-image")
    assert args[start : start + len(docker_args)] == docker_args
    assert services_privileged == "false"  # services stay unprivileged: DOCKER_SERVICES_PRIVILEGED=false
    # AND daemon.json was merged, not replaced: the AMI's keys survive, both mirrors are there once each
    assert daemon["log-driver"] == "journald"
    assert daemon["registry-mirrors"] == ["https://baked.mirror", "https://mirror.internal"]
    # AND by default Docker listens on its local socket only: no TCP listener, no certificates, no override
    assert "hosts" not in daemon and "tlsverify" not in daemon
    assert not (tmp_path / "root/etc/docker/certs").exists()
    assert not (tmp_path / "root/etc/systemd/system/docker.service.d/hosts.conf").exists()


@pytest.mark.skipif(shutil.which("jq") is None, reason="the boot script parses the secret with jq")
def test_docker_tcp_tls_opts_in_to_the_tls_listener_on_2376(tmp_path: Path) -> None:
    # GIVEN a pool whose operator's own tooling connects to the machines' Docker (docker_tcp_tls = true)
    pool = pool_of(DIND.replace('tags = ["docker"]', 'tags = ["docker"]\ndocker_tcp_tls = true'))
    # WHEN a machine boots
    _, _, daemon = boot_linux(pool, tmp_path, {"log-driver": "journald"})
    # THEN Docker also listens on 2376 with TLS, the fleet CA's server certificate, and the unit runs bare
    assert daemon["hosts"] == ["unix:///var/run/docker.sock", "tcp://0.0.0.0:2376"]
    assert daemon["tlsverify"] is True and daemon["log-driver"] == "journald"
    assert (tmp_path / "root/etc/docker/certs/cert.pem").read_text().strip() == "c"
    assert (tmp_path / "root/etc/systemd/system/docker.service.d/hosts.conf").exists()


def test_rendered_user_data_carries_the_docker_flags_and_never_a_token() -> None:
    pool = pool_of(DIND)
    text = render(pool, "runner-scaler")
    assert "--docker-privileged" in text and "'--docker-volumes' /certs/client" not in text
    assert "--docker-volumes /certs/client" in text
    assert "glrt-" not in text and "REDACTED" not in text


def test_windows_docker_pools_pass_the_flags_as_a_powershell_array() -> None:
    text = DIND.replace(
        'tags = ["docker"]', 'tags = ["docker"]\nplatform = "windows"\nexecutor = "docker-windows"'
    )
    text = text.replace(
        'image = "docker:27"', 'image = "mcr.microsoft.com/windows/servercore:ltsc2022"\n  user = "o\'neil"'
    )
    rendered = render(pool_of(text), "runner-scaler")
    assert "$DockerArgs = @('--docker-image', 'mcr.microsoft.com/windows/servercore:ltsc2022'," in rendered
    assert "'--docker-user', 'o''neil'" in rendered  # PowerShell's quote-in-quote
    assert "$env:DOCKER_SERVICES_PRIVILEGED = $ServicesPrivileged" in rendered
    # the TCP listener and its certificates only on opt-in (docker_tcp_tls), as on Linux
    assert '$DockerTcpTls = "false"' in rendered
    listener = rendered.index('"tcp://0.0.0.0:2376"')
    assert rendered.rindex('if ($DockerTcpTls -eq "true")', 0, listener) > rendered.index("$Ours = @{}")
