"""`runner-scaler simulate`: replay a job trace against our scaler and the baselines; tables, JSON, chart.

Imports typer and rich; the simulator and matplotlib only when the command runs, so other commands start fast.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from chalicelib.config import Config, load_config_file
from chalicelib.errors import ConfigError
from toolkit.cli.consoles import CliConsole

if TYPE_CHECKING:
    from sim.model import SimOptions
    from sim.traces import TraceJob
    from sim.world import RunResult

console = CliConsole()
err = CliConsole(stderr=True)

_UNITS = {
    "unmatched_jobs": "jobs (no pool takes them; not in the waits)",
    "blocked_jobs": "jobs (later stages of those pipelines; not in the waits)",
    "wait_p50_s": "s",
    "wait_p95_s": "s",
    "wait_p99_s": "s",
    "wait_max_s": "s",
    "machine_hours": "h",
    "cost_usd": "USD",
}


def simulate(
    trace: Annotated[
        Path, typer.Option("--trace", help="job trace CSV: pipeline_id,created_s,stage,name,tags,duration_s")
    ],
    config: Annotated[Path, typer.Option("--config", help="runner-scaler TOML config (pools, prices)")],
    policies: Annotated[
        str,
        typer.Option(
            "--policies",
            help="all (the standard policies), or names: ours,docker-machine,taskscaler,"
            "taskscaler-nonpreemptive,taskscaler-warm,webhook-scaler,static,oracle; also ours-prewarm "
            "(prewarm on) and naive-hosts (a host per machine)",
        ),
    ] = "all",
    seed: Annotated[
        int, typer.Option("--seed", help="seed of every random draw (same seed, same results)")
    ] = 0,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help='write {policy: {metrics..., "pools": {pool: metrics}}} here'),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="write the wait-vs-cost and fleet-size chart (PNG)")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--start", help="wall-clock time of second 0, ISO 8601 (default: a Monday 00:00, Paris)"
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="processes running policies side by side (same results)")
    ] = 2,
) -> None:
    """Simulate the trace under each policy on the same world and seed, then compare wait, cost and safety."""
    from sim.simulate import metrics_json, policy_names, write_json

    try:
        names = policy_names(policies)
    except ValueError as exc:
        err.print(f"--policies: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    cfg, jobs = _inputs(trace, config)
    results = _run(jobs, cfg, names, seed, _options(start), workers)
    for name, result in results.items():
        console.print(_table(name, result))
    console.print(_comparison(results))
    console.print(_traffic(results))
    _report_unmatched(jobs, cfg, results)
    if json_out is not None:
        write_json(json_out, metrics_json(results))
        err.print(f"wrote {json_out}", markup=False, highlight=False)
    if plot is not None:
        from sim.plot import plot_runs

        plot_runs(results, plot, f"{trace.name} with {config.name}, seed {seed}")
        err.print(f"wrote {plot}", markup=False, highlight=False)


def _inputs(trace: Path, config: Path) -> tuple[Config, list[TraceJob]]:
    """The config and the trace, or a readable error and exit 1."""
    from sim.traces import TraceError, read_trace

    try:
        return load_config_file(config), read_trace(trace)
    except (ConfigError, TraceError) as exc:
        err.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _options(start: str | None) -> SimOptions:
    """The world's options; `--start` places second 0 in time (policies' periods depend on it)."""
    from sim.model import SimOptions

    if start is None:
        return SimOptions()
    try:
        when = datetime.fromisoformat(start)
    except ValueError:
        err.print(
            f'--start: "{start}" is not ISO 8601, e.g. 2026-11-23T00:00:00+01:00',
            style="red",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(2) from None
    return SimOptions(start=when if when.tzinfo else when.replace(tzinfo=UTC))


def _run(
    jobs: list[TraceJob], cfg: Config, names: list[str], seed: int, options: SimOptions, workers: int
) -> dict[str, RunResult]:
    """Every policy in turn, one progress bar each, advancing with simulated time."""
    from sim.simulate import simulate as run_policies

    columns = (TextColumn("{task.description:<15}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        tasks: dict[str, TaskID] = {n: progress.add_task(n, total=1.0) for n in names}

        def report(name: str, fraction: float) -> None:
            progress.update(tasks[name], completed=fraction)

        return run_policies(jobs, cfg, names, seed=seed, options=options, progress=report, workers=workers)


def _table(name: str, result: RunResult) -> Table:
    table = Table(title=f"policy: {name}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        unit = _UNITS.get(key, "")
        table.add_row(key, f"{value}{' ' + unit if unit else ''}")
    return table


def _comparison(results: dict[str, RunResult]) -> Table:
    table = Table(title="all policies", title_justify="left")
    for column in ("policy", "wait p50 s", "wait p95 s", "cost USD", "machine h", "busy killed", "API calls"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, result in results.items():
        m = result.metrics
        killed = str(m["busy_killed"])
        table.add_row(
            name,
            str(m["wait_p50_s"]),
            str(m["wait_p95_s"]),
            f"{m['cost_usd']:.2f}",
            str(m["machine_hours"]),
            f"[red]{killed}[/red]" if m["busy_killed"] else killed,
            str(m["api_calls"]),
        )
    return table


def _report_unmatched(jobs: list[TraceJob], cfg: Config, results: dict[str, RunResult]) -> None:
    """Say which trace jobs no pool takes: they are left out of the wait figures (they wait forever under
    every policy), and so are their pipelines' later stages."""
    from chalicelib.capacity.routing import pool_for_tags

    if not results:
        return
    metrics = next(iter(results.values())).metrics
    unmatched, blocked = int(metrics["unmatched_jobs"]), int(metrics["blocked_jobs"])
    if not unmatched:
        return
    tag_sets = sorted({j.tags for j in jobs if pool_for_tags(j.tags, cfg.pools) is None})
    shown = ", ".join("[" + ", ".join(tags) + "]" if tags else "untagged" for tags in tag_sets[:5])
    more = f" and {len(tag_sets) - 5} more tag sets" if len(tag_sets) > 5 else ""
    err.print(
        f"{unmatched} of {len(jobs)} jobs match no pool (tags {shown}{more}), and {blocked} later-stage jobs "
        "of their pipelines never start: all are left out of the wait figures. Add a pool with those tags, "
        "or set run_untagged on one for untagged jobs.",
        style="yellow",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _traffic(results: dict[str, RunResult]) -> Table:
    """Control-plane API calls by service, and GitLab REST calls per served job: GitLab's rate limits count
    those, while each AWS service has its own quotas (docs/operations.md, "API traffic and quotas")."""
    services = sorted({s for r in results.values() for s in r.calls_by_service})
    table = Table(title="API calls by service (control plane; runners' own job requests not counted)")
    table.add_column("policy")
    for service in services:
        table.add_column(service, justify="right")
    table.add_column("GitLab per job", justify="right")
    for name, result in results.items():
        served = int(result.metrics["jobs"]) - int(result.metrics.get("unmatched_jobs", 0))
        served -= int(result.metrics.get("blocked_jobs", 0))
        gitlab = result.calls_by_service.get("gitlab", 0)
        per_job = f"{gitlab / served:.2f}" if served else "-"
        table.add_row(name, *(str(result.calls_by_service.get(s, 0)) for s in services), per_job)
    return table
