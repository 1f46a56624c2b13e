"""AWS events as frozen pydantic models: EventBridge (lifecycle, Spot, EC2 state), alarms, SQS bodies.

Pure: imports pydantic, the standard library and chalicelib.errors; no boto3. Shapes follow the EC2 Auto
Scaling event reference, the EC2 user guide (Spot interruption, rebalance) and CloudWatch alarm notifications.
The envelope mirrors powertools' EventBridgeModel field for field, but is defined here: importing powertools'
parser models loads all ~30 of them (about 150 ms at cold start, measured), and its SNS model rejects
notifications whose URLs are not real URLs, as in AWS's own test payloads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from chalicelib.errors import MalformedEventError
from chalicelib.events.timestamps import Timestamp

_ModelT = TypeVar("_ModelT", bound=BaseModel)


def _none_as_empty_list(value: Any) -> Any:
    return [] if value is None else value


class _Model(BaseModel):
    """Lenient about fields we do not read, immutable, and readable by AWS's names or ours."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class _EventBridgeEvent(_Model):
    """The EventBridge envelope every event shares (same fields as powertools' EventBridgeModel)."""

    version: str
    id: str
    source: str
    account: str
    time: Timestamp
    region: str
    detail_type: str = Field(alias="detail-type")
    resources: Annotated[list[str], BeforeValidator(_none_as_empty_list)] = Field(default_factory=list)
    replay_name: str | None = Field(default=None, alias="replay-name")


LAUNCH_LIFECYCLE_ACTION = "EC2 Instance-launch Lifecycle Action"
TERMINATE_LIFECYCLE_ACTION = "EC2 Instance-terminate Lifecycle Action"
SPOT_INTERRUPTION_WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE_RECOMMENDATION = "EC2 Instance Rebalance Recommendation"
INSTANCE_STATE_CHANGE = "EC2 Instance State-change Notification"


class LifecycleTransition(StrEnum):
    """The two lifecycle hooks an Auto Scaling group can hold an instance in."""

    LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
    TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"


class LifecycleActionDetail(_Model):
    """`detail` of a lifecycle action: the token and hook name CompleteLifecycleAction needs.

    `origin`/`destination` (EC2 | AutoScalingGroup | WarmPool) appear only for groups with a warm pool.
    """

    lifecycle_action_token: str = Field(alias="LifecycleActionToken")
    auto_scaling_group_name: str = Field(alias="AutoScalingGroupName")
    lifecycle_hook_name: str = Field(alias="LifecycleHookName")
    ec2_instance_id: str = Field(alias="EC2InstanceId")
    lifecycle_transition: LifecycleTransition = Field(alias="LifecycleTransition")
    notification_metadata: str | None = Field(default=None, alias="NotificationMetadata")
    origin: str | None = Field(default=None, alias="Origin")
    destination: str | None = Field(default=None, alias="Destination")


_TRANSITION_OF = {
    LAUNCH_LIFECYCLE_ACTION: LifecycleTransition.LAUNCHING,
    TERMINATE_LIFECYCLE_ACTION: LifecycleTransition.TERMINATING,
}


class LifecycleActionEvent(_EventBridgeEvent):
    """An instance waits in Pending:Wait or Terminating:Wait until we complete its lifecycle action."""

    source: Literal["aws.autoscaling"]
    detail_type: Literal[
        "EC2 Instance-launch Lifecycle Action", "EC2 Instance-terminate Lifecycle Action"
    ] = Field(alias="detail-type")
    detail: LifecycleActionDetail

    @model_validator(mode="after")
    def _transition_matches_detail_type(self) -> LifecycleActionEvent:
        if _TRANSITION_OF[self.detail_type] is not self.detail.lifecycle_transition:
            raise ValueError(
                f"{self.detail_type!r} carries LifecycleTransition {self.detail.lifecycle_transition}"
            )
        return self

    @property
    def instance_id(self) -> str:
        """The EC2 instance the action is about."""
        return self.detail.ec2_instance_id

    @property
    def is_launch(self) -> bool:
        """True for the launch hook (create runner, issue certificate), False for the terminate hook."""
        return self.detail.lifecycle_transition is LifecycleTransition.LAUNCHING

    @property
    def involves_warm_pool(self) -> bool:
        """True if the instance enters or leaves a warm pool (a "terminate" into the pool does not end it)."""
        return "WarmPool" in {self.detail.origin, self.detail.destination}

    @property
    def warm_pool_move(self) -> WarmPoolMove | None:
        """Which warm-pool transition this action holds, None for a plain launch or termination.

        A launch hook fires when an instance launches into the warm pool (Origin EC2, Destination WarmPool)
        and again when it leaves it for the group (Origin WarmPool, Destination AutoScalingGroup); a
        terminate hook fires when a warm instance is terminated (WarmPool to EC2) and when a group instance
        returns to the pool on scale-in (AutoScalingGroup to WarmPool, only with ReuseOnScaleIn) (Amazon EC2
        Auto Scaling User Guide, "Use lifecycle hooks with a warm pool in Auto Scaling group" and "Warm pool
        event types and patterns").
        """
        detail = self.detail
        return _WARM_MOVES.get((detail.lifecycle_transition, detail.origin or "", detail.destination or ""))


