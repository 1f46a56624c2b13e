"""`runner-scaler demo`: the whole scaler on this machine, in accelerated time, with nothing to set up.

Parses options and calls `toolkit.devtools.demo.Demo`; prints the summary; exit 0 when every invariant
held (stopping at `--duration` with jobs left breaks none: they are reported), 1 when one broke, 130 after
Ctrl-C. May import typer, rich and chalicelib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from chalicelib.config import parse_duration
from chalicelib.errors import ConfigError
from toolkit.cli.consoles import CliConsole

console = CliConsole()


def demo(
    trace: Annotated[
        Path | None,
        typer.Option(
            help="job trace CSV (pipeline_id,created_s,stage,name,tags,duration_s); default: demo's"
        ),
    ] = None,
    speed: Annotated[float, typer.Option(min=0.1, help="simulated seconds per wall second")] = 40.0,
    duration: Annotated[
        str, typer.Option(help='stop after this much simulated time even if jobs remain (Go duration: "90m")')
    ] = "90m",
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="runner-scaler TOML; default: 3 demo pools")
    ] = None,
    out: Annotated[Path, typer.Option(help="directory for summary.json, timeline.png, demo.log")] = Path(
        "demo-out"
    ),
    spot: Annotated[
        int, typer.Option(min=0, help="Spot interruptions to stage on spot pools (warning, then reclaim)")
    ] = 1,
    drill: Annotated[
        bool, typer.Option(help="stage an Auto Scaling throttling incident (alarms fire)")
    ] = True,
    live: Annotated[bool, typer.Option(help="draw the live view (only when stdout is a terminal)")] = True,
) -> None:
    """Play a job trace against the real app on local moto and a fake GitLab; every handler runs for real."""
    from toolkit.devtools.demo import DEFAULT_TRACE, Demo, DemoOptions, TraceError
    from toolkit.devtools.demo_report import summary_table

    try:
        limit = parse_duration(duration)
    except ValueError as exc:
        console.print(f"--duration: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    options = DemoOptions(
        trace=trace or DEFAULT_TRACE,
        speed=speed,
        duration=limit,
        config=config,
        out=out,
        live=live and console.is_terminal,
        drill=drill,
        spot_interruptions=spot,
    )
    try:
        result = Demo(options, console).run()
    except (ConfigError, TraceError) as exc:
        console.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    console.print(summary_table(result.summary))
    minutes = result.summary["simulated_seconds"] / 60
    console.print(
        f"{minutes:.0f} simulated minutes in {result.wall_seconds:.0f}s wall "
        f"(×{result.summary['effective_speed']:g}); wrote {result.summary_path}, {result.timeline_path}, "
        f"{result.log_path}",
        style="dim",
        markup=False,
        highlight=False,
    )
    if result.summary["interrupted"]:
        console.print("[yellow]interrupted: the summary covers the run so far[/yellow]")
    elif result.summary["stopped_at_duration"]:
        console.print(
            _unfinished(result.summary), style="yellow", markup=False, highlight=False, soft_wrap=True
        )
    elif not result.ok:
        console.print("[bold red]an invariant broke: see the summary above[/bold red]")
    raise typer.Exit(result.exit_code)


def _unfinished(summary: dict[str, Any]) -> str:
    """What a stop at the --duration limit left: the unfinished GitLab jobs and the pipelines not created."""
    jobs = summary["jobs"]
    ids = jobs["unfinished_ids"]
    shown = ", ".join(str(i) for i in ids[:20]) + (", ..." if len(ids) > 20 else "")
    line = f"stopped at the --duration limit: {jobs['unfinished']} jobs unfinished"
    if ids:
        line += f" (ids {shown})"
    left = summary.get("trace_pipelines_not_created", 0)
    if left:
        line += f", {left} trace pipelines not created yet"
    return line + "; no invariant broke"
