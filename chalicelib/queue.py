"""SQS adapter for the "pool dirty" FIFO queue: the webhook's fast path to a reconcile.

One message group per pool (reconciles of a pool never overlap), one message per pool per short window
(a burst of 500 job events yields a handful of reconciles). Every call goes through `AwsClients`.
"""

from __future__ import annotations

import json
from datetime import datetime

from chalicelib.aws import AwsClients
from chalicelib.resources import DIRTY_WINDOW_SECONDS


class DirtyQueue:
    def __init__(self, aws: AwsClients, queue_url: str, window_seconds: int = DIRTY_WINDOW_SECONDS) -> None:
        self._aws = aws
        self._queue_url = queue_url
        self._window = max(1, window_seconds)

    def mark_dirty(self, pool: str, reason: str, now: datetime) -> None:
        """Ask for a reconcile of `pool`; repeated asks within one window collapse into one message."""
        window = int(now.timestamp()) // self._window
        self._aws.call(
            "sqs",
            "send_message",
            QueueUrl=self._queue_url,
            MessageBody=json.dumps({"pool": pool, "reason": reason}),
            MessageGroupId=pool,
            MessageDeduplicationId=f"{pool}-{window}",
        )
