"""X-Ray subsegments around adapter calls: one per AWS call (`AwsClients.call`) and per GitLab call.

Off unless the code runs in Lambda, POWERTOOLS_TRACE_DISABLED is not set, and aws-xray-sdk is installed; off
costs one `if` per call. Only low-cardinality annotations are recorded (service, operation, outcome, error
code, attempts): never a parameter, a body or an error message, since those may carry a secret or a token.
Imports the standard library; powertools' Tracer (and aws_xray_sdk, ~200 ms) only when tracing is on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: Environment switches with powertools' meaning (Tracer docs): tracing off, and the local emulators.
ENV_TRACE_DISABLED = "POWERTOOLS_TRACE_DISABLED"
_LOCAL_EMULATORS = ("AWS_SAM_LOCAL", "AWS_CHALICE_CLI_MODE")
_TRUTHY = frozenset({"1", "y", "yes", "t", "true", "on"})


class Subsegment(Protocol):
    """What we use of an X-Ray subsegment (aws_xray_sdk's, or powertools' BaseSegment)."""

    def put_annotation(self, key: str, value: Any) -> None: ...

    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None: ...


class Provider(Protocol):
    """A tracing provider as powertools' Tracer holds it (`tracer.provider`: aws_xray_sdk's recorder)."""

    def in_subsegment(self, name: str) -> AbstractContextManager[Subsegment | None]: ...


class CallFailedError(Exception):
    """What a trace records of a failed call: its name and error code, never the original message.

    A botocore validation error quotes the parameter's value, and that value may be a secret.
    """


class Span:
    """One traced call, handed to the adapter so it can add what it learns (e.g. attempts)."""

    def __init__(self, segment: Subsegment | None) -> None:
        self._segment = segment

    def note(self, key: str, value: str | int | bool) -> None:
        """Add a low-cardinality annotation (searchable in X-Ray); nothing when tracing is off."""
        if self._segment is not None:
            self._segment.put_annotation(key, value)


_OFF = nullcontext(Span(None))


class Tracing:
    """Subsegments per adapter call through `provider`; without one (the default) every call is untraced."""

    def __init__(self, provider: Provider | None = None) -> None:
        self._provider = provider

    @property
    def enabled(self) -> bool:
        return self._provider is not None

    def call(self, service: str, operation: str) -> AbstractContextManager[Span]:
        """A subsegment named `service.operation` around the block; its exception is re-raised untouched.

        The exception is caught inside the subsegment and replaced there by a CallFailedError, so X-Ray marks
        the call failed without storing the original message. Off, it is a shared no-op context.
        """
        if self._provider is None:
            return _OFF
        return self._traced(self._provider, service, operation)

    @contextmanager
    def _traced(self, provider: Provider, service: str, operation: str) -> Iterator[Span]:
        failure: Exception | None = None
        with provider.in_subsegment(name=f"{service}.{operation}") as segment:
            span = Span(segment)
            span.note("service", service)
            span.note("operation", operation)
            try:
                yield span
            except Exception as exc:
                failure = exc
                code = error_code(exc)
                span.note("outcome", "error")
                span.note("error", code)
                if segment is not None:
                    segment.add_exception(CallFailedError(f"{service}.{operation} failed: {code}"), [])
            else:
                span.note("outcome", "ok")
        if failure is not None:
            raise failure


def error_code(exc: Exception) -> str:
    """A bounded label for a failure: AWS's error code, GitLab's HTTP status, else the exception's class."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"HTTP {status}" if status else "unreachable"
    return type(exc).__name__


def from_environment(environ: Mapping[str, str]) -> Tracing:
    """The container's Tracing: on in Lambda unless POWERTOOLS_TRACE_DISABLED, off if aws-xray-sdk is absent.

    powertools' Tracer is built without auto-patching: our seams make the subsegments, so botocore and
    requests are not traced a second time (and their URLs and parameters stay out of the trace).
    """
    in_lambda = bool(environ.get("LAMBDA_TASK_ROOT")) and not any(environ.get(k) for k in _LOCAL_EMULATORS)
    if not in_lambda or environ.get(ENV_TRACE_DISABLED, "").strip().lower() in _TRUTHY:
        return Tracing()
    try:
        from aws_lambda_powertools import Tracer

        tracer = Tracer(auto_patch=False, disabled=False)
    except ImportError as exc:
        logger.warning("tracing is off: aws-xray-sdk is not installed", extra={"error": str(exc)})
        return Tracing()
    provider: Provider = tracer.provider
    return Tracing(provider)
