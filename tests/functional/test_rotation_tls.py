"""Real mutual-TLS handshakes on localhost (Python's ssl, OpenSSL underneath) across a base-certs rotation.

OpenSSL checks validity against the real clock, so these tests make their certificates at the real `now`:
the one place a test reads the clock, at its edge.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from moto import mock_aws

from chalicelib import certs
from chalicelib.aws import AwsClients
from chalicelib.certs import BaseCerts
from chalicelib.resources import Names
from chalicelib.rotation import (
    BaseCertsRotation,
    RotationEvent,
    RotationStep,
    ServerCertIssuer,
    ensure_base_certs,
)
from chalicelib.secrets import AwsSecrets
from tests.functional.certs_fixtures import (
    STUB_LAMBDA,
    Party,
    aws_clients,
    create_rotation_function,
    start_rotation,
    tls_handshake,
)

NAMES = Names("tls")
SECRET = NAMES.base_certs_secret
WINDOW = timedelta(hours=720)
HOST = "127.0.0.1"


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[AwsClients]:
    with mock_aws(config=STUB_LAMBDA):
        yield aws_clients()


@pytest.fixture
def secrets(aws: AwsClients) -> AwsSecrets:
    return AwsSecrets(aws)


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


def client_of(base: BaseCerts) -> Party:
    """The runner side: docker-machine's cert.pem (with chain), key.pem, and the trust bundle as ca.pem."""
    return Party(base.client_chain_pem, base.key_pem, base.trust_bundle_pem)


def machine(issuer: ServerCertIssuer, now: datetime) -> Party:
    """A machine as the lifecycle launches it: server certificate, key and trust bundle from AWSCURRENT."""
    return Party(*issuer.issue([HOST, "machine.internal"], now))


def step(secrets: AwsSecrets, token: str, name: RotationStep, now: datetime) -> None:
    event = RotationEvent.parse({"SecretId": SECRET, "ClientRequestToken": token, "Step": name.value})
    BaseCertsRotation(secrets).handle(event, now)


def current(secrets: AwsSecrets) -> BaseCerts:
    return BaseCerts.from_json(secrets.get_value(SECRET).value)


def test_machines_and_clients_keep_talking_before_during_and_after_a_rotation(
    aws: AwsClients, secrets: AwsSecrets, now: datetime, tmp_path: Path
) -> None:
    # GIVEN base certs, a machine launched with them, and a runner holding the client certificate
    ensure_base_certs(secrets, NAMES, now, WINDOW)
    issuer = ServerCertIssuer(secrets, SECRET)
    old_machine, old_client = machine(issuer, now), client_of(current(secrets))
    # THEN (before) they complete a mutual handshake; the client checked the machine's IP SAN
    assert tls_handshake(old_machine, old_client, tmp_path / "before") == HOST

    # WHEN (during) a rotation has written and tested its pending version but not finished
    token = start_rotation(aws, SECRET, create_rotation_function(aws))
    for name in (RotationStep.CREATE, RotationStep.SET, RotationStep.TEST):
        step(secrets, token, name, now)
    pending = BaseCerts.from_json(secrets.get_value(SECRET, version_id=token).value)
    launched_meanwhile = machine(issuer, now)
    pending_machine = Party(*certs.issue_server_cert(pending, [HOST], now), pending.trust_bundle_pem)
    # THEN launches still use the current CA, and the pending material already works with both generations
    tls_handshake(launched_meanwhile, old_client, tmp_path / "during-current")
    tls_handshake(pending_machine, client_of(pending), tmp_path / "during-pending")
    tls_handshake(pending_machine, old_client, tmp_path / "during-mixed")

    # WHEN (after) the rotation finishes
    step(secrets, token, RotationStep.FINISH, now)
    new_client, new_machine = client_of(current(secrets)), machine(issuer, now)
    # THEN the old machine (which only knows the old CA) and the new client still trust each other
    tls_handshake(old_machine, new_client, tmp_path / "after-old-machine")
    # AND a new machine talks to the new client and to a runner that has not re-read the secret yet
    tls_handshake(new_machine, new_client, tmp_path / "after-new-machine")
    tls_handshake(new_machine, old_client, tmp_path / "after-stale-client")


