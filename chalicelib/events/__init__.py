"""Inbound events as pydantic models: GitLab webhook deliveries and the AWS events the app subscribes to.

Pure models and parsers (pydantic and the standard library). Payloads for fakes and tests are built in
toolkit.samples.
"""

from __future__ import annotations

from chalicelib.events.aws import (
    AlarmNotification,
    AlarmState,
    AwsEvent,
    DirtyPoolMessage,
    InstanceStateChangeEvent,
    LifecycleActionEvent,
    LifecycleTransition,
    RebalanceRecommendationEvent,
    SpotInterruptionEvent,
    UnknownAwsEvent,
    parse_alarm_notification,
    parse_cloudwatch_event,
    parse_dirty_pool_message,
)
from chalicelib.events.gitlab import (
    IgnoredEvent,
    JobHook,
    JobStatus,
    ParsedDelivery,
    PipelineHook,
    WebhookHeaders,
    event_identity,
    is_active,
    is_terminal,
    parse_gitlab_event,
    status_rank,
)

__all__ = [
    "AlarmNotification",
    "AlarmState",
    "AwsEvent",
    "DirtyPoolMessage",
    "IgnoredEvent",
    "InstanceStateChangeEvent",
    "JobHook",
    "JobStatus",
    "LifecycleActionEvent",
    "LifecycleTransition",
    "ParsedDelivery",
    "PipelineHook",
    "RebalanceRecommendationEvent",
    "SpotInterruptionEvent",
    "UnknownAwsEvent",
    "WebhookHeaders",
    "event_identity",
    "is_active",
    "is_terminal",
    "parse_alarm_notification",
    "parse_cloudwatch_event",
    "parse_dirty_pool_message",
    "parse_gitlab_event",
    "status_rank",
]
