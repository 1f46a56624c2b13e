"""The app's handlers under the IAM policy each deploy path actually attaches (issue 24: "make the test AWS
as strict as the real one").

The `iam_stack` fixture (conftest) runs every scenario twice: under the policy `chalice deploy` attaches
(`infra.policy.chalice_policy`, which also writes `.chalice/policy-*.json`) and under the one the CDK stack
renders (`infra.policy.lambda_grants` with the stack's own template, role and function ARNs). moto enforces
signatures, users and actions; tests/iam.py enforces resources, conditions and the authorization
dependencies of infra/authorization.py. A scenario passes only if every AWS call the app made was allowed;
the `without_grants` scenarios prove that removing one grant makes the app fail where AWS would.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from chalice.test import Client

from app import app
from chalicelib.errors import AwsCallError
from chalicelib.runtime import Runtime
from chalicelib.secrets import AWSCURRENT, AwsSecrets
from chalicelib.store import Fault
from tests.functional.certs_fixtures import start_rotation
from tests.functional.conftest import FIXTURES, WEBHOOK_TOKENS, IamStack, describe_group
from tests.functional.test_alarms import alarm_message
from toolkit.devtools.fake_gitlab import JobSpec
from toolkit.samples import job_hook_payload, webhook_headers

BASE_CERTS = "test/docker-base-certs"
#: Days until fresh base certificates are due: cert_validity (3 years) minus regenerate_before (30 days).
DUE_DAYS = 365 * 3 - 20


def scheduled(client: Client) -> dict[str, Any]:
    return client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])


def pending_hook(client: Client, iam: IamStack) -> Any:
    """A pending Linux job in the fake GitLab, and GitLab's Job Hook for it."""
    project = iam.gitlab.create_project("group/app")
    ref = iam.gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))])
    body = job_hook_payload(
        ref.job_ids[0],
        "pending",
        project_id=project,
        pipeline_id=ref.id,
        stage="test",
        name="build",
        now=iam.stack.runtime.now(),
    )
    headers = webhook_headers("Job Hook", token=WEBHOOK_TOKENS[0])
    return client.http.post("/webhooks/gitlab", headers=headers, body=json.dumps(body))


def sqs_event(client: Client, pool: str) -> dict[str, Any]:
    body = json.dumps({"pool": pool, "reason": "job"})
    return client.events.generate_sqs_event(message_bodies=[body], queue_name="test-dirty.fifo")


def denied_actions(iam: IamStack) -> set[str]:
    return {c.action for c in iam.authorizer.denied}


def test_enforcement_is_on_for_every_caller(iam_stack: IamStack) -> None:
    """The default test credentials belong to no IAM user: once enforcement starts, AWS refuses them."""
    anonymous = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
    with pytest.raises(ClientError) as refused:
        anonymous.client("autoscaling", region_name="us-east-1").describe_auto_scaling_groups()
    assert refused.value.response["Error"]["Code"] == "InvalidClientTokenId"


def test_a_webhook_then_its_dirty_message_scale_the_pool(iam_stack: IamStack) -> None:
    stack = iam_stack.stack
    with Client(app) as client:
        # WHEN GitLab reports a pending job, pool_dirty resolves its tags on the webhook's ask (GitLab, then
        # the tag cache and the job in DynamoDB), and Lambda hands the pool's dirty message to pool_dirty
        assert pending_hook(client, iam_stack).status_code == 202
        assert stack.resolve_asks() == 1
        (pool,) = stack.queued_pools()
        assert client.lambda_.invoke("pool_dirty", sqs_event(client, pool)).payload == {
            "batchItemFailures": []
        }
    # THEN the pool scaled, and no call of the app was refused
    assert stack.desired("test-linux") == 1
    assert iam_stack.authorizer.denied == []
    assert {"dynamodb:PutItem", "dynamodb:Query", "sqs:SendMessage", "autoscaling:SetDesiredCapacity"} <= {
        c.action for c in iam_stack.authorizer.checked
    }


def test_the_tick_reconciles_and_creates_the_base_certificates(iam_stack: IamStack) -> None:
    stack = iam_stack.stack
    rt = stack.runtime
    with Client(app) as client:
        assert pending_hook(client, iam_stack).status_code == 202
        out = client.lambda_.invoke("tick", scheduled(client)).payload
    assert out["pools"]["linux"] == {"desired": 1, "errors": []}
    # AND the tick created the (tagged) base certificates: CreateSecret with Tags needs TagResource too
    assert AwsSecrets(stack.aws).describe(BASE_CERTS).tags
    assert rt.store.faults("linux", rt.now()) == []
    assert iam_stack.authorizer.denied == []


