"""`runner-scaler trace export`: a project's finished CI jobs as a simulator trace, to tune on real demand.

The simulator replays `pipeline_id,created_s,stage,name,tags,duration_s` (sim/traces.py); this command reads
the same facts from GitLab's Jobs API. May import typer, rich, chalicelib and sim.traces; python-gitlab is
imported (through chalicelib.gitlab) only when the command runs, so other commands start fast.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from chalicelib.config import load_config_file
from chalicelib.errors import ConfigError, GitLabError
from sim.traces import TraceJob, write_trace
from toolkit.cli.consoles import CliConsole
from toolkit.cli.hooks import DEFAULT_TOKEN_ENV, read_token

if TYPE_CHECKING:
    from chalicelib.gitlab import GitLabClient, JobInfo

err = CliConsole(stderr=True)

#: Job statuses of jobs that ended; only those with a start time ever held a runner.
FINISHED = ("success", "failed", "canceled")

trace_app = typer.Typer(
    name="trace",
    help=(
        "Job traces for `runner-scaler simulate`, read from GitLab. The API token is read from an "
        "environment variable or a file, never from the command line (read_api scope is enough)."
    ),
    no_args_is_help=True,
)


@dataclass(frozen=True)
class ExportedTrace:
    """The rows to write, the jobs left out because they never started, and the wall-clock time of second 0.

    `origin` matters to the simulator: policies' periods are read in wall-clock time, so
    `runner-scaler simulate --start <origin>` places the trace where it happened.
    """

    rows: list[TraceJob]
    never_started: int
    origin: datetime | None


def parse_when(text: str, option: str) -> datetime:
    """`2026-11-02` or `2026-11-02T08:00:00Z` (ISO 8601) as an aware UTC datetime; no zone means UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a date; write 2026-11-02 or 2026-11-02T08:00:00Z", param_hint=option
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def finished_jobs(client: GitLabClient, project_id: int, since: datetime) -> Iterator[JobInfo]:
    """A project's finished jobs, newest first, stopping at the first job created before `since`.

    `GET /projects/:id/jobs` lists jobs by id, newest first, and GitLab creates a job with an id larger than
    every earlier one; reading page by page and stopping there keeps a short window cheap on a project
    with years of history. `GitLabClient` has no lazy listing (its `list_jobs` reads every page), so this
    uses the adapter's python-gitlab client (`session()`) and its own parser (`job_info`).
    """
    from chalicelib.gitlab import MAX_PER_PAGE, job_info

    path = f"/projects/{int(project_id)}/jobs"
    query = {"scope[]": list(FINISHED), "per_page": MAX_PER_PAGE}
    for item in client.session().http_list(path, query_data=query, iterator=True):
        job = job_info(dict(item), project_id=project_id)
        if job.created_at is not None and job.created_at < since:
            return
        yield job


def jobs_to_trace(jobs: Iterable[JobInfo], since: datetime, until: datetime) -> ExportedTrace:
    """The trace rows of the pipelines created in [since, until), and how many jobs never started.

    A pipeline's creation is its earliest job's `created_at` (GitLab creates a pipeline's jobs with it);
    `created_s` counts seconds from the earliest pipeline exported. `stage` is the stage's index in its
    pipeline: GitLab creates jobs stage by stage, so stages are ordered by their lowest job id. A job that
    never started (canceled while pending) never held a runner and is left out; a retried job is a row of
    its own, since each attempt held a machine. `duration_s` is `finished_at - started_at`.
    """
    by_pipeline: dict[int, list[JobInfo]] = {}
    for job in jobs:
        if job.pipeline_id is not None and job.created_at is not None:
            by_pipeline.setdefault(job.pipeline_id, []).append(job)
    created = {p: min(j.created_at for j in js if j.created_at) for p, js in by_pipeline.items()}
    chosen = sorted((p for p, at in created.items() if since <= at < until), key=lambda p: (created[p], p))
    if not chosen:
        return ExportedTrace([], 0, None)
    origin = created[chosen[0]]
    rows: list[TraceJob] = []
    never_started = 0
    for pipeline_id in chosen:
        jobs_of = by_pipeline[pipeline_id]
        stage_index = _stage_order(jobs_of)
        offset = (created[pipeline_id] - origin).total_seconds()
        for job in sorted(jobs_of, key=lambda j: j.id):
            if job.started_at is None or job.finished_at is None:
                never_started += 1
                continue
            rows.append(
                TraceJob(
                    pipeline_id=pipeline_id,
                    created_s=round(offset, 1),
                    stage=stage_index[job.stage],
                    name=_one_line(job.name),
                    tags=tuple(_tag(t) for t in job.tag_list or ()),
                    duration_s=round(max(0.0, (job.finished_at - job.started_at).total_seconds()), 1),
                )
            )
    return ExportedTrace(rows, never_started, origin)


def _stage_order(jobs: Iterable[JobInfo]) -> dict[str, int]:
    """Stage name -> index in the pipeline, ordered by the lowest job id of each stage."""
    first: dict[str, int] = {}
    for job in jobs:
        first[job.stage] = min(first.get(job.stage, job.id), job.id)
    return {stage: index for index, stage in enumerate(sorted(first, key=lambda s: (first[s], s)))}


def _tag(tag: str) -> str:
    """Trace tags are space-separated: a tag with inner spaces keeps its words joined by underscores."""
    return re.sub(r"\s+", "_", tag.strip())


def _one_line(name: str) -> str:
    return " ".join(name.split())


