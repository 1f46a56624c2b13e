"""Jobs no pool takes are counted apart and kept out of the wait figures, in the world and in `simulate`.

A job whose tags match no pool waits forever under every policy (gitlab-runner's tag rule, applied to pools
in config order by chalicelib/capacity/routing.py), and GitLab never starts its pipeline's later stages;
counted in the waits they once made p95 51,940 s with no word about why.
"""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from sim.baselines import Oracle
from sim.simulate import simulate
from sim.traces import TraceJob, write_trace
from tests.unit.test_sim import EXACT, job, make_config, run
from toolkit.cli.simulate import simulate as simulate_command


def test_jobs_no_pool_takes_are_counted_apart_and_out_of_the_waits() -> None:
    # GIVEN one served pipeline, and one whose first stage asks for a gpu no pool has, with a later stage
    trace = [
        job(1, 0.0, 0, 60.0, "linux"),
        job(2, 0.0, 0, 60.0, "gpu", name="train"),
        job(2, 0.0, 1, 60.0, "linux", name="report"),
    ]
    # WHEN the oracle (perfect foresight) runs it: the served job at second 0 waits one 60 s boot
    world = run(Oracle(), trace, make_config(), EXACT)
    metrics = world.metrics(world.horizon, 0)
    # THEN the gpu job is unmatched, its later stage blocked, and neither inflates the waits
    assert (metrics["jobs"], metrics["unmatched_jobs"], metrics["blocked_jobs"]) == (3, 1, 1)
    assert metrics["wait_max_s"] == 60.0  # the served job's boot, not the horizon the gpu job would reach


def test_simulate_says_which_jobs_match_no_pool(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("simulate")(simulate_command)
    app.command("noop")(lambda: None)
    trace = tmp_path / "trace.csv"
    write_trace(
        trace, [TraceJob(1, 0.0, 0, "build", ("linux",), 60.0), TraceJob(2, 0.0, 0, "t", ("gpu",), 60.0)]
    )
    config = tmp_path / "config.toml"
    config.write_text(
        '[gitlab]\nurl = "https://gitlab.example.com"\n[[pools]]\nname = "linux"\nasg = "a"\n'
        'tags = ["linux"]\nmax_instances = 2\n',
        encoding="utf-8",
    )
    args = ["simulate", "--trace", str(trace), "--config", str(config), "--policies", "oracle"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "1 of 2 jobs match no pool (tags [gpu])" in said and "left out of the wait figures" in said


def test_each_run_breaks_its_api_calls_down_by_service() -> None:
    # GIVEN four jobs a minute apart; WHEN ours and docker-machine run them
    trace = [job(n, 60.0 * n, 0, 120.0, "linux") for n in range(1, 5)]
    results = simulate(trace, make_config(), ["ours", "docker-machine"], seed=0, options=EXACT)
    # THEN each run says which services its control plane called, and the parts add up to api_calls
    ours = results["ours"]
    assert {"dynamodb", "autoscaling", "gitlab"} <= set(ours.calls_by_service)
    assert all(sum(r.calls_by_service.values()) == r.metrics["api_calls"] for r in results.values())
    assert "dynamodb" not in results["docker-machine"].calls_by_service  # docker+machine keeps no table


def test_simulate_prints_the_traffic_table_with_gitlab_calls_per_job(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("simulate")(simulate_command)
    app.command("noop")(lambda: None)
    trace = tmp_path / "trace.csv"
    write_trace(trace, [TraceJob(n, 60.0 * n, 0, f"b{n}", ("linux",), 120.0) for n in range(1, 5)])
    config = tmp_path / "config.toml"
    config.write_text(
        '[gitlab]\nurl = "https://gitlab.example.com"\n[[pools]]\nname = "linux"\nasg = "a"\n'
        'tags = ["linux"]\nmax_instances = 4\n',
        encoding="utf-8",
    )
    args = ["simulate", "--trace", str(trace), "--config", str(config), "--policies", "ours"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "API calls by service" in result.output and "GitLab per" in result.output