def test_a_launch_failure_event_steers_the_next_reconcile_to_the_other_type(iam_stack: IamStack) -> None:
    stack = iam_stack.stack
    event = {
        "version": "0",
        "id": "1",
        "source": "aws.autoscaling",
        "detail-type": "EC2 Instance Launch Unsuccessful",
        "account": "123456789012",
        "time": "2026-11-23T12:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "AutoScalingGroupName": "test-linux",
            "StatusCode": "Failed",
            "StatusMessage": "We currently do not have sufficient m7i.large capacity in the zone.",
        },
    }
    with Client(app) as client:
        assert client.lambda_.invoke("machine_events", event).payload["fault"] == "instance_type"
        client.lambda_.invoke("pool_dirty", sqs_event(client, "linux"))
    # THEN UpdateAutoScalingGroup and what AWS checks behind it (launch template, role, tags) were allowed
    overrides = describe_group(stack.aws, "test-linux")["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    assert [o["InstanceType"] for o in overrides] == ["m6i.large", "m7i.large"]
    assert iam_stack.authorizer.denied == []
    assert {"ec2:RunInstances", "iam:PassRole", "ec2:CreateTags"} <= {
        c.action for c in iam_stack.authorizer.checked
    }


def test_rotation_through_the_app_and_the_ticks_rotate_secret(iam_stack: IamStack) -> None:
    stack = iam_stack.stack
    with Client(app) as client:
        # GIVEN base certificates made by the tick, and Secrets Manager rotating them with our function
        client.lambda_.invoke("tick", scheduled(client))
        token = start_rotation(stack.aws, BASE_CERTS, iam_stack.rotation_function)
        steps = [
            client.lambda_.invoke(
                "rotate_base_certs", {"SecretId": BASE_CERTS, "ClientRequestToken": token, "Step": step}
            ).payload["result"]
            for step in ("createSecret", "setSecret", "testSecret", "finishSecret")
        ]
        assert steps == ["created", "validated", "tested", "finished"]
        assert AwsSecrets(stack.aws).describe(BASE_CERTS).version_with(AWSCURRENT) == token
        # WHEN the tick finds them due (inside regenerate_before): it asks Secrets Manager to rotate
        stack.advance(days=DUE_DAYS)
        client.lambda_.invoke("tick", scheduled(client))
    # THEN RotateSecret and its lambda:InvokeFunction on the rotation function were allowed
    invoked = [c for c in iam_stack.authorizer.checked if c.action == "lambda:InvokeFunction"]
    assert [c.resource for c in invoked] == [iam_stack.rotation_function]
    assert iam_stack.authorizer.denied == []


def test_a_dead_letter_alarm_redrives_the_failed_reconciles(iam_stack: IamStack) -> None:
    stack = iam_stack.stack
    stack.aws.call(
        "sqs",
        "send_message",
        QueueUrl=stack.local.dead_letter_url,
        MessageBody=json.dumps({"pool": "gpu"}),
        MessageGroupId="gpu",
        MessageDeduplicationId="dead-1",
    )
    message = alarm_message("ApproximateNumberOfMessagesVisible")
    with Client(app) as client:
        out = client.lambda_.invoke("alarms", client.events.generate_sns_event(message=message)).payload
    assert out["redriven"] == 1
    assert stack.queued_pools() == ["gpu"]
    assert iam_stack.authorizer.denied == []


# -- a missing grant fails where AWS would fail ------------------------------------------------------------


@pytest.mark.without_grants("PassMachineRoles")
def test_without_pass_role_the_fallback_fails_as_a_pool_fault_and_the_reconcile_goes_on(
    iam_stack: IamStack,
) -> None:
    stack = iam_stack.stack
    rt = stack.runtime
    rt.store.put_fault(Fault("linux", "instance_type", "m7i.large", rt.now() + timedelta(minutes=30), "x"))
    with Client(app) as client:
        assert pending_hook(client, iam_stack).status_code == 202
        stack.resolve_asks()
        stack.queued_pools()
        assert client.lambda_.invoke("pool_dirty", sqs_event(client, "linux")).payload == {
            "batchItemFailures": []
        }
    assert denied_actions(iam_stack) == {"iam:PassRole"}
    assert stack.desired("test-linux") == 1  # the launch still happened
    overrides = describe_group(stack.aws, "test-linux")["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    assert [o["InstanceType"] for o in overrides] == ["m7i.large", "m6i.large"]


@pytest.mark.without_grants("InvokeRotation")
def test_without_invoke_function_rotate_secret_is_refused(iam_stack: IamStack) -> None:
    stack = iam_stack.stack
    with Client(app) as client:
        client.lambda_.invoke("tick", scheduled(client))
        token = start_rotation(stack.aws, BASE_CERTS, iam_stack.rotation_function)
        for step in ("createSecret", "setSecret", "testSecret", "finishSecret"):
            payload = {"SecretId": BASE_CERTS, "ClientRequestToken": token, "Step": step}
            client.lambda_.invoke("rotate_base_certs", payload)
        stack.advance(days=DUE_DAYS)
        client.lambda_.invoke("tick", scheduled(client))
    assert denied_actions(iam_stack) == {"lambda:InvokeFunction"}


@pytest.mark.without_grants("StateTable")
def test_without_the_table_grant_the_webhook_fails(iam_stack: IamStack) -> None:
    with Client(app) as client:
        response = pending_hook(client, iam_stack)
    assert response.status_code >= 500
    assert "dynamodb:PutItem" in denied_actions(iam_stack) or "dynamodb:GetItem" in denied_actions(iam_stack)


def parameter_runtime(iam: IamStack) -> Runtime:
    """The deployed wiring: the app's own credentials, the config in the parameter only, the test's clock."""
    stack = iam.stack
    return Runtime(
        {**stack.runtime.environ, "RUNNER_SCALER_CONFIG_PARAM": "/test/config"},
        aws=stack.runtime.aws,
        clock=stack.runtime.clock,
    )


def put_config(iam: IamStack, text: str) -> None:
    """The operator's `aws ssm put-parameter --overwrite` (an administrator, not the app)."""
    iam.stack.aws.call("ssm", "put_parameter", Name="/test/config", Value=text, Type="String", Overwrite=True)


def test_the_config_parameter_is_read_and_its_new_version_taken_under_the_policy(iam_stack: IamStack) -> None:
    """The version check is GetParameter on the one parameter (chalicelib/parameters.py): the grant both
    deploy paths already carry, no DescribeParameters on `*`."""
    text = (FIXTURES / "scaler.toml").read_text(encoding="utf-8")
    put_config(iam_stack, text)
    rt = parameter_runtime(iam_stack)
    assert rt.config.pool("linux").max_instances == 5
    # WHEN the operator lowers max_instances by hand, and a minute passes
    put_config(iam_stack, text.replace("max_instances = 5", "max_instances = 2", 1))
    iam_stack.stack.advance(seconds=61)
    # THEN the app's next read takes version 2, and every call it made was allowed
    assert rt.config.pool("linux").max_instances == 2
    assert denied_actions(iam_stack) == set()


@pytest.mark.without_grants("ConfigParameter")
def test_without_the_config_parameter_grant_a_cold_container_cannot_start(iam_stack: IamStack) -> None:
    put_config(iam_stack, (FIXTURES / "scaler.toml").read_text(encoding="utf-8"))
    with pytest.raises(AwsCallError, match="AccessDenied"):
        _ = parameter_runtime(iam_stack).config
    assert denied_actions(iam_stack) == {"ssm:GetParameter"}


def test_a_machine_launch_registers_its_runner_in_one_transaction_under_the_policy(
    iam_stack: IamStack,
) -> None:
    # GIVEN a machine the linux group launched
    stack = iam_stack.stack
    stack.aws.call(
        "autoscaling", "set_desired_capacity", AutoScalingGroupName="test-linux", DesiredCapacity=1
    )
    instance = describe_group(stack.aws, "test-linux")["Instances"][0]["InstanceId"]
    event = json.loads((FIXTURES / "aws_lifecycle_launch.json").read_text())
    # (no token: moto has no CompleteLifecycleAction, so the app is not asked to complete the action)
    event["detail"].update(AutoScalingGroupName="test-linux", EC2InstanceId=instance, LifecycleActionToken="")
    # WHEN its launch hook's event reaches the app
    with Client(app) as client:
        out = client.lambda_.invoke("machine_events", event).payload
    # THEN its runner is on its record and mapped to it, written by one TransactWriteItems whose Put and
    # Update actions IAM authorizes as PutItem and UpdateItem on the table, and nothing was refused
    record = stack.runtime.store.get_machine(instance)
    assert record is not None and record.runner_id == out["runner_id"] is not None
    assert stack.runtime.store.runner_machine(out["runner_id"]) == (instance, "linux")
    assert stack.runtime.aws.calls["dynamodb.TransactWriteItems"] == 1
    assert iam_stack.authorizer.denied == []
    assert {"dynamodb:PutItem", "dynamodb:UpdateItem"} <= {c.action for c in iam_stack.authorizer.checked}
