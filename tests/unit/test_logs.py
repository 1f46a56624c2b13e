"""Lambda logs are JSON with correlation keys, a sampled fraction of invocations logs at DEBUG; outside
Lambda logging is left alone."""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Iterator

import pytest

from chalicelib import logs

SAMPLED = {"LOG_LEVEL": "INFO", "POWERTOOLS_LOGGER_SAMPLE_RATE": "0.25"}


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The `chalicelib` logger tree configured as in Lambda, writing to a buffer; restored afterwards."""
    parent = logging.getLogger("chalicelib")
    saved = (list(parent.handlers), parent.level, parent.propagate)
    try:
        yield io.StringIO()
    finally:
        parent.handlers[:] = saved[0]
        parent.setLevel(saved[1])
        parent.propagate = saved[2]


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lambda_logs_are_json_with_correlation_keys(stream: io.StringIO) -> None:
    assert logs.configure({"LOG_LEVEL": "INFO"}, stream)
    logging.getLogger("chalicelib.reconcile").info("scaled", extra={"pool": "linux", "job_id": 7})
    line = lines(stream)[-1]
    assert (line["message"], line["pool"], line["job_id"], line["service"]) == (
        "scaled",
        "linux",
        7,
        "runner-scaler",
    )


def test_outside_lambda_nothing_changes() -> None:
    assert not logs.configure({})
    assert not logs.sample_debug(SAMPLED, draw=lambda: 0.0)


def test_a_sampled_invocation_logs_debug_and_the_next_one_does_not(stream: io.StringIO) -> None:
    # GIVEN Lambda logs at INFO with a 25 % debug sample
    logs.configure(SAMPLED, stream)
    log = logging.getLogger("chalicelib.reconcile")
    # WHEN an invocation draws under the rate THEN its debug lines are written
    assert logs.sample_debug(SAMPLED, draw=lambda: 0.1)
    log.debug("plan detail", extra={"pool": "linux"})
    # WHEN the next invocation draws over it THEN it is back at INFO
    assert not logs.sample_debug(SAMPLED, draw=lambda: 0.9)
    log.debug("not written")
    assert [line["message"] for line in lines(stream)] == ["plan detail"]
    assert logging.getLogger("chalicelib").level == logging.INFO


def test_the_sampled_fraction_follows_the_rate(stream: io.StringIO) -> None:
    logs.configure(SAMPLED, stream)
    draws = random.Random(10).random
    sampled = sum(logs.sample_debug(SAMPLED, draw=draws) for _ in range(2000))
    assert 0.22 < sampled / 2000 < 0.28


def test_without_a_rate_nothing_is_drawn_and_the_level_stays(stream: io.StringIO) -> None:
    logs.configure({"LOG_LEVEL": "WARNING"}, stream)

    def never() -> float:
        raise AssertionError("no rate, no draw")

    assert not logs.sample_debug({"LOG_LEVEL": "WARNING"}, draw=never)
    assert logging.getLogger("chalicelib").level == logging.WARNING


def test_an_unreadable_rate_turns_sampling_off_with_a_warning(stream: io.StringIO) -> None:
    environ = {"LOG_LEVEL": "INFO", "POWERTOOLS_LOGGER_SAMPLE_RATE": "ten percent"}
    logs.configure(environ, stream)
    assert not logs.sample_debug(environ, draw=lambda: 0.0)
    (warning,) = lines(stream)
    assert warning["level"] == "WARNING" and warning["variable"] == "POWERTOOLS_LOGGER_SAMPLE_RATE"


def test_a_sampled_invocation_keeps_the_sdk_loggers_quiet(
    stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore and python-gitlab print request bodies (secret values, tokens) at DEBUG: never sampled."""
    from chalicelib.aws import SDK_LOGGERS, quiet_sdk_loggers

    quiet_sdk_loggers()
    monkeypatch.setattr(logging.getLogger(), "level", logging.DEBUG)  # even under a chatty root logger
    logs.configure(SAMPLED, stream)
    assert logs.sample_debug(SAMPLED, draw=lambda: 0.0)
    for name in SDK_LOGGERS:
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name


def test_every_invocation_draws_its_own_sample(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each handler calls `runtime.current()` once per invocation: that is where the sample is drawn."""
    from chalicelib import runtime

    logs.configure({"LOG_LEVEL": "INFO"}, stream)
    runtime.install(runtime.Runtime({}))
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    try:
        monkeypatch.setenv("POWERTOOLS_LOGGER_SAMPLE_RATE", "1")
        runtime.current()
        assert logging.getLogger("chalicelib").level == logging.DEBUG
        monkeypatch.setenv("POWERTOOLS_LOGGER_SAMPLE_RATE", "0")
        runtime.current()
        assert logging.getLogger("chalicelib").level == logging.INFO
    finally:
        runtime.install(None)
