"""demo.log lines carry their context: a "reconcile failed" line names the pool and the error, as the
scaler's structured log (powertools keys passed as `extra`) does in CloudWatch."""

from __future__ import annotations

import logging
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

from toolkit.devtools.demo import AcceleratedClock, platform_quiet


def test_a_reconcile_failed_line_in_demo_log_carries_the_pool_and_the_error(tmp_path: Path) -> None:
    # GIVEN the demo's logging, and the reconciler logging a failure the way chalicelib/reconcile.py does
    log_path = tmp_path / "demo.log"
    clock = AcceleratedClock(datetime(2026, 11, 23, tzinfo=UTC), 60.0, monotonic=lambda: 0.0)
    notes: deque[str] = deque(maxlen=10)
    with platform_quiet(notes, log_path, clock):
        logging.getLogger("chalicelib.reconcile").warning(
            "reconcile failed",
            extra={"pool": "linux", "error": "autoscaling.SetDesiredCapacity failed: Throttling"},
        )
    # THEN the line in demo.log says which pool failed and why, not just "reconcile failed"
    [line] = [
        text for text in log_path.read_text(encoding="utf-8").splitlines() if "reconcile failed" in text
    ]
    assert line.endswith(
        "reconcile failed pool=linux error=autoscaling.SetDesiredCapacity failed: Throttling"
    )