class WarmPoolMove(StrEnum):
    """A lifecycle action of a group with a warm pool, by where the instance comes from and goes to."""

    ENTER = "enter"  # launched into the warm pool: it boots once, then Auto Scaling stops it
    LEAVE = "leave"  # from the warm pool into the group: it starts and must get its runner now
    END = "end"  # a warm instance is terminated (the pool shrank)
    RETURN = "return"  # a group instance goes back to the pool on scale-in (ReuseOnScaleIn true)


_WARM_MOVES = {
    (LifecycleTransition.LAUNCHING, "EC2", "WarmPool"): WarmPoolMove.ENTER,
    (LifecycleTransition.LAUNCHING, "WarmPool", "AutoScalingGroup"): WarmPoolMove.LEAVE,
    (LifecycleTransition.TERMINATING, "WarmPool", "EC2"): WarmPoolMove.END,
    (LifecycleTransition.TERMINATING, "AutoScalingGroup", "WarmPool"): WarmPoolMove.RETURN,
}


class InstanceDetail(_Model):
    """`detail` naming one EC2 instance (`instance-id`)."""

    instance_id: str = Field(alias="instance-id")


class SpotInterruptionDetail(InstanceDetail):
    """`instance-action` is what EC2 will do in two minutes: terminate, stop or hibernate (no warning)."""

    instance_action: str = Field(alias="instance-action")


class SpotInterruptionEvent(_EventBridgeEvent):
    """EC2 reclaims a Spot instance in about two minutes: drain it and launch a replacement now."""

    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Spot Instance Interruption Warning"] = Field(alias="detail-type")
    detail: SpotInterruptionDetail

    @property
    def instance_id(self) -> str:
        """The Spot instance about to be interrupted."""
        return self.detail.instance_id


class RebalanceRecommendationEvent(_EventBridgeEvent):
    """A Spot instance is at elevated risk of interruption; may come before, with, or without the warning."""

    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Instance Rebalance Recommendation"] = Field(alias="detail-type")
    detail: InstanceDetail

    @property
    def instance_id(self) -> str:
        """The Spot instance at risk."""
        return self.detail.instance_id


class InstanceStateDetail(InstanceDetail):
    """`state`: pending, running, stopping, stopped, shutting-down or terminated."""

    state: str


class InstanceStateChangeEvent(_EventBridgeEvent):
    """An EC2 instance changed state (used to notice machines that died without a lifecycle hook)."""

    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Instance State-change Notification"] = Field(alias="detail-type")
    detail: InstanceStateDetail

    @property
    def instance_id(self) -> str:
        """The instance that changed state."""
        return self.detail.instance_id


LAUNCH_UNSUCCESSFUL = "EC2 Instance Launch Unsuccessful"


class LaunchUnsuccessfulDetail(_Model):
    """Why Auto Scaling could not launch: `StatusMessage` names the capacity error and often the type."""

    auto_scaling_group_name: str = Field(alias="AutoScalingGroupName")
    status_code: str | None = Field(default=None, alias="StatusCode")
    status_message: str = Field(default="", alias="StatusMessage")
    details: dict[str, Any] = Field(default_factory=dict, alias="Details")


class LaunchUnsuccessfulEvent(_EventBridgeEvent):
    """`EC2 Instance Launch Unsuccessful` from aws.autoscaling: a capacity or configuration failure."""

    source: Literal["aws.autoscaling"]
    detail_type: Literal["EC2 Instance Launch Unsuccessful"] = Field(alias="detail-type")
    detail: LaunchUnsuccessfulDetail


