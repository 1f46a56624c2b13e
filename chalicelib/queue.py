"""SQS adapter for the "pool dirty" FIFO queue: the webhook's fast path to a reconcile; the tick's fan-out.

One message group per pool (reconciles of a pool never overlap), one message per pool per short window
(a burst of 500 job events yields a handful of reconciles). Every call goes through `AwsClients`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from chalicelib.aws import AwsClients
from chalicelib.errors import AwsCallError
from chalicelib.resources import DIRTY_WINDOW_SECONDS

#: SendMessageBatch takes at most this many entries per call (SQS API reference).
_ENTRIES_PER_BATCH = 10


class DirtyQueue:
    def __init__(self, aws: AwsClients, queue_url: str, window_seconds: int = DIRTY_WINDOW_SECONDS) -> None:
        self._aws = aws
        self._queue_url = queue_url
        self._window = max(1, window_seconds)

    def mark_dirty(self, pool: str, reason: str, now: datetime) -> None:
        """Ask for a reconcile of `pool`; repeated asks within one window collapse into one message."""
        self._aws.call("sqs", "send_message", QueueUrl=self._queue_url, **self._message(pool, reason, now))

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
        body: dict[str, Any] = {"pool": pool, "reason": reason}
        if long_pending:
            body["long_pending"] = long_pending
        return {
            "MessageBody": json.dumps(body),
            "MessageGroupId": pool,
            "MessageDeduplicationId": f"{pool}-{window}",
        }
