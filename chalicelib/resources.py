"""Names and schemas of every AWS resource the app uses: the one source of truth.

The app, the local bootstrap (tests, demo) and infra/ all read these, so they never drift.
Imports only the standard library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, get_args

# Environment variables the deployed app reads (set by infra/ and .chalice/config.json).
ENV_TABLE = "RUNNER_SCALER_TABLE"
ENV_QUEUE_URL = "RUNNER_SCALER_QUEUE_URL"
ENV_CONFIG_FILE = "RUNNER_SCALER_CONFIG"
ENV_CONFIG_PARAM = "RUNNER_SCALER_CONFIG_PARAM"
ENV_PREFIX = "RUNNER_SCALER_PREFIX"

DEFAULT_PREFIX = "runner-scaler"

# Table: single-table design; `pk`/`sk` strings, two sparse GSIs for per-pool queries.
TABLE_PK = "pk"
TABLE_SK = "sk"
TABLE_TTL_ATTRIBUTE = "expires_at"
GSI_POOL = "gsi1"  # gsi1pk = "POOL#<pool>#JOBS" | "POOL#<pool>#MACHINES"; gsi1sk = item key
GSI_POOL_PK = "gsi1pk"
GSI_POOL_SK = "gsi1sk"

# Queue: FIFO, one message group per pool, so one pool reconciles at a time.
QUEUE_SUFFIX = "-dirty.fifo"
DIRTY_WINDOW_SECONDS = 2  # at most one "pool dirty" message per pool per window
DLQ_SUFFIX = "-dirty-dlq.fifo"
#: Standard queue (Lambda destinations take no FIFO queue): asynchronous invocations (EventBridge rules,
#: the schedule, SNS) that failed every retry land here, with the event, instead of being dropped.
FAILED_EVENTS_SUFFIX = "-failed-events"
#: The `pool_dirty` function's timeout: `.chalice/config.json` sets it (both deploy paths package from it).
DIRTY_FUNCTION_TIMEOUT_SECONDS = 60
#: "Using Lambda with Amazon SQS" (AWS Lambda Developer Guide): "set the source queue's visibility timeout
#: to at least six times the timeout that you configure on your function", so that a message whose
#: invocation is throttled or slow is not handed to a second invocation while the first still runs.
QUEUE_VISIBILITY_TIMEOUT_SECONDS = 6 * DIRTY_FUNCTION_TIMEOUT_SECONDS

#: Seconds the launch lifecycle hook holds a new instance in Pending:Wait for the scaler (its heartbeat
#: timeout, infra/'s default); the boot script waits at least this long for its secret.
LAUNCH_HOOK_TIMEOUT_SECONDS = 600

#: The tick's repair steps, each run guarded and counted as `TickStepFailed` with this `step` dimension.
#: infra/ alarms on each: a CloudWatch alarm watches one exact dimension set ("Alarms on metrics",
#: Amazon CloudWatch User Guide), so the set of values must be known at synth.
TickStep = Literal["claim", "resolve", "heal", "hook check", "sweep", "certs"]
TICK_STEPS: tuple[TickStep, ...] = get_args(TickStep)

# Tags on EC2 / ASG / secrets (state kept on the resource under named constants).
TAG_POOL = "runner-scaler:pool"
TAG_DEPLOYMENT = "runner-scaler:deployment"
TAG_MANAGED = "runner-scaler:managed"


@dataclass(frozen=True)
class Names:
    """Concrete resource names for one deployment prefix."""

    prefix: str

    @property
    def table(self) -> str:
        return f"{self.prefix}-state"

    @property
    def queue(self) -> str:
        return f"{self.prefix}{QUEUE_SUFFIX}"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}{DLQ_SUFFIX}"

    @property
    def failed_events_queue(self) -> str:
        return f"{self.prefix}{FAILED_EVENTS_SUFFIX}"

    @property
    def base_certs_secret(self) -> str:
        return f"{self.prefix}/docker-base-certs"

    @property
    def gitlab_token_secret(self) -> str:
        return f"{self.prefix}/gitlab-api-token"

    @property
    def webhook_tokens_secret(self) -> str:
        return f"{self.prefix}/webhook-tokens"

    @property
    def config_parameter(self) -> str:
        return f"/{self.prefix}/config"

    def machine_secret(self, instance_id: str) -> str:
        return f"{self.prefix}/machines/{instance_id}"


def names_from_env(environ: dict[str, str] | None = None) -> Names:
    """Resource names of this deployment (only handler set-up calls this, never domain code)."""
    env = os.environ if environ is None else environ
    return Names(prefix=env.get(ENV_PREFIX, DEFAULT_PREFIX))


def table_definition(table_name: str) -> dict[str, object]:
    """CreateTable arguments, shared by the local bootstrap and infra/ (which mirrors them in CDK)."""
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": TABLE_PK, "AttributeType": "S"},
            {"AttributeName": TABLE_SK, "AttributeType": "S"},
            {"AttributeName": GSI_POOL_PK, "AttributeType": "S"},
            {"AttributeName": GSI_POOL_SK, "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": TABLE_PK, "KeyType": "HASH"},
            {"AttributeName": TABLE_SK, "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": GSI_POOL,
                "KeySchema": [
                    {"AttributeName": GSI_POOL_PK, "KeyType": "HASH"},
                    {"AttributeName": GSI_POOL_SK, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }


def queue_attributes(
    dead_letter_arn: str | None = None, delay_seconds: int = DIRTY_WINDOW_SECONDS
) -> dict[str, str]:
    """CreateQueue attributes of the dirty-pool FIFO queue (local stacks read at once: `delay_seconds=0`)."""
    attrs = {
        "FifoQueue": "true",
        "ContentBasedDeduplication": "false",
        "VisibilityTimeout": str(QUEUE_VISIBILITY_TIMEOUT_SECONDS),
        # Messages wait one de-duplication window, so the reconcile sees every event of its window.
        "DelaySeconds": str(delay_seconds),
        "MessageRetentionPeriod": "3600",
    }
    if dead_letter_arn:
        attrs["RedrivePolicy"] = f'{{"deadLetterTargetArn":"{dead_letter_arn}","maxReceiveCount":"5"}}'
    return attrs


# The machine secret carries its instance's ARN under this tag: the instance role may read a secret under
# `<prefix>/machines/` only when this tag equals `${ec2:SourceInstanceARN}` (the policy variable AWS sets on
# requests signed with an instance profile), so a machine reads its own secret only.
TAG_INSTANCE_ARN = "runner-scaler:instance-arn"
# SNS topic the CloudWatch alarms publish to and the app's `on_sns_message` handler subscribes to.
ALARM_TOPIC_SUFFIX = "-alarms"
