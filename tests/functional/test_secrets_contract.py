"""One contract for the Secrets Manager port: the adapter (on moto) and the in-memory twin both pass it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto import mock_aws

from chalicelib.errors import AwsCallError, NotFoundError, SecretConflictError
from chalicelib.secrets import AWSCURRENT, AWSPENDING, AWSPREVIOUS, AwsSecrets, MemorySecrets
from tests.functional.certs_fixtures import aws_clients

TOKEN = "0d6c2d9e-58a4-4c0e-8f83-3e8f2f0b9d11"
NAME = "contract/secret"


@pytest.fixture(params=["aws", "memory"])
def secrets(request: pytest.FixtureRequest, aws_credentials: None) -> Iterator[AwsSecrets | MemorySecrets]:
    if request.param == "memory":
        yield MemorySecrets()
        return
    with mock_aws():
        yield AwsSecrets(aws_clients())


def test_a_created_secret_has_one_current_version_and_its_tags(secrets: AwsSecrets | MemorySecrets) -> None:
    arn = secrets.create(NAME, "v1", tags={"runner-scaler:pool": "linux"})
    got = secrets.get_value(NAME)
    described = secrets.describe(NAME)
    assert (got.value, got.stages, got.arn) == ("v1", (AWSCURRENT,), arn)
    assert described.versions == {got.version_id: (AWSCURRENT,)}
    assert described.tags == {"runner-scaler:pool": "linux"}
    assert not described.rotation_enabled and not described.rotation_in_progress


def test_a_pending_version_leaves_current_alone_and_is_read_by_id_and_stage(
    secrets: AwsSecrets | MemorySecrets,
) -> None:
    secrets.create(NAME, "v1")
    version = secrets.put_value(NAME, "v2", token=TOKEN, stages=(AWSPENDING,))
    assert version == TOKEN
    assert secrets.get_value(NAME).value == "v1"
    assert secrets.get_value(NAME, version_id=TOKEN, version_stage=AWSPENDING).value == "v2"
    assert secrets.get_value(NAME, version_stage=AWSPENDING).value == "v2"
    assert secrets.describe(NAME).rotation_in_progress
    with pytest.raises(NotFoundError):
        secrets.get_value(NAME, version_id=TOKEN, version_stage=AWSCURRENT)


def test_the_same_token_and_value_is_a_no_op_another_value_conflicts(
    secrets: AwsSecrets | MemorySecrets,
) -> None:
    secrets.create(NAME, "v1")
    first = secrets.put_value(NAME, "v2", token=TOKEN)
    assert secrets.put_value(NAME, "v2", token=TOKEN) == first
    with pytest.raises(SecretConflictError):
        secrets.put_value(NAME, "v3", token=TOKEN)
    assert secrets.get_value(NAME).value == "v2"


def test_moving_current_makes_the_old_version_previous(secrets: AwsSecrets | MemorySecrets) -> None:
    secrets.create(NAME, "v1")
    old = secrets.get_value(NAME).version_id
    secrets.put_value(NAME, "v2", token=TOKEN, stages=(AWSPENDING,))
    secrets.update_version_stage(NAME, AWSCURRENT, move_to=TOKEN, remove_from=old)
    secrets.update_version_stage(NAME, AWSPENDING, remove_from=TOKEN)
    assert secrets.describe(NAME).versions == {old: (AWSPREVIOUS,), TOKEN: (AWSCURRENT,)}
    assert secrets.get_value(NAME).value == "v2"


def test_moving_a_label_from_a_version_that_lost_it_is_refused(secrets: AwsSecrets | MemorySecrets) -> None:
    # the compare-and-set finishSecret relies on: a second finisher cannot move AWSCURRENT again
    secrets.create(NAME, "v1")
    old = secrets.get_value(NAME).version_id
    secrets.put_value(NAME, "v2", token=TOKEN, stages=(AWSPENDING,))
    secrets.update_version_stage(NAME, AWSCURRENT, move_to=TOKEN, remove_from=old)
    with pytest.raises(AwsCallError) as refused:
        secrets.update_version_stage(NAME, AWSCURRENT, move_to=TOKEN, remove_from=old)
    assert refused.value.code == "InvalidParameterException"


def test_a_taken_name_conflicts_and_a_missing_secret_is_not_found(
    secrets: AwsSecrets | MemorySecrets,
) -> None:
    secrets.create(NAME, "v1")
    with pytest.raises(SecretConflictError):
        secrets.create(NAME, "other")
    with pytest.raises(NotFoundError):
        secrets.get_value("contract/missing")
    with pytest.raises(NotFoundError):
        secrets.describe("contract/missing")


def test_machine_secrets_are_created_replaced_and_force_deleted(secrets: AwsSecrets | MemorySecrets) -> None:
    name = "contract/machines/i-0abc"
    assert not secrets.machine_secret_exists(name)
    secrets.put_machine_secret(name, '{"runner_token": "t1"}', {"runner-scaler:pool": "linux"})
    secrets.put_machine_secret(name, '{"runner_token": "t2"}', {"runner-scaler:instance-id": "i-0abc"})
    assert secrets.machine_secret_exists(name)
    assert secrets.get_value(name).value == '{"runner_token": "t2"}'
    assert secrets.describe(name).tags == {
        "runner-scaler:pool": "linux",
        "runner-scaler:instance-id": "i-0abc",
    }
    secrets.delete_machine_secret(name)
    secrets.delete_machine_secret(name)  # twice: the terminate event may be delivered again
    assert not secrets.machine_secret_exists(name)
    secrets.put_machine_secret(name, "{}", {})  # no recovery window: the name is free at once
