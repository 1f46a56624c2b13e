"""Structured JSON logs for Lambda: powertools' formatter on the `chalicelib` logger tree.

Every module logs with the standard `logging` API and `extra={"pool": ..., "job_id": ...}`; in Lambda those
keys become JSON fields (correlation ids), at LOG_LEVEL. Outside Lambda (tests, CLI, demo) nothing changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import IO

from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

SERVICE = "runner-scaler"


class _JsonHandler(logging.StreamHandler):
    """Ours, so a warm container's second `configure` finds it and adds no twin."""


def configure(environ: Mapping[str, str], stream: IO[str] | None = None) -> bool:
    """Attach the JSON formatter once, when running in Lambda (or when `stream` is given, for tests)."""
    if stream is None and not environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return False
    parent = logging.getLogger("chalicelib")
    if any(isinstance(h, _JsonHandler) for h in parent.handlers):
        return True
    handler = _JsonHandler(stream)
    handler.setFormatter(LambdaPowertoolsFormatter(service=SERVICE))
    parent.addHandler(handler)
    parent.setLevel(environ.get("LOG_LEVEL", "INFO").upper())
    parent.propagate = False  # the Lambda runtime's root handler would print each line a second time
    return True