@trace_app.command("export")
def export(
    project: Annotated[int, typer.Option("--project", help="numeric project id (Settings > General)")],
    since: Annotated[str, typer.Option("--since", help="first pipeline creation to keep, UTC: 2026-11-02")],
    out: Annotated[Path, typer.Option("--out", "-o", help="trace CSV to write")],
    until: Annotated[
        str | None, typer.Option("--until", help="keep pipelines created before this (UTC); default: now")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="runner-scaler TOML config: its gitlab.url")
    ] = None,
    gitlab_url: Annotated[
        str | None, typer.Option("--gitlab-url", help="GitLab root URL (instead of --config)")
    ] = None,
    token_env: Annotated[
        str, typer.Option("--token-env", help="NAME of the variable holding a GitLab API token (read_api)")
    ] = DEFAULT_TOKEN_ENV,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="file holding the GitLab API token")
    ] = None,
    ca_bundle: Annotated[
        Path | None,
        typer.Option("--ca-bundle", help="PEM bundle to verify a self-hosted GitLab's certificate"),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="seconds to wait for GitLab to connect and answer")
    ] = 10.0,
) -> None:
    """Write the project's jobs of pipelines created in [--since, --until) as a simulator trace CSV.

    Reads newest first and prints its progress every PROGRESS_EVERY jobs; a GitLab that does not answer
    within --timeout is named, with what to check, after one try (no retries: a wrong URL fails fast).
    """
    start = parse_when(since, "--since")
    end = parse_when(until, "--until") if until else datetime.now(UTC)
    if end <= start:
        raise typer.BadParameter(f"--until ({end:%Y-%m-%d %H:%M}) is not after --since", param_hint="--until")
    url = _gitlab_url(config, gitlab_url)
    client = _client(url, token_env, token_file, ca_bundle, timeout)
    import gitlab.exceptions
    import requests

    try:
        trace = jobs_to_trace(_with_progress(finished_jobs(client, project, start)), start, end)
    except GitLabError as exc:
        err.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        err.print(_unreachable(url, exc, timeout), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except (gitlab.exceptions.GitlabError, requests.RequestException) as exc:
        # One line that says what to check, never a traceback carrying request headers.
        err.print(_gitlab_failure(exc, project), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    write_trace(out, trace.rows)
    pipelines = len({r.pipeline_id for r in trace.rows})
    err.print(
        f"wrote {out}: {len(trace.rows)} jobs of {pipelines} pipelines"
        + (f" ({trace.never_started} jobs that never started left out)" if trace.never_started else ""),
        markup=False,
        highlight=False,
    )
    if trace.origin is not None:
        origin = trace.origin.isoformat(timespec="seconds")
        err.print(
            f"second 0 is {origin}: replay with `runner-scaler simulate --start {origin}`", highlight=False
        )
    if not trace.rows:
        err.print(f"no finished job of project {project} in that window", style="yellow", markup=False)


def _gitlab_url(config: Path | None, gitlab_url: str | None) -> str:
    if gitlab_url:
        if not re.match(r"^https?://[^/]", gitlab_url):
            raise typer.BadParameter(f"{gitlab_url!r} is not an http(s) URL", param_hint="--gitlab-url")
        return gitlab_url.rstrip("/")
    if config is None:
        raise typer.BadParameter(
            "give --gitlab-url, or --config whose gitlab.url is used", param_hint="--config"
        )
    try:
        return load_config_file(config).gitlab.url
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from None


#: Jobs read between two progress lines.
PROGRESS_EVERY = 500


def _with_progress(jobs: Iterator[JobInfo]) -> Iterator[JobInfo]:
    """The jobs, unchanged, with a progress line on stderr every PROGRESS_EVERY of them (newest first,
    so the date shown walks back towards --since)."""
    for count, job in enumerate(jobs, 1):
        if count % PROGRESS_EVERY == 0:
            created = job.created_at.strftime("%Y-%m-%d %H:%M") if job.created_at else "?"
            err.print(f"read {count} jobs, back to {created} UTC", highlight=False)
        yield job


def _unreachable(url: str, exc: Exception, timeout: float) -> str:
    """A connection failure as one line naming the URL and what to check (never the request's headers)."""
    import requests

    if isinstance(exc, requests.Timeout):
        what = f"no answer within {timeout:g} s (--timeout)"
    elif isinstance(exc, requests.exceptions.SSLError):
        what = "its TLS certificate is not trusted; pass --ca-bundle with its CA"
    else:
        what = "cannot connect"
    return f"GitLab at {url}: {what}; check the URL, and the VPN or proxy between here and GitLab"


def _client(
    url: str, token_env: str, token_file: Path | None, ca_bundle: Path | None, timeout: float = 10.0
) -> GitLabClient:
    from chalicelib.gitlab import GitLabClient

    # The adapter's log lines are meant for CloudWatch; the summary line is this command's output.
    logging.getLogger("chalicelib").addHandler(logging.NullHandler())
    token = read_token(token_env, token_file, what="GitLab API token")
    if token is None:
        raise typer.BadParameter(
            f"no GitLab API token: export {token_env} (read_api scope) or pass --token-file",
            param_hint="--token-env",
        )
    return GitLabClient(
        url,
        token,
        ca_bundle_path=str(ca_bundle) if ca_bundle else None,
        timeout=timeout,
        # A CLI run fails fast and says why; python-gitlab would otherwise retry a dead URL's timeouts.
        retry_transient_errors=False,
    )


def _gitlab_failure(exc: Exception, project: int) -> str:
    """A python-gitlab or requests error as one line that says what to check."""
    status = int(getattr(exc, "response_code", 0) or 0)
    hints = {
        401: "the API token is wrong, expired or revoked",
        403: "the token's user cannot read this project's jobs (read_api scope, Reporter role or more)",
        404: f"project {project} does not exist or the token's user cannot see it",
    }
    detail = hints.get(status, type(exc).__name__)
    return f"GitLab jobs of project {project}: {status or 'no answer'}: {detail}"
