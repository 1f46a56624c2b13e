"""Rotation on the in-memory Secrets Manager twin: events, contract, Lambda-mode races, the TTL cache."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib import certs
from chalicelib.errors import MalformedEventError, NotFoundError, RotationError, SecretConflictError
from chalicelib.resources import Names
from chalicelib.rotation import (
    BaseCertsRotation,
    RotationEvent,
    RotationStep,
    check_contract,
    ensure_base_certs,
    rotation_token,
    run_rotation_steps,
)
from chalicelib.secrets import (
    AWSCURRENT,
    AWSPENDING,
    AWSPREVIOUS,
    MemorySecrets,
    SecretCache,
    SecretDescription,
)
from tests.builders import race

NAMES = Names("unit")
SECRET = NAMES.base_certs_secret
T0 = datetime(2026, 2, 1, tzinfo=UTC)
WINDOW = timedelta(hours=720)
DUE = T0 + certs.DOCKER_MACHINE_VALIDITY - WINDOW + timedelta(hours=1)
TOKEN = "6f1c3c8e-1d7b-4a6e-9a52-0c1f7e3b2a10"


# -- the event -----------------------------------------------------------------------------------------------


def test_a_secrets_manager_event_parses() -> None:
    raw = {
        "SecretId": "arn:aws:secretsmanager:us-east-1:1:secret:x",
        "ClientRequestToken": TOKEN,
        "Step": "testSecret",
    }
    parsed = RotationEvent.parse({**raw, "RotationToken": "ignored-extra-field"})
    assert (parsed.secret_id, parsed.client_request_token, parsed.step) == (
        raw["SecretId"],
        TOKEN,
        RotationStep.TEST,
    )


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"ClientRequestToken": TOKEN, "Step": "createSecret"}, "SecretId"),
        ({"SecretId": "s", "ClientRequestToken": "short", "Step": "createSecret"}, "ClientRequestToken"),
        ({"SecretId": "s", "ClientRequestToken": TOKEN, "Step": "deleteSecret"}, "Step"),
        ("not an object", "event"),
    ],
)
def test_a_malformed_event_names_the_bad_field(raw: Any, named: str) -> None:
    with pytest.raises(MalformedEventError, match=named):
        RotationEvent.parse(raw)


def test_racers_derive_the_same_token_and_the_next_rotation_another() -> None:
    token = rotation_token("arn:secret", "v1")
    assert token == rotation_token("arn:secret", "v1")
    assert token != rotation_token("arn:secret", "v2")
    assert 32 <= len(token) <= 64


def describe(versions: dict[str, tuple[str, ...]], enabled: bool = True) -> SecretDescription:
    return SecretDescription("arn", SECRET, enabled, "arn:lambda" if enabled else None, versions)


@pytest.mark.parametrize(
    ("description", "message"),
    [
        (describe({TOKEN: (AWSPENDING,)}, enabled=False), "not enabled for rotation"),
        (describe({"other": (AWSCURRENT,)}), "has no stage"),
        (describe({TOKEN: (AWSPREVIOUS,)}), "not AWSPENDING"),
    ],
)
def test_the_rotation_contract_refuses_what_aws_template_refuses(
    description: SecretDescription, message: str
) -> None:
    with pytest.raises(RotationError, match=message):
        check_contract(description, TOKEN)


def test_the_contract_accepts_pending_and_current_versions() -> None:
    check_contract(describe({TOKEN: (AWSPENDING,)}), TOKEN)
    check_contract(describe({TOKEN: (AWSCURRENT, AWSPENDING)}), TOKEN)


# -- the in-memory twin, driven like Secrets Manager drives the rotation Lambda ------------------------------


def lambda_twin() -> MemorySecrets:
    """A twin whose RotateSecret calls the four steps, as Secrets Manager invokes the rotation Lambda."""
    twin = MemorySecrets()

    def invoke(arn: str, token: str) -> None:
        rotation = BaseCertsRotation(twin)
        for step in RotationStep:
            event = RotationEvent.parse({"SecretId": arn, "ClientRequestToken": token, "Step": step.value})
            rotation.handle(event, DUE)

    twin.rotation_hook = invoke
    return twin


def test_with_a_rotation_lambda_the_tick_rotates_through_secrets_manager() -> None:
    # GIVEN base certs in a secret whose rotation Lambda is configured
    twin = lambda_twin()
    ensure_base_certs(twin, NAMES, T0, WINDOW)
    original = twin.get_value(SECRET).version_id
    twin.enable_rotation(SECRET, "arn:aws:lambda:us-east-1:1:function:rotate_base_certs")
    # WHEN the tick runs inside the window
    outcome = ensure_base_certs(twin, NAMES, DUE, WINDOW)
    # THEN it asked Secrets Manager to rotate (which ran the four steps), and a new CA is current
    assert outcome.action == "rotation-started"
    assert twin.describe(SECRET).versions == {original: (AWSPREVIOUS,), outcome.version_id: (AWSCURRENT,)}
    assert twin.calls["rotate_secret"] == 1


def test_two_ticks_at_once_start_exactly_one_rotation() -> None:
    # GIVEN a rotation Lambda that takes a while (so the second tick arrives mid-rotation)
    twin = lambda_twin()
    ensure_base_certs(twin, NAMES, T0, WINDOW)
    twin.enable_rotation(SECRET, "arn:aws:lambda:us-east-1:1:function:rotate_base_certs")
    started = threading.Event()
    finish_rotation = threading.Event()
    run_steps = twin.rotation_hook
    assert run_steps is not None

    def slow_lambda(arn: str, token: str) -> None:
        started.set()
        finish_rotation.wait(10)
        run_steps(arn, token)

    twin.rotation_hook = slow_lambda
    # WHEN two ticks ensure the base certs at once
    outcomes: list[Any] = []

    def tick() -> None:
        outcomes.append(ensure_base_certs(twin, NAMES, DUE, WINDOW))

    first = threading.Thread(target=tick)
    first.start()
    assert started.wait(10)
    tick()  # the second tick, while the first rotation is still running
    finish_rotation.set()
    first.join(10)
    # THEN Secrets Manager ran one rotation; the other tick saw it in progress and returned cleanly
    assert sorted(o.action for o in outcomes) == ["in-progress", "rotation-started"]
    assert len(twin.describe(SECRET).versions) == 2


def test_two_in_process_regenerations_at_once_write_one_version() -> None:
    # GIVEN no rotation Lambda, and base certs inside the window
    twin = MemorySecrets()
    ensure_base_certs(twin, NAMES, T0, WINDOW)
    # WHEN two callers regenerate at once
    outcomes = race(*(lambda: ensure_base_certs(twin, NAMES, DUE, WINDOW) for _ in range(2)))
    # THEN one new version (Secrets Manager refused the loser's different value for the shared token)
    versions = twin.describe(SECRET).versions
    assert len(versions) == 2
    assert {o.version_id for o in outcomes} == {twin.describe(SECRET).version_with(AWSCURRENT)}
    assert [o.action for o in outcomes].count("rotated") <= 1
    assert twin.calls["put_secret_value"] <= 2


def test_a_racer_finishing_between_our_check_and_our_read_makes_us_lose_cleanly() -> None:
    # GIVEN base certs due, and two in-process rotations sharing the token derived from AWSCURRENT
    twin = MemorySecrets()
    ensure_base_certs(twin, NAMES, T0, WINDOW)
    description = twin.describe(SECRET)
    token = rotation_token(description.arn, description.version_with(AWSCURRENT) or "")

    class Overtaken(BaseCertsRotation):
        """Checked the stages, then the other racer ran every step before this one read AWSPENDING."""

        def set_secret(self, secret_id: str, token: str, now: datetime) -> str:
            assert run_rotation_steps(BaseCertsRotation(twin), secret_id, token, now) == "resumed"
            return super().set_secret(secret_id, token, now)

    # WHEN the overtaken one goes on
    outcome = run_rotation_steps(Overtaken(twin), SECRET, token, DUE)
    # THEN it reports the lost race instead of failing, and one new version is current
    assert outcome == "lost-race"
    assert twin.describe(SECRET).version_with(AWSCURRENT) == token
    assert len(twin.describe(SECRET).versions) == 2


def test_ensure_refuses_a_secret_scheduled_for_deletion_with_the_fix() -> None:
    twin = MemorySecrets()
    ensure_base_certs(twin, NAMES, T0, WINDOW)

    class Deleted(MemorySecrets):
        def describe(self, secret_id: str) -> SecretDescription:
            got = twin.describe(secret_id)
            return SecretDescription(got.arn, got.name, False, None, got.versions, deleted=True)

    with pytest.raises(RotationError, match="restore-secret"):
        ensure_base_certs(Deleted(), NAMES, DUE, WINDOW)


# -- twin semantics the rotation relies on (moto only partly has them) --------------------------------------


def test_put_with_a_used_token_and_another_value_conflicts() -> None:
    twin = MemorySecrets()
    twin.create(SECRET, "v1")
    twin.put_value(SECRET, "v2", token=TOKEN, stages=(AWSPENDING,))
    assert twin.put_value(SECRET, "v2", token=TOKEN, stages=(AWSPENDING,)) == TOKEN
    with pytest.raises(SecretConflictError):
        twin.put_value(SECRET, "v3", token=TOKEN, stages=(AWSPENDING,))


def test_rotate_secret_is_refused_while_a_rotation_is_pending() -> None:
    twin = MemorySecrets()
    twin.create(SECRET, "v1")
    twin.enable_rotation(SECRET, "arn:lambda")
    twin.rotate(SECRET, token=TOKEN)
    with pytest.raises(SecretConflictError, match="isn't complete"):
        twin.rotate(SECRET, token=TOKEN)
    assert twin.describe(SECRET).rotation_in_progress


# -- the TTL cache -------------------------------------------------------------------------------------------


def test_the_secret_cache_reads_once_per_ttl_and_after_invalidate() -> None:
    # GIVEN a JSON secret and a cache with a clock the test moves
    twin = MemorySecrets()
    twin.create("unit/webhook-tokens", '{"tokens": ["a"]}')
    clock = [100.0]
    cache = SecretCache(twin, ttl_seconds=60, clock=lambda: clock[0])
    # WHEN read twice inside the TTL, after a rotation, after the TTL, and after invalidate
    first = cache.json("unit/webhook-tokens")
    twin.put_value("unit/webhook-tokens", '{"tokens": ["a", "b"]}')
    clock[0] += 30
    inside = cache.json("unit/webhook-tokens")
    clock[0] += 31
    after = cache.json("unit/webhook-tokens")
    twin.put_value("unit/webhook-tokens", '{"tokens": ["b"]}')
    cache.invalidate("unit/webhook-tokens")
    invalidated = cache.text("unit/webhook-tokens")
    # THEN Secrets Manager was read exactly when the cache went stale
    assert (first, inside, after) == ({"tokens": ["a"]}, {"tokens": ["a"]}, {"tokens": ["a", "b"]})
    assert invalidated == '{"tokens": ["b"]}'
    assert twin.calls["get_secret_value"] == 3


def test_the_secret_cache_names_a_secret_that_is_not_json_without_its_value() -> None:
    twin = MemorySecrets()
    twin.create("unit/gitlab-token", "glpat-secret-value")
    with pytest.raises(ValueError, match="unit/gitlab-token") as caught:
        SecretCache(twin).json("unit/gitlab-token")
    assert "glpat" not in str(caught.value)
    with pytest.raises(NotFoundError):
        SecretCache(twin).text("unit/missing")


def test_a_rotation_keeps_the_key_type_and_takes_the_configured_validity() -> None:
    # GIVEN base certs made with ECDSA P-384 (an operator's choice)
    twin = MemorySecrets()
    ensure_base_certs(twin, NAMES, T0, WINDOW, certs.CertPolicy(key_algorithm=certs.KeyAlgorithm.ECDSA_P384))
    # WHEN the tick rotates them with config's cert_validity of 400 days
    ensure_base_certs(twin, NAMES, DUE, WINDOW, validity=timedelta(days=400))
    # THEN the key type stays, and the new CA lives as configured
    rotated = certs.BaseCerts.from_json(twin.get_value(SECRET).value)
    assert rotated.policy.key_algorithm is certs.KeyAlgorithm.ECDSA_P384
    assert rotated.ca.not_valid_after_utc == DUE + timedelta(days=400)
