"""`runner-scaler status`: per pool capacity, machines and jobs, read from the deployed state.

Reads the same table and Auto Scaling groups as the Lambda (AWS credentials from the usual chain).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from chalicelib.config import load_config_file
from chalicelib.errors import AwsCallError, ConfigError, RunnerScalerError
from chalicelib.resources import ENV_PREFIX, Names
from chalicelib.runtime import Runtime
from toolkit.cli.consoles import CliConsole
from toolkit.status import PoolStatus, snapshot

console = CliConsole()
err = CliConsole(stderr=True)


def status(
    config: Annotated[Path, typer.Option("--config", "-c", help="runner-scaler TOML config")],
    prefix: Annotated[
        str, typer.Option(envvar=ENV_PREFIX, help="deployment prefix (names the table)")
    ] = "runner-scaler",
    endpoint_url: Annotated[str | None, typer.Option(help="AWS endpoint, e.g. a local moto server")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Each pool: desired, in service, idle, busy, booting, draining, warm (now/target), pending and running
    jobs, faults."""
    from chalicelib.aws import AwsClients

    try:
        cfg = load_config_file(config)
    except ConfigError as exc:
        err.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    environ = {**os.environ, ENV_PREFIX: prefix}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    rt = Runtime(environ, aws=AwsClients(region=region, endpoint_url=endpoint_url), config=cfg)
    try:
        rows = snapshot(cfg, rt.store, rt.fleet, rt.now())
    except AwsCallError as exc:
        err.print(_unreadable(exc, prefix, region), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    except RunnerScalerError as exc:
        err.print(f"cannot read state: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        console.print(render(rows))
    missing = [r for r in rows if r.group_missing]
    if missing:
        groups = ", ".join(f'"{r.asg}" (pool {r.pool})' for r in missing)
        err.print(
            f"Auto Scaling group not found in {region}: {groups}; deploy infra/, or fix the pool's asg",
            style="red",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(1)


def _unreadable(exc: AwsCallError, prefix: str, region: str) -> str:
    """The state could not be read: name the table when it is missing, with the prefix that named it."""
    if exc.code == "ResourceNotFoundException" and exc.service == "dynamodb":
        table = Names(prefix).table
        return (
            f'table "{table}" not found in {region}: prefix "{prefix}" (--prefix or {ENV_PREFIX}) names it; '
            "give the deployment's prefix, or the region it runs in (AWS_REGION)"
        )
    return f"cannot read state: {exc}"


def render(rows: list[PoolStatus]) -> Table:
    table = Table(title="runner-scaler pools")
    for column in (
        "pool",
        "platform",
        "desired",
        "max",
        "in service",
        "booting",
        "idle",
        "busy",
        "draining",
        "warm",
        "pending",
        "running",
        "faults",
    ):
        table.add_column(column, justify="left" if column in {"pool", "platform", "faults"} else "right")
    for r in rows:
        table.add_row(
            Text(r.pool),
            r.platform,
            str(r.desired),
            str(r.max_instances),
            str(r.in_service),
            str(r.booting),
            str(r.idle),
            str(r.busy),
            str(r.draining),
            "-" if r.warm_target is None else f"{r.warm}/{r.warm_target}",
            str(r.pending_jobs),
            str(r.running_jobs),
            Text("; ".join(r.faults) or "-"),
        )
    return table
