"""`trace export` against a GitLab it cannot reach says so, naming the URL, within --timeout; on a long
export it prints its progress. The silent GitLab is a real socket that accepts and never answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

import toolkit.cli.trace as trace_cli
from tests.gitlab_fixtures import T0, Clock
from toolkit.cli.main import app
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec

runner = CliRunner()


@pytest.fixture
def silent_gitlab() -> Iterator[str]:
    """A TCP listener that completes the handshake (the kernel's backlog) and never sends a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def export(url: str, tmp_path: Path, *extra: str) -> tuple[int, str]:
    args = ["trace", "export", "--project", "7", "--gitlab-url", url, "--since", "2026-11-01", "--until"]
    result = runner.invoke(
        app,
        [*args, "2026-11-02", "--out", str(tmp_path / "t.csv"), *extra],
        env={"GITLAB_TOKEN": "glpat-test"},
    )
    return result.exit_code, " ".join(result.output.split())


def test_a_gitlab_that_never_answers_is_named_after_the_timeout(silent_gitlab: str, tmp_path: Path) -> None:
    code, output = export(silent_gitlab, tmp_path, "--timeout", "0.5")
    assert code == 1
    assert f"GitLab at {silent_gitlab}: no answer within 0.5 s (--timeout)" in output
    assert "Traceback" not in output and "glpat-test" not in output


def test_a_gitlab_that_refuses_the_connection_is_named(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    code, output = export(closed, tmp_path, "--timeout", "2")
    assert code == 1 and f"GitLab at {closed}: cannot connect; check the URL" in output


def test_a_long_export_prints_its_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN five finished jobs, and a progress line every two jobs
    monkeypatch.setattr(trace_cli, "PROGRESS_EVERY", 2)
    clock = Clock(T0)
    with FakeGitLab(now=clock) as fake:
        project = fake.create_project("acme/app")
        runner_id, _ = fake.register_runner(tag_list=("linux",), run_untagged=True)
        for n in range(5):
            fake.create_pipeline(project, [JobSpec(f"build {n}", "build", ("linux",))])
            clock.advance(60)
            job = fake.request_job(runner_id)
            assert job is not None
            clock.advance(30)
            fake.finish_job(job, "success")
        # WHEN the day is exported
        since = (T0 - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        args = ["trace", "export", "--project", str(project), "--gitlab-url", fake.url, "--since", since]
        result = runner.invoke(
            app, [*args, "--out", str(tmp_path / "t.csv")], env={"GITLAB_TOKEN": fake.token}
        )
    # THEN it says how far it got, twice, before the summary
    assert result.exit_code == 0, result.output
    assert result.output.count("read 2 jobs, back to ") + result.output.count("read 4 jobs, back to ") == 2
    assert "wrote " in result.output
