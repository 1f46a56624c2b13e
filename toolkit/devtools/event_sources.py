"""The AWS services that invoke the app's handlers in the demo: EventBridge (schedules, rules), SQS event
source mappings, SNS (CloudWatch alarms) and Secrets Manager rotation.

Each plays its service's part with the event shapes Lambda receives, invoking the REAL handlers through
`LocalApp`. All of it runs in the demo's one platform thread, as the simulated machines do, so the order of
events is clear. May import chalicelib and toolkit.devtools; not imported by the Lambda path.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.aws import AwsClients
from chalicelib.config import Config, Pool
from chalicelib.errors import AwsCallError
from chalicelib.metrics import NAMESPACE
from chalicelib.resources import Names
from toolkit.devtools.alarms import CloudWatch, StateChange, pool_dimensions
from toolkit.devtools.demo_report import clock_text
from toolkit.devtools.local_app import (
    Handler,
    LocalApp,
    eventbridge_event,
    matches_pattern,
    next_fire,
    scheduled_event,
    sns_event,
    sqs_event,
)
from toolkit.devtools.local_aws import ACCOUNT, LocalAws
from toolkit.devtools.machines import SimulatedMachines

logger = logging.getLogger(__name__)

#: Lifecycle hook names the demo's groups would carry (infra/ attaches hooks of these kinds).
LAUNCH_HOOK = "runner-scaler-launching"
TERMINATE_HOOK = "runner-scaler-terminating"


@dataclass
class _Queue:
    handler: str
    url: str
    arn: str
    batch_size: int
    visibility_s: int


class EventSources:
    """EventBridge schedules and rules, SQS event source mappings, and CloudWatch alarms published to SNS.

    Implements the machines' `Lifecycle`: launch and terminate lifecycle actions go to every `on_cw_event`
    handler whose rule pattern matches, as EventBridge routes them. What the handlers answer feeds the
    metrics CloudWatch alarms on (reconcile errors per pool, tick errors, dead letters).
    """

    def __init__(
        self,
        app: LocalApp,
        aws: AwsClients,
        config: Config,
        names: Names,
        cloudwatch: CloudWatch,
        *,
        region: str,
        speed: float,
    ) -> None:
        self._app = app
        self._aws = aws
        self._region = region
        self._speed = speed
        self._cloudwatch = cloudwatch
        self._platforms = {p.name: p.platform.value for p in config.pools}
        self._next_run: dict[str, datetime] = {}  # schedule handler -> when EventBridge fires it next
        self._queues = [q for h in app.handlers_of("sqs") if (q := self._queue(h)) is not None]
        self._dead_letters = self._queue_url(names.dead_letter_queue)
        self._dead_letter_queue = names.dead_letter_queue
        self._topics = {h.name: self._topic(h.source.topic) for h in app.handlers_of("sns")}
        self.alarm_changes: list[StateChange] = []

    # -- schedules and queues -------------------------------------------------------------------

    def poll(self, now: datetime) -> None:
        for handler in self._app.handlers_of("schedule"):
            due = self._next_run.setdefault(handler.name, now)  # a new rule fires at once
            if due > now:
                continue
            following = next_fire(handler.source.schedule_expression, due)
            while following <= now:  # a step longer than the period: one run now covers what it skipped
                following = next_fire(handler.source.schedule_expression, following)
            self._next_run[handler.name] = following
            answer = self._app.invoke(handler.name, scheduled_event(handler.name, now, self._region))
            self._count_errors(handler.name, answer, now)
        for queue in self._queues:
            self._drain(queue, now)
        self._alarms(now)

    def _count_errors(self, function: str, answer: Any, now: datetime) -> None:
        """Lambda's Errors metric for a crash; the app's ReconcileErrors per pool from a tick's answer."""
        if answer is None:
            self._cloudwatch.put("AWS/Lambda", "Errors", (("FunctionName", function),), 1, now)
            return
        pools = answer.get("pools", {}) if isinstance(answer, dict) else {}
        for pool, result in pools.items():
            if isinstance(result, dict) and result.get("errors"):
                self._reconcile_error(pool, len(result["errors"]), now)

    def _reconcile_error(self, pool: str, count: int, now: datetime) -> None:
        dims = pool_dimensions(pool, self._platforms.get(pool, ""))
        self._cloudwatch.put(NAMESPACE, "ReconcileErrors", dims, count, now)

    def _queue(self, handler: Handler) -> _Queue | None:
        source = handler.source
        name = source.queue or str(source.queue_arn or "").rsplit(":", 1)[-1]
        try:
            url = str(self._aws.call("sqs", "get_queue_url", QueueName=name)["QueueUrl"])
            attributes = self._aws.call(
                "sqs", "get_queue_attributes", QueueUrl=url, AttributeNames=["QueueArn", "VisibilityTimeout"]
            )["Attributes"]
        except AwsCallError as exc:
            logger.warning(
                "queue of an SQS handler not found", extra={"handler": handler.name, "error": str(exc)}
            )
            return None
        # A failed message comes back after the queue's visibility timeout, in simulated time.
        visibility = max(1, math.ceil(int(attributes.get("VisibilityTimeout", 30)) / self._speed))
        return _Queue(handler.name, url, str(attributes["QueueArn"]), min(10, source.batch_size), visibility)

    def _queue_url(self, name: str) -> str | None:
        try:
            return str(self._aws.call("sqs", "get_queue_url", QueueName=name)["QueueUrl"])
        except AwsCallError:
            return None

    def _drain(self, queue: _Queue, now: datetime, max_batches: int = 5) -> None:
        """What Lambda's SQS poller does: receive a batch, invoke, delete what the handler did not fail."""
        for _ in range(max_batches):
            got = self._aws.call(
                "sqs",
                "receive_message",
                QueueUrl=queue.url,
                MaxNumberOfMessages=queue.batch_size,
                VisibilityTimeout=queue.visibility_s,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
                WaitTimeSeconds=0,
            )
            messages = got.get("Messages", [])
            if not messages:
                return
            answer = self._app.invoke(queue.handler, sqs_event(messages, queue.arn, self._region))
            if answer is None:
                return  # the function failed: the whole batch comes back after the visibility timeout
            failed = {item["itemIdentifier"] for item in answer.get("batchItemFailures", [])}
            for message in messages:
                if message["MessageId"] in failed:
                    self._reconcile_error(_pool_of(message), 1, now)
            done = [m for m in messages if m["MessageId"] not in failed]
            if done:
                self._aws.call(
                    "sqs",
                    "delete_message_batch",
                    QueueUrl=queue.url,
                    Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done)],
                )

    # -- CloudWatch alarms to SNS ---------------------------------------------------------------

    def _topic(self, name: str) -> str:
        """The alarm topic's ARN (created, as infra/ does, so the ARN is the one SNS would give)."""
        return str(self._aws.call("sns", "create_topic", Name=name)["TopicArn"])

    def _alarms(self, now: datetime) -> None:
        if self._dead_letters is not None and self._cloudwatch.due(now):
            depth = self._aws.call(
                "sqs",
                "get_queue_attributes",
                QueueUrl=self._dead_letters,
                AttributeNames=["ApproximateNumberOfMessages"],
            )["Attributes"].get("ApproximateNumberOfMessages", "0")
            dims = (("QueueName", self._dead_letter_queue),)
            self._cloudwatch.put_max("AWS/SQS", "ApproximateNumberOfMessagesVisible", dims, float(depth), now)
        for change in self._cloudwatch.evaluate(now):
            self.alarm_changes.append(change)
            message = self._cloudwatch.notification(change, self._region, ACCOUNT)
            subject = f'{change.new}: "{change.alarm.spec.name}" in {self._region}'
            for handler, topic_arn in self._topics.items():
                self._app.invoke(handler, sns_event(topic_arn, subject, message, now))

    # -- EventBridge rules ----------------------------------------------------------------------

    def _lifecycle_event(
        self, launching: bool, pool: Pool, instance_id: str, now: datetime
    ) -> dict[str, Any]:
        kind = "launch" if launching else "terminate"
        return eventbridge_event(
            "aws.autoscaling",
            f"EC2 Instance-{kind} Lifecycle Action",
            {
                "LifecycleActionToken": str(uuid.uuid4()),
                "AutoScalingGroupName": pool.asg,
                "LifecycleHookName": LAUNCH_HOOK if launching else TERMINATE_HOOK,
                "EC2InstanceId": instance_id,
                "LifecycleTransition": "autoscaling:EC2_INSTANCE_"
                + ("LAUNCHING" if launching else "TERMINATING"),
            },
            [
                f"arn:aws:autoscaling:{self._region}:{ACCOUNT}:autoScalingGroup:{uuid.uuid4()}"
                f":autoScalingGroupName/{pool.asg}"
            ],
            now,
            self._region,
        )

    def route(self, event: dict[str, Any]) -> int:
        """Send an EventBridge event to each `on_cw_event` handler whose pattern matches; how many took it."""
        targets = [
            h for h in self._app.handlers_of("cw_event") if matches_pattern(h.source.event_pattern, event)
        ]
        for handler in targets:
            self._app.invoke(handler.name, event)
        return len(targets)

    @property
    def has_lifecycle(self) -> bool:
        """Whether the app handles launch lifecycle actions (it then creates each machine's runner)."""
        probe = self._lifecycle_event(True, _PROBE_POOL, "i-00000000000000000", datetime.now(UTC))
        return any(matches_pattern(h.source.event_pattern, probe) for h in self._app.handlers_of("cw_event"))

    def launched(self, pool: Pool, instance_id: str, now: datetime) -> None:
        self.route(self._lifecycle_event(True, pool, instance_id, now))

    def terminated(self, pool: Pool, instance_id: str, now: datetime) -> None:
        self.route(self._lifecycle_event(False, pool, instance_id, now))