class UnknownAwsEvent(_Model):
    """A well-formed EventBridge event of a kind we do not handle; the handler logs and drops it."""

    source: str
    detail_type: str


AwsEvent = (
    LifecycleActionEvent
    | LaunchUnsuccessfulEvent
    | SpotInterruptionEvent
    | RebalanceRecommendationEvent
    | InstanceStateChangeEvent
    | UnknownAwsEvent
)

_HANDLED = frozenset(
    {
        ("aws.autoscaling", LAUNCH_LIFECYCLE_ACTION),
        ("aws.autoscaling", TERMINATE_LIFECYCLE_ACTION),
        ("aws.autoscaling", LAUNCH_UNSUCCESSFUL),
        ("aws.ec2", SPOT_INTERRUPTION_WARNING),
        ("aws.ec2", REBALANCE_RECOMMENDATION),
        ("aws.ec2", INSTANCE_STATE_CHANGE),
    }
)
# detail-type alone tells the handled kinds apart; each model still checks its own source.
_HANDLED_EVENT: TypeAdapter[
    LifecycleActionEvent
    | LaunchUnsuccessfulEvent
    | SpotInterruptionEvent
    | RebalanceRecommendationEvent
    | InstanceStateChangeEvent
] = TypeAdapter(
    Annotated[
        LifecycleActionEvent
        | LaunchUnsuccessfulEvent
        | SpotInterruptionEvent
        | RebalanceRecommendationEvent
        | InstanceStateChangeEvent,
        Field(discriminator="detail_type"),
    ]
)


def parse_cloudwatch_event(event: Mapping[str, Any]) -> AwsEvent:
    """The EventBridge event Chalice hands `on_cw_event` (`event.to_dict()`), chosen by source + detail-type.

    Raises MalformedEventError (one line) when it is not an object, lacks source/detail-type, or is a kind we
    handle with a detail we cannot use. Kinds we do not handle come back as UnknownAwsEvent.
    """
    if not isinstance(event, Mapping):
        raise MalformedEventError(f"EventBridge event is a {type(event).__name__}, not an object")
    source, detail_type = event.get("source"), event.get("detail-type")
    if not isinstance(source, str) or not isinstance(detail_type, str):
        raise MalformedEventError("EventBridge event lacks a text source or detail-type")
    if (source, detail_type) not in _HANDLED:
        return UnknownAwsEvent(source=source[:128], detail_type=detail_type[:128])
    try:
        return _HANDLED_EVENT.validate_python(event)
    except ValidationError as err:
        raise MalformedEventError(_first_error(detail_type, err)) from None


class AlarmState(StrEnum):
    """A CloudWatch alarm's state."""

    OK = "OK"
    ALARM = "ALARM"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"


class MetricDimension(_Model):
    """One dimension of the alarm's metric; alarm notifications spell these keys in lower case."""

    name: str
    value: str


class AlarmTrigger(_Model):
    """What the alarm watches; metric-math alarms send `Metrics` instead of MetricName and Dimensions."""

    metric_name: str | None = Field(default=None, alias="MetricName")
    namespace: str | None = Field(default=None, alias="Namespace")
    statistic_type: str | None = Field(default=None, alias="StatisticType")
    statistic: str | None = Field(default=None, alias="Statistic")
    unit: str | None = Field(default=None, alias="Unit")
    dimensions: Annotated[list[MetricDimension], BeforeValidator(_none_as_empty_list)] = Field(
        default_factory=list, alias="Dimensions"
    )
    period: int | None = Field(default=None, alias="Period")
    evaluation_periods: int | None = Field(default=None, alias="EvaluationPeriods")
    comparison_operator: str | None = Field(default=None, alias="ComparisonOperator")
    threshold: float | None = Field(default=None, alias="Threshold")
    treat_missing_data: str | None = Field(default=None, alias="TreatMissingData")
    metrics: Annotated[list[dict[str, Any]], BeforeValidator(_none_as_empty_list)] = Field(
        default_factory=list, alias="Metrics"
    )


