"""X-Ray subsegments around adapter calls, read from what the X-Ray SDK would send to the daemon.

GIVEN a real aws_xray_sdk recorder whose emitter keeps the serialized segments (nothing leaves the process)
WHEN calls go through AwsClients (moto) or GitLabClient (the fake GitLab) THEN each is one subsegment named
after its API, annotated with service, operation and outcome, and no secret value, token or message is in it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import botocore.client
import pytest
import requests
import wrapt
from aws_lambda_powertools import Tracer
from aws_xray_sdk.core.context import Context
from aws_xray_sdk.core.recorder import AWSXRayRecorder
from botocore.client import BaseClient

from chalicelib.aws import AwsClients, fault
from chalicelib.errors import AwsCallError, GitLabNotFoundError
from chalicelib.gitlab import GitLabClient
from chalicelib.tracing import Tracing, from_environment
from toolkit.devtools.fake_gitlab import FakeGitLab

SECRET = "s3cr3t-value-never-traced"
LAMBDA_ENV = {"LAMBDA_TASK_ROOT": "/var/task", "AWS_LAMBDA_FUNCTION_NAME": "runner-scaler-dev-tick"}


class CapturingEmitter:
    """The X-Ray SDK's emitter interface: keeps each entity exactly as it would go to the daemon."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_entity(self, entity: Any) -> None:
        self.sent.append(entity.serialize())

    def set_daemon_address(self, address: str | None) -> None:
        """Nothing is sent anywhere, so no address is needed."""


class Trace:
    """One traced "invocation": a segment around `run`, then the emitted documents, parsed and raw."""

    def __init__(self) -> None:
        self.emitter = CapturingEmitter()
        self.recorder = AWSXRayRecorder()
        self.recorder.configure(
            sampling=False, context=Context(), emitter=self.emitter, streaming_threshold=1000
        )
        self.tracing = Tracing(self.recorder)

    def run(self, action: Callable[[], Any]) -> list[dict[str, Any]]:
        """The subsegments recorded while `action` ran (its exception, if any, propagates)."""
        self.recorder.begin_segment("runner-scaler-test")
        try:
            action()
        finally:
            self.recorder.end_segment()
        return [sub for doc in self.documents() for sub in doc.get("subsegments", [])]

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.emitter.sent]

    @property
    def raw(self) -> str:
        return "\n".join(self.emitter.sent)


@pytest.fixture
def trace() -> Trace:
    return Trace()


@pytest.fixture
def traced_aws(mocked_aws: None, trace: Trace) -> AwsClients:
    return AwsClients(region="us-east-1", sleep=lambda _s: None, tracing=trace.tracing)


def test_each_aws_call_is_a_subsegment_named_after_its_api(trace: Trace, traced_aws: AwsClients) -> None:
    # WHEN a secret is written and read through the seam
    def calls() -> None:
        traced_aws.call("secretsmanager", "create_secret", Name="test/machines/i-1", SecretString=SECRET)
        traced_aws.call("secretsmanager", "get_secret_value", SecretId="test/machines/i-1")

    subsegments = trace.run(calls)
    # THEN one subsegment per call, named service.ApiName, with low-cardinality annotations only
    assert [s["name"] for s in subsegments] == [
        "secretsmanager.CreateSecret",
        "secretsmanager.GetSecretValue",
    ]
    assert subsegments[1]["annotations"] == {
        "service": "secretsmanager",
        "operation": "GetSecretValue",
        "attempts": 1,
        "outcome": "ok",
    }
    assert "fault" not in subsegments[1] and "metadata" not in subsegments[1]
    # AND neither the value written nor the value read reached the trace
    assert SECRET not in trace.raw


def test_a_failed_call_is_marked_with_its_code_and_never_its_message(
    trace: Trace, traced_aws: AwsClients
) -> None:
    # GIVEN a call botocore rejects, quoting the parameter's value in its message
    def bad_call() -> None:
        traced_aws.call("secretsmanager", "create_secret", Name="test/x", SecretString=[SECRET])

    # WHEN it runs traced THEN the caller gets the original error, untouched
    with pytest.raises(AwsCallError, match=SECRET) as raised:
        trace.run(bad_call)
    assert raised.value.code == "ParamValidationError"
    # AND the subsegment says it failed, and with what code, but not the message holding the value
    (subsegment,) = [s for doc in trace.documents() for s in doc.get("subsegments", [])]
    assert subsegment["annotations"]["outcome"] == "error"
    assert subsegment["annotations"]["error"] == "ParamValidationError"
    assert subsegment["fault"] is True
    assert SECRET not in trace.raw


