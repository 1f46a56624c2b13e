"""`runner-scaler migrate` on the configs docker+machine shops run: Docker options, Spot, root size, an
existing cache bucket, static keys, and the mistakes gitlab-runner itself refuses, each named by its field.

Option names: docker/machine `drivers/amazonec2/amazonec2.go` (`amazonec2-request-spot-instance`,
a BoolFlag, `amazonec2-root-size` an IntFlag in GiB) and `commands/create.go` (`engine-registry-mirror`).
docker+machine field types: gitlab-runner `common/config.go` (`IdleTime int`, `Periods []string`, `Limit`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib.config import parse_config
from chalicelib.errors import ConfigError
from toolkit.migrate import migrate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DIND = EXAMPLES / "gitlab-runner-docker-machine-dind.toml"


def machine_config(machine_options: str = "", runner_extra: str = "", machine_extra: str = "") -> str:
    return f"""
[[runners]]
  name = "ci"
  url = "https://gitlab.internal.example.com"
  executor = "docker+machine"
  limit = 4
  {runner_extra}
  [runners.machine]
    IdleCount = 1
    IdleTime = 600
    MaxBuilds = 1
    MachineOptions = ["amazonec2-instance-type=m7i.large", {machine_options}]
    {machine_extra}
"""


def comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("#")]


def test_a_dind_docker_machine_config_keeps_its_docker_options_spot_root_size_and_bucket() -> None:
    # GIVEN a docker+machine DinD config: Spot, a private GitLab, its own bucket, an Ubuntu AMI
    text = migrate(DIND.read_text(), DIND.name)
    pool = parse_config(text, "migrated").pools[0]
    # THEN the [runners.docker] keys arrive under [pools.docker], meaning the same
    docker = pool.docker
    assert (docker.image, docker.privileged) == ("docker:27", True)
    assert docker.volumes == ("/certs/client", "/cache") and docker.pull_policy == ("if-not-present",)
    assert docker.shm_size == 268435456 and docker.dns == ("10.20.0.2",)
    assert docker.extra_hosts == ("gitlab.internal.example.com:10.20.1.10",)
    # engine-registry-mirror becomes the daemon's registry mirror
    assert docker.registry_mirrors == ("https://mirror.internal.example.com",)
    # AND Spot, the root size and the existing bucket carry over; infra/ will not try to create the bucket
    assert pool.spot is True and pool.root_volume_gib == 80
    assert (pool.cache_bucket, pool.cache_bucket_existing) == ("acme-ci-cache", True)
    # AND the GitLab is the runner's own, private URL
    assert parse_config(text, "migrated").gitlab.url == "https://gitlab.internal.example.com"


def test_static_keys_are_never_copied_and_say_the_instance_profile_is_used() -> None:
    text = migrate(DIND.read_text(), DIND.name)
    assert "REDACTED-ACCESS-KEY" not in text and "REDACTED-SECRET-KEY" not in text
    for key in ("amazonec2-access-key", "amazonec2-secret-key"):
        assert f"# {key}: not needed: the instance profile is used (no static keys)" in text


def test_the_ami_and_network_options_point_at_their_cdk_context_keys() -> None:
    notes = "\n".join(comments(migrate(DIND.read_text(), DIND.name)))
    assert 'amis.linux = "ami-0f1e2d3c4b5a69788"' in notes
    assert "amazonec2-vpc-id: CDK context `vpc_id`" in notes
    assert "amazonec2-subnet-id: CDK context `subnets`" in notes
    assert "docker.tls_verify: docker+machine's remote engine connection" in notes


@pytest.mark.parametrize(
    ("option", "spot"),
    [
        ('"amazonec2-request-spot-instance=true"', True),
        ('"amazonec2-request-spot-instance"', True),
        ('"amazonec2-request-spot-instance=false"', False),
    ],
)
def test_request_spot_instance_becomes_spot(option: str, spot: bool) -> None:
    pool = parse_config(migrate(machine_config(option), "c.toml"), "migrated").pools[0]
    assert pool.spot is spot


def test_a_runner_without_url_is_an_error_not_a_made_up_gitlab() -> None:
    text = machine_config().replace('url = "https://gitlab.internal.example.com"', "")
    with pytest.raises(ConfigError, match=r"runners\[0\]\.url: missing; set it, or pass --gitlab-url"):
        migrate(text, "c.toml")
    # WHEN the operator passes the URL THEN it is used
    assert 'url = "https://gitlab.other"' in migrate(text, "c.toml", "https://gitlab.other")


def test_periods_given_as_a_string_is_an_error_naming_the_field() -> None:
    # gitlab-runner refuses it (Periods is []string); read as characters it made 22 "always" periods
    section = '[[runners.machine.autoscaling]]\n      Periods = "* * 9-17 * * mon-fri *"\n      IdleCount = 5'
    with pytest.raises(ConfigError) as caught:
        migrate(machine_config(machine_extra=section), "c.toml")
    assert 'runners[0].machine.autoscaling[0].Periods: a string; write a list, Periods = ["* * 9-17' in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            machine_config().replace("IdleTime = 600", 'IdleTime = "30m"'),
            "runners[0].machine.IdleTime: '30m' is not a number of seconds "
            "(docker+machine's IdleTime is an integer); write IdleTime = 1800",
        ),
        (
            machine_config().replace("limit = 4", 'limit = "ten"'),
            "runners[0].limit: 'ten' is not a whole number",
        ),
        (machine_config().replace("MaxBuilds = 1", "MaxBuilds = 1.5"), "runners[0].machine.MaxBuilds: 1.5"),
        (
            machine_config('"amazonec2-root-size=big"'),
            '"amazonec2-root-size=big": the root size is a whole number',
        ),
    ],
)
def test_a_value_gitlab_runner_would_refuse_is_an_error_naming_the_field(config: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        migrate(config, "c.toml")
    assert "c.toml" in str(caught.value) and expected in str(caught.value)
