"""The rotate_base_certs Lambda end to end: Secrets Manager's four invocations through the Chalice app."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chalice.test import Client
from moto import mock_aws

from app import app
from chalicelib import certs
from chalicelib.aws import AwsClients
from chalicelib.certs import BaseCerts
from chalicelib.errors import MalformedEventError
from chalicelib.resources import Names
from chalicelib.rotation import ensure_base_certs
from chalicelib.runtime import Runtime, install
from chalicelib.secrets import AWSCURRENT, AWSPENDING, AWSPREVIOUS, AwsSecrets
from tests.functional.certs_fixtures import (
    STUB_LAMBDA,
    aws_clients,
    create_rotation_function,
    stages,
    start_rotation,
)

NAMES = Names("app")
SECRET = NAMES.base_certs_secret
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
WINDOW = timedelta(hours=720)


@dataclass
class Deployment:
    aws: AwsClients
    secrets: AwsSecrets
    clock: list[datetime]


@pytest.fixture
def deployment(aws_credentials: None) -> Iterator[Deployment]:
    """moto (with its Lambda stub) and the app's Runtime pointed at it, with a clock the test moves."""
    with mock_aws(config=STUB_LAMBDA):
        aws = aws_clients()
        clock = [T0]
        install(Runtime({"RUNNER_SCALER_PREFIX": NAMES.prefix}, aws=aws, clock=lambda: clock[0]))
        yield Deployment(aws, AwsSecrets(aws), clock)
        install(None)


def invoke(client: Client, token: str, step: str, secret: str = SECRET) -> Any:
    payload = {"SecretId": secret, "ClientRequestToken": token, "Step": step}
    return client.lambda_.invoke("rotate_base_certs", payload)


def test_secrets_manager_rotates_base_certs_through_the_app(deployment: Deployment) -> None:
    # GIVEN base certs made by the tick, and Secrets Manager starting a rotation a year later
    ensure_base_certs(deployment.secrets, NAMES, T0, WINDOW)
    original = deployment.secrets.get_value(SECRET).version_id
    arn = deployment.secrets.describe(SECRET).arn
    token = start_rotation(deployment.aws, SECRET, create_rotation_function(deployment.aws))
    deployment.clock[0] = T0 + timedelta(days=365)
    # WHEN Secrets Manager invokes the Lambda once per step, naming the secret by ARN as it does
    with Client(app) as client:
        answers = [
            invoke(client, token, step, arn).payload
            for step in ("createSecret", "setSecret", "testSecret", "finishSecret")
        ]
    # THEN each step reports what it did and the version stages end as AWS expects
    assert [a["result"] for a in answers] == ["created", "validated", "tested", "finished"]
    assert stages(deployment.secrets, SECRET) == {original: (AWSPREVIOUS,), token: (AWSCURRENT,)}
    rotated = BaseCerts.from_json(deployment.secrets.get_value(SECRET).value)
    certs.check_base_certs(rotated, deployment.clock[0])
    assert len(rotated.retired) == 1


def test_a_retried_step_through_the_app_changes_nothing(deployment: Deployment) -> None:
    # GIVEN a rotation whose createSecret already ran
    ensure_base_certs(deployment.secrets, NAMES, T0, WINDOW)
    token = start_rotation(deployment.aws, SECRET, create_rotation_function(deployment.aws))
    with Client(app) as client:
        invoke(client, token, "createSecret")
        written = deployment.secrets.get_value(SECRET, version_id=token).value
        # WHEN Secrets Manager retries it
        again = invoke(client, token, "createSecret").payload
    # THEN the pending version is the one written first, still pending
    assert again["result"] == "kept"
    assert deployment.secrets.get_value(SECRET, version_id=token).value == written
    assert stages(deployment.secrets, SECRET)[token] == (AWSPENDING,)


def test_a_malformed_rotation_event_fails_the_invocation_and_touches_nothing(deployment: Deployment) -> None:
    # GIVEN base certs; WHEN the Lambda gets an event without a valid step
    ensure_base_certs(deployment.secrets, NAMES, T0, WINDOW)
    before = stages(deployment.secrets, SECRET)
    with Client(app) as client, pytest.raises(MalformedEventError, match="ClientRequestToken, Step"):
        client.lambda_.invoke("rotate_base_certs", {"SecretId": SECRET, "Step": "rotateEverything"})
    # THEN the invocation fails naming the bad fields, and no stage moved
    assert stages(deployment.secrets, SECRET) == before
