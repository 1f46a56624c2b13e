"""Config: gitlab-runner's vocabulary, defaults, and errors that name the file, the field and the fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.config import format_duration, load_config, load_config_file, parse_config, parse_duration
from chalicelib.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MINIMAL = """
[gitlab]
url = "https://gitlab.example.com"

[[pools]]
name = "linux"
asg = "asg-linux"
tags = ["linux"]
max_instances = 5
"""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("1h30m", 5400),
        ("720h", 2592000),
        ("0s", 0),
        ("45s", 45),
        ("1m30s", 90),
        ("500ms", 0.5),
    ],
)
def test_go_durations_parse_like_gitlab_runner(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["20 minutes", "1d", "h", "-5m", "5"])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**7))
def test_duration_round_trips_through_its_go_spelling(seconds: int) -> None:
    assert parse_duration(format_duration(timedelta(seconds=seconds))) == timedelta(seconds=seconds)


def test_minimal_config_gets_gitlab_runner_defaults() -> None:
    config = parse_config(MINIMAL, "minimal.toml")
    pool = config.pools[0]
    assert pool.capacity_per_instance == 1
    assert pool.max_use_count == 1  # deliberate: one job per fresh machine (isolation), see docs
    policy = pool.policy[0]
    assert policy.periods == ("* * * * *",)
    assert (policy.idle_count, policy.scale_factor, policy.scale_factor_limit) == (0, 0.0, 0)


def test_shipped_example_loads() -> None:
    config = load_config_file(EXAMPLES / "config.toml")
    assert [p.name for p in config.pools] == ["linux", "windows", "macos"]
    assert config.pool("macos").hosts is not None


def test_errors_name_the_file_the_field_path_and_the_fix() -> None:
    text = MINIMAL + '\n[[pools.policy]]\ntimezone = "Europe/Pariss"\nidle_cont = 2\nidle_time = "ten"\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bad.toml")
    message = str(caught.value)
    assert "bad.toml" in message
    assert (
        'pools[0].policy[0].timezone: unknown time zone "Europe/Pariss"; did you mean "Europe/Paris"?'
        in message
    )
    assert 'pools[0].policy[0].idle_cont: unknown field (did you mean "idle_count"?)' in message
    assert "pools[0].policy[0].idle_time" in message


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("max_instances = 0", "pools[0].max_instances"),
        ('periods = ["* * *"]', "not a 5-field cron expression"),
        ("", "pools[0].max_instances: required field is missing"),
    ],
)
def test_each_bad_field_is_reported(snippet: str, expected: str) -> None:
    if snippet.startswith("periods"):
        text = MINIMAL + f"\n[[pools.policy]]\n{snippet}\n"
    else:
        text = MINIMAL.replace("max_instances = 5", snippet)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "x.toml")
    assert expected in str(caught.value)


def test_pool_without_tags_must_run_untagged() -> None:
    with pytest.raises(ConfigError, match="run_untagged"):
        parse_config(MINIMAL.replace('tags = ["linux"]', "tags = []"), "x.toml")


def test_a_windows_shell_pool_cannot_use_an_iam_cache() -> None:
    # Its runner runs as the jobs' standard user, kept off the metadata service: no credentials to sign with.
    pool = 'tags = ["windows"]\nplatform = "windows"\nexecutor = "shell"'
    windows = MINIMAL.replace('tags = ["linux"]', pool)
    parse_config(windows, "x.toml")
    with pytest.raises(ConfigError, match="a Windows shell pool cannot use cache_bucket"):
        parse_config(windows + 'cache_bucket = "cache"\n', "x.toml")


@pytest.mark.parametrize(
    ("docker", "named"),
    [
        ("privileged = true", "privileged = true"),
        ("services_privileged = true", "services_privileged = true"),
        ('network_mode = "host"', 'network_mode = "host"'),
        ('volumes = ["/var/run/docker.sock:/var/run/docker.sock"]', "a Docker socket in volumes"),
    ],
)
def test_a_pool_whose_jobs_own_their_machine_must_end_the_machine_with_the_job(
    docker: str, named: str
) -> None:
    # GIVEN docker options that make a job root on its machine (docs/security.md)
    owned = MINIMAL + f"max_use_count = 1\n[pools.docker]\n{docker}\n"
    # THEN one job per machine is accepted, and anything else is refused, naming the option and the fix
    parse_config(owned, "x.toml")
    for uses in (2, 0):
        with pytest.raises(ConfigError, match="set max_use_count = 1") as caught:
            parse_config(owned.replace("max_use_count = 1", f"max_use_count = {uses}"), "x.toml")
        assert named in str(caught.value)


def test_more_than_one_job_per_machine_is_refused_with_the_fix() -> None:
    """gitlab-runner `commands/single.go`: run-single's Execute loop calls processBuild once per iteration,
    so one machine (one run-single) runs one job at a time; a second slot would be counted free forever."""
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL + "capacity_per_instance = 3\n", "x.toml")
    message = str(caught.value)
    assert "x.toml" in message and "capacity_per_instance = 3" in message
    assert "set capacity_per_instance = 1 and max_instances = 15" in message


def test_duplicate_pool_names_are_rejected() -> None:
    twice = MINIMAL + MINIMAL.split("[gitlab]")[1].split('url = "https://gitlab.example.com"')[1]
    with pytest.raises(ConfigError, match='two pools share name "linux"'):
        parse_config(twice.replace('asg = "asg-linux"', 'asg = "other"', 1), "x.toml")


def test_not_toml_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[gitlab\nurl=", "broken.toml")


def test_missing_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config_file("nope.toml")


def test_deployed_config_comes_from_ssm_when_no_file_is_set() -> None:
    read: list[str] = []

    def read_parameter(name: str) -> str:
        read.append(name)
        return MINIMAL

    config = load_config({"RUNNER_SCALER_CONFIG_PARAM": "/rs/config"}, read_parameter)
    assert read == ["/rs/config"] and config.pools[0].name == "linux"
    with pytest.raises(ConfigError, match="RUNNER_SCALER_CONFIG"):
        load_config({}, read_parameter)


class TestPolicySelection:
    """The last policy whose periods match `now` in its time zone wins (gitlab-runner's rule)."""

    CONFIG = (
        MINIMAL
        + """
[[pools.policy]]
idle_count = 1

[[pools.policy]]
periods = ["* 8-17 * * mon-fri"]
timezone = "Europe/Paris"
idle_count = 5
"""
    )

    def pool(self):  # type: ignore[no-untyped-def]
        return parse_config(self.CONFIG, "x.toml").pools[0]

    @pytest.mark.parametrize(
        ("when", "idle_count"),
        [
            (datetime(2026, 11, 23, 7, 30, tzinfo=UTC), 5),  # Monday 08:30 Paris (UTC+1)
            (datetime(2026, 11, 23, 6, 59, tzinfo=UTC), 1),  # Monday 07:59 Paris
            (datetime(2026, 11, 23, 16, 59, tzinfo=UTC), 5),  # Monday 17:59 Paris
            (datetime(2026, 11, 23, 17, 0, tzinfo=UTC), 1),  # Monday 18:00 Paris
            (datetime(2026, 11, 22, 10, 0, tzinfo=UTC), 1),  # Sunday
        ],
    )
    def test_last_matching_policy_wins(self, when: datetime, idle_count: int) -> None:
        assert self.pool().active_policy(when).idle_count == idle_count

    def test_dst_change_moves_the_window_in_utc(self) -> None:
        # Paris is UTC+2 in summer and UTC+1 in winter: 08:00 local is 06:00 UTC, then 07:00 UTC.
        pool = self.pool()
        summer_monday = datetime(2026, 10, 19, 6, 0, tzinfo=UTC)  # 08:00 CEST
        winter_monday = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)  # 07:00 CET
        assert pool.active_policy(summer_monday).idle_count == 5
        assert pool.active_policy(winter_monday).idle_count == 1
        assert pool.active_policy(winter_monday + timedelta(hours=1)).idle_count == 5

    def test_no_match_means_nothing_idle(self) -> None:
        only_weekdays = MINIMAL + '\n[[pools.policy]]\nperiods = ["* * * * mon-fri"]\nidle_count = 3\n'
        pool = parse_config(only_weekdays, "x.toml").pools[0]
        assert pool.active_policy(datetime(2026, 11, 22, 10, 0, tzinfo=UTC)).idle_count == 0

    @given(
        st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC))
    )
    def test_selection_agrees_with_local_clock_across_dst(self, when: datetime) -> None:
        from zoneinfo import ZoneInfo

        local = when.astimezone(ZoneInfo("Europe/Paris"))
        expected = 5 if (local.weekday() < 5 and 8 <= local.hour <= 17) else 1
        assert self.pool().active_policy(when).idle_count == expected


def test_tick_reconciles_up_to_ten_pools_itself_unless_told_otherwise() -> None:
    assert parse_config(MINIMAL, "x.toml").scaler.tick_inline_pools == 10
    text = MINIMAL.replace("[gitlab]", "[scaler]\ntick_inline_pools = 0\n\n[gitlab]")
    assert parse_config(text, "x.toml").scaler.tick_inline_pools == 0


def test_a_negative_inline_pool_count_is_reported() -> None:
    text = MINIMAL.replace("[gitlab]", "[scaler]\ntick_inline_pools = -1\n\n[gitlab]")
    with pytest.raises(ConfigError, match=r"scaler\.tick_inline_pools"):
        parse_config(text, "x.toml")