_PROBE_POOL = Pool(name="probe", asg="probe", tags=("probe",), max_instances=1)


def _pool_of(message: dict[str, Any]) -> str:
    """The pool a dirty-pool message names (its MessageGroupId is the pool too)."""
    try:
        return str(json.loads(message["Body"])["pool"])
    except (ValueError, KeyError, TypeError):
        return str(message.get("Attributes", {}).get("MessageGroupId", ""))


# --------------------------------------------------------------------------------------------------
# Secrets Manager rotation of the fleet's base certs

#: The `@app.lambda_function` Secrets Manager calls to rotate the base certs (infra/ wires this name).
ROTATION_HANDLER = "rotate_base_certs"
ROTATION_STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")


@dataclass
class Rotation:
    """One rotation Secrets Manager ran: when, why, and how its steps went."""

    token: str
    at_s: float
    reason: str
    result: str = "queued"  # queued | rotated | failed at <step>
    ca_sha256: str = ""


class RotationService:
    """Secrets Manager's part in rotating the base certs, which moto cannot play (it would run the function in
    Docker): RotateSecret stages a value-less AWSPENDING version, then the rotation function runs the four
    steps, one invocation each. Rotations happen when infra deploys (rotate immediately), at the trace's
    midpoint (the schedule, compressed), and whenever the app itself calls RotateSecret.
    """

    def __init__(
        self, app: LocalApp, aws: AwsClients, local_aws: LocalAws, names: Names, elapsed: Callable[[], float]
    ) -> None:
        self._app = app
        self._aws = aws
        self._local_aws = local_aws
        self._elapsed = elapsed
        self.secret = names.base_certs_secret
        self.enabled = any(h.name == ROTATION_HANDLER for h in app.handlers_of("lambda"))
        self._function_arn = (
            f"arn:aws:lambda:{local_aws.region}:{ACCOUNT}:function:{names.prefix}-{ROTATION_HANDLER}"
        )
        self._queue: deque[Rotation] = deque()
        self.rotations: list[Rotation] = []
        self._seen: tuple[str, str] = ("", "")  # (AWSCURRENT version id, its description for the view)

    def deploy(self, app_aws: AwsClients) -> None:
        """What infra/ does: a placeholder secret whose schedule rotates immediately; the app's RotateSecret
        calls answered as Secrets Manager would."""
        if not self.enabled:
            return
        self._aws.call(
            "secretsmanager",
            "create_secret",
            Name=self.secret,
            SecretString=uuid.uuid4().hex + uuid.uuid4().hex,
            Description="Fleet Docker TLS CA and client certificate, rotated by rotate_base_certs.",
        )
        self._local_aws.intercept(app_aws, "secretsmanager", "RotateSecret", self._rotate_secret)
        self.rotate("rotate immediately on deploy")
        self.run_queued()

    def _rotate_secret(self, request: dict[str, Any]) -> dict[str, Any]:
        token = str(request.get("ClientRequestToken") or uuid.uuid4())
        self.rotate("RotateSecret by the app", token)
        return {"ARN": self._arn(), "Name": self.secret, "VersionId": token}

    def rotate(self, reason: str, token: str | None = None) -> None:
        """Stage a rotation; its steps run at the platform's next move (Secrets Manager invokes later)."""
        rotation = Rotation(token or str(uuid.uuid4()), self._elapsed(), reason)
        self._local_aws.stage_rotation(self.secret, rotation.token, self._function_arn, days=30)
        self._queue.append(rotation)
        self.rotations.append(rotation)

    def run_queued(self) -> None:
        while self._queue:
            rotation = self._queue.popleft()
            rotation.result = "rotated"
            for step in ROTATION_STEPS:
                event = {"SecretId": self._arn(), "ClientRequestToken": rotation.token, "Step": step}
                if self._app.invoke(ROTATION_HANDLER, event) is None:
                    rotation.result = f"failed at {step}"
                    break
            rotation.ca_sha256 = self._current_ca()[1]

    def _arn(self) -> str:
        return str(self._aws.call("secretsmanager", "describe_secret", SecretId=self.secret)["ARN"])

    def _current_ca(self) -> tuple[str, str]:
        """(AWSCURRENT version id, CA fingerprint): parsed once per version."""
        from chalicelib.certs import fingerprint
        from chalicelib.rotation import parse_base_certs

        got = self._aws.call(
            "secretsmanager", "get_secret_value", SecretId=self.secret, VersionStage="AWSCURRENT"
        )
        if got["VersionId"] != self._seen[0]:
            base = parse_base_certs(got["SecretString"])
            self._seen = (got["VersionId"], fingerprint(base.ca)[:11] if base else "")
        return self._seen

    def describe(self) -> str:
        """One line for the live view: the CA in use, the rotations so far, the last one's outcome."""
        if not self.enabled:
            return "TLS: no rotation handler in app.py"
        done = [r for r in self.rotations if r.result != "queued"]
        if not done:
            return "TLS: no rotation yet"
        last = done[-1]
        return (
            f"TLS: CA {last.ca_sha256 or '-'} · {len(done)} rotation(s), last at {clock_text(last.at_s)} "
            f"({last.reason}): {last.result}"
        )


