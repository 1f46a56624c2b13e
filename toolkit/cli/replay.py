"""`runner-scaler replay`: post recorded GitLab deliveries through the real route against in-process moto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from chalicelib.errors import ConfigError
from toolkit.cli.consoles import CliConsole

err = CliConsole(stderr=True)


def replay_command(
    file: Annotated[Path, typer.Argument(help='JSON lines: {"headers": {...}, "body": {...} or "raw"}')],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="runner-scaler config (default: example)")
    ] = None,
    webhook_token: Annotated[
        list[str] | None, typer.Option("--webhook-token", help="accepted X-Gitlab-Token values (repeatable)")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the summary here")] = None,
) -> None:
    """Replay recorded webhook deliveries against a local, in-memory stand-in of AWS; print a JSON summary.

    Each line is one delivery as GitLab's webhook "Recent events" view shows it: {"headers": {...}, "body":
    {...}}. Nothing reaches AWS or GitLab. Exit 2 names the file and line of an unreadable input.
    """
    from toolkit.devtools.replay import DEFAULT_TOKENS, ReplayInputError, load, read_deliveries, replay

    try:
        cfg = load(config)
        deliveries = read_deliveries(file)
    except (ConfigError, ReplayInputError) as exc:
        err.print(str(exc), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    report = replay(deliveries, cfg, tuple(webhook_token or DEFAULT_TOKENS))
    text = json.dumps(report.summary(), indent=2, sort_keys=True)
    print(text)
    if json_out is not None:
        json_out.write_text(text + "\n", encoding="utf-8")