class AlarmNotification(_Model):
    """The JSON CloudWatch puts in the SNS `Message` when an alarm changes state."""

    alarm_name: str = Field(alias="AlarmName")
    new_state_value: AlarmState = Field(alias="NewStateValue")
    new_state_reason: str = Field(default="", alias="NewStateReason")
    state_change_time: Timestamp = Field(alias="StateChangeTime")
    alarm_description: str | None = Field(default=None, alias="AlarmDescription")
    aws_account_id: str | None = Field(default=None, alias="AWSAccountId")
    region: str | None = Field(default=None, alias="Region")
    alarm_arn: str | None = Field(default=None, alias="AlarmArn")
    old_state_value: AlarmState | None = Field(default=None, alias="OldStateValue")
    trigger: AlarmTrigger | None = Field(default=None, alias="Trigger")

    def dimension(self, name: str) -> str | None:
        """The value of the trigger's dimension `name` (e.g. "QueueName", "AutoScalingGroupName"), if any."""
        if self.trigger is None:
            return None
        return next((d.value for d in self.trigger.dimensions if d.name == name), None)


def parse_alarm_notification(message: str | bytes | Mapping[str, Any]) -> AlarmNotification:
    """The alarm in an SNS message (`SNSEvent.message` in Chalice); MalformedEventError when it is not one."""
    return _validate(AlarmNotification, "CloudWatch alarm notification", _json_object(message, "SNS message"))


#: The longest `reason` a dirty-pool message carries (the producer cuts longer ones: it is only for logs).
DIRTY_REASON_MAX_CHARS = 512


class DirtyPoolMessage(_Model):
    """Body of a dirty-pool SQS message: reconcile `pool` now (`reason` is for logs: "job 1977 pending").

    The one definition of the contract: `queue.DirtyQueue` writes it, `triggers.process_dirty_batch` and the
    dead-letter redrive read it.
    """

    pool: str = Field(min_length=1, max_length=128)
    reason: str = Field(default="", max_length=DIRTY_REASON_MAX_CHARS)
    #: Jobs of the pool pending too long, as the tick's heal counted them (tick fan-out messages only).
    long_pending: int = Field(default=0, ge=0)

    def to_body(self) -> str:
        """The compact JSON body the producer sends (the queue's MessageGroupId is the pool)."""
        body: dict[str, Any] = {"pool": self.pool, "reason": self.reason}
        if self.long_pending:
            body["long_pending"] = self.long_pending
        return json.dumps(body, separators=(",", ":"))


def parse_dirty_pool_message(body: str | bytes | Mapping[str, Any]) -> DirtyPoolMessage:
    """The message in an SQS record body (Chalice `SQSRecord.body`); MalformedEventError if it is not one."""
    return _validate(DirtyPoolMessage, "dirty-pool message", _json_object(body, "SQS body"))


class ResolveAsk(_Model):
    """The pipeline whose job tags a webhook asks to be resolved out of its request, and the job that asked
    (`chalicelib.jobs.resolve_unrouted`)."""

    project_id: int
    pipeline_id: int = Field(ge=0)
    job_id: int


class ResolveTagsMessage(_Model):
    """Body of a resolve ask on the dirty-pool queue: `{"resolve": {...}}`. `queue.DirtyQueue.ask_resolve`
    writes it, `triggers.process_dirty_batch` reads it; the dead-letter redrive (`alarms`) sends it again as
    a resolve ask. The tick resolves whatever is still unrouted anyway."""

    resolve: ResolveAsk

    def to_body(self) -> str:
        return json.dumps({"resolve": self.resolve.model_dump()}, separators=(",", ":"))


def parse_queue_message(body: str | bytes | Mapping[str, Any]) -> DirtyPoolMessage | ResolveTagsMessage:
    """Either message the dirty-pool queue carries; MalformedEventError if it is neither."""
    data = _json_object(body, "SQS body")
    if "resolve" in data:
        return _validate(ResolveTagsMessage, "resolve ask", data)
    return _validate(DirtyPoolMessage, "dirty-pool message", data)


def _json_object(text: str | bytes | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(text, Mapping):
        return text
    try:
        value = json.loads(text)
    except (ValueError, TypeError, RecursionError) as err:
        raise MalformedEventError(f"{what} is not JSON: {type(err).__name__}") from None
    if not isinstance(value, dict):
        raise MalformedEventError(f"{what} is a JSON {type(value).__name__}, not an object")
    return value


def _validate(model: type[_ModelT], what: str, data: Mapping[str, Any]) -> _ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise MalformedEventError(_first_error(what, err)) from None


def _first_error(what: str, err: ValidationError) -> str:
    """One line naming the first bad field (never its value) and how many more there are."""
    errors = err.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "event"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{what} field {where}: {first['msg']}{more}"
