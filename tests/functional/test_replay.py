"""`runner-scaler replay`: recorded deliveries through the real route on in-process moto, one summary."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from chalicelib.cli.main import app

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
