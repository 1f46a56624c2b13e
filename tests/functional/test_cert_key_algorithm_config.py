"""`scaler.cert_key_algorithm` reaches new material: the tick (through the app, moto) creates base certs of
the configured key type, and the rotation's createSecret rotates to it."""

from __future__ import annotations

from chalice.test import Client

from app import app
from chalicelib import certs
from chalicelib.certs import BaseCerts, KeyAlgorithm
from chalicelib.resources import Names
from chalicelib.rotation import BaseCertsRotation, ensure_base_certs, rotation_token
from chalicelib.runtime import Runtime, install
from chalicelib.secrets import AWSCURRENT, AWSPENDING, MemorySecrets
from tests.builders import T0
from tests.functional.conftest import Stack

NAMES = Names("test")


def key_type(base: BaseCerts) -> tuple[KeyAlgorithm, KeyAlgorithm]:
    """The key types of the CA and client keys themselves (not the policy that claims them)."""
    return certs.key_algorithm_of(certs.load_key(base.ca_key_pem)), certs.key_algorithm_of(
        certs.load_key(base.key_pem)
    )


def test_tick_creates_base_certs_of_the_configured_key_type(stack: Stack) -> None:
    # GIVEN config choosing RSA 2048, and no base certs yet
    scaler = stack.config.scaler.model_copy(update={"cert_key_algorithm": "rsa-2048"})
    config = stack.config.model_copy(update={"scaler": scaler})
    install(Runtime(dict(stack.runtime.environ), aws=stack.aws, config=config, clock=stack.runtime.clock))
    # WHEN the tick runs
    with Client(app) as client:
        client.lambda_.invoke(
            "tick", client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
        )
    # THEN the CA and client keys are RSA 2048, and the policy stored with them says so (rotations keep it)
    value = stack.aws.call("secretsmanager", "get_secret_value", SecretId=NAMES.base_certs_secret)
    base = BaseCerts.from_json(value["SecretString"])
    assert key_type(base) == (KeyAlgorithm.RSA_2048, KeyAlgorithm.RSA_2048)
    assert base.policy.key_algorithm is KeyAlgorithm.RSA_2048
    certs.check_base_certs(base, stack.clock[0])


def test_create_secret_rotates_to_the_configured_key_type() -> None:
    # GIVEN ECDSA P-256 base certs and a rotation started, with config now choosing ECDSA P-384
    secrets = MemorySecrets()
    ensure_base_certs(secrets, NAMES, T0, certs.DOCKER_MACHINE_VALIDITY)
    secrets.enable_rotation(NAMES.base_certs_secret, "arn:aws:lambda:us-east-1:000000000000:function:rotate")
    current = secrets.get_value(NAMES.base_certs_secret).version_id
    token = rotation_token(secrets.describe(NAMES.base_certs_secret).arn, current)
    secrets.rotate(NAMES.base_certs_secret, token=token)
    rotation = BaseCertsRotation(secrets, key_algorithm=KeyAlgorithm.ECDSA_P384)
    # WHEN createSecret runs
    assert rotation.create_secret(NAMES.base_certs_secret, token, T0) == "created"
    # THEN the pending material has P-384 keys, and still trusts the P-256 CA it replaces
    pending = BaseCerts.from_json(
        secrets.get_value(NAMES.base_certs_secret, version_id=token, version_stage=AWSPENDING).value
    )
    previous = BaseCerts.from_json(secrets.get_value(NAMES.base_certs_secret, version_stage=AWSCURRENT).value)
    assert key_type(previous) == (KeyAlgorithm.ECDSA_P256, KeyAlgorithm.ECDSA_P256)
    assert key_type(pending) == (KeyAlgorithm.ECDSA_P384, KeyAlgorithm.ECDSA_P384)
    assert [r.ca_pem for r in pending.retired] == [previous.ca_pem]
