"""The REAL Chalice app run locally: routes behind an HTTP server, Lambda handlers invoked with AWS events.

Used by the demo so that every handler in `app.py` runs the code path it runs on AWS: API Gateway requests
through `chalice.local`, event sources through `chalice.test.Client(app).lambda_.invoke`. Handlers are
discovered from the app object, so a handler added to `app.py` shows up here without a change.
May import chalice, croniter and chalicelib; never imported by the Lambda path.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

from chalice import Chalice
from chalice.app import (
    CloudWatchEventConfig,
    ScheduledEventConfig,
    ScheduleExpression,
    SNSEventConfig,
    SQSEventConfig,
)
from chalice.config import Config as ChaliceConfig
from chalice.local import (
    ChaliceRequestHandler,
    CustomLocalChalice,
    LocalChalice,
    LocalDevServer,
    RouteMatcher,
)
from chalice.test import Client
from croniter import croniter

logger = logging.getLogger(__name__)

#: Where app.py lives: the project root, one level above the chalicelib package.
PROJECT_DIR = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"


def load_app(path: Path | None = None) -> Chalice:
    """The `app` object of app.py, imported as module `app` (reused when tests already imported it).

    app.py sits at the project root, outside the installed packages, so the CLI cannot `import app` from
    anywhere; it is loaded from its file, as `chalice local` does from the project directory.
    """
    file = (path or PROJECT_DIR / "app.py").resolve()
    existing = sys.modules.get("app")
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() == file:
        return _app_of(existing)
    spec = importlib.util.spec_from_file_location("app", file)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load the Chalice app from {file}: is this a runner-scaler checkout?")
    module = importlib.util.module_from_spec(spec)
    sys.modules["app"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["app"]
        raise
    return _app_of(module)


def _app_of(module: ModuleType) -> Chalice:
    app = getattr(module, "app", None)
    if not isinstance(app, Chalice):
        raise TypeError(f"{module.__file__} defines no Chalice `app`")
    return app


# --------------------------------------------------------------------------------------------------
# Handler discovery


@dataclass(frozen=True)
class Handler:
    """One handler of the app: `kind` is route | schedule | sqs | cw_event | sns | lambda | <other source>."""

    name: str
    kind: str
    source: Any = field(default=None, compare=False, repr=False)


def discover(app: Chalice) -> list[Handler]:
    """Every handler the app declares: view functions of its routes, event sources, pure Lambda functions."""
    handlers: dict[str, Handler] = {}
    for methods in app.routes.values():
        for entry in methods.values():
            handlers.setdefault(entry.view_name, Handler(entry.view_name, "route", entry))
    for source in app.event_sources:
        handlers.setdefault(source.name, Handler(source.name, _kind(source), source))
    for function in app.pure_lambda_functions:
        handlers.setdefault(function.name, Handler(function.name, "lambda", function))
    return sorted(handlers.values(), key=lambda h: (h.kind, h.name))


def _kind(source: object) -> str:
    if isinstance(source, ScheduledEventConfig):
        return "schedule"
    if isinstance(source, SQSEventConfig):
        return "sqs"
    if isinstance(source, CloudWatchEventConfig):
        return "cw_event"
    if isinstance(source, SNSEventConfig):
        return "sns"
    return type(source).__name__.removesuffix("EventConfig").lower()


def next_fire(expression: str | ScheduleExpression, after: datetime) -> datetime:
    """When a schedule next fires after `after`: `rate(N unit)` every N units, `cron(...)` at its next match.

    Rates keep their own cadence (EventBridge does not drift with the target's run time).
    """
    text = expression if isinstance(expression, str) else expression.to_string()
    if text.startswith("rate("):
        value, unit = text[5:-1].split()
        seconds = int(value) * {"minute": 60, "hour": 3600, "day": 86400}[unit.rstrip("s")]
        return after + timedelta(seconds=seconds)
    fields = text[5:-1].split()[:5]  # AWS cron: min hour dom month dow year; '?' means any
    cron = " ".join("*" if f == "?" else f for f in fields)
    return croniter(cron, after).get_next(datetime)  # type: ignore[no-any-return]


def matches_pattern(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """EventBridge pattern matching for the shapes rules use here: value lists and nested objects."""
    for key, wanted in pattern.items():
        value = event.get(key)
        if isinstance(wanted, Mapping):
            if not isinstance(value, Mapping) or not matches_pattern(wanted, value):
                return False
        elif isinstance(wanted, list):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


# --------------------------------------------------------------------------------------------------
# The app, served and invoked


@dataclass
class Invocations:
    """Per-handler counts of invocations and failures (exceptions, 5xx, Lambda batch item failures).

    `during_incident` counts the failures that happened while the demo staged an incident (they are expected:
    the platform retries them); `failures` counts all.
    """

    calls: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    during_incident: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)  # "<handler> <http status>"
    last_error: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def counts(self) -> dict[str, int]:
        """Invocations per handler, copied under the lock (HTTP threads count while the view reads)."""
        with self.lock:
            return dict(self.calls)

    def record(
        self,
        name: str,
        *,
        failed: bool = False,
        error: str = "",
        status: int | None = None,
        incident: bool = False,
    ) -> None:
        with self.lock:
            self.calls[name] += 1
            if failed:
                self.failures[name] += 1
                self.during_incident[name] += int(incident)
                if error:
                    self.last_error[name] = error[:300]
            if status is not None:
                self.statuses[f"{name} {status}"] += 1


class _Server(ThreadingHTTPServer):
    """Request threads are joined on close, so stopping the app leaves no thread behind."""

    daemon_threads = False
    block_on_close = True


class LocalApp:
    """The app on http://127.0.0.1:<free port> plus `invoke()` for its event-source and Lambda handlers."""

    def __init__(self, app: Chalice, *, stage: str = "dev", project_dir: Path = PROJECT_DIR) -> None:
        self.app = app
        self.handlers = discover(app)
        self.invocations = Invocations()
        #: Whether an incident staged by the demo is under way now (its failures are counted apart).
        self.incident: Callable[[], bool] = lambda: False
        self._client = Client(app, stage_name=stage, project_dir=str(project_dir))
        self._config = _chalice_config(project_dir, stage)
        self._original_class: type | None = None
        self._server: LocalDevServer | None = None
        self._thread: threading.Thread | None = None
        self._route_matcher = RouteMatcher(list(app.routes))

    def start(self) -> LocalApp:
        """Serve the app's routes on 127.0.0.1 (ephemeral port) from a background thread."""
        if self._server is not None:
            return self
        if not isinstance(self.app, LocalChalice):
            # As chalice.local.create_local_server does: a thread-local current_request for threaded serving.
            self._original_class = self.app.__class__
            CustomLocalChalice.__bases__ = (LocalChalice, self.app.__class__)
            self.app.__class__ = CustomLocalChalice
        handler_cls = _counting_handler(self)
        self._server = LocalDevServer(
            self.app, self._config, "127.0.0.1", 0, handler_cls=handler_cls, server_cls=_Server
        )
        self._thread = threading.Thread(
            target=self._server.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="chalice-local",
            daemon=True,
        )
        self._thread.start()
        return self

    def __enter__(self) -> LocalApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalApp is not started")
        return int(self._server.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop serving, join the serving and request threads, free the port, restore the app's class."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._original_class is not None:
            self.app.__class__ = self._original_class
            self._original_class = None

    def handlers_of(self, kind: str) -> list[Handler]:
        return [h for h in self.handlers if h.kind == kind]

    def invoke(self, name: str, event: dict[str, Any]) -> Any:
        """Invoke a Lambda-style handler as Lambda does (Chalice's test client: event dict + LambdaContext).

        An exception is what Lambda reports as a function error: counted, logged, and returned as None, so
        the platform goes on (Lambda retries an async event; the tick heals the rest).
        """
        try:
            payload = self._client.lambda_.invoke(name, event).payload
        except Exception as exc:
            self.invocations.record(
                name, failed=True, error=f"{type(exc).__name__}: {exc}", incident=self.incident()
            )
            logger.warning("handler raised", extra={"handler": name, "error": str(exc)}, exc_info=True)
            return None
        failed = isinstance(payload, dict) and bool(payload.get("batchItemFailures"))
        self.invocations.record(
            name,
            failed=failed,
            error="batch item failures" if failed else "",
            incident=failed and self.incident(),
        )
        return payload

    def route_name(self, method: str, path: str) -> str:
        """The view function a request reaches (`unmatched` for a 404)."""
        try:
            route = self._route_matcher.match_route(path).route
        except ValueError:
            return "unmatched"
        entry = self.app.routes.get(route, {}).get(method.upper())
        return entry.view_name if entry is not None else "unmatched"


def _counting_handler(local: LocalApp) -> type[ChaliceRequestHandler]:
    class CountingHandler(ChaliceRequestHandler):
        """Chalice's request handler, counting each answered request under its view function's name."""

        def send_response(self, code: int, message: str | None = None) -> None:
            name = local.route_name(self.command, self.path)
            failed = code >= 500
            local.invocations.record(
                name, failed=failed, error=f"HTTP {code}", status=code, incident=failed and local.incident()
            )
            super().send_response(code, message)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("chalice local: " + format, *args)

    return CountingHandler


def _chalice_config(project_dir: Path, stage: str) -> ChaliceConfig:
    """The project's .chalice/config.json for `stage` (as `chalice local` reads it), or Chalice's defaults."""
    from chalice.cli.factory import CLIFactory

    try:
        return CLIFactory(str(project_dir)).create_config_obj(chalice_stage_name=stage)
    except (RuntimeError, OSError, ValueError):
        return ChaliceConfig.create()


# --------------------------------------------------------------------------------------------------
# AWS event shapes (as Lambda receives them)


def _iso(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def scheduled_event(rule: str, now: datetime, region: str) -> dict[str, Any]:
    """What EventBridge sends a scheduled rule's target."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": _iso(now),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{ACCOUNT}:rule/{rule}"],
        "detail": {},
    }


def eventbridge_event(
    source: str, detail_type: str, detail: dict[str, Any], resources: list[str], now: datetime, region: str
) -> dict[str, Any]:
    """An EventBridge event envelope (`aws.autoscaling` lifecycle actions, `aws.ec2` Spot warnings...)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": ACCOUNT,
        "time": _iso(now),
        "region": region,
        "resources": resources,
        "detail": detail,
    }


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """The Lambda event for messages received from SQS (ReceiveMessage with all attributes)."""
    records = []
    for message in messages:
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": dict(message.get("Attributes", {})),
                "messageAttributes": dict(message.get("MessageAttributes", {})),
                "md5OfBody": message.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


def sns_event(topic_arn: str, subject: str, message: str, now: datetime) -> dict[str, Any]:
    """The Lambda event for one SNS notification (CloudWatch alarms publish their JSON as `Message`)."""
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": f"{topic_arn}:{uuid.uuid4()}",
                "Sns": {
                    "Type": "Notification",
                    "MessageId": str(uuid.uuid4()),
                    "TopicArn": topic_arn,
                    "Subject": subject,
                    "Message": message,
                    "Timestamp": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                    "SignatureVersion": "1",
                    "Signature": "EXAMPLE",
                    "SigningCertUrl": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService.pem",
                    "UnsubscribeUrl": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
                    "MessageAttributes": {},
                },
            }
        ]
    }


def wait_until_serving(url: str, timeout: float = 10.0) -> None:
    """Block until GET <url> answers (the app's health route), so the first webhook is not refused."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(url, timeout=2) as response:
                response.read()
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
