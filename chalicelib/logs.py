"""Structured JSON logs for Lambda: powertools' formatter on the `chalicelib` logger tree.

Every module logs with the standard `logging` API and `extra={"pool": ..., "job_id": ...}`; in Lambda those
keys become JSON fields (correlation ids), at LOG_LEVEL; a sampled fraction of invocations logs at DEBUG
(POWERTOOLS_LOGGER_SAMPLE_RATE). Outside Lambda (tests, CLI, demo) nothing changes.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import IO

from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

SERVICE = "runner-scaler"
ENV_LOG_LEVEL = "LOG_LEVEL"
#: powertools Logger's variable: the probability, 0.0 to 1.0, that an invocation logs at DEBUG.
ENV_SAMPLE_RATE = "POWERTOOLS_LOGGER_SAMPLE_RATE"


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
    parent.setLevel(_base_level(environ))
    parent.propagate = False  # the Lambda runtime's root handler would print each line a second time
    return True


def sample_debug(environ: Mapping[str, str], draw: Callable[[], float] = random.random) -> bool:
    """Draw this invocation's log level: DEBUG with probability POWERTOOLS_LOGGER_SAMPLE_RATE, else LOG_LEVEL.

    powertools' Logger semantics (draw <= rate; re-drawn per invocation, as its `inject_lambda_context`
    does), applied to our `chalicelib` tree. Only once `configure` attached the JSON handler (in Lambda); the
    SDK loggers stay at WARNING either way (chalicelib.aws), so a sampled invocation prints no request body.
    `draw` gives uniform floats in [0, 1) (a seeded `random.Random(...).random` in tests). Returns whether
    this invocation logs at DEBUG.
    """
    parent = logging.getLogger("chalicelib")
    if not any(isinstance(h, _JsonHandler) for h in parent.handlers):
        return False
    rate = sample_rate(environ)
    sampled = rate > 0 and draw() <= rate
    parent.setLevel(logging.DEBUG if sampled else _base_level(environ))
    return parent.level == logging.DEBUG


def sample_rate(environ: Mapping[str, str]) -> float:
    """POWERTOOLS_LOGGER_SAMPLE_RATE as a probability; unset or unreadable is 0 (no sampling), not a crash."""
    text = environ.get(ENV_SAMPLE_RATE, "").strip()
    if not text:
        return 0.0
    try:
        return min(1.0, max(0.0, float(text)))
    except ValueError:
        logging.getLogger(__name__).warning(
            "debug sampling off: the sample rate is not a number between 0 and 1",
            extra={"variable": ENV_SAMPLE_RATE, "value": text},
        )
        return 0.0


def _base_level(environ: Mapping[str, str]) -> str:
    return environ.get(ENV_LOG_LEVEL, "INFO").upper()
