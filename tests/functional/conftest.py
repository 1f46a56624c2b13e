"""The moto fixture chain: fake credentials -> mock_aws -> AwsClients -> resources (moto's own guidance)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from chalicelib.aws import AwsClients


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def mocked_aws(aws_credentials: None) -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def aws(mocked_aws: None) -> AwsClients:
    return AwsClients(region="us-east-1", sleep=lambda _s: None)


def describe_group(aws: AwsClients, asg: str) -> dict[str, Any]:
    groups = aws.call("autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[asg])
    return dict(groups["AutoScalingGroups"][0])
