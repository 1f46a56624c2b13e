"""A failed reconcile is retried and, in the end, dead-lettered, on both deploy paths (issue 24, defect 8).

Lambda's SQS event source, as documented ("Handling errors for an SQS event source in Lambda", "Reporting
batch item failures for Lambda functions with an Amazon SQS trigger"): when the function returns without
error, Lambda deletes the batch's messages, except those listed in `batchItemFailures` when (and only when)
the mapping has `FunctionResponseTypes: ["ReportBatchItemFailures"]`; when the function fails, it deletes
none, and they come back after their visibility timeout. SQS moves a message to the dead-letter queue once
it has been received more than `maxReceiveCount` times (SQS Developer Guide, "Using dead-letter queues").

`chalice deploy` (Chalice 1.34) cannot set ReportBatchItemFailures; infra/ does. `LambdaSqsSource` plays
both mappings over the moto queue, receiving with a zero visibility timeout so a retry needs no waiting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from chalice.app import SQSEventConfig
from chalice.test import Client

from app import app
from chalicelib.aws import AwsClients, fault
from chalicelib.runtime import Runtime, install
from chalicelib.store import JobRecord
from tests.functional.conftest import Stack

#: The dirty queue's maxReceiveCount (chalicelib.resources.queue_attributes).
MAX_RECEIVES = 5


class LambdaSqsSource:
    """One poll of Lambda's SQS event source mapping: receive, invoke, delete what Lambda would delete."""

    def __init__(self, stack: Stack, client: Client, *, report_batch_item_failures: bool) -> None:
        self._stack = stack
        self._client = client
        self._report = report_batch_item_failures

    def poll(self) -> str:
        """ "empty", "ok", "error" (the function failed), or "partial" (it reported item failures)."""
        aws, url = self._stack.aws, self._stack.local.queue_url
        got = aws.call(
            "sqs",
            "receive_message",
            QueueUrl=url,
            MaxNumberOfMessages=1,  # pool_dirty's batch_size
            VisibilityTimeout=0,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            return "empty"
        records = [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:test-dirty.fifo",
                "awsRegion": "us-east-1",
            }
            for m in got
        ]
        try:
            payload = self._client.lambda_.invoke("pool_dirty", {"Records": records}).payload
        except Exception:
            return "error"
        failed = (
            {f["itemIdentifier"] for f in payload.get("batchItemFailures", [])} if self._report else set()
        )
        for m in got:
            if m["MessageId"] not in failed:
                aws.call("sqs", "delete_message", QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return "partial" if failed else "ok"


def dead_letters(stack: Stack) -> list[dict[str, Any]]:
    got = stack.aws.call(
        "sqs", "receive_message", QueueUrl=stack.local.dead_letter_url, MaxNumberOfMessages=10
    )
    return [json.loads(m["Body"]) for m in got.get("Messages", [])]


def denied_scaling(service: str, operation: str) -> dict[str, Any] | None:
    if (service, operation) == ("autoscaling", "SetDesiredCapacity"):
        return fault("AccessDenied", 403)
    return None


@pytest.fixture
def failing(stack: Stack) -> Iterator[Stack]:
    """A pending job, and a role whose every scale-up is denied: each reconcile of `linux` fails."""
    aws = AwsClients(region="us-east-1", sleep=lambda _s: None, fault_injector=denied_scaling)
    stack.runtime = Runtime(
        dict(stack.runtime.environ), aws=aws, config=stack.config, clock=stack.runtime.clock
    )
    install(stack.runtime)
    stack.runtime.store.record_job(
        JobRecord(stack.runtime.gitlab_host, 1, "pending", pool="linux"), stack.runtime.now()
    )
    stack.runtime.queue.mark_dirty("linux", "job", stack.runtime.now())
    yield stack


@pytest.mark.parametrize("report_batch_item_failures", [False, True], ids=["chalice-deploy", "cdk"])
def test_a_failed_reconcile_is_retried_then_dead_lettered(
    failing: Stack, report_batch_item_failures: bool
) -> None:
    with Client(app) as client:
        source = LambdaSqsSource(failing, client, report_batch_item_failures=report_batch_item_failures)
        # WHEN Lambda polls the queue while every reconcile of the pool fails
        outcomes = [source.poll() for _ in range(MAX_RECEIVES + 1)]
    # THEN each receive up to maxReceiveCount fails and leaves the message, and then it is dead-lettered
    # (an error on the chalice path; infra/'s mapping would also honour a reported item failure)
    kept = {"error", "partial"} if report_batch_item_failures else {"error"}
    assert set(outcomes[:MAX_RECEIVES]) <= kept and outcomes[MAX_RECEIVES:] == ["empty"]
    assert [m["pool"] for m in dead_letters(failing)] == ["linux"]


@pytest.mark.parametrize("report_batch_item_failures", [False, True], ids=["chalice-deploy", "cdk"])
def test_a_successful_reconcile_consumes_its_message(stack: Stack, report_batch_item_failures: bool) -> None:
    rt = stack.runtime
    rt.store.record_job(JobRecord(rt.gitlab_host, 1, "pending", pool="linux"), rt.now())
    rt.queue.mark_dirty("linux", "job", rt.now())
    with Client(app) as client:
        source = LambdaSqsSource(stack, client, report_batch_item_failures=report_batch_item_failures)
        assert [source.poll(), source.poll()] == ["ok", "empty"]
    assert stack.desired("test-linux") == 1
    assert dead_letters(stack) == []


def test_pool_dirty_takes_one_message_per_invocation() -> None:
    """The chalice path can only fail a whole batch: with batches of one, no other pool's message is
    retried."""
    (source,) = [s for s in app.event_sources if getattr(s, "name", "") == "pool_dirty"]
    assert isinstance(source, SQSEventConfig) and source.batch_size == 1
