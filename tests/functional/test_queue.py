"""The "pool dirty" queue on moto: the tick's batch sends one message per pool, ten per call, in each pool's
message group, collapsing with any other ask in the same window; what SQS refuses is named, not lost."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from chalicelib.aws import AwsClients, fault
from chalicelib.events.aws import DIRTY_REASON_MAX_CHARS, DirtyPoolMessage, parse_dirty_pool_message
from chalicelib.queue import DeadLetterQueue, DirtyQueue

NOW = datetime(2026, 11, 23, 12, 0, 1, tzinfo=UTC)
POOLS = [f"pool-{n:02d}" for n in range(23)]


def fifo_queue(aws: AwsClients) -> str:
    attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "false"}
    return str(aws.call("sqs", "create_queue", QueueName="dirty.fifo", Attributes=attributes)["QueueUrl"])


def drain(aws: AwsClients, url: str) -> list[dict[str, Any]]:
    """Every message on the queue: its body and its message group."""
    out: list[dict[str, Any]] = []
    while True:
        got = aws.call(
            "sqs", "receive_message", QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["MessageGroupId"]
        )
        if not got.get("Messages"):
            return out
        for message in got["Messages"]:
            out.append({**json.loads(message["Body"]), "group": message["Attributes"]["MessageGroupId"]})
            aws.call("sqs", "delete_message", QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_batch_sends_one_message_per_pool_ten_per_call(aws: AwsClients) -> None:
    # GIVEN the FIFO dirty queue
    url = fifo_queue(aws)
    queue = DirtyQueue(aws, url)
    aws.calls.clear()
    # WHEN the tick asks for 23 pools, one with jobs pending too long
    failed = queue.mark_dirty_batch(dict.fromkeys(POOLS, "tick"), NOW, {"pool-04": 3})
    # THEN three calls carry one message per pool, each in its pool's message group
    assert failed == {}
    assert aws.calls["sqs.SendMessageBatch"] == 3
    messages = drain(aws, url)
    assert sorted(m["pool"] for m in messages) == POOLS
    assert all(m["group"] == m["pool"] and m["reason"] == "tick" for m in messages)
    assert {m["pool"]: m.get("long_pending", 0) for m in messages if m.get("long_pending")} == {"pool-04": 3}


def test_batch_collapses_with_a_webhook_ask_in_the_same_window(aws: AwsClients) -> None:
    # GIVEN a webhook that just marked pool-00 dirty
    url = fifo_queue(aws)
    queue = DirtyQueue(aws, url)
    queue.mark_dirty("pool-00", "job 1 pending", NOW)
    # WHEN the tick's batch names it again in the same window
    assert queue.mark_dirty_batch(dict.fromkeys(POOLS[:2], "tick"), NOW) == {}
    # THEN pool-00 has one message (the webhook's), pool-01 the tick's
    assert sorted((m["pool"], m["reason"]) for m in drain(aws, url)) == [
        ("pool-00", "job 1 pending"),
        ("pool-01", "tick"),
    ]


class RefusingSqs:
    """SQS refusing part of the first batch (one entry) and all of the second (5xx on every attempt)."""

    def __init__(self) -> None:
        self.batches = 0

    def __call__(self, service: str, operation: str) -> dict[str, Any] | None:
        if operation != "SendMessageBatch":
            return None
        self.batches += 1
        if self.batches == 1:
            refused = {"Id": "pool-03", "Code": "InternalError", "SenderFault": False, "Message": "try again"}
            return {"Successful": [], "Failed": [refused], "ResponseMetadata": {"HTTPStatusCode": 200}}
        return fault("InternalFailure", 500)


def test_pools_sqs_refused_are_named_with_the_reason(aws: AwsClients) -> None:
    # GIVEN a queue whose first batch loses one entry and whose later calls all fail
    url = fifo_queue(aws)
    refusing = AwsClients(region="us-east-1", sleep=lambda _s: None, fault_injector=RefusingSqs())
    # WHEN the tick asks for 12 pools (two calls)
    failed = DirtyQueue(refusing, url).mark_dirty_batch(dict.fromkeys(POOLS[:12], "tick"), NOW)
    # THEN the refused entry and every pool of the failed call are named, each with what went wrong
    assert sorted(failed) == ["pool-03", "pool-10", "pool-11"]
    assert "InternalError" in failed["pool-03"] and "InternalFailure" in failed["pool-10"]


def test_what_the_queue_writes_is_what_the_consumer_and_the_redrive_read(aws: AwsClients) -> None:
    """One contract: `DirtyQueue` writes `DirtyPoolMessage` bodies; the dead-letter reader returns them."""
    # GIVEN a message with a reason longer than the model keeps, and one counting jobs pending too long
    url = fifo_queue(aws)
    queue = DirtyQueue(aws, url)
    queue.mark_dirty("pool-00", "x" * 2000, NOW)
    queue.mark_dirty_batch({"pool-01": "tick"}, NOW, {"pool-01": 4})
    # WHEN the messages are read through the dead-letter adapter (the same ReceiveMessage the redrive uses)
    letters = DeadLetterQueue(aws, url)
    received = letters.receive()
    for letter in received:
        letters.delete(letter)
    # THEN each body parses with the consumer's model: the reason cut to its limit, long_pending carried
    parsed = sorted((parse_dirty_pool_message(letter.body) for letter in received), key=lambda m: m.pool)
    assert parsed == [
        DirtyPoolMessage(pool="pool-00", reason="x" * DIRTY_REASON_MAX_CHARS),
        DirtyPoolMessage(pool="pool-01", reason="tick", long_pending=4),
    ]
    assert letters.receive() == []
