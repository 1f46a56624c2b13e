"""The simulated adapters ours' `Ports` needs beyond the fleet, store, queue and GitLab of sim.ours: Secrets
Manager (the webhook tokens, the machines' secrets, the base certificates), the metrics port, and the SQS
event the queue's consumer is invoked with. Each satisfies its chalicelib Protocol and counts the calls the
real adapter makes. Imports chalicelib's adapter types and Protocols, the stdlib.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from chalicelib.secrets import MemorySecrets

if TYPE_CHECKING:
    from chalicelib.config import Config
    from chalicelib.metrics import ReconcileFigures

#: Where the simulated queue lives (an event's `eventSourceARN`; nothing reads it).
QUEUE_ARN = "arn:aws:sqs:us-east-1:000000000000:sim-dirty.fifo"


class SimSecrets(MemorySecrets):
    """Secrets Manager in memory (`MemorySecrets`, the contract-tested twin), each call it answers counted
    as one Secrets Manager call: GetSecretValue of the webhook tokens (once a minute per container through
    the cache), DescribeSecret and GetSecretValue of the base certificates (the tick's check), CreateSecret
    and DeleteSecret of each machine's secret."""

    def __init__(self, calls: Counter[str]) -> None:
        super().__init__()
        self._sim_calls = calls
        self._counting = True

    def _count(self, operation: str) -> None:
        self._sim_calls["secretsmanager"] += self._counting

    def seed(self, name: str, value: str) -> None:
        """A secret the deployment created (infra/): there before the scaler runs, not one of its calls."""
        self._counting = False
        try:
            self.create(name, value)
        finally:
            self._counting = True


class SimMetrics:
    """The metrics port: EMF lines cost no API call, so nothing is counted as one; the totals per metric
    name are kept for a run to be read (WebhookRejected, Reconciles, ...)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def _add(self, name: str, value: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + value

    def emit(
        self,
        values: Mapping[str, float],
        dimensions: Mapping[str, str] | None = None,
        unit: MetricUnit = MetricUnit.Count,
    ) -> None:
        for name, value in values.items():
            self._add(name, value)

    def emit_count(self, name: str, value: float, pool: str | None = None) -> None:
        self._add(name, value)

    def emit_job_wait(self, pool: str, platform: str, queued_seconds: float) -> None:
        self._add("JobQueueSeconds", queued_seconds)

    def emit_scale_up(self, pool: str, platform: str, seconds: float) -> None:
        self._add("ScaleUpSeconds", seconds)

    def emit_reconcile(self, config: Config, results: Iterable[ReconcileFigures], aws_calls: int) -> None:
        self._add("Reconciles", sum(1 for r in results if not r.skipped))
        self._add("AwsCalls", aws_calls)


def sqs_event(message_id: str, body: str, group: str, dedup_id: str) -> dict[str, Any]:
    """The Lambda event of one message received from the FIFO queue, as the `pool_dirty` handler gets it
    (batch size 1; "Using Lambda with Amazon SQS": the record's `attributes` carry MessageGroupId)."""
    return {
        "Records": [
            {
                "messageId": message_id,
                "receiptHandle": message_id,
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "MessageGroupId": group,
                    "MessageDeduplicationId": dedup_id,
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": QUEUE_ARN,
                "awsRegion": "us-east-1",
            }
        ]
    }
