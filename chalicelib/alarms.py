"""Use case: react to trouble the scaler can detect: CloudWatch alarms (via SNS) and failed launches.

Queue-age and long-pending alarms reconcile every pool at once; dead letters are moved back to the queue as
what they were (pool dirty, or resolve ask); launch failures record a fault that steers the pool to another
instance type (or to on-demand) for a while, and the alarm's OK clears it. Given its `Ports`; imports use
cases and ports, never the wiring; no boto3.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chalicelib.config import Config, Pool
from chalicelib.errors import MalformedEventError
from chalicelib.events.aws import (
    AlarmNotification,
    AlarmState,
    LaunchUnsuccessfulEvent,
    ResolveTagsMessage,
    parse_alarm_notification,
    parse_queue_message,
)
from chalicelib.metrics import Metrics
from chalicelib.ports import Ports
from chalicelib.store import Fault, Store

logger = logging.getLogger(__name__)

FAULT_BACKOFF = timedelta(minutes=30)
#: Fault kinds `record_launch_failure` and the launch alarms write (read by `capacity.fallback`).
CAPACITY_FAULTS = ("instance_type", "spot", "zone", "launch")
REDRIVE_LIMIT = 100
_RECONCILE_METRICS = frozenset({"ApproximateAgeOfOldestMessage", "LongPendingJobs", "PendingJobs"})
_LAUNCH_METRICS = frozenset({"TriggeredRules", "LaunchFailures", "GroupPendingInstances"})
_DLQ_METRICS = frozenset({"ApproximateNumberOfMessagesVisible"})
# "We currently do not have sufficient m7i.large capacity ..." / "... InsufficientInstanceCapacity ..."
_INSTANCE_TYPE = re.compile(r"\b([a-z][a-z0-9-]*\d[a-z0-9-]*\.[0-9]*[a-z0-9]+)\b")


@dataclass
class AlarmOutcome:
    alarm: str
    state: str
    action: str
    pools: list[str] = field(default_factory=list)
    redriven: int = 0
    notes: list[str] = field(default_factory=list)


def handle_alarm_message(ports: Ports, message: str, owner: str) -> dict[str, Any]:
    """One SNS message: parse the alarm (malformed: logged and dropped, never retried), then act on it."""
    try:
        alarm = parse_alarm_notification(message)
    except MalformedEventError as exc:
        logger.error("dropping malformed alarm message", extra={"reason": exc.reason})
        return {"action": "dropped", "reason": exc.reason}
    outcome = react(ports, alarm, owner)
    logger.info(
        "alarm handled", extra={"alarm": outcome.alarm, "state": outcome.state, "action": outcome.action}
    )
    return outcome.__dict__


def react(ports: Ports, alarm: AlarmNotification, owner: str) -> AlarmOutcome:
    metric = (alarm.trigger.metric_name if alarm.trigger else None) or ""
    pools = _pools_named(ports.config, alarm)
    outcome = AlarmOutcome(alarm.alarm_name, str(alarm.new_state_value), "none", [p.name for p in pools])
    if alarm.new_state_value is AlarmState.OK:
        if metric in _LAUNCH_METRICS:
            for pool in pools:
                # Only the capacity faults this alarm is about: a pool's "prepare" fault (machines cannot be
                # prepared) has its own backoff, and clearing it early would restart the relaunch loop.
                ports.store.clear_faults(pool.name, CAPACITY_FAULTS)
            outcome.action = "faults cleared"
            _reconcile(ports, pools, owner)
        return outcome
    if alarm.new_state_value is not AlarmState.ALARM:
        return outcome
    if metric in _DLQ_METRICS and _queue_named(alarm) in (None, ports.names.dead_letter_queue):
        outcome.redriven = _redrive(ports)
        outcome.action = "dead letters redriven"
        _reconcile(ports, ports.config.pools, owner)
    elif metric in _LAUNCH_METRICS:
        now = ports.now()
        for pool in pools:
            ports.store.put_fault(Fault(pool.name, "launch", "", now + FAULT_BACKOFF, alarm.alarm_name))
        outcome.action = "launch fault recorded"
        _reconcile(ports, pools, owner)
    elif metric in _RECONCILE_METRICS:
        outcome.action = "reconciled"
        _reconcile(ports, pools, owner)
    else:
        outcome.notes.append(f"no automatic reaction to {metric or 'this alarm'}; see its runbook")
    return outcome


def record_launch_failure(
    config: Config, store: Store, metrics: Metrics, event: LaunchUnsuccessfulEvent, now: datetime
) -> Fault | None:
    """Turn Auto Scaling's "launch unsuccessful" message into a fault the next reconcile steers around."""
    pool = next((p for p in config.pools if p.asg == event.detail.auto_scaling_group_name), None)
    if pool is None:
        return None
    message = event.detail.status_message
    if "spot" in message.lower():
        fault = Fault(pool.name, "spot", "", now + FAULT_BACKOFF, message)
    else:
        named = [t for t in _INSTANCE_TYPE.findall(message) if t in pool.instance_types]
        kind, detail = ("instance_type", named[0]) if named else ("launch", "")
        fault = Fault(pool.name, kind, detail, now + FAULT_BACKOFF, message)
    store.put_fault(fault)
    metrics.emit_count("LaunchFailures", 1, pool.name)
    return fault


def _pools_named(config: Config, alarm: AlarmNotification) -> list[Pool]:
    """The pools an alarm is about: its `pool` or `AutoScalingGroupName` dimension, else every pool."""
    dimensions = {d.name: d.value for d in (alarm.trigger.dimensions if alarm.trigger else [])}
    if "pool" in dimensions:
        return [p for p in config.pools if p.name == dimensions["pool"]]
    if "AutoScalingGroupName" in dimensions:
        return [p for p in config.pools if p.asg == dimensions["AutoScalingGroupName"]]
    return list(config.pools)


def _queue_named(alarm: AlarmNotification) -> str | None:
    """The queue an SQS alarm watches (its `QueueName` dimension). The failed-events queue's depth alarm
    uses the same metric as the dead-letter queue's, and its letters are Lambda invocation records, not
    "pool dirty" messages: only the latter are redriven."""
    dimensions = {d.name: d.value for d in (alarm.trigger.dimensions if alarm.trigger else [])}
    return dimensions.get("QueueName")


def _reconcile(ports: Ports, pools: Sequence[Pool], owner: str) -> None:
    reconciler = ports.reconciler(owner)
    for pool in pools:
        reconciler.reconcile_pool(pool, ports.now())


def _redrive(ports: Ports) -> int:
    """Move dead-lettered messages back (bounded), each as what it was: a "pool dirty" message (its reconcile
    is idempotent) or a webhook's resolve ask (resolving a pipeline's tags again changes nothing resolved)."""
    dead_letters = ports.open_dead_letters()
    moved = 0
    while moved < REDRIVE_LIMIT:
        letters = dead_letters.receive()
        if not letters:
            break
        for letter in letters:
            try:
                message = parse_queue_message(letter.body)
                if isinstance(message, ResolveTagsMessage):
                    ask = message.resolve
                    ports.queue.ask_resolve(ask.project_id, ask.pipeline_id, ask.job_id, ports.now())
                else:
                    pool = ports.config.pool(message.pool).name
                    ports.queue.mark_dirty(pool, "redriven from the dead-letter queue", ports.now())
            except (MalformedEventError, KeyError):
                logger.error(
                    "dead letter is neither a pool we have nor a resolve ask; deleted",
                    extra={"message_id": letter.message_id},
                )
            dead_letters.delete(letter)
            moved += 1
    return moved