# --------------------------------------------------------------------------------------------------
# EC2 Spot interruptions

SPOT_WARNING_SECONDS = 120.0  # EC2 warns two minutes before it reclaims a Spot instance


#: How long past its planned time a Spot warning waits for a busy victim before it takes an idle one.
SPOT_PATIENCE = 300.0


@dataclass
class SpotInterruption:
    at_s: float
    warned_at_s: float | None = None
    instance_id: str = ""
    pool: str = ""
    reclaim_at_s: float | None = None
    reclaimed: bool = False


class SpotInterruptions:
    """EC2's part in a Spot interruption: the two-minute warning to EventBridge, then the instance is taken
    back (terminated without decrementing its group, so Auto Scaling launches a replacement).

    The victim is a machine of a `spot = true` pool, busy if one is: the hard case for the scaler.
    """

    def __init__(
        self,
        sources: EventSources,
        machines: SimulatedMachines,
        aws: AwsClients,
        config: Config,
        at_s: list[float],
        elapsed: Callable[[], float],
        *,
        region: str,
    ) -> None:
        self._sources = sources
        self._machines = machines
        self._aws = aws
        self._spot_pools = {p.name for p in config.pools if p.spot}
        self._elapsed = elapsed
        self._region = region
        self.planned = [SpotInterruption(at) for at in sorted(at_s)] if self._spot_pools else []

    def poll(self, now: datetime) -> None:
        elapsed = self._elapsed()
        for spot in self.planned:
            if not spot.instance_id and elapsed >= spot.at_s:
                self._warn(spot, now)
            elif spot.reclaim_at_s is not None and not spot.reclaimed and elapsed >= spot.reclaim_at_s:
                self._reclaim(spot)

    def _warn(self, spot: SpotInterruption, now: datetime) -> None:
        """Warn a Spot machine whose job outlasts the warning (waiting up to `SPOT_PATIENCE` for one), else
        any Spot machine that is up."""
        up = [m for m in self._machines.live() if m.pool in self._spot_pools and m.runner_id is not None]
        reclaim_at = now + timedelta(seconds=SPOT_WARNING_SECONDS)
        busy = [m for m in up if any(ends > reclaim_at for ends in m.running.values())]  # still busy then
        late = self._elapsed() - spot.at_s >= SPOT_PATIENCE
        candidates = busy or (up if late else [])
        if not candidates:
            return  # try again at the next step
        victim = max(candidates, key=lambda m: (max(m.running.values(), default=now), m.appeared_at))
        spot.warned_at_s = self._elapsed()
        spot.instance_id, spot.pool = victim.instance_id, victim.pool
        spot.reclaim_at_s = self._elapsed() + SPOT_WARNING_SECONDS
        self._sources.route(
            eventbridge_event(
                "aws.ec2",
                "EC2 Spot Instance Interruption Warning",
                {"instance-id": victim.instance_id, "instance-action": "terminate"},
                [f"arn:aws:ec2:{self._region}:{ACCOUNT}:instance/{victim.instance_id}"],
                now,
                self._region,
            )
        )

    def _reclaim(self, spot: SpotInterruption) -> None:
        spot.reclaimed = True
        self._machines.reclaim(spot.instance_id)
        try:
            self._aws.call(
                "autoscaling",
                "terminate_instance_in_auto_scaling_group",
                InstanceId=spot.instance_id,
                ShouldDecrementDesiredCapacity=False,
            )
        except AwsCallError as exc:
            logger.info(
                "Spot victim already gone", extra={"instance_id": spot.instance_id, "error": str(exc)}
            )

    def describe(self) -> str:
        done = [s for s in self.planned if s.instance_id]
        if not self.planned:
            return ""
        parts = [
            f"{s.instance_id} ({s.pool}) {'reclaimed' if s.reclaimed else 'warned'} at "
            f"{clock_text(s.warned_at_s or s.at_s)}"
            for s in done
        ]
        return f"spot: {'; '.join(parts) or 'none yet'} ({len(self.planned)} planned)"
