"""`runner-scaler hooks`: install, repair and check the project webhooks that bring the scaler its job events.

Each command parses options, reads tokens from environment variables or files (never from argv), calls one
function of `chalicelib.hook_sync` and prints a rich table or JSON. May import typer, rich and chalicelib;
python-gitlab is imported only when a command talks to GitLab.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from chalicelib.config import Config, load_config_file
from chalicelib.errors import ConfigError
from chalicelib.hook_sync import (
    HookAction,
    HookHealth,
    HookOutcome,
    HookReport,
    HookStep,
    OutcomeStatus,
    check_hooks,
    sync_hooks,
)
from toolkit.cli.consoles import CliConsole

if TYPE_CHECKING:
    from chalicelib.gitlab import GitLabClient

DEFAULT_TOKEN_ENV = "GITLAB_TOKEN"
DEFAULT_WEBHOOK_TOKEN_ENV = "RUNNER_SCALER_WEBHOOK_TOKEN"

#: Problems printed under the table; the JSON report keeps them all.
MAX_PROBLEMS_SHOWN = 10

_TOKENS = (
    "Tokens are read from environment variables or files, never from the command line: a value typed there "
    "stays in your shell history and shows in `ps`. For example `read -rs GITLAB_TOKEN; export GITLAB_TOKEN`."
)

hooks_app = typer.Typer(
    name="hooks",
    help=(
        "Project webhooks that send the scaler GitLab's Job and Pipeline events (system hooks carry neither; "
        "group hooks need Premium). " + _TOKENS
    ),
    no_args_is_help=True,
)

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", help="runner-scaler TOML config: gitlab.url, gitlab.projects, gitlab.groups"
    ),
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="the scaler's webhook URL (https://.../webhooks/gitlab); default: gitlab.webhook_url",
    ),
]
GitLabUrlOption = Annotated[
    str | None, typer.Option("--gitlab-url", help="GitLab root URL, when not the config's gitlab.url")
]
TokenEnvOption = Annotated[
    str,
    typer.Option(
        "--token-env",
        help="NAME of the variable holding the GitLab API token (api scope; admin, or owner of the groups)",
    ),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option("--token-file", help="file holding the GitLab API token (wins over --token-env)"),
]
CaBundleOption = Annotated[
    Path | None, typer.Option("--ca-bundle", help="PEM bundle to verify a self-hosted GitLab's certificate")
]
JsonOption = Annotated[
    Path | None, typer.Option("--json", help="also write the report as JSON to this file ('-': stdout only)")
]


SYNC_HELP = (
    "Ensure every configured project (gitlab.projects, and every project of gitlab.groups with subgroups) "
    "has our webhook with job and pipeline events, our URL and our secret token: create it or fix it, never "
    "a duplicate; other hooks are left alone; a hook GitLab auto-disabled is re-enabled with a test event. "
    "Exit 1 when a project failed. " + _TOKENS
)


@hooks_app.command("sync", help=SYNC_HELP)
def sync(
    config: ConfigOption,
    url: UrlOption = None,
    gitlab_url: GitLabUrlOption = None,
    token_env: TokenEnvOption = DEFAULT_TOKEN_ENV,
    token_file: TokenFileOption = None,
    webhook_token_env: Annotated[
        str,
        typer.Option(
            "--webhook-token-env",
            help="NAME of the variable holding the webhook secret token (one the scaler accepts)",
        ),
    ] = DEFAULT_WEBHOOK_TOKEN_ENV,
    webhook_token_file: Annotated[
        Path | None, typer.Option("--webhook-token-file", help="file holding the webhook secret token")
    ] = None,
    rotate_token: Annotated[
        bool,
        typer.Option(
            "--rotate-token",
            help="re-send the webhook token to every hook of ours (GitLab never shows a hook's token, "
            "so a wrong one cannot be detected; use after rotating the token)",
        ),
    ] = False,
    previous_url: Annotated[
        list[str] | None,
        typer.Option(
            "--previous-url",
            help="a URL the scaler had before (repeatable): hooks there are moved to --url, not duplicated",
        ),
    ] = None,
    ca_bundle: CaBundleOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show what would change; change nothing")
    ] = False,
    json_out: JsonOption = None,
) -> None:
    """Install or repair our hook everywhere (help in SYNC_HELP, which names the token rules)."""
    cfg = _load(config, gitlab_url)
    hook_url = _hook_url(url, cfg)
    api = _client(cfg, token_env, token_file, ca_bundle)
    webhook_token = read_token(webhook_token_env, webhook_token_file, what="webhook token")
    if webhook_token is None and not dry_run:
        raise typer.BadParameter(
            f"no webhook token: export {webhook_token_env} (a token the scaler's webhook secret accepts) "
            "or pass --webhook-token-file; hooks cannot be created or fixed without it",
            param_hint="--webhook-token-env",
        )
    report = sync_hooks(
        api,
        cfg,
        hook_url,
        webhook_token,
        dry_run=dry_run,
        rotate_token=rotate_token,
        previous_urls=tuple(previous_url or ()),
    )
    _output(report.as_dict(), json_out, lambda console: print_report(console, report))
    raise typer.Exit(0 if report.ok else 1)


CHECK_HELP = (
    "Print the health of our hook in every configured project: ok, missing, wrong fields, or disabled by "
    "GitLab (with its alert_status and disabled_until). Changes nothing unless --reenable, which sends a "
    "test event to each disabled hook as the tick does. Exit 1 when unhealthy. " + _TOKENS
)


@hooks_app.command("check", help=CHECK_HELP)
def check(
    config: ConfigOption,
    url: UrlOption = None,
    gitlab_url: GitLabUrlOption = None,
    token_env: TokenEnvOption = DEFAULT_TOKEN_ENV,
    token_file: TokenFileOption = None,
    reenable: Annotated[
        bool,
        typer.Option(
            "--reenable", help="re-enable hooks GitLab disabled (a test event each), as the tick does"
        ),
    ] = False,
    ca_bundle: CaBundleOption = None,
    json_out: JsonOption = None,
) -> None:
    """Look at our hooks as the tick does (help in CHECK_HELP)."""
    cfg = _load(config, gitlab_url)
    hook_url = _hook_url(url, cfg)
    cfg = cfg.model_copy(update={"gitlab": cfg.gitlab.model_copy(update={"webhook_url": hook_url})})
    api = _client(cfg, token_env, token_file, ca_bundle)
    health = check_hooks(
        api, cfg, None, datetime.now(UTC), reenable=reenable, max_projects=0, emit=_no_metric
    )
    _output(health.as_dict(), json_out, lambda console: print_health(console, health))
    raise typer.Exit(0 if health.healthy else 1)


# --------------------------------------------------------------------------------------------------
# Inputs


def read_token(
    env_name: str, file: Path | None, *, what: str, environ: Mapping[str, str] | None = None
) -> str | None:
    """A token from `file` when given, else from the variable `env_name`; None when neither has one.

    Only a variable's NAME or a file's PATH ever appears on the command line, so no token reaches shell
    history, `ps` or a CI log that echoes commands.
    """
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read the {what} file {file}: {exc.strerror}") from None
        if not text:
            raise typer.BadParameter(f"the {what} file {file} is empty")
        return text
    value = (os.environ if environ is None else environ).get(env_name, "").strip()
    return value or None


def _load(path: Path, gitlab_url: str | None) -> Config:
    try:
        cfg = load_config_file(path)
    except ConfigError as exc:
        CliConsole(stderr=True).print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None
    if gitlab_url is None:
        return cfg
    if not _is_http_url(gitlab_url):
        raise typer.BadParameter(f"{gitlab_url!r} is not an http(s) URL", param_hint="--gitlab-url")
    return cfg.model_copy(update={"gitlab": cfg.gitlab.model_copy(update={"url": gitlab_url.rstrip("/")})})


def _hook_url(url: str | None, cfg: Config) -> str:
    chosen = url or cfg.gitlab.webhook_url
    if not chosen:
        raise typer.BadParameter(
            "give the scaler's webhook URL (https://.../webhooks/gitlab) with --url or in gitlab.webhook_url",
            param_hint="--url",
        )
    if not _is_http_url(chosen):
        raise typer.BadParameter(f"{chosen!r} is not an http(s) URL with a host", param_hint="--url")
    return chosen


def _is_http_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _client(cfg: Config, token_env: str, token_file: Path | None, ca_bundle: Path | None) -> GitLabClient:
    from chalicelib.gitlab import GitLabClient

    _quiet_logs()

    token = read_token(token_env, token_file, what="GitLab API token")
    if token is None:
        raise typer.BadParameter(
            f"no GitLab API token: export {token_env} (api scope, an admin's or the groups' owner's) "
            "or pass --token-file",
            param_hint="--token-env",
        )
    return GitLabClient(cfg.gitlab.url, token, ca_bundle_path=str(ca_bundle) if ca_bundle else None)


def _quiet_logs() -> None:
    """The table is the output: log lines of the use case (meant for CloudWatch) stay out of the terminal.

    Python prints warnings of loggers without any handler to stderr ("last resort"); a NullHandler on our
    package stops that and still lets the lines propagate to handlers a caller installed (pytest's caplog).
    """
    package = logging.getLogger("chalicelib")
    if not any(isinstance(h, logging.NullHandler) for h in package.handlers):
        package.addHandler(logging.NullHandler())


def _no_metric(name: str, value: float) -> None:
    """The CLI prints no EMF lines: metrics are the tick's business."""
    del name, value


# --------------------------------------------------------------------------------------------------
# Output


def _output(data: dict[str, Any], json_out: Path | None, render: Callable[[Console], None]) -> None:
    """JSON to stdout alone (`--json -`), or the rich table (and the JSON file when asked)."""
    if json_out is not None and str(json_out) == "-":
        print(json.dumps(data, indent=2))
        return
    render(CliConsole())
    if json_out is not None:
        json_out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        CliConsole(stderr=True).print(f"wrote {json_out}", markup=False, highlight=False)


def _project_cell(outcome: HookOutcome) -> str:
    project = outcome.plan.project
    return f"{project.path} ({project.id})" if project.path else str(project.id)


def _detail(outcome: HookOutcome) -> str:
    item = outcome.plan
    notes = [outcome.error] if outcome.error else []
    if item.reenable:
        notes.append(item.disabled_reason)
    if item.duplicates:
        ids = ", ".join(str(i) for i in item.duplicates)
        notes.append(f"duplicate hooks of ours: {ids} (delete them in Settings > Webhooks)")
    return "; ".join(notes)


_RESULT_STYLE = {
    OutcomeStatus.UNCHANGED: "dim",
    OutcomeStatus.PLANNED: "yellow",
    OutcomeStatus.CHANGED: "green",
    OutcomeStatus.FAILED: "red",
}


def print_report(console: Console, report: HookReport) -> None:
    """The sync as a table (one row per project) with a one-line summary and the problems."""
    title = f"webhooks to {escape(report.url)}" + (" (dry run: nothing changed)" if report.dry_run else "")
    table = Table(title=title)
    for column in ("project", "hook", "action", "result", "detail"):
        table.add_column(column, overflow="fold")
    for outcome in report.outcomes:
        status = outcome.status
        result = "would change" if report.dry_run and status is OutcomeStatus.PLANNED else status.value
        table.add_row(
            Text(_project_cell(outcome)),
            str(outcome.hook_id or "-"),
            Text(outcome.plan.describe()),
            Text(result, style=_RESULT_STYLE[status]),
            Text(_detail(outcome)),
        )
    console.print(table)
    summary = report.summary()
    verb = "would " if report.dry_run else ""
    console.print(
        f"{verb}create {summary[HookAction.CREATE]}, {verb}update {summary[HookAction.UPDATE]}, "
        f"{verb}re-enable {summary[HookAction.REENABLE]}, ok {summary[HookAction.OK]}, "
        f"failed {summary['failed']}",
        highlight=False,
    )
    _print_problems(console, report.problems)


def health_label(outcome: HookOutcome) -> str:
    """ok, missing, wrong: <fields>, disabled, re-enabled, or a combination."""
    item = outcome.plan
    if item.action is HookAction.OK:
        return "ok"
    labels = []
    if HookStep.CREATE in outcome.left:
        labels.append("missing")
    if HookStep.CREATE in outcome.done:
        labels.append("created")
    if HookStep.UPDATE in outcome.left:
        labels.append(f"wrong: {', '.join(item.changes)}")
    if HookStep.UPDATE in outcome.done:
        labels.append("fixed")
    if item.reenable:
        labels.append("re-enabled" if HookStep.REENABLE in outcome.done else "disabled")
    return "; ".join(labels)


def print_health(console: Console, health: HookHealth) -> None:
    """The check as a table (one row per project), a verdict, and the problems."""
    if health.skipped:
        console.print(f"[yellow]hook check skipped:[/] {escape(health.skipped)}")
        return
    table = Table(title=f"webhooks to {escape(health.url)}")
    for column in ("project", "hook", "health", "detail"):
        table.add_column(column, overflow="fold")
    for outcome in health.outcomes:
        label = health_label(outcome)
        style = "green" if label in ("ok", "re-enabled") else "red"
        table.add_row(
            Text(_project_cell(outcome)),
            str(outcome.hook_id or "-"),
            Text(label, style=style),
            Text(_detail(outcome)),
        )
    console.print(table)
    verdict = "[green]healthy[/]" if health.healthy else f"[red]{health.unhealthy} unhealthy[/]"
    console.print(
        f"{verdict}: {len(health.outcomes)} projects, {len(health.reenabled)} re-enabled, "
        f"{len(health.disabled)} disabled, {len(health.missing)} missing, {len(health.drifted)} wrong"
    )
    _print_problems(console, health.problems)


def _print_problems(console: Console, problems: tuple[str, ...]) -> None:
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        console.print(Text.assemble(("problem: ", "red"), problem))
    if len(problems) > MAX_PROBLEMS_SHOWN:
        console.print(f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more problems (see --json)")
