"""Alarms and launch failures through the Chalice app: a capacity error steers the next reconcile to the
fallback instance type (a Spot fault changes no split), OK clears it; queue-age alarms reconcile at once;
dead letters are redriven; malformed messages are dropped; metrics carry the expected names and dimensions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.store import JobRecord
from tests.functional.conftest import FIXTURES, Stack


def alarm_message(metric: str, state: str = "ALARM", dimensions: dict[str, str] | None = None) -> str:
    """AWS's documented alarm sample, with our metric, state and dimensions."""
    record = json.loads((FIXTURES / "aws_sns_alarm_single_metric.json").read_text())["Records"][0]
    message = json.loads(record["Sns"]["Message"])
    message["AlarmName"] = f"test-{metric}"
    message["NewStateValue"] = state
    message["Trigger"]["MetricName"] = metric
    message["Trigger"]["Dimensions"] = [{"name": k, "value": v} for k, v in (dimensions or {}).items()]
    return json.dumps(message)


def launch_failure(message: str) -> dict[str, Any]:
    event = json.loads((FIXTURES / "aws_lifecycle_launch.json").read_text())
    event["detail-type"] = "EC2 Instance Launch Unsuccessful"
    event["detail"] = {"AutoScalingGroupName": "test-linux", "StatusCode": "Failed", "StatusMessage": message}
    return event


def group(stack: Stack) -> Any:
    return stack.runtime.fleet.read_groups(["test-linux"])["test-linux"]


@pytest.fixture
def client() -> Any:
    with Client(app) as c:
        yield c


def test_capacity_error_makes_the_next_reconcile_pick_the_fallback_type(stack: Stack, client: Client) -> None:
    # GIVEN Auto Scaling could not launch the preferred type
    out = client.lambda_.invoke(
        "machine_events",
        launch_failure(
            "We currently do not have sufficient m7i.large capacity in the Availability Zone you requested."
        ),
    ).payload
    assert out["fault"] == "instance_type"
    # WHEN the pool is reconciled
    result = stack.runtime.reconciler("t").reconcile_pool(
        stack.config.pool("linux"), stack.advance(seconds=30)
    )
    assert result.errors == [] and result.fallback
    # THEN the group prefers the other type
    assert group(stack).instance_types == ("m6i.large", "m7i.large")
    # AND the launch-failure alarm's OK clears the fault: the preferred order comes back, Spot never left
    sns = client.events.generate_sns_event(message=alarm_message("TriggeredRules", "OK"))
    assert client.lambda_.invoke("alarms", sns).payload["action"] == "faults cleared"
    assert (
        group(stack).instance_types == ("m7i.large", "m6i.large") and group(stack).on_demand_percentage == 0
    )


def test_no_spot_capacity_is_recorded_but_never_rewrites_the_split(stack: Stack, client: Client) -> None:
    # GIVEN Auto Scaling found no Spot capacity
    out = client.lambda_.invoke(
        "machine_events", launch_failure("There is no Spot capacity available that matches your request.")
    ).payload
    assert out["fault"] == "spot"
    # WHEN the pool is reconciled
    result = stack.runtime.reconciler("t").reconcile_pool(
        stack.config.pool("linux"), stack.advance(seconds=30)
    )
    # THEN the split stays the operator's: changing purchasing options can replace running instances
    # (UpdateAutoScalingGroup API reference); the LaunchFailures metric and its alarm tell the operator
    assert result.errors == [] and result.fallback == ""
    assert group(stack).on_demand_percentage == 0


def test_launch_failure_alarm_rotates_to_the_next_type(stack: Stack, client: Client) -> None:
    sns = client.events.generate_sns_event(
        message=alarm_message("TriggeredRules", dimensions={"pool": "linux"})
    )
    out = client.lambda_.invoke("alarms", sns).payload
    assert out["action"] == "launch fault recorded" and out["pools"] == ["linux"]
    assert group(stack).instance_types == ("m6i.large", "m7i.large")


def test_queue_age_alarm_reconciles_every_pool_at_once(stack: Stack, client: Client) -> None:
    rt = stack.runtime
    rt.store.record_job(JobRecord(rt.gitlab_host, 1, "pending", pool="linux"), rt.now())
    sns = client.events.generate_sns_event(message=alarm_message("ApproximateAgeOfOldestMessage"))
    assert client.lambda_.invoke("alarms", sns).payload["action"] == "reconciled"
    assert stack.desired("test-linux") == 1


def test_dead_letters_are_redriven(stack: Stack, client: Client) -> None:
    stack.aws.call(
        "sqs",
        "send_message",
        QueueUrl=stack.local.dead_letter_url,
        MessageBody=json.dumps({"pool": "gpu"}),
        MessageGroupId="gpu",
        MessageDeduplicationId="dead-1",
    )
    sns = client.events.generate_sns_event(message=alarm_message("ApproximateNumberOfMessagesVisible"))
    out = client.lambda_.invoke("alarms", sns).payload
    assert out["redriven"] == 1
    assert stack.queued_pools() == ["gpu"]


