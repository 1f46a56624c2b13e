"""`validate-config` tells the truth: loose values, non-UTF-8 files and configs that could never work once
deployed are errors naming the file, the field and the fix; a good file still prints its resolved form."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from chalicelib.config import deployment_problems, load_config_file, parse_config
from chalicelib.errors import ConfigError
from toolkit.cli.main import app

GOOD = """
[gitlab]
url = "https://gitlab.example.com"
api_token_secret = "runner-scaler/gitlab-api-token"
groups = [42]

[[pools]]
name = "linux"
asg = "runner-scaler-linux"
tags = ["linux"]
max_instances = 5
instance_types = ["m7i.large"]
"""

runner = CliRunner()


def validate(tmp_path: Path, text: str | bytes) -> tuple[int, str]:
    file = tmp_path / "scaler.toml"
    file.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    result = runner.invoke(app, ["validate-config", str(file)])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('tags = ["linux"]', 'tags = ["linux"]\nspot = "yes"', "pools[0].spot: 'yes' is not a TOML boolean"),
        ("max_instances = 5", 'max_instances = "5"', "pools[0].max_instances: '5' is not a TOML integer"),
        (
            'tags = ["linux"]',
            'tags = ["linux"]\nrun_untagged = 1',
            "pools[0].run_untagged: 1 is not a TOML boolean",
        ),
    ],
)
def test_loose_values_are_errors_not_coercions(old: str, new: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(GOOD.replace(old, new), "scaler.toml")
    assert expected in str(caught.value) and "without quotes" in str(caught.value)


def test_an_error_inside_one_pool_is_reported_once(tmp_path: Path) -> None:
    code, output = validate(tmp_path, GOOD.replace("max_instances = 5", "max_instances = 0"))
    assert code == 1 and "pools[0].max_instances" in output
    assert "at least 1 item" not in output


def test_a_utf16_file_from_a_powershell_redirect_is_a_clear_error(tmp_path: Path) -> None:
    code, output = validate(tmp_path, GOOD.encode("utf-16"))
    assert code == 1
    assert "UTF-16" in output and "TOML must be UTF-8" in output and "Traceback" not in output


def test_a_latin1_byte_names_its_line(tmp_path: Path) -> None:
    code, output = validate(tmp_path, GOOD.replace("linux", "lin\u00e9", 1).encode("latin-1"))
    assert code == 1 and "line 8: byte 0xe9 is not UTF-8" in output


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    file = tmp_path / "bom.toml"
    file.write_bytes(b"\xef\xbb\xbf" + GOOD.encode("utf-8"))
    assert load_config_file(file).pools[0].name == "linux"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'api_token_secret = "runner-scaler/gitlab-api-token"',
            'api_token_secret = ""',
            "gitlab.api_token_secret: empty, so no job can be routed",
        ),
        (
            "groups = [42]",
            'groups = ["platform/ci"]',
            'gitlab.groups[0]: "platform/ci" is a path; write the numeric id',
        ),
        (
            'instance_types = ["m7i.large"]',
            "",
            "pools[0].instance_types: empty; the launch template needs one",
        ),
    ],
)
def test_a_config_that_cannot_work_once_deployed_fails_validation(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    code, output = validate(tmp_path, GOOD.replace(old, new))
    assert code == 1 and "would not work once deployed" in output and expected in output


def test_a_pool_whose_tags_an_earlier_pool_covers_never_gets_a_job(tmp_path: Path) -> None:
    # GIVEN a "big" pool listed after "linux", taking only jobs tagged linux, which "linux" takes first
    shadowed = (
        GOOD
        + """
[[pools]]
name = "big"
asg = "runner-scaler-big"
tags = ["linux"]
max_instances = 5
instance_types = ["m7i.4xlarge"]
"""
    )
    problems = deployment_problems(parse_config(shadowed, "scaler.toml"))
    assert problems == [
        'pools[1] "big": never gets a job, because pools[0] "linux" (earlier) takes every job it would; '
        'give it a tag "linux" lacks, or move it before that pool'
    ]
    # WHEN it gets a tag of its own THEN both pools can get jobs
    distinct = shadowed.replace(
        'tags = ["linux"]\nmax_instances = 5\ninstance_types = ["m7i.4xlarge"]',
        'tags = ["linux", "big"]\nmax_instances = 5\ninstance_types = ["m7i.4xlarge"]',
    )
    assert deployment_problems(parse_config(distinct, "scaler.toml")) == []


def test_a_good_file_prints_its_resolved_form(tmp_path: Path) -> None:
    code, output = validate(tmp_path, GOOD)
    assert code == 0 and '"max_instances": 5' in output


def test_version_prints_the_installed_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("runner-scaler ")
    assert result.output.strip() != "runner-scaler"
