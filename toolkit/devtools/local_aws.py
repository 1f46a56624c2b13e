"""A local AWS for the demo: moto as a real HTTP server on 127.0.0.1, and `AwsClients` pointed at it.

The app's adapters talk to it over HTTP exactly as they talk to AWS. Calls moto does not implement
(CompleteLifecycleAction) are answered at the `AwsClients` seam and recorded. Not imported by the Lambda path.
May import moto, boto3 and chalicelib.aws.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from chalicelib.aws import AwsClients

logger = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
# moto accepts any credentials; fixed ones keep the developer's real credentials out of the demo entirely.
_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_session_token": "x"}

#: (service, operation) pairs moto 5.2 does not implement, answered with an empty success by the seam.
UNIMPLEMENTED_BY_MOTO = frozenset({("autoscaling", "CompleteLifecycleAction")})


class LocalAws:
    """moto's server on a free 127.0.0.1 port, started and stopped with the demo.

    `clients()` builds an `AwsClients` for one caller (the app, the simulated machines) so each keeps its
    own call counts. `close()` stops the server, closes every client's connection pool (so no keep-alive
    request thread of moto's outlives the demo) and frees the port.
    """

    def __init__(self, *, region: str = REGION) -> None:
        self.region = region
        self._server: ThreadedMotoServer | None = None
        self._clients: list[AwsClients] = []
        self._lock = threading.Lock()
        #: Calls answered by the seam instead of moto, e.g. "autoscaling.CompleteLifecycleAction".
        self.stubbed: Counter[str] = Counter()
        #: Faults injected by `inject_fault`, counted per "service.Operation" each time one fired.
        self.faulted: Counter[str] = Counter()
        self._faults: dict[tuple[int, str, str], tuple[str, Callable[[], bool]]] = {}

    def start(self) -> LocalAws:
        """Serve on an ephemeral port; clear state a previous in-process moto user may have left."""
        if self._server is not None:
            return self
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self._server = server
        self._reset()
        return self

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalAws is not started: use `with LocalAws() as aws:` or .start()")
        return self._server.get_host_and_port()[1]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def clients(self) -> AwsClients:
        """A fresh, counted `AwsClients` against this server (no retry sleeps: moto does not throttle)."""
        session = boto3.session.Session(region_name=self.region, **_CREDENTIALS)
        owner: list[AwsClients] = []  # filled below: the seam needs to know whose call it answers
        aws = AwsClients(
            session,
            region=self.region,
            endpoint_url=self.endpoint_url,
            sleep=lambda _seconds: None,
            fault_injector=lambda service, operation: self._answer(owner[0], service, operation),
        )
        owner.append(aws)
        with self._lock:
            self._clients.append(aws)
        return aws

    def close(self) -> None:
        """Close client connections, stop serving, join the server thread and release the socket."""
        with self._lock:
            clients, self._clients = self._clients, []
        for aws in clients:
            _close_clients(aws)
        server, self._server = self._server, None
        if server is None:
            return
        try:
            self._reset_at(server)
        except OSError as exc:
            logger.debug("moto reset at close failed", extra={"error": str(exc)})
        server.stop()
        # ThreadedMotoServer.stop() shuts the loop down but leaves the listening socket open.
        inner = getattr(server, "_server", None)
        if inner is not None:
            inner.server_close()

    def intercept(
        self,
        aws: AwsClients,
        service: str,
        operation: str,
        answer: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        """Answer `operation` of `aws`'s `service` client with `answer(request parameters)` instead of moto.

        For calls moto accepts but cannot carry out (RotateSecret would run the rotation function in Docker):
        the demo plays that service's part and returns what the service would.
        """
        client = aws.client(service)
        service_id = client.meta.service_model.service_id.hyphenize()

        def handle(model: Any, params: dict[str, Any], **_: Any) -> tuple[_Answered, dict[str, Any]]:
            body = params.get("body") or b"{}"
            request = json.loads(body) if isinstance(body, bytes | str) else dict(body)
            self.stubbed[f"{service}.{operation}"] += 1
            parsed = answer(request)
            parsed.setdefault("ResponseMetadata", {"HTTPStatusCode": 200})
            return _Answered(), parsed

        client.meta.events.register(f"before-call.{service_id}.{operation}", handle)

    def stage_rotation(self, secret_id: str, token: str, lambda_arn: str, days: int) -> None:
        """What RotateSecret does before it invokes the rotation function, done on moto's own state.

        Secrets Manager adds a version `token` with no value, labelled AWSPENDING, and records the rotation
        function; the function's createSecret then writes that version. moto does this only when it can run
        the function itself (in Docker), so the demo stages the version here and invokes the steps.
        """
        from moto.secretsmanager.models import FakeSecret, secretsmanager_backends

        secret = secretsmanager_backends[ACCOUNT][self.region].secrets[secret_id]
        if not isinstance(secret, FakeSecret):
            raise TypeError(f"{secret_id} is a replica: rotate its primary")
        secret.remove_version_stages_from_old_versions(["AWSPENDING"])
        secret.versions[token] = {
            "createdate": int(time.time()),
            "version_id": token,
            "version_stages": ["AWSPENDING"],
        }
        secret.rotation_requested = True
        secret.rotation_enabled = True
        secret.rotation_lambda_arn = lambda_arn
        secret.auto_rotate_after_days = days

    def inject_fault(
        self, aws: AwsClients, service: str, operation: str, code: str, active: Callable[[], bool]
    ) -> None:
        """Fail `aws`'s calls of `operation` with error `code` (e.g. Throttling) while `active()` holds."""
        self._faults[(id(aws), service, operation)] = (code, active)

    def set_launch_time(self, instance_id: str, when: datetime) -> None:
        """Give an instance its launch time in the demo's simulated time (moto stamps the wall clock).

        The scaler compares LaunchTime with its own (simulated) now, e.g. against boot_timeout; a wall-clock
        stamp would make every machine look launched long ago once simulated time runs ahead.
        """
        from moto.ec2.models import ec2_backends

        instance = ec2_backends[ACCOUNT][self.region].get_instance(instance_id)
        instance.launch_time = when.astimezone(UTC).replace(tzinfo=None)  # moto keeps naive UTC

    def _answer(self, aws: AwsClients, service: str, operation: str) -> dict[str, Any] | None:
        """The seam's answer to one call: an injected fault, an empty success moto cannot give, or None."""
        fault = self._faults.get((id(aws), service, operation))
        if fault is not None and fault[1]():
            self.faulted[f"{service}.{operation}"] += 1
            status = 400 if fault[0] in {"Throttling", "ThrottlingException", "RequestLimitExceeded"} else 500
            return {
                "Error": {"Code": fault[0], "Message": "injected by the demo"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            }
        if (service, operation) not in UNIMPLEMENTED_BY_MOTO:
            return None
        self.stubbed[f"{service}.{operation}"] += 1
        return {"ResponseMetadata": {"HTTPStatusCode": 200}}

    def _reset(self) -> None:
        assert self._server is not None
        self._reset_at(self._server)

    def _reset_at(self, server: ThreadedMotoServer) -> None:
        """moto's documented reset endpoint: backends are process-wide, so a test's leftovers would show."""
        host, port = server.get_host_and_port()
        request = urllib.request.Request(f"http://{host}:{port}/moto-api/reset", data=b"", method="POST")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            response.read()


class _Answered:
    """The HTTP response botocore needs when a before-call handler answers a call itself."""

    def __init__(self) -> None:
        self.status_code = 200
        self.headers: dict[str, str] = {}
        self.content = b""
        self.text = ""
        self.raw = None


def _close_clients(aws: AwsClients) -> None:
    """Close the pools of the clients `aws` built (named by its call counter: `service.Operation`)."""
    for service in sorted({name.split(".", 1)[0] for name in aws.calls}):
        try:
            aws.client(service).close()
        except Exception as exc:  # closing is best effort; a leak is reported by the thread check instead
            logger.debug("closing a boto3 client failed", extra={"service": service, "error": str(exc)})