def test_after_the_overlap_the_old_ca_is_no_longer_trusted(now: datetime, tmp_path: Path) -> None:
    # GIVEN a machine signed by a CA that was then rotated away
    old = certs.generate_base_certs(now)
    old_machine = Party(*certs.issue_server_cert(old, [HOST], now), old.trust_bundle_pem)
    rotated = certs.rotate(old, now)
    # WHEN the overlap (server validity + grace) has passed, as a later read of the secret sees it
    expired_overlap = rotated.trusted_at(now + old.policy.server_validity + certs.ROTATION_GRACE)
    assert expired_overlap.retired == ()
    # THEN the client refuses the old CA's machines: the bundle holds only the new CA
    with pytest.raises(OSError, match="certificate"):
        tls_handshake(old_machine, client_of(expired_overlap), tmp_path / "evicted")


def test_without_the_cross_signed_chain_an_old_machine_would_refuse_the_new_client(
    now: datetime, tmp_path: Path
) -> None:
    # GIVEN a machine that knows only the old CA, and the rotated client certificate
    old = certs.generate_base_certs(now)
    old_machine = Party(*certs.issue_server_cert(old, [HOST], now), old.trust_bundle_pem)
    rotated = certs.rotate(old, now)
    # WHEN the client presents its leaf alone, as plain docker-machine certs would
    leaf_only = Party(rotated.cert_pem, rotated.key_pem, rotated.trust_bundle_pem)
    # THEN the old machine refuses it; with the chain (cert.pem as exported) it accepts it
    with pytest.raises(OSError):
        tls_handshake(old_machine, leaf_only, tmp_path / "leaf-only")
    tls_handshake(old_machine, client_of(rotated), tmp_path / "with-chain")


def test_a_client_from_a_foreign_ca_is_refused_by_the_machine(now: datetime, tmp_path: Path) -> None:
    # GIVEN a machine of our fleet and a client certificate from somebody else's CA that trusts our CA
    ours, theirs = certs.generate_base_certs(now), certs.generate_base_certs(now)
    our_machine = Party(*certs.issue_server_cert(ours, [HOST], now), ours.trust_bundle_pem)
    intruder = Party(theirs.client_chain_pem, theirs.key_pem, ours.trust_bundle_pem)
    # WHEN it connects; THEN the machine's Docker endpoint rejects it (mutual TLS really verifies)
    with pytest.raises(OSError):
        tls_handshake(our_machine, intruder, tmp_path / "intruder")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_openssl_verifies_exported_files_across_a_rotation(now: datetime, tmp_path: Path) -> None:
    # GIVEN base certs rotated once, exported in docker-machine's layout, and a server cert of the old CA
    old = certs.generate_base_certs(now)
    old_server, _ = certs.issue_server_cert(old, [HOST], now)
    rotated = certs.rotate(old, now)
    certs.export_dir(rotated, tmp_path)
    (tmp_path / "old-server.pem").write_text(old_server)
    (tmp_path / "chain.pem").write_text(rotated.chain_pem)
    (tmp_path / "old-ca.pem").write_text(old.ca_pem)

    def verify(*args: str) -> str:
        done = subprocess.run(["openssl", "verify", *args], capture_output=True, text=True, check=False)
        return done.stdout + done.stderr

    # THEN openssl accepts the client certificate under ca.pem (docker's own check)
    assert ": OK" in verify(
        "-purpose", "sslclient", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem")
    )
    # AND the old machine's certificate under the exported trust bundle
    bundle = str(tmp_path / "trust-bundle.pem")
    assert ": OK" in verify("-purpose", "sslserver", "-CAfile", bundle, str(tmp_path / "old-server.pem"))
    # AND the new client under the OLD CA alone, through the cross-signed chain
    untrusted = str(tmp_path / "chain.pem")
    old_ca = str(tmp_path / "old-ca.pem")
    assert ": OK" in verify("-CAfile", old_ca, "-untrusted", untrusted, str(tmp_path / "cert.pem"))
    # AND the key files are private
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
