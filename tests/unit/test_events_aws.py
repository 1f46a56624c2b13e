"""AWS event models: EventBridge lifecycle/Spot/EC2 events, CloudWatch alarms via SNS, dirty-pool SQS bodies.

Fixtures: EC2 Auto Scaling User Guide ("Warm pool event types and patterns" examples 1, 3, 4 verbatim; "event
reference" terminate example with its time placeholder filled in); EC2 User Guide ("Spot Instance interruption
notices", "EC2 instance rebalance recommendations", placeholders filled in); Lambda Developer Guide (EC2
state-change example, SQS example event); aws/aws-lambda-go events/testdata (CloudWatch alarm SNS payloads).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.errors import MalformedEventError
from chalicelib.events.aws import (
    AlarmNotification,
    AlarmState,
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
from chalicelib.events.timestamps import format_gitlab_iso, format_gitlab_legacy, parse_timestamp

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EVENTBRIDGE_FIXTURES = [
    "aws_lifecycle_launch",
    "aws_lifecycle_launch_into_warm_pool",
    "aws_lifecycle_terminate",
    "aws_lifecycle_terminate_into_warm_pool",
    "aws_spot_interruption",
    "aws_rebalance_recommendation",
    "aws_instance_state_change",
]


@functools.cache
def _fixture_text(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text()


def fixture(name: str) -> dict[str, Any]:
    """A fresh copy of a documented payload (tests mutate it)."""
    data: dict[str, Any] = json.loads(_fixture_text(name))
    return data


def sns_message(name: str) -> str:
    message: str = fixture(name)["Records"][0]["Sns"]["Message"]
    return message


def malformed(call: Any, *args: Any) -> str:
    with pytest.raises(MalformedEventError) as caught:
        call(*args)
    reason = caught.value.reason
    assert "\n" not in reason and len(reason) <= 300
    return reason


# --- EventBridge --------------------------------------------------------------------------------------------


def test_launch_lifecycle_action_doc_sample() -> None:
    event = parse_cloudwatch_event(fixture("aws_lifecycle_launch"))

    assert isinstance(event, LifecycleActionEvent)
    assert event.is_launch and not event.involves_warm_pool
    assert event.instance_id == "i-1234567890abcdef0"
    assert event.detail.auto_scaling_group_name == "my-asg"
    assert event.detail.lifecycle_hook_name == "my-launch-lifecycle-hook"
    assert event.detail.lifecycle_action_token == "87654321-4321-4321-4321-21098EXAMPLE"
    assert event.detail.lifecycle_transition is LifecycleTransition.LAUNCHING
    assert (event.detail.origin, event.detail.destination) == ("EC2", "AutoScalingGroup")
    assert event.detail.notification_metadata == "additional-info"
    assert event.time == datetime(2021, 2, 1, 17, 18, 6, 82000, tzinfo=UTC)


def test_terminate_lifecycle_action_doc_sample_without_origin_or_destination() -> None:
    event = parse_cloudwatch_event(fixture("aws_lifecycle_terminate"))

    assert isinstance(event, LifecycleActionEvent)
    assert not event.is_launch and not event.involves_warm_pool
    assert event.detail.lifecycle_transition is LifecycleTransition.TERMINATING
    assert event.detail.origin is None and event.resources == ["auto-scaling-group-arn"]


@pytest.mark.parametrize(
    ("name", "is_launch"),
    [("aws_lifecycle_launch_into_warm_pool", True), ("aws_lifecycle_terminate_into_warm_pool", False)],
)
def test_warm_pool_lifecycle_actions_say_so(name: str, is_launch: bool) -> None:
    # A "terminate" into the warm pool stops the instance for reuse: the machine is not going away.
    event = parse_cloudwatch_event(fixture(name))

    assert isinstance(event, LifecycleActionEvent)
    assert event.involves_warm_pool and event.is_launch is is_launch


def test_spot_interruption_doc_sample() -> None:
    event = parse_cloudwatch_event(fixture("aws_spot_interruption"))

    assert isinstance(event, SpotInterruptionEvent)
    assert (event.instance_id, event.detail.instance_action) == ("i-1234567890abcdef0", "terminate")
    assert event.region == "us-east-2"


def test_rebalance_recommendation_doc_sample() -> None:
    event = parse_cloudwatch_event(fixture("aws_rebalance_recommendation"))

    assert isinstance(event, RebalanceRecommendationEvent)
    assert event.instance_id == "i-1234567890abcdef0"


def test_instance_state_change_doc_sample() -> None:
    event = parse_cloudwatch_event(fixture("aws_instance_state_change"))

    assert isinstance(event, InstanceStateChangeEvent)
    assert (event.instance_id, event.detail.state) == ("i-0c314xmplcd5b8173", "running")
    assert event.account == "111122223333"


@pytest.mark.parametrize("name", EVENTBRIDGE_FIXTURES)
def test_fixtures_are_real_eventbridge_events_by_powertools_model_too(name: str) -> None:
    # Cross-check our hand-written envelope against powertools' EventBridgeModel (same field names).
    from aws_lambda_powertools.utilities.parser.models import EventBridgeModel

    theirs = EventBridgeModel.model_validate(fixture(name))
    ours = parse_cloudwatch_event(fixture(name))

    assert not isinstance(ours, UnknownAwsEvent)
    assert (ours.id, ours.source, ours.detail_type, ours.time) == (
        theirs.id,
        theirs.source,
        theirs.detail_type,
        theirs.time,
    )


@pytest.mark.parametrize(
    ("source", "detail_type"),
    [
        ("aws.autoscaling", "EC2 Instance Launch Successful"),
        ("aws.autoscaling", "EC2 Auto Scaling Instance Refresh Started"),
        ("aws.scheduler", "Scheduled Event"),
        ("custom.app", "EC2 Spot Instance Interruption Warning"),
    ],
)
def test_kinds_we_do_not_handle_come_back_unknown(source: str, detail_type: str) -> None:
    event = fixture("aws_rebalance_recommendation") | {"source": source, "detail-type": detail_type}

    assert parse_cloudwatch_event(event) == UnknownAwsEvent(source=source, detail_type=detail_type)


def test_unknown_fields_are_accepted() -> None:
    event = fixture("aws_lifecycle_launch") | {"replay-name": "replay-1", "new-envelope-field": 1}
    event["detail"]["NewDetailField"] = {"x": 1}

    parsed = parse_cloudwatch_event(event)

    assert isinstance(parsed, LifecycleActionEvent) and parsed.replay_name == "replay-1"


def _without_detail(name: str, key: str) -> dict[str, Any]:
    event = fixture(name)
    del event["detail"][key]
    return event


MALFORMED_EVENTS: list[tuple[str, Any, str]] = [
    ("not an object", ["aws.ec2"], "not an object"),
    ("no source", {"detail-type": "EC2 Spot Instance Interruption Warning"}, "source or detail-type"),
    ("no token", _without_detail("aws_lifecycle_launch", "LifecycleActionToken"), "LifecycleActionToken"),
    ("no instance", _without_detail("aws_spot_interruption", "instance-id"), "instance-id"),
    ("no state", _without_detail("aws_instance_state_change", "state"), "state"),
    ("detail not object", fixture("aws_rebalance_recommendation") | {"detail": "i-1"}, "detail"),
    ("bad time", fixture("aws_spot_interruption") | {"time": "yyyy-mm-ddThh:mm:ssZ"}, "time"),
    (
        "transition disagrees",
        fixture("aws_lifecycle_launch") | {"detail-type": "EC2 Instance-terminate Lifecycle Action"},
        "LifecycleTransition",
    ),
]


@pytest.mark.parametrize(
    ("event", "expected"), [m[1:] for m in MALFORMED_EVENTS], ids=[m[0] for m in MALFORMED_EVENTS]
)
def test_malformed_eventbridge_events_give_a_one_line_reason(event: Any, expected: str) -> None:
    assert expected in malformed(parse_cloudwatch_event, event)


# --- CloudWatch alarms via SNS ------------------------------------------------------------------------------


def test_single_metric_alarm_notification() -> None:
    alarm = parse_alarm_notification(sns_message("aws_sns_alarm_single_metric"))

    assert alarm.alarm_name == "EXAMPLE"
    assert (alarm.new_state_value, alarm.old_state_value) == (AlarmState.ALARM, AlarmState.INSUFFICIENT_DATA)
    assert alarm.state_change_time == datetime(2015, 6, 3, 17, 43, 27, 123000, tzinfo=UTC)  # "+0000" spelling
    assert alarm.alarm_arn == "arn:aws:cloudwatch:REGION:ACCOUNT_NUMBER:alarm:EXAMPLE"
    assert alarm.new_state_reason.startswith("Threshold Crossed")
    assert alarm.trigger is not None
    assert (alarm.trigger.metric_name, alarm.trigger.namespace, alarm.trigger.period) == (
        "NetworkOut",
        "AWS/EC2",
        60,
    )
    assert alarm.dimension("InstanceId") == "TestInstance" and alarm.dimension("QueueName") is None


def test_metric_math_alarm_notification_has_metrics_instead_of_a_metric_name() -> None:
    alarm = parse_alarm_notification(sns_message("aws_sns_alarm_multiple_metrics").encode())

    assert alarm.trigger is not None and alarm.trigger.metric_name is None
    assert [m["Id"] for m in alarm.trigger.metrics] == ["e1", "m1"]
    assert alarm.dimension("InstanceId") is None


def test_alarm_notification_accepts_ok_and_unknown_fields() -> None:
    message = json.loads(sns_message("aws_sns_alarm_single_metric")) | {
        "NewStateValue": "OK",
        "OldStateValue": "ALARM",
        "SomethingNew": [1],
        "Trigger": None,
    }

    alarm = parse_alarm_notification(json.dumps(message))

    assert isinstance(alarm, AlarmNotification)
    assert alarm.new_state_value is AlarmState.OK and alarm.dimension("InstanceId") is None


MALFORMED_ALARMS: list[tuple[str, Any, str]] = [
    ("not JSON", "ALARM: something", "not JSON"),
    ("a list", "[]", "list"),
    (
        "no name",
        json.dumps({"NewStateValue": "ALARM", "StateChangeTime": "2015-06-03T17:43:27.123+0000"}),
        "AlarmName",
    ),
    (
        "bad state",
        json.dumps(
            {"AlarmName": "a", "NewStateValue": "RED", "StateChangeTime": "2015-06-03T17:43:27.123+0000"}
        ),
        "NewStateValue",
    ),
    ("no time", json.dumps({"AlarmName": "a", "NewStateValue": "OK"}), "StateChangeTime"),
]


@pytest.mark.parametrize(
    ("message", "expected"), [m[1:] for m in MALFORMED_ALARMS], ids=[m[0] for m in MALFORMED_ALARMS]
)
def test_malformed_alarm_notifications_give_a_one_line_reason(message: Any, expected: str) -> None:
    assert expected in malformed(parse_alarm_notification, message)


# --- dirty-pool SQS messages --------------------------------------------------------------------------------


def test_dirty_pool_message_from_an_sqs_record() -> None:
    record = fixture("aws_sqs_dirty_pool")["Records"][0]

    message = parse_dirty_pool_message(record["body"])

    assert message == DirtyPoolMessage(pool="linux-docker", reason="job 1977 pending")
    assert record["attributes"]["MessageGroupId"] == message.pool


def test_sqs_fixture_is_a_real_sqs_event_by_powertools_model() -> None:
    from aws_lambda_powertools.utilities.parser.models import SqsModel

    event = SqsModel.model_validate(fixture("aws_sqs_dirty_pool"))

    assert parse_dirty_pool_message(str(event.Records[0].body)).pool == "linux-docker"


def test_dirty_pool_message_round_trips_and_tolerates_extra_fields() -> None:
    message = DirtyPoolMessage(pool="mac-m2", reason="spot warning i-1")

    assert parse_dirty_pool_message(message.to_body()) == message
    assert parse_dirty_pool_message('{"pool": "mac-m2", "sent_by": "tick"}') == DirtyPoolMessage(
        pool="mac-m2"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [("", "not JSON"), ("linux", "not JSON"), ('"linux"', "str"), ("{}", "pool"), ('{"pool": ""}', "pool")],
)
def test_malformed_dirty_pool_messages_give_a_one_line_reason(body: str, expected: str) -> None:
    assert expected in malformed(parse_dirty_pool_message, body)


# --- timestamps ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-02-23 02:41:37 UTC", datetime(2021, 2, 23, 2, 41, 37, tzinfo=UTC)),
        ("2021-02-23T02:41:37.886Z", datetime(2021, 2, 23, 2, 41, 37, 886000, tzinfo=UTC)),
        ("2015-06-03T17:43:27.123+0000", datetime(2015, 6, 3, 17, 43, 27, 123000, tzinfo=UTC)),
        ("2016-08-12T17:23:21+02:00", datetime(2016, 8, 12, 15, 23, 21, tzinfo=UTC)),
        ("2021-04-28 21:50:00 +0200", datetime(2021, 4, 28, 19, 50, tzinfo=UTC)),
        ("2021-02-23T02:41:37.123456789Z", datetime(2021, 2, 23, 2, 41, 37, 123456, tzinfo=UTC)),
        (None, None),
    ],
)
def test_parse_timestamp_reads_every_documented_spelling(text: str | None, expected: datetime | None) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2021-02-23 02:41:37",
        "yesterday",
        "2021-02-30T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "2021-02-23T25:00:00Z",
        5,
    ],
)
def test_parse_timestamp_refuses_what_it_cannot_place_in_time(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_gitlab_spellings_round_trip() -> None:
    moment = datetime(2021, 2, 23, 2, 41, 37, 886000, tzinfo=UTC)

    assert format_gitlab_iso(moment) == "2021-02-23T02:41:37.886Z"
    assert format_gitlab_legacy(moment) == "2021-02-23 02:41:37 UTC"
    assert parse_timestamp(format_gitlab_iso(moment)) == moment


@settings(max_examples=300, deadline=None)
@given(moment=st.datetimes(timezones=st.timezones()))
def test_any_aware_datetime_survives_both_gitlab_spellings(moment: datetime) -> None:
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        return
    parsed = parse_timestamp(format_gitlab_iso(utc))
    assert parsed is not None and parsed == utc.replace(microsecond=utc.microsecond // 1000 * 1000)
    assert parse_timestamp(format_gitlab_legacy(utc)) == utc.replace(microsecond=0)


# --- robustness (hypothesis) --------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=16),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(EVENTBRIDGE_FIXTURES),
    mutations=st.dictionaries(
        st.sampled_from(["source", "detail-type", "time", "detail", "id", "resources"]), JSON
    ),
    detail=st.dictionaries(
        st.sampled_from(
            ["instance-id", "state", "EC2InstanceId", "LifecycleTransition", "LifecycleActionToken"]
        ),
        JSON,
    ),
)
def test_any_eventbridge_mutation_parses_or_is_malformed(
    name: str, mutations: dict[str, Any], detail: dict[str, Any]
) -> None:
    event = fixture(name) | mutations
    if isinstance(event.get("detail"), dict):
        event["detail"] = event["detail"] | detail
    try:
        parsed = parse_cloudwatch_event(event)
    except MalformedEventError as err:
        assert "\n" not in err.reason
        return
    assert parsed is not None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON)
def test_any_json_value_is_an_event_an_alarm_a_message_or_malformed(value: Any) -> None:
    cases: tuple[tuple[Callable[[Any], object], Any], ...] = (
        (parse_cloudwatch_event, value),
        (parse_alarm_notification, json.dumps(value)),
        (parse_dirty_pool_message, json.dumps(value)),
    )
    for parse, argument in cases:
        try:
            parse(argument)
        except MalformedEventError as err:
            assert "\n" not in err.reason


@settings(max_examples=600, deadline=None)
@given(body=st.binary(max_size=48) | st.text(max_size=48))
def test_any_bytes_or_text_body_is_a_message_or_malformed(body: bytes | str) -> None:
    for parse in (parse_alarm_notification, parse_dirty_pool_message):
        try:
            parse(body)
        except MalformedEventError as err:
            assert "\n" not in err.reason
