"""`runner-scaler replay`: recorded deliveries through the real route on in-process moto, one summary."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.cli.main import app
from toolkit.samples import BuildSample, job_hook_payload, pipeline_hook_payload

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KEYS = {"events", "accepted", "duplicates", "ignored", "rejected", "jobs", "unroutable", "pools"}


def test_replay_summarises_every_delivery(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    result = CliRunner().invoke(
        app,
        [
            "replay",
            str(FIXTURES / "replay.jsonl"),
            "--config",
            str(FIXTURES / "scaler.toml"),
            "--webhook-token",
            "replay-token",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert set(summary) == KEYS
    # 40 lines: 36 job events, one resend, one bad token, one truncated body, one push hook
    assert (summary["events"], summary["accepted"], summary["duplicates"], summary["ignored"]) == (
        40,
        36,
        1,
        1,
    )
    assert summary["rejected"] == {"bad_token": 1, "malformed": 1}
    # shuffled order, yet every job ends in its last status: 6 ran to success, 6 still wait
    assert summary["jobs"] == {"success": 6, "pending": 6}
    assert summary["pools"]["linux"] == {"pending": 6, "running": 0, "desired": 5}  # max_instances 5


def test_unreadable_input_exits_2(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["replay", str(tmp_path / "missing.jsonl")]).exit_code == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1, 2]\n")
    assert runner.invoke(app, ["replay", str(bad)]).exit_code == 2


#: Every status GitLab can send today: gitlabhq `app/models/concerns/ci/has_status.rb` (AVAILABLE_STATUSES).
GITLAB_STATUSES = (
    "created",
    "waiting_for_resource",
    "preparing",
    "waiting_for_callback",
    "pending",
    "running",
    "success",
    "failed",
    "canceling",
    "canceled",
    "skipped",
    "manual",
    "scheduled",
)


def test_replay_accepts_every_status_gitlab_can_send(tmp_path: Path) -> None:
    # GIVEN one job hook and one pipeline hook per GitLab status, and one of a status GitLab may add later
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    headers = {"X-Gitlab-Token": "replay-token"}
    lines = []
    for n, status in enumerate((*GITLAB_STATUSES, "some_future_status")):
        job = job_hook_payload(100 + n, "created", project_id=7, pipeline_id=9, stage="s", name="j", now=now)
        build = BuildSample(200 + n, "created", "s", "j")
        pipeline = pipeline_hook_payload(300 + n, "created", project_id=7, builds=[build], now=now)
        job["build_status"] = status
        pipeline["object_attributes"]["status"] = pipeline["builds"][0]["status"] = status
        lines.append(
            {"headers": headers | {"X-Gitlab-Event": "Job Hook"}, "body": job, "tag_list": ["docker"]}
        )
        lines.append({"headers": headers | {"X-Gitlab-Event": "Pipeline Hook"}, "body": pipeline})
    deliveries = tmp_path / "statuses.jsonl"
    deliveries.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "summary.json"
    # WHEN they are replayed
    args = ["replay", str(deliveries), "--config", str(FIXTURES / "scaler.toml"), "--json", str(out)]
    result = CliRunner().invoke(app, args)
    # THEN none is rejected, and every job is stored with the status GitLab sent
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["rejected"] == {} and summary["accepted"] == 2 * (len(GITLAB_STATUSES) + 1)
    assert summary["jobs"] == {status: 1 for status in (*GITLAB_STATUSES, "some_future_status")}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"headers": [["X-Gitlab-Event", "Job Hook"]], "body": {}}', '"headers" must be an object'),
        (b'{"headers": {"X-Gitlab-Event": "Job Hook"}, "body": {"name": "caf\xe9"}}', "byte 0xe9 at column"),
        (b'["headers"]', "a JSON list, not an object"),
        (b'{"headers": {', "not JSON (Expecting"),
    ],
)
def test_a_bad_delivery_line_is_named_with_its_fix_never_python_internals(
    tmp_path: Path, line: bytes, expected: str
) -> None:
    # GIVEN a deliveries file whose second line is malformed
    file = tmp_path / "deliveries.jsonl"
    file.write_bytes((FIXTURES / "replay.jsonl").read_bytes().splitlines()[0] + b"\n" + line + b"\n")
    # WHEN it is replayed
    result = CliRunner().invoke(app, ["replay", str(file), "--config", str(FIXTURES / "scaler.toml")])
    # THEN the CLI exits 2 naming the file:line and what a line must be, with no traceback or internals
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{file}:2:" in output and expected in output
    assert "Traceback" not in output and "dictionary update sequence" not in output
