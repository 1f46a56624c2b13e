"""SQS adapter for the "pool dirty" FIFO queue: the webhook's fast path to a reconcile; the tick's fan-out.

One message group per pool (reconciles of a pool never overlap), one message per pool per short window
(a burst of 500 job events yields a handful of reconciles). The same queue carries the webhook's asks to
resolve a pipeline's job tags (`ask_resolve`), so no webhook waits on GitLab. The only module that calls SQS;
every call goes through `AwsClients`. The message bodies are `events.aws.DirtyPoolMessage` and
`events.aws.ResolveTagsMessage`, the models its consumer reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from chalicelib.aws import AwsClients
from chalicelib.errors import AwsCallError
from chalicelib.events.aws import DIRTY_REASON_MAX_CHARS, DirtyPoolMessage, ResolveAsk, ResolveTagsMessage
from chalicelib.resources import DIRTY_WINDOW_SECONDS

#: Message group of a pipeline's resolve asks: `resolve-<pipeline id>`. A pool named so would share the group
#: with them, which only makes the two wait for each other (the body tells them apart).
RESOLVE_GROUP_PREFIX = "resolve-"

#: SendMessageBatch takes at most this many entries per call (SQS API reference).
_ENTRIES_PER_BATCH = 10
#: ReceiveMessage returns at most this many messages per call (SQS API reference, MaxNumberOfMessages).
_RECEIVE_MAX = 10


def queue_url(aws: AwsClients, name: str) -> str:
    """The URL of the queue called `name` (GetQueueUrl), for a container that was not given it."""
    return str(aws.call("sqs", "get_queue_url", QueueName=name)["QueueUrl"])


class PoolQueue(Protocol):
    """The dirty queue as use cases see it (`DirtyQueue` on SQS; the simulator's queue in sim/)."""

    def mark_dirty(self, pool: str, reason: str, now: datetime) -> None: ...

    def ask_resolve(self, project_id: int, pipeline_id: int, job_id: int, now: datetime) -> None: ...

    def mark_dirty_batch(
        self, reasons: Mapping[str, str], now: datetime, long_pending: Mapping[str, int] | None = None
    ) -> dict[str, str]: ...


class DirtyQueue:
    """`PoolQueue` on the SQS FIFO queue."""

    def __init__(self, aws: AwsClients, queue_url: str, window_seconds: int = DIRTY_WINDOW_SECONDS) -> None:
        self._aws = aws
        self._queue_url = queue_url
        self._window = max(1, window_seconds)

    def mark_dirty(self, pool: str, reason: str, now: datetime) -> None:
        """Ask for a reconcile of `pool`; repeated asks within one window collapse into one message."""
        self._aws.call("sqs", "send_message", QueueUrl=self._queue_url, **self._message(pool, reason, now))

    def ask_resolve(self, project_id: int, pipeline_id: int, job_id: int, now: datetime) -> None:
        """Ask for a pipeline's job tags to be resolved (`chalicelib.jobs.resolve_unrouted`) by the queue's
        consumer, out of the webhook's request. One message per pipeline per window, in a message group of
        its own (pipelines resolve in parallel, never in a pool's group); it waits the queue's delay, as a
        pool's does, so the jobs of its window are stored when it is read."""
        window = int(now.timestamp()) // self._window
        ask = ResolveAsk(project_id=project_id, pipeline_id=pipeline_id, job_id=job_id)
        self._aws.call(
            "sqs",
            "send_message",
            QueueUrl=self._queue_url,
            MessageBody=ResolveTagsMessage(resolve=ask).to_body(),
            MessageGroupId=f"{RESOLVE_GROUP_PREFIX}{pipeline_id}",
            MessageDeduplicationId=f"{RESOLVE_GROUP_PREFIX}{project_id}-{pipeline_id}-{window}",
        )

    def mark_dirty_batch(
        self, reasons: Mapping[str, str], now: datetime, long_pending: Mapping[str, int] | None = None
    ) -> dict[str, str]:
        """Ask for one reconcile of each pool in `reasons` (pool -> why), ten messages per call.

        Returns pool -> error for each pool SQS did not take (a whole failed call included), so the caller
        can report it and the next tick asks again. Each message collapses with any other ask for its pool
        in the same window, as `mark_dirty`'s do. `long_pending` (jobs pending too long, per pool) rides
        along for the reconcile, which alone sees whether the pool had room for them.
        """
        names = list(reasons)
        failed: dict[str, str] = {}
        for start in range(0, len(names), _ENTRIES_PER_BATCH):
            chunk = names[start : start + _ENTRIES_PER_BATCH]
            entries = [
                {"Id": pool, **self._message(pool, reasons[pool], now, (long_pending or {}).get(pool, 0))}
                for pool in chunk
            ]
            try:
                answer = self._aws.call(
                    "sqs", "send_message_batch", QueueUrl=self._queue_url, Entries=entries
                )
            except AwsCallError as exc:
                failed.update((pool, str(exc)) for pool in chunk)
                continue
            for entry in answer.get("Failed", []):
                failed[str(entry["Id"])] = f"{entry.get('Code', '')}: {entry.get('Message', '')}"
        return failed

    def _message(self, pool: str, reason: str, now: datetime, long_pending: int = 0) -> dict[str, Any]:
        window = int(now.timestamp()) // self._window
        body = DirtyPoolMessage(pool=pool, reason=reason[:DIRTY_REASON_MAX_CHARS], long_pending=long_pending)
        return {
            "MessageBody": body.to_body(),
            "MessageGroupId": pool,
            "MessageDeduplicationId": f"{pool}-{window}",
        }


@dataclass(frozen=True)
class DeadLetter:
    """One message received from the dead-letter queue; `receipt` deletes it."""

    body: str
    receipt: str = field(repr=False)
    message_id: str = ""


class DeadLetterQueue:
    """The "pool dirty" queue's dead-letter queue, read by the alarm that redrives it."""

    def __init__(self, aws: AwsClients, queue_url: str) -> None:
        self._aws = aws
        self._queue_url = queue_url

    def receive(self) -> list[DeadLetter]:
        """Up to ten messages, without waiting (empty: the queue is drained, or looks so for now)."""
        got = self._aws.call(
            "sqs",
            "receive_message",
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=_RECEIVE_MAX,
            WaitTimeSeconds=0,
        )
        return [
            DeadLetter(str(m["Body"]), str(m["ReceiptHandle"]), str(m.get("MessageId", "")))
            for m in got.get("Messages", [])
        ]

    def delete(self, letter: DeadLetter) -> None:
        self._aws.call("sqs", "delete_message", QueueUrl=self._queue_url, ReceiptHandle=letter.receipt)