def test_a_missing_resource_is_annotated_with_aws_error_code(trace: Trace, traced_aws: AwsClients) -> None:
    def missing() -> None:
        with pytest.raises(AwsCallError):
            traced_aws.call("secretsmanager", "get_secret_value", SecretId="test/machines/i-gone")

    (subsegment,) = trace.run(missing)
    assert subsegment["annotations"]["error"] == "ResourceNotFoundException"


def test_retries_stay_inside_one_subsegment_and_are_counted(mocked_aws: None, trace: Trace) -> None:
    # GIVEN AWS throttling every attempt
    aws = AwsClients(
        region="us-east-1",
        sleep=lambda _s: None,
        attempts=3,
        tracing=trace.tracing,
        fault_injector=lambda _service, _op: fault("Throttling"),
    )

    def throttled() -> None:
        with pytest.raises(AwsCallError):
            aws.call(
                "autoscaling", "set_desired_capacity", AutoScalingGroupName="test-linux", DesiredCapacity=2
            )

    (subsegment,) = trace.run(throttled)
    assert subsegment["name"] == "autoscaling.SetDesiredCapacity"
    assert subsegment["annotations"] == {
        "service": "autoscaling",
        "operation": "SetDesiredCapacity",
        "attempts": 3,
        "outcome": "error",
        "error": "Throttling",
    }


def test_pages_are_traced_one_subsegment_each(trace: Trace, traced_aws: AwsClients) -> None:
    subsegments = trace.run(
        lambda: traced_aws.paginate("autoscaling", "describe_auto_scaling_groups", "AutoScalingGroups")
    )
    assert [s["name"] for s in subsegments] == ["autoscaling.DescribeAutoScalingGroups"]


def test_gitlab_calls_are_traced_without_the_token(trace: Trace, fake_gitlab: FakeGitLab) -> None:
    # GIVEN the real GitLab adapter, traced, talking to the fake GitLab
    gl = GitLabClient(fake_gitlab.url, fake_gitlab.token, max_retries=0, tracing=trace.tracing)

    def calls() -> None:
        created = gl.create_runner(
            runner_type="instance_type",
            description="runner-scaler/linux/i-1",
            tag_list=["linux"],
            run_untagged=False,
            locked=True,
            maintenance_note="managed by runner-scaler",
        )
        with pytest.raises(GitLabNotFoundError):
            gl.get_runner(created.id + 1000)

    # WHEN it creates a runner and asks for one that does not exist
    subsegments = trace.run(calls)
    # THEN both calls are subsegments, the second failed with GitLab's status
    assert [(s["name"], s["annotations"]["outcome"]) for s in subsegments] == [
        ("gitlab.runners.create", "ok"),
        ("gitlab.runners.get", "error"),
    ]
    assert subsegments[1]["annotations"]["error"] == "HTTP 404"
    # AND neither the API token nor the new runner's token is in the trace
    (runner,) = fake_gitlab.runners.values()
    assert fake_gitlab.token not in trace.raw and runner.token not in trace.raw


# -- when tracing is on -----------------------------------------------------------------------------


def test_tracing_is_off_outside_lambda_and_when_disabled() -> None:
    assert not from_environment({}).enabled
    assert not from_environment({**LAMBDA_ENV, "POWERTOOLS_TRACE_DISABLED": "true"}).enabled
    assert not from_environment({**LAMBDA_ENV, "AWS_CHALICE_CLI_MODE": "true"}).enabled


def test_in_lambda_tracing_uses_powertools_tracer_without_patching_the_sdks() -> None:
    tracing = from_environment(LAMBDA_ENV)
    assert tracing.enabled
    # botocore and requests are not patched (X-Ray patches with wrapt wrappers): one subsegment per call
    assert not hasattr(botocore.client, "_xray_enabled")
    assert not isinstance(vars(BaseClient)["_make_api_call"], wrapt.FunctionWrapper)
    assert not isinstance(vars(requests.Session)["request"], wrapt.FunctionWrapper)


def test_without_the_xray_sdk_tracing_is_off_and_calls_still_work(
    monkeypatch: pytest.MonkeyPatch, mocked_aws: None
) -> None:
    # GIVEN a bundle without aws-xray-sdk (and no Tracer built earlier in this process)
    monkeypatch.setattr(Tracer, "_config", dict(Tracer._default_config))
    monkeypatch.setitem(sys.modules, "aws_xray_sdk.core", None)
    # WHEN the container's tracing is set up in Lambda
    tracing = from_environment(LAMBDA_ENV)
    # THEN it is off, and the seam works untraced
    assert not tracing.enabled
    aws = AwsClients(region="us-east-1", tracing=tracing)
    assert aws.call("sqs", "list_queues").get("QueueUrls", []) == []


@pytest.fixture(autouse=True)
def _fresh_tracer_config() -> Iterator[None]:
    """powertools' Tracer keeps its config on the class: leave it as this module found it."""
    saved = dict(Tracer._config)
    yield
    Tracer._config = saved
