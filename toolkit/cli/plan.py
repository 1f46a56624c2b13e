"""`runner-scaler plan`: what the next reconcile of each pool would do, read from the deployed state, and
nothing written (`Reconciler.reconcile_pool(dry_run=True)`: no lease, no record, no cache, no AWS write).

Reads the same table and Auto Scaling groups as the Lambda (AWS credentials from the usual chain); with
`[gitlab] api_token_secret` it also reads GitLab as the reconcile does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from chalicelib.config import load_config_file
from chalicelib.errors import ConfigError
from chalicelib.reconcile import ReconcileResult
from chalicelib.resources import ENV_PREFIX
from chalicelib.runtime import Runtime
from toolkit.cli.consoles import CliConsole

console = CliConsole()
err = CliConsole(stderr=True)


def plan(
    config: Annotated[Path, typer.Option("--config", "-c", help="runner-scaler TOML config")],
    pool: Annotated[
        list[str] | None, typer.Option("--pool", "-p", help="only this pool (repeatable)")
    ] = None,
    prefix: Annotated[
        str, typer.Option(envvar=ENV_PREFIX, help="deployment prefix (names the table)")
    ] = "runner-scaler",
    endpoint_url: Annotated[str | None, typer.Option(help="AWS endpoint, e.g. a local moto server")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> None:
    """Each pool's reconcile plan (desired capacity, protections, removals with their reasons, the warm pool),
    as a dry run: nothing is changed."""
    from chalicelib.aws import AwsClients

    try:
        cfg = load_config_file(config)
        pools = [cfg.pool(name) for name in pool] if pool else list(cfg.pools)
    except ConfigError as exc:
        err.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyError as exc:
        err.print(f"unknown pool {exc}; the config has {', '.join(p.name for p in cfg.pools)}", markup=False)
        raise typer.Exit(2) from None
    environ = {**os.environ, ENV_PREFIX: prefix}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    rt = Runtime(environ, aws=AwsClients(region=region, endpoint_url=endpoint_url), config=cfg)
    reconciler = rt.reconciler("plan")
    results = [reconciler.reconcile_pool(p, rt.now(), dry_run=True) for p in pools]
    if as_json:
        print(json.dumps([plan_dict(r) for r in results], indent=2))
    else:
        for result in results:
            console.print(describe(result), markup=False, highlight=False, soft_wrap=True)
    if any(r.errors for r in results):
        raise typer.Exit(1)


def plan_dict(result: ReconcileResult) -> dict[str, Any]:
    """A pool's plan as plain data (what `--json` prints)."""
    planned = result.planned
    return {
        "pool": result.pool,
        "desired_before": result.desired_before,
        "desired": planned.desired if planned else None,
        "launch": planned.launch if planned else 0,
        "protect": list(planned.protect) if planned else [],
        "removals": [{"instance_id": r.instance_id, "reason": r.reason} for r in planned.removals]
        if planned
        else [],
        "instance_types": list(planned.instance_types) if planned and planned.instance_types else None,
        "warm_pool": result.warm_pool or None,
        "pending": result.pending,
        "running": result.running,
        "errors": list(result.errors),
    }


def describe(result: ReconcileResult) -> str:
    """A pool's plan in a few lines."""
    data = plan_dict(result)
    if result.errors or result.planned is None:
        return f"{result.pool}: not planned: {'; '.join(result.errors) or 'nothing read'}"
    lines = [
        f"{result.pool}: desired {data['desired_before']} -> {data['desired']} "
        f"(launch {data['launch']}; jobs pending {data['pending']}, running {data['running']})"
    ]
    lines += [f"  protect {instance}" for instance in data["protect"]]
    lines += [f"  remove {r['instance_id']} ({r['reason']})" for r in data["removals"]]
    if data["instance_types"]:
        lines.append(f"  instance types {', '.join(data['instance_types'])}")
    if data["warm_pool"]:
        lines.append(f"  warm pool {data['warm_pool']}")
    return "\n".join(lines)