def test_the_failed_events_queue_alarm_redrives_no_dead_letter(stack: Stack, client: Client) -> None:
    """The failed-events queue alarms on the same SQS metric as the dead-letter queue; its messages are
    Lambda invocation records a human reads, so the alarm moves nothing and says so."""
    # GIVEN a dead-lettered "pool dirty" message
    stack.aws.call(
        "sqs",
        "send_message",
        QueueUrl=stack.local.dead_letter_url,
        MessageBody=json.dumps({"pool": "gpu"}),
        MessageGroupId="gpu",
        MessageDeduplicationId="dead-1",
    )
    # WHEN the failed-events queue's depth alarm fires
    message = alarm_message(
        "ApproximateNumberOfMessagesVisible",
        dimensions={"QueueName": stack.runtime.names.failed_events_queue},
    )
    out = client.lambda_.invoke("alarms", client.events.generate_sns_event(message=message)).payload
    # THEN nothing is redriven and the answer points at the runbook
    assert out["action"] == "none" and out["redriven"] == 0
    assert stack.queued_pools() == []
    # AND the dead-letter queue's own alarm still redrives it
    message = alarm_message(
        "ApproximateNumberOfMessagesVisible", dimensions={"QueueName": stack.runtime.names.dead_letter_queue}
    )
    assert (
        client.lambda_.invoke("alarms", client.events.generate_sns_event(message=message)).payload["redriven"]
        == 1
    )
    assert stack.queued_pools() == ["gpu"]


def test_malformed_alarm_is_dropped_not_retried(stack: Stack, client: Client) -> None:
    out = client.lambda_.invoke("alarms", client.events.generate_sns_event(message="{not json")).payload
    assert out["action"] == "dropped"


def test_reconcile_metrics_have_names_and_low_cardinality_dimensions(
    stack: Stack, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    rt = stack.runtime
    rt.store.record_job(JobRecord(rt.gitlab_host, 1, "pending", pool="linux"), rt.now())
    client.lambda_.invoke("tick", client.events.generate_cw_event("Scheduled Event", "aws.events", {}, []))
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    linux = next(b for b in blobs if b.get("pool") == "linux" and "Desired" in b)
    names = {m["Name"] for m in linux["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"Desired", "PendingJobs", "MachinesIdle", "ScaleUp", "ScaleIn", "ReconcileErrors"} <= names
    assert linux["PendingJobs"] == [1.0] and linux["platform"] == "linux"
    dimension_sets = linux["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    assert all(set(d) <= {"pool", "platform", "service"} for d in dimension_sets)


def test_the_launch_alarms_ok_leaves_a_prepare_fault_in_place(stack: Stack, client: Client) -> None:
    """A pool whose machines cannot be prepared keeps its launch pause until its own backoff passes: the
    launch-failure alarm's OK is about capacity, and clearing that fault would restart the relaunch loop."""
    from datetime import timedelta

    from chalicelib.lifecycle import PREPARE_FAULT
    from chalicelib.store import Fault

    # GIVEN a capacity fault and a prepare fault on the linux pool
    now = stack.runtime.now()
    stack.runtime.store.put_fault(Fault("linux", "spot", "", now + timedelta(minutes=30), "no Spot"))
    stack.runtime.store.put_fault(Fault("linux", PREPARE_FAULT, "", now + timedelta(minutes=30), "no certs"))
    # WHEN the launch-failure alarm goes back to OK
    sns = client.events.generate_sns_event(message=alarm_message("TriggeredRules", "OK"))
    assert client.lambda_.invoke("alarms", sns).payload["action"] == "faults cleared"
    # THEN only the capacity fault is gone
    assert [f.kind for f in stack.runtime.store.faults("linux", stack.runtime.now())] == [PREPARE_FAULT]


def test_a_dead_lettered_resolve_ask_is_redriven_as_a_resolve_ask(stack: Stack, client: Client) -> None:
    # GIVEN a webhook's ask to resolve a pipeline's job tags that failed until SQS dead-lettered it (it names
    # no pool: its body is {"resolve": {...}}, chalicelib.queue.DirtyQueue.ask_resolve)
    body = json.dumps({"resolve": {"project_id": 7, "pipeline_id": 70, "job_id": 701}})
    stack.aws.call(
        "sqs",
        "send_message",
        QueueUrl=stack.local.dead_letter_url,
        MessageBody=body,
        MessageGroupId="resolve-70",
        MessageDeduplicationId="dead-resolve-1",
    )
    # WHEN the dead-letter alarm fires
    sns = client.events.generate_sns_event(message=alarm_message("ApproximateNumberOfMessagesVisible"))
    out = client.lambda_.invoke("alarms", sns).payload
    # THEN the ask is back on the queue as a resolve ask for the same pipeline and job, not dropped
    assert out["redriven"] == 1
    assert [json.loads(b) for b in stack.queued_messages()] == [json.loads(body)]
