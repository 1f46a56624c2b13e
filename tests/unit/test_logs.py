"""Lambda logs are JSON with correlation keys; outside Lambda logging is left alone."""

from __future__ import annotations

import io
import json
import logging

from chalicelib import logs


def test_lambda_logs_are_json_with_correlation_keys() -> None:
    stream = io.StringIO()
    parent = logging.getLogger("chalicelib")
    saved = (list(parent.handlers), parent.level, parent.propagate)
    try:
        assert logs.configure({"LOG_LEVEL": "INFO"}, stream)
        logging.getLogger("chalicelib.reconcile").info("scaled", extra={"pool": "linux", "job_id": 7})
        line = json.loads(stream.getvalue().splitlines()[-1])
        assert (line["message"], line["pool"], line["job_id"], line["service"]) == (
            "scaled",
            "linux",
            7,
            "runner-scaler",
        )
    finally:
        parent.handlers[:] = saved[0]
        parent.setLevel(saved[1])
        parent.propagate = saved[2]


def test_outside_lambda_nothing_changes() -> None:
    assert not logs.configure({})
