"""The four Secrets Manager rotation steps of the base certs against moto: contract, re-entry, races, logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from moto import mock_aws

from chalicelib import certs
from chalicelib.aws import AwsClients
from chalicelib.certs import BaseCerts
from chalicelib.errors import RotationError
from chalicelib.resources import Names
from chalicelib.rotation import (
    BaseCertsRotation,
    EnsureOutcome,
    RotationEvent,
    RotationStep,
    ServerCertIssuer,
    ensure_base_certs,
    rotation_token,
)
from chalicelib.secrets import AWSCURRENT, AWSPENDING, AWSPREVIOUS, AwsSecrets
from tests.builders import race
from tests.functional.certs_fixtures import (
    STUB_LAMBDA,
    MotoSecrets,
    aws_clients,
    container,
    create_rotation_function,
    stages,
    start_rotation,
    versions_with_value,
)

NAMES = Names("test")
SECRET = NAMES.base_certs_secret
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
WINDOW = timedelta(hours=720)
#: A moment inside the regenerate window of material made at T0.
DUE = T0 + certs.DOCKER_MACHINE_VALIDITY - WINDOW + timedelta(days=1)
STEPS = list(RotationStep)


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[AwsClients]:
    """moto with its Lambda stub, so RotateSecret accepts a rotation function (which then runs no step)."""
    with mock_aws(config=STUB_LAMBDA):
        yield aws_clients()


@pytest.fixture
def secrets(aws: AwsClients) -> AwsSecrets:
    return MotoSecrets(aws)


@dataclass(frozen=True)
class Rotating:
    """A base-certs secret made at T0, with a rotation Secrets Manager started (token staged AWSPENDING)."""

    original: str
    token: str


@pytest.fixture
def rotating(aws: AwsClients, secrets: AwsSecrets) -> Rotating:
    ensure_base_certs(secrets, NAMES, T0, WINDOW)
    original = secrets.get_value(SECRET).version_id
    token = start_rotation(aws, SECRET, create_rotation_function(aws))
    return Rotating(original, token)


def event(token: str, step: RotationStep) -> RotationEvent:
    return RotationEvent.parse({"SecretId": SECRET, "ClientRequestToken": token, "Step": step.value})


def run_all(rotation: BaseCertsRotation, token: str, now: datetime) -> list[str]:
    return [rotation.handle(event(token, step), now).result for step in STEPS]


def current(secrets: AwsSecrets) -> BaseCerts:
    return BaseCerts.from_json(secrets.get_value(SECRET).value)


# -- each step -----------------------------------------------------------------------------------------------


def test_create_secret_puts_a_new_ca_as_pending_and_leaves_current_alone(
    secrets: AwsSecrets, rotating: Rotating
) -> None:
    # GIVEN a rotation Secrets Manager started
    before = current(secrets)
    # WHEN createSecret runs
    outcome = BaseCertsRotation(secrets).handle(event(rotating.token, RotationStep.CREATE), DUE)
    # THEN the token's version holds a new CA that still trusts the current one, and AWSCURRENT did not move
    assert outcome.result == "created"
    pending = BaseCerts.from_json(secrets.get_value(SECRET, version_id=rotating.token).value)
    assert pending.ca_pem != before.ca_pem
    assert before.ca_pem in pending.trust_bundle_pem
    assert stages(secrets, SECRET) == {rotating.original: (AWSCURRENT,), rotating.token: (AWSPENDING,)}
    assert current(secrets).ca_pem == before.ca_pem


def test_create_secret_twice_keeps_the_first_pending_version(secrets: AwsSecrets, rotating: Rotating) -> None:
    # GIVEN createSecret already ran for the token
    rotation = BaseCertsRotation(secrets)
    rotation.handle(event(rotating.token, RotationStep.CREATE), DUE)
    first = secrets.get_value(SECRET, version_id=rotating.token).value
    # WHEN Secrets Manager calls createSecret again (a retried invocation)
    again = rotation.handle(event(rotating.token, RotationStep.CREATE), DUE + timedelta(minutes=1))
    # THEN nothing new is generated
    assert again.result == "kept"
    assert secrets.get_value(SECRET, version_id=rotating.token).value == first


def test_set_secret_validates_without_touching_anything(secrets: AwsSecrets, rotating: Rotating) -> None:
    # GIVEN a pending version
    rotation = BaseCertsRotation(secrets)
    rotation.handle(event(rotating.token, RotationStep.CREATE), DUE)
    before = stages(secrets, SECRET)
    # WHEN setSecret runs
    outcome = rotation.handle(event(rotating.token, RotationStep.SET), DUE)
    # THEN it validated the material and changed no stage (there is no external system to set)
    assert outcome.result == "validated"
    assert stages(secrets, SECRET) == before


def test_four_steps_make_the_new_ca_current_and_the_old_one_previous(
    secrets: AwsSecrets, rotating: Rotating
) -> None:
    # GIVEN a started rotation; WHEN the four steps run in order
    results = run_all(BaseCertsRotation(secrets), rotating.token, DUE)
    # THEN the token is AWSCURRENT, the original AWSPREVIOUS, and AWSPENDING is gone (RotateSecret may run)
    assert results == ["created", "validated", "tested", "finished"]
    assert stages(secrets, SECRET) == {rotating.original: (AWSPREVIOUS,), rotating.token: (AWSCURRENT,)}
    assert not secrets.describe(SECRET).rotation_in_progress


def test_test_secret_rejects_pending_material_whose_key_does_not_match(
    secrets: AwsSecrets, rotating: Rotating
) -> None:
    # GIVEN a pending version whose client key belongs to another certificate
    good = certs.rotate(current(secrets), DUE)
    other = certs.generate_base_certs(DUE)
    broken = BaseCerts(good.ca_pem, good.ca_key_pem, good.cert_pem, other.key_pem, good.policy, good.retired)
    secrets.put_value(SECRET, broken.to_json(), token=rotating.token, stages=(AWSPENDING,))
    rotation = BaseCertsRotation(secrets)
    # WHEN setSecret / testSecret run; THEN both refuse, and AWSCURRENT stays where it was
    with pytest.raises(RotationError, match=r"key\.pem is not the key of cert\.pem"):
        rotation.handle(event(rotating.token, RotationStep.SET), DUE)
    with pytest.raises(RotationError, match="testSecret"):
        rotation.handle(event(rotating.token, RotationStep.TEST), DUE)
    assert secrets.describe(SECRET).version_with(AWSCURRENT) == rotating.original


def test_first_rotation_replaces_the_infra_placeholder(aws: AwsClients, secrets: AwsSecrets) -> None:
    # GIVEN the secret as infra/ creates it: random text, rotation configured
    secrets.create(SECRET, "Zr8TqkV0placeholder0generated0by0cloudformation")
    token = start_rotation(aws, SECRET, create_rotation_function(aws))
    # WHEN the four steps run
    run_all(BaseCertsRotation(secrets), token, T0)
    # THEN AWSCURRENT holds whole base certs, with nothing retired (there was no CA to keep)
    base = current(secrets)
    certs.check_base_certs(base, T0)
    assert base.retired == ()


# -- re-entry after crashes ----------------------------------------------------------------------------------


def test_rotation_resumes_after_a_crash_between_create_and_set(
    secrets: AwsSecrets, rotating: Rotating
) -> None:
    # GIVEN createSecret ran, then the Lambda container died
    BaseCertsRotation(secrets).handle(event(rotating.token, RotationStep.CREATE), DUE)
    written = secrets.get_value(SECRET, version_id=rotating.token).value
    # WHEN Secrets Manager retries from createSecret in a fresh container, minutes later
    fresh_container = BaseCertsRotation(container())
    results = run_all(fresh_container, rotating.token, DUE + timedelta(minutes=7))
    # THEN the version written before the crash becomes current; no second CA was made
    assert results == ["kept", "validated", "tested", "finished"]
    assert secrets.get_value(SECRET).value == written


def test_finish_twice_is_idempotent(secrets: AwsSecrets, rotating: Rotating) -> None:
    # GIVEN a completed rotation
    rotation = BaseCertsRotation(secrets)
    run_all(rotation, rotating.token, DUE)
    after = stages(secrets, SECRET)
    # WHEN finishSecret is delivered again
    again = rotation.handle(event(rotating.token, RotationStep.FINISH), DUE)
    # THEN it reports the version already current and moves nothing
    assert again.result == "already-current"
    assert stages(secrets, SECRET) == after


def test_finish_after_a_crash_between_its_two_stage_moves_removes_pending(
    secrets: AwsSecrets, rotating: Rotating
) -> None:
    # GIVEN finishSecret moved AWSCURRENT, then crashed before removing AWSPENDING
    rotation = BaseCertsRotation(secrets)
    for step in STEPS[:3]:
        rotation.handle(event(rotating.token, step), DUE)
    secrets.update_version_stage(SECRET, AWSCURRENT, move_to=rotating.token, remove_from=rotating.original)
    assert set(stages(secrets, SECRET)[rotating.token]) == {AWSCURRENT, AWSPENDING}
    # WHEN finishSecret is retried
    again = rotation.handle(event(rotating.token, RotationStep.FINISH), DUE)
    # THEN the labels end as after a clean finish
    assert again.result == "already-current"
    assert stages(secrets, SECRET)[rotating.token] == (AWSCURRENT,)


def test_steps_for_a_version_already_current_do_nothing(secrets: AwsSecrets, rotating: Rotating) -> None:
    # GIVEN a finished rotation
    rotation = BaseCertsRotation(secrets)
    run_all(rotation, rotating.token, DUE)
    value = secrets.get_value(SECRET).value
    # WHEN a late createSecret / testSecret for the same token arrives
    results = [rotation.handle(event(rotating.token, s), DUE).result for s in STEPS[:3]]
    # THEN each step sees the version current and leaves it (AWS rotation template behaviour)
    assert results == ["already-current"] * 3
    assert secrets.get_value(SECRET).value == value


# -- the rotation contract -----------------------------------------------------------------------------------


def test_a_secret_without_rotation_enabled_is_refused(secrets: AwsSecrets) -> None:
    # GIVEN base certs in a secret with no rotation configured
    ensure_base_certs(secrets, NAMES, T0, WINDOW)
    token = secrets.get_value(SECRET).version_id
    # WHEN a rotation event names it; THEN the step refuses and says how to fix it
    with pytest.raises(RotationError, match="not enabled for rotation"):
        BaseCertsRotation(secrets).handle(event(token, RotationStep.CREATE), DUE)


def test_a_token_that_is_no_version_is_refused(secrets: AwsSecrets, rotating: Rotating) -> None:
    with pytest.raises(RotationError, match="has no stage"):
        BaseCertsRotation(secrets).handle(event("0" * 36, RotationStep.CREATE), DUE)


def test_a_token_staged_only_previous_is_refused(secrets: AwsSecrets, rotating: Rotating) -> None:
    # GIVEN a finished rotation; the original version is now AWSPREVIOUS
    run_all(BaseCertsRotation(secrets), rotating.token, DUE)
    # WHEN an event names the previous version; THEN it is not AWSPENDING, so refused
    with pytest.raises(RotationError, match="not AWSPENDING"):
        BaseCertsRotation(secrets).handle(event(rotating.original, RotationStep.TEST), DUE)


# -- ensure_base_certs (the tick) ----------------------------------------------------------------------------


def test_ensure_creates_the_secret_then_finds_it_fresh(secrets: AwsSecrets) -> None:
    # GIVEN no secret; WHEN the tick ensures base certs twice
    first = ensure_base_certs(secrets, NAMES, T0, WINDOW)
    second = ensure_base_certs(secrets, NAMES, T0 + timedelta(minutes=1), WINDOW)
    # THEN the first creates (tagged as ours), the second finds them fresh
    assert (first.action, second.action) == ("created", "fresh")
    assert secrets.describe(SECRET).tags["runner-scaler:managed"] == "true"
    certs.check_base_certs(current(secrets), T0)


def test_ensure_inside_the_window_rotates_in_process_without_a_rotation_lambda(
    aws: AwsClients, secrets: AwsSecrets
) -> None:
    # GIVEN base certs made at T0 and no rotation Lambda (locally, or before infra wired one)
    ensure_base_certs(secrets, NAMES, T0, WINDOW)
    original = secrets.get_value(SECRET).version_id
    # WHEN the tick runs inside the regenerate window
    outcome = ensure_base_certs(secrets, NAMES, DUE, WINDOW)
    # THEN one new version, made current under the token derived from the old one
    token = rotation_token(secrets.describe(SECRET).arn, original)
    assert outcome.action == "rotated"
    assert outcome.version_id == token
    assert stages(secrets, SECRET) == {original: (AWSPREVIOUS,), token: (AWSCURRENT,)}
    assert not certs.needs_regeneration(current(secrets), DUE, WINDOW)


def test_ensure_with_a_rotation_lambda_starts_one_rotation(aws: AwsClients, secrets: AwsSecrets) -> None:
    # GIVEN a rotation Lambda configured on the secret, and a rotation already completed once
    ensure_base_certs(secrets, NAMES, T0, WINDOW)
    token = start_rotation(aws, SECRET, create_rotation_function(aws))
    run_all(BaseCertsRotation(secrets), token, T0 + timedelta(minutes=1))
    # WHEN the tick runs inside the window, twice
    first = ensure_base_certs(secrets, NAMES, DUE, WINDOW)
    second = ensure_base_certs(secrets, NAMES, DUE + timedelta(minutes=1), WINDOW)
    # THEN the first asks Secrets Manager to rotate, the second sees that rotation in progress
    assert (first.action, second.action) == ("rotation-started", "in-progress")
    assert secrets.describe(SECRET).version_with(AWSPENDING) == first.version_id


# -- races ---------------------------------------------------------------------------------------------------


def test_two_ticks_regenerating_at_once_make_exactly_one_new_ca(aws: AwsClients, secrets: AwsSecrets) -> None:
    # GIVEN base certs inside the window and no rotation Lambda
    ensure_base_certs(secrets, NAMES, T0, WINDOW)
    original = secrets.get_value(SECRET).version_id
    # WHEN two ticks in two containers ensure base certs at the same moment
    first, second = container(), container()
    outcomes: list[EnsureOutcome] = race(
        lambda: ensure_base_certs(first, NAMES, DUE, WINDOW),
        lambda: ensure_base_certs(second, NAMES, DUE, WINDOW),
    )
    # THEN exactly one new version exists and is current; both returned cleanly
    assert versions_with_value(aws, SECRET) == {original, outcomes[0].version_id}
    assert outcomes[0].version_id == outcomes[1].version_id == secrets.get_value(SECRET).version_id
    assert {o.action for o in outcomes} <= {"rotated", "resumed", "lost-race"}
    certs.check_base_certs(current(secrets), DUE)


def test_two_ticks_with_a_rotation_lambda_start_one_rotation(aws: AwsClients, secrets: AwsSecrets) -> None:
    # GIVEN a rotation Lambda configured (its first rotation done) and the material inside the window
    ensure_base_certs(secrets, NAMES, T0, WINDOW)
    run_all(BaseCertsRotation(secrets), start_rotation(aws, SECRET, create_rotation_function(aws)), T0)
    before = versions_with_value(aws, SECRET)
    # WHEN two ticks ask for a rotation at once
    first, second = container(), container()
    outcomes = race(
        lambda: ensure_base_certs(first, NAMES, DUE, WINDOW),
        lambda: ensure_base_certs(second, NAMES, DUE, WINDOW),
    )
    # THEN one pending version exists (same token for both), and neither tick failed
    pending = secrets.describe(SECRET).version_with(AWSPENDING)
    assert pending is not None
    assert {o.version_id for o in outcomes} == {pending}
    assert {o.action for o in outcomes} <= {"rotation-started", "in-progress"}
    assert len(versions_with_value(aws, SECRET) - before) <= 1


def test_two_invocations_of_the_same_rotation_at_once_write_one_version(
    aws: AwsClients, secrets: AwsSecrets, rotating: Rotating
) -> None:
    # GIVEN a started rotation; WHEN two invocations run all four steps at once (a retry overlapping)
    first, second = BaseCertsRotation(container()), BaseCertsRotation(container())
    results = race(
        lambda: run_all(first, rotating.token, DUE),
        lambda: run_all(second, rotating.token, DUE),
    )
    # THEN one new version, current, and each invocation returned cleanly
    assert versions_with_value(aws, SECRET) == {rotating.original, rotating.token}
    assert stages(secrets, SECRET) == {rotating.original: (AWSPREVIOUS,), rotating.token: (AWSCURRENT,)}
    assert all(r[-1] in {"finished", "already-current"} for r in results)


# -- what a launch gets, and what logs never get -------------------------------------------------------------


def test_a_machine_issued_before_rotation_still_verifies_after_it(
    secrets: AwsSecrets, rotating: Rotating
) -> None:
    # GIVEN a machine launched just before the rotation, with its server certificate and trust bundle
    issuer = ServerCertIssuer(secrets, SECRET)
    chain, key, machine_trust = issuer.issue(["10.0.3.7"], DUE)
    # WHEN the rotation completes
    run_all(BaseCertsRotation(secrets), rotating.token, DUE)
    after = current(secrets)
    # THEN the new client trusts the old machine, and the old machine trusts the new client
    certs.verify_server(chain, after.trust_bundle_pem, "10.0.3.7", DUE + timedelta(days=1))
    certs.verify_client(after.client_chain_pem, machine_trust, DUE + timedelta(days=1))
    # AND a machine launched after it verifies with both bundles too
    new_chain, new_key, new_trust = issuer.issue(["10.0.3.8"], DUE)
    certs.verify_server(new_chain, machine_trust, "10.0.3.8", DUE)
    assert certs.key_matches(new_chain, new_key) and certs.key_matches(chain, key)
    assert new_trust == after.trust_bundle_pem


def test_rotation_logs_never_contain_a_private_key(
    aws: AwsClients, secrets: AwsSecrets, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN every log record captured: ours at DEBUG, everything else at INFO (as a Lambda logs)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="chalicelib")
    # WHEN base certs are created, rotated in-process, and rotated through the four Lambda steps
    ensure_base_certs(secrets, NAMES, T0, WINDOW)
    ensure_base_certs(secrets, NAMES, DUE, WINDOW)
    token = start_rotation(aws, SECRET, create_rotation_function(aws))
    later = DUE + certs.DOCKER_MACHINE_VALIDITY - WINDOW
    run_all(BaseCertsRotation(secrets), token, later)
    ServerCertIssuer(secrets, SECRET).issue(["10.0.0.9"], later)
    # THEN something was logged, with fingerprints, and no record or stream holds key material
    assert caplog.records
    assert any("ca_sha256" in r.__dict__ for r in caplog.records)
    everything = caplog.text + json.dumps([r.__dict__ for r in caplog.records], default=str)
    captured = capsys.readouterr()
    for text in (everything, captured.out, captured.err):
        assert "PRIVATE KEY" not in text
        assert "BEGIN CERTIFICATE" not in text
