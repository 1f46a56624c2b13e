"""The tick keeps the fleet's base certs (through the Chalice app, against moto): it creates the secret when
it is missing, and starts exactly one Secrets Manager rotation once NotAfter is inside regenerate_before.

moto's RotateSecret differs from AWS in two ways these tests meet. Called without RotationLambdaARN (as the
tick calls it: AWS then uses the stored configuration) moto forgets the configured function and stamps the
new, empty version AWSCURRENT; `StoredRotationClients` re-states the stored function, which is what AWS
does. And moto's Lambda stub runs no code and records no invocation, so "a rotation started" is asserted on
the version stages and on the RotateSecret calls counted by `AwsClients`; the four steps the Lambda then
runs are covered through the app in test_rotation_app.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from chalice.test import Client
from moto import mock_aws

from app import app
from chalicelib import certs
from chalicelib.aws import AwsClients
from chalicelib.certs import BaseCerts
from chalicelib.rotation import rotation_token
from chalicelib.secrets import AWSCURRENT, AWSPENDING, AwsSecrets
from tests.functional.certs_fixtures import STUB_LAMBDA, create_rotation_function, stages
from tests.functional.conftest import Stack

SECRET = "test/docker-base-certs"
ROTATE = "secretsmanager.RotateSecret"


class StoredRotationClients(AwsClients):
    """AwsClients whose RotateSecret uses the rotation function stored on the secret, as AWS does.

    moto (5.x) drops the stored function when a RotateSecret call does not name it; only that is patched
    here, by naming it, so every other call reaches moto unchanged.
    """

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        if (service, operation) == ("secretsmanager", "rotate_secret") and "RotationLambdaARN" not in params:
            stored = self.client("secretsmanager").describe_secret(SecretId=params["SecretId"])
            if stored.get("RotationLambdaARN"):
                params = {**params, "RotationLambdaARN": stored["RotationLambdaARN"]}
        return super().call(service, operation, **params)


@pytest.fixture
def mocked_aws(aws_credentials: None) -> Iterator[None]:
    """moto with its Lambda stub, so RotateSecret finds the rotation function and accepts the call."""
    with mock_aws(config=STUB_LAMBDA):  # type: ignore[call-overload]
        yield


@pytest.fixture
def aws(mocked_aws: None) -> AwsClients:
    return StoredRotationClients(region="us-east-1", sleep=lambda _s: None)


def tick(client: Client) -> Any:
    event = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    return client.lambda_.invoke("tick", event).payload


def enable_rotation(aws: AwsClients, secret: str) -> str:
    """What infra/ deploys: the rotate_base_certs function set on the secret, no rotation running."""
    function_arn = create_rotation_function(aws)
    aws.call(
        "secretsmanager",
        "rotate_secret",
        SecretId=secret,
        RotationLambdaARN=function_arn,
        RotationRules={"AutomaticallyAfterDays": 30},
        RotateImmediately=False,
    )
    # RotateImmediately=False only tests the function; moto leaves its trial version AWSPENDING: unstage it.
    trial = AwsSecrets(aws).describe(secret).version_with(AWSPENDING)
    if trial is not None:
        aws.call(
            "secretsmanager",
            "update_secret_version_stage",
            SecretId=secret,
            VersionStage=AWSPENDING,
            RemoveFromVersionId=trial,
        )
    return function_arn


def current_base_certs(secrets: AwsSecrets) -> BaseCerts:
    return BaseCerts.from_json(secrets.get_value(SECRET, version_stage=AWSCURRENT).value)


def inside_the_window(base: BaseCerts, regenerate_before: timedelta) -> datetime:
    return certs.regeneration_due_at(base, regenerate_before) + timedelta(days=1)


def test_first_tick_creates_the_base_certs_secret(stack: Stack) -> None:
    # GIVEN a fresh deployment: no base-certs secret yet
    secrets = AwsSecrets(stack.aws)
    assert SECRET not in {s["Name"] for s in stack.aws.call("secretsmanager", "list_secrets")["SecretList"]}
    # WHEN the tick runs
    with Client(app) as client:
        tick(client)
    # THEN the secret exists with one version, AWSCURRENT, holding a whole CA, client certificate and keys
    (only,) = stages(secrets, SECRET).values()
    assert only == (AWSCURRENT,)
    base = current_base_certs(secrets)
    certs.check_base_certs(base, stack.clock[0])  # keys match, CA self-signed, client chains to the bundle
    assert base.ca.not_valid_before_utc <= stack.clock[0] < base.expires_at
    assert not certs.needs_regeneration(base, stack.clock[0], stack.config.scaler.regenerate_before)
    assert stack.aws.calls[ROTATE] == 0


def test_tick_inside_the_window_starts_one_rotation_and_no_second(stack: Stack) -> None:
    # GIVEN base certs made by a first tick, the rotation function configured, and time moved into the window
    secrets = AwsSecrets(stack.aws)
    with Client(app) as client:
        tick(client)
    enable_rotation(stack.aws, SECRET)
    original = secrets.get_value(SECRET, version_stage=AWSCURRENT).version_id
    before = stack.aws.calls[ROTATE]
    stack.clock[0] = inside_the_window(current_base_certs(secrets), stack.config.scaler.regenerate_before)
    # WHEN the tick runs
    with Client(app) as client:
        tick(client)
        # THEN it called RotateSecret once, under the token derived from the AWSCURRENT version, which
        # Secrets Manager staged AWSPENDING (an empty version the rotation Lambda's createSecret fills)
        token = rotation_token(secrets.describe(SECRET).arn, original)
        assert stack.aws.calls[ROTATE] - before == 1
        assert stages(secrets, SECRET) == {original: (AWSCURRENT,), token: (AWSPENDING,)}
        # WHEN another tick runs in the same check interval, and another in the next one
        tick(client)
        stack.advance(minutes=15)
        tick(client)
    # THEN neither started a second rotation: the first is still the only one, still pending
    assert stack.aws.calls[ROTATE] - before == 1
    assert stages(secrets, SECRET) == {original: (AWSCURRENT,), token: (AWSPENDING,)}


def test_tick_outside_the_window_starts_no_rotation(stack: Stack) -> None:
    # GIVEN base certs with the rotation function configured, a day before the window opens
    secrets = AwsSecrets(stack.aws)
    with Client(app) as client:
        tick(client)
    enable_rotation(stack.aws, SECRET)
    before = dict(stages(secrets, SECRET))
    due = certs.regeneration_due_at(current_base_certs(secrets), stack.config.scaler.regenerate_before)
    stack.clock[0] = due - timedelta(days=1)
    # WHEN the tick runs
    with Client(app) as client:
        tick(client)
    # THEN nothing rotates
    assert stack.aws.calls[ROTATE] == 1  # enable_rotation's own call only
    assert stages(secrets, SECRET) == before
