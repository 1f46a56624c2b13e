"""`runner-scaler`: the operator's command line. Each command parses options and calls one library function.

May import typer, rich and anything in chalicelib; nothing in chalicelib imports this package.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from chalicelib.config import Config, deployment_problems, format_duration, load_config_file
from chalicelib.errors import ConfigError
from toolkit.cli.certs import certs_app
from toolkit.cli.consoles import CliConsole
from toolkit.cli.demo import demo as demo_command
from toolkit.cli.hooks import hooks_app
from toolkit.cli.plan import plan as plan_command
from toolkit.cli.replay import replay_command
from toolkit.cli.simulate import simulate as simulate_command
from toolkit.cli.status import status as status_command
from toolkit.cli.trace import trace_app
from toolkit.migrate import migrate as migrate_text

#: What `migrate` reads; its help names them, escaped: typer renders help as rich markup when rich is
#: installed (typer `typer/core.py` DEFAULT_MARKUP_MODE "rich"; `typer/rich_utils.py` `Text.from_markup`).
MIGRATED_SECTIONS = "[runners.machine] or [runners.autoscaler]"

app = typer.Typer(
    name="runner-scaler",
    help="Serverless autoscaler for GitLab CI runner fleets on AWS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = CliConsole()
err = CliConsole(stderr=True)


def _version() -> str:
    """The installed distribution's version (pyproject.toml), or "unknown" when run from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("runner-scaler")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        console.print(f"runner-scaler {_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Serverless autoscaler for GitLab CI runner fleets on AWS."""


@app.command("validate-config")
def validate_config(file: Annotated[Path, typer.Argument(help="runner-scaler TOML config")]) -> None:
    """Print the resolved config (defaults filled in), or every error with its field path and fix (exit 1).

    Beyond the file's form it checks what would fail once deployed: no API token secret, group paths where ids
    are needed, a pool without instance types, a pool whose tags an earlier pool shadows.
    """
    try:
        config = load_config_file(file)
    except ConfigError as exc:
        err.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    problems = deployment_problems(config)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        message = f"{file} is well-formed but would not work once deployed:\n{lines}"
        err.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print_json(json.dumps(resolved(config)))


def resolved(config: Config) -> dict[str, object]:
    """The config as plain JSON, durations spelled as Go does."""
    data = config.model_dump(mode="python")

    def convert(value: object) -> object:
        from datetime import timedelta

        if isinstance(value, timedelta):
            return format_duration(value)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        return value

    result = convert(data)
    assert isinstance(result, dict)
    return result


@app.command()
def migrate(
    file: Annotated[
        Path,
        # Typer renders help as rich markup: unescaped, `[runners.machine]` would be read as a style tag.
        typer.Argument(help=escape(f"gitlab-runner config.toml with {MIGRATED_SECTIONS}")),
    ],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write here instead of stdout")] = None,
    gitlab_url: Annotated[str | None, typer.Option(help="GitLab URL, when config.toml's differs")] = None,
) -> None:
    """Write the runner-scaler equivalent of a gitlab-runner config.toml; comments name what was dropped."""
    try:
        text = migrate_text(file.read_text(encoding="utf-8"), str(file), gitlab_url)
    except OSError as exc:
        err.print(f"cannot read {file}: {exc.strerror}", style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    except ConfigError as exc:
        err.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        err.print(f"wrote {out}", markup=False, highlight=False)


app.command("status")(status_command)
app.command("plan")(plan_command)
app.command("replay")(replay_command)
app.add_typer(hooks_app, name="hooks")
app.command("demo")(demo_command)
app.add_typer(trace_app, name="trace")
app.command("simulate")(simulate_command)
app.add_typer(certs_app, name="certs")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
