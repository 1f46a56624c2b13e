"""The one seam every AWS call passes through: lazy clients, counting, retries, error translation, tracing.

Nothing else in chalicelib builds a boto3 client, and only the adapters call through it (fleet, store,
dynamo, pipelines, secrets, parameters, hosts, queue, metrics...: tests/unit/test_import_rules.py keeps the
list). Clients are created on first use (never at import time) so moto and Stubber can be set up first.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import boto3

# boto3's DynamoDB value (de)serialisers, re-exported for `chalicelib.dynamo`: the SDK is imported here only.
from boto3.dynamodb.types import DYNAMODB_CONTEXT as DYNAMODB_CONTEXT
from boto3.dynamodb.types import TypeDeserializer as TypeDeserializer
from boto3.dynamodb.types import TypeSerializer as TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, ReadTimeoutError
from botocore.parsers import ResponseParserError

from chalicelib.errors import AwsCallError
from chalicelib.tracing import Span, Tracing

#: SDK loggers that print request/response bodies (secret values, tokens) at DEBUG: never below WARNING,
#: whatever LOG_LEVEL the operator sets for the app.
SDK_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "gitlab", "requests")


def quiet_sdk_loggers() -> None:
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


quiet_sdk_loggers()

#: Error codes AWS uses for "slow down" or "try again": retried with backoff, then left to the next tick.
#: botocore's standard and adaptive retry modes retry the same throttles and transient codes first
#: (`botocore/retries/standard.py`, ThrottledRetryableChecker and TransientRetryableChecker), all but
#: `LimitExceededException`: Secrets Manager answers it when a request would exceed one of its quotas (the
#: number of secrets, say), which no backoff mends (Secrets Manager API Reference, "CreateSecret", Errors).
RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "EC2ThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        # A DynamoDB write to an item that a transaction is writing at that moment ("Operation was rejected
        # because there is an ongoing transaction for the item": DynamoDB API Reference, UpdateItem and
        # PutItem, Errors). botocore does not retry it; the machine and runner items take part in one.
        "TransactionConflictException",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
        "RequestThrottled",
        "SlowDown",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)

BOTO_CONFIG = Config(
    retries={"mode": "adaptive", "max_attempts": 4},
    connect_timeout=3,
    read_timeout=10,
)

#: A hook that may return a fake (http, parsed) response to short-circuit a call: fault injection in tests.
FaultInjector = Callable[[str, str], dict[str, Any] | None]


class AwsClients:
    """Lazily built, counted boto3 clients with bounded backoff on throttling and 5xx.

    `sleep` and `rng` are injected so tests and the simulator never wait for real. `tracing` (off by default)
    wraps each call in an X-Ray subsegment named after the API, e.g. `autoscaling.SetDesiredCapacity`.
    """

    def __init__(
        self,
        session: boto3.session.Session | None = None,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        attempts: int = 3,
        base_delay: float = 0.2,
        rng: random.Random | None = None,
        fault_injector: FaultInjector | None = None,
        boto_config: Config = BOTO_CONFIG,
        tracing: Tracing | None = None,
    ) -> None:
        self._session = session
        self._region = region
        self._endpoint_url = endpoint_url
        self._sleep = sleep
        self._attempts = max(1, attempts)
        self._base_delay = base_delay
        self._rng = rng or random.Random()
        self._fault_injector = fault_injector
        self._boto_config = boto_config
        self._tracing = tracing or Tracing()
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()

    def client(self, service: str) -> Any:
        """The cached client of `service` (built on first use, with the call counter attached)."""
        with self._lock:
            existing = self._clients.get(service)
            if existing is not None:
                return existing
            session = self._session or boto3.session.Session()
            kwargs: dict[str, Any] = {"config": self._boto_config}
            if self._region:
                kwargs["region_name"] = self._region
            if self._endpoint_url:
                kwargs["endpoint_url"] = self._endpoint_url
            client = session.client(service, **kwargs)  # type: ignore[call-overload]
            client.meta.events.register("before-call", self._on_before_call)
            self._clients[service] = client
            return client

    def _on_before_call(self, model: Any, **_: Any) -> Any:
        service = model.service_model.service_name
        self.calls[f"{service}.{model.name}"] += 1
        if self._fault_injector is None:
            return None
        parsed = self._fault_injector(service, model.name)
        if parsed is None:
            return None
        status = parsed.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
        return (HookResponse(status), parsed)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """Invoke `client(service).<operation>(**params)`; retry throttles/5xx, translate failures."""
        client = self.client(service)
        method = getattr(client, operation)
        api_name = client.meta.method_to_api_mapping.get(operation, operation)
        with self._tracing.call(service, api_name) as span:
            return self._with_retries(service, operation, method, params, span)

    def _with_retries(
        self, service: str, operation: str, method: Any, params: dict[str, Any], span: Span
    ) -> dict[str, Any]:
        last: AwsCallError | None = None
        for attempt in range(self._attempts):
            span.note("attempts", attempt + 1)
            try:
                result: dict[str, Any] = method(**params)
                return result
            except ClientError as exc:
                last = translate(service, operation, exc)
            except (ConnectionError, ReadTimeoutError) as exc:
                last = AwsCallError(service, operation, type(exc).__name__, str(exc), retryable=True)
            except ResponseParserError as exc:
                # A body that is not the service's (an HTML 5xx from a proxy or load balancer): retry it.
                last = AwsCallError(service, operation, "UnparseableResponse", str(exc)[:200], retryable=True)
            except BotoCoreError as exc:
                raise AwsCallError(service, operation, type(exc).__name__, str(exc), retryable=False) from exc
            if not last.retryable or attempt == self._attempts - 1:
                break
            self._sleep(self._base_delay * (2**attempt) * (0.5 + self._rng.random()))
        assert last is not None
        raise last

    def paginate(self, service: str, operation: str, result_key: str, **params: Any) -> list[Any]:
        """All items of a paginated operation, each page fetched through `call` (so counted and retried)."""
        items: list[Any] = []
        token_in, token_out = _pagination_tokens(service, operation)
        token: str | None = None
        while True:
            page_params = dict(params)
            if token:
                page_params[token_in] = token
            page = self.call(service, operation, **page_params)
            items.extend(page.get(result_key, []))
            token = page.get(token_out)
            if not token:
                return items


def translate(service: str, operation: str, exc: ClientError) -> AwsCallError:
    """Our error for a botocore ClientError: code kept, retryable for throttles and 5xx."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    retryable = code in RETRYABLE_CODES or status >= 500
    # A DynamoDB write with ReturnValuesOnConditionCheckFailure ALL_OLD gets the item it found beside the
    # error ("Item" of ConditionalCheckFailedException: DynamoDB API reference, UpdateItem).
    item = exc.response.get("Item")
    # A cancelled transaction says why per action ("CancellationReasons": DynamoDB API Reference,
    # TransactWriteItems, TransactionCanceledException).
    reasons = tuple(str(r.get("Code", "None")) for r in exc.response.get("CancellationReasons", ()) or ())
    return AwsCallError(
        service,
        operation,
        code,
        str(error.get("Message", "")),
        retryable=retryable,
        item=item if isinstance(item, dict) else None,
        reasons=reasons,
    )


def _pagination_tokens(service: str, operation: str) -> tuple[str, str]:
    if service in {"autoscaling"}:
        return "NextToken", "NextToken"
    if service == "dynamodb":
        return "ExclusiveStartKey", "LastEvaluatedKey"
    return "NextToken", "NextToken"


class HookResponse:
    """The minimal HTTP response botocore needs when a before-call hook short-circuits a call (the fault
    injector here, the in-process fake of sim/bench_reconcile.py)."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = {}
        self.content = b""
        self.text = ""
        self.raw = None


def fault(code: str, status: int = 400) -> dict[str, Any]:
    """A parsed error response for a fault injector: `fault("Throttling")`, `fault("InternalError", 500)`."""
    return {"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": status}}
