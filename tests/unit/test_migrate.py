"""`runner-scaler migrate`: gitlab-runner configs become valid runner-scaler configs, none lost silently."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chalicelib.config import parse_config
from chalicelib.errors import ConfigError
from toolkit.cli.main import app
from toolkit.migrate import migrate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_docker_machine_settings_map_to_policies() -> None:
    text = migrate((EXAMPLES / "gitlab-runner-docker-machine.toml").read_text(), "dm.toml")
    config = parse_config(text, "migrated")
    pool = config.pools[0]
    assert (pool.max_use_count, pool.max_instances, pool.max_growth_rate) == (1, 40, 10)
    assert pool.instance_types == ("m7i.large",)
    base, office, weekend = pool.policy
    # IdleCountMin/IdleScaleFactor/IdleCount -> idle_count/scale_factor/scale_factor_limit
    assert (base.idle_count, base.scale_factor, base.scale_factor_limit) == (1, 0.5, 5)
    assert base.idle_time == timedelta(minutes=30)
    # 7-field docker+machine periods become 5-field cron, time zone kept
    assert office.periods == ("* 9-17 * * mon-fri",) and office.timezone == "Europe/Paris"
    assert weekend.periods == ("* * * * sat,sun",) and weekend.idle_time == timedelta(minutes=5)


def test_every_dropped_setting_gets_a_comment() -> None:
    text = migrate((EXAMPLES / "gitlab-runner-docker-machine.toml").read_text(), "dm.toml")
    for dropped in ("MachineDriver", "MachineName", "amazonec2-vpc-id", "concurrent", "token", "tags"):
        assert any(dropped in line for line in text.splitlines() if line.lstrip().startswith("#")), dropped
    assert "REDACTED" not in text  # the runner token is never copied


def test_docker_autoscaler_maps_one_to_one() -> None:
    text = migrate((EXAMPLES / "gitlab-runner-docker-autoscaler.toml").read_text(), "da.toml")
    pool = parse_config(text, "migrated").pools[0]
    # capacity_per_instance 2 x 12 instances: one job per machine (run-single takes one at a time), 24 of them
    assert (pool.asg, pool.capacity_per_instance, pool.max_use_count, pool.max_instances) == (
        "linux-asg",
        1,
        4,
        24,
    )
    assert "capacity_per_instance = 2: a machine runs one run-single, which takes one job at a time" in text
    assert pool.policy[1].scale_factor_limit == 6 and pool.policy[1].timezone == "Europe/Berlin"
    assert "preemptive_mode: no equivalent" in text


def test_config_without_autoscaling_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no runner uses"):
        migrate('[[runners]]\nname = "shell"\nexecutor = "shell"\n', "plain.toml")


def test_cli_validate_and_migrate_on_shipped_examples(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["validate-config", str(EXAMPLES / "config.toml")])
    assert ok.exit_code == 0 and '"max_instances": 40' in ok.stdout
    out = tmp_path / "scaler.toml"
    done = runner.invoke(
        app, ["migrate", str(EXAMPLES / "gitlab-runner-docker-machine.toml"), "--out", str(out)]
    )
    assert done.exit_code == 0
    assert runner.invoke(app, ["validate-config", str(out)]).exit_code == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(out.read_text().replace("max_instances = 40", "max_instances = -1"))
    failed = runner.invoke(app, ["validate-config", str(bad)])
    assert failed.exit_code == 1 and "pools[0].max_instances" in failed.output


def _docker_machine(autoscaling: str, machine: str = "") -> str:
    return (
        '[[runners]]\nname = "dm"\nurl = "https://gitlab.example.com"\n'
        'executor = "docker+machine"\nlimit = 4\n'
        f"[runners.machine]\nIdleCount = 0\nIdleTime = 600\nMaxBuilds = 1\n{machine}\n"
        f"[[runners.machine.autoscaling]]\n{autoscaling}\n"
    )


def test_a_six_field_period_is_minute_to_year_as_cronexpr_reads_it() -> None:
    """gorhill/cronexpr (gitlab-runner `helpers/timeperiod`): with six fields "a 0 second field is
    prepended", so `* 8-18 * * mon-fri *` is every minute of 8-18h on weekdays, any year."""
    text = migrate(
        _docker_machine('Periods = ["* 8-18 * * mon-fri *"]\nIdleCount = 2\nTimezone = "UTC"'), "dm.toml"
    )
    office = parse_config(text, "migrated").pools[0].policy[1]
    assert office.periods == ("* 8-18 * * mon-fri",)


def test_a_period_year_is_dropped_only_with_a_comment() -> None:
    autoscaling = 'Periods = ["0 * 9-17 * * mon-fri 2026", "* 9 * * *"]\nIdleCount = 2\nTimezone = "UTC"'
    text = migrate(_docker_machine(autoscaling), "dm.toml")
    office = parse_config(text, "migrated").pools[0].policy[1]
    assert office.periods == ("* 9-17 * * mon-fri", "* 9 * * *")
    assert 'year field "2026" dropped' in text


def test_idle_scale_factor_keeps_at_least_one_idle_machine() -> None:
    """gitlab-runner `executors/docker/machine/idle_limit_strategy.go`: with IdleScaleFactor > 0, an unset or
    0 IdleCountMin is "forced to be at least 1"."""
    machine = "IdleScaleFactor = 0.5"
    text = migrate(
        _docker_machine('Periods = ["* * * * *"]\nIdleScaleFactor = 2.0\nIdleCount = 8', machine), "x"
    )
    base, busy = parse_config(text, "migrated").pools[0].policy
    assert (base.idle_count, base.scale_factor) == (1, 0.5)
    assert (busy.idle_count, busy.scale_factor, busy.scale_factor_limit) == (1, 2.0, 8)


def test_a_period_without_timezone_is_read_in_the_managers_zone_so_migrate_asks_for_one() -> None:
    """gitlab-runner `helpers/timeperiod`: an unset Timezone is time.Local, the runner manager's zone."""
    text = migrate(_docker_machine('Periods = ["* 9-17 * * mon-fri"]\nIdleCount = 2'), "dm.toml")
    office = parse_config(text, "migrated").pools[0].policy[1]
    assert office.timezone == "UTC"
    assert "Timezone: not set" in text and "local time zone" in text and "set timezone" in text
