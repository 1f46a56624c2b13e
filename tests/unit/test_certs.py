"""PURE certs: CA, client and server certificates, regeneration window, rotation overlap, files."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib import certs
from chalicelib.certs import BaseCerts, CertPolicy, KeyAlgorithm
from chalicelib.errors import CertificateError

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
BASE = certs.generate_base_certs(T0)  # one CA for the read-only tests (keys are slow-ish to make)
POLICY = BASE.policy


def cert_of(pem: str) -> x509.Certificate:
    return certs.load_certs(pem)[0]


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# -- what gets built -----------------------------------------------------------------------------------------


def test_the_ca_is_a_self_signed_ca_with_a_subject_of_its_own() -> None:
    # GIVEN two CAs made at the same moment
    other = certs.generate_base_certs(T0)
    ca = BASE.ca
    # THEN each is a CA (critical basic constraints, may sign certificates), self-signed, and uniquely named
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    assert other.ca.subject != ca.subject
    assert ca.not_valid_after_utc == T0 + certs.DOCKER_MACHINE_VALIDITY


def test_the_client_certificate_is_for_client_auth_and_signed_by_the_ca() -> None:
    client = BASE.client
    assert eku(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not client.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    client.verify_directly_issued_by(BASE.ca)
    assert certs.key_matches(BASE.cert_pem, BASE.key_pem)
    certs.verify_client(BASE.client_chain_pem, BASE.trust_bundle_pem, T0)


def test_a_server_certificate_names_the_machine_by_ip_and_dns() -> None:
    # WHEN a server certificate is issued for an IPv4, an IPv6 and a DNS name
    chain, key = certs.issue_server_cert(BASE, ["10.0.1.7", "fd00::7", "ip-10-0-1-7.ec2.internal"], T0)
    cert = cert_of(chain)
    # THEN all three are SANs, it is for server auth only, and it verifies for each name but no other
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.1.7"),
        ipaddress.ip_address("fd00::7"),
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["ip-10-0-1-7.ec2.internal"]
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert certs.key_matches(chain, key)
    for host in ("10.0.1.7", "fd00::7", "ip-10-0-1-7.ec2.internal"):
        certs.verify_server(chain, BASE.trust_bundle_pem, host, T0)
    with pytest.raises(CertificateError, match=r"10\.0\.1\.8"):
        certs.verify_server(chain, BASE.trust_bundle_pem, "10.0.1.8", T0)


def test_serial_numbers_are_random() -> None:
    serials = {cert_of(certs.issue_server_cert(BASE, ["10.0.0.1"], T0)[0]).serial_number for _ in range(20)}
    serials |= {BASE.ca.serial_number, BASE.client.serial_number}
    assert len(serials) == 22
    assert min(s.bit_length() for s in serials) > 64


@pytest.mark.parametrize(
    ("algorithm", "key_type", "size"),
    [
        (KeyAlgorithm.ECDSA_P256, ec.EllipticCurvePrivateKey, 256),
        (KeyAlgorithm.ECDSA_P384, ec.EllipticCurvePrivateKey, 384),
        (KeyAlgorithm.RSA_2048, rsa.RSAPrivateKey, 2048),
    ],
)
def test_the_key_algorithm_is_configurable(algorithm: KeyAlgorithm, key_type: type, size: int) -> None:
    base = certs.generate_base_certs(T0, CertPolicy(key_algorithm=algorithm))
    for pem in (base.ca_key_pem, base.key_pem, certs.issue_server_cert(base, ["10.0.0.2"], T0)[1]):
        key = certs.load_key(pem)
        assert isinstance(key, key_type) and key.key_size == size
    certs.check_base_certs(base, T0)


def test_validity_is_configurable_and_a_server_certificate_never_outlives_its_ca() -> None:
    policy = CertPolicy(
        ca_validity=timedelta(days=90), client_validity=timedelta(days=60), server_validity=timedelta(days=2)
    )
    base = certs.generate_base_certs(T0, policy)
    assert base.client.not_valid_after_utc == T0 + timedelta(days=60)
    assert base.expires_at == T0 + timedelta(days=60)
    assert certs.not_after(certs.issue_server_cert(base, ["10.0.0.3"], T0)[0]) == T0 + timedelta(days=2)
    # a day before the CA ends, the server certificate ends with it
    late = T0 + timedelta(days=89)
    assert (
        certs.not_after(certs.issue_server_cert(base, ["10.0.0.3"], late)[0]) == base.ca.not_valid_after_utc
    )
    with pytest.raises(CertificateError, match="expired"):
        certs.issue_server_cert(base, ["10.0.0.3"], T0 + timedelta(days=90))
    with pytest.raises(CertificateError, match="exceeds"):
        certs.issue_server_cert(base, ["10.0.0.3"], T0, timedelta(days=3))


def test_certificates_start_a_little_before_now_for_lagging_clocks() -> None:
    assert BASE.ca.not_valid_before_utc == T0 - certs.CLOCK_SKEW


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("server_validity", timedelta(0), "positive"),
        ("ca_validity", timedelta(days=-1), "positive"),
        ("server_validity", timedelta(days=2000), "shorter than ca_validity"),
        ("organization", " ", "organization"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        CertPolicy(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["", "not a host", "-bad.example", "a" * 64 + ".example", "exa_mple.com"])
def test_a_host_that_is_neither_ip_nor_dns_is_refused(host: str) -> None:
    with pytest.raises(CertificateError):
        certs.issue_server_cert(BASE, [host], T0)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(CertificateError, match="time zone"):
        certs.generate_base_certs(datetime(2026, 1, 1))


# -- the regeneration window ---------------------------------------------------------------------------------

EXPIRES = BASE.expires_at


@pytest.mark.parametrize(
    ("now", "before", "due"),
    [
        (T0, timedelta(hours=720), False),
        (EXPIRES - timedelta(hours=721), timedelta(hours=720), False),
        (EXPIRES - timedelta(hours=720), timedelta(hours=720), True),
        (EXPIRES - timedelta(seconds=1), timedelta(0), False),
        (EXPIRES, timedelta(0), True),
        (EXPIRES + timedelta(days=400), timedelta(hours=720), True),
        (T0, timedelta(days=-5), False),
    ],
)
def test_needs_regeneration_like_docker_machine_regenerate_before(
    now: datetime, before: timedelta, due: bool
) -> None:
    assert certs.needs_regeneration(BASE, now, before) is due
    assert (
        certs.regeneration_due_at(BASE, before) <= now
        if due
        else certs.regeneration_due_at(BASE, before) > now
    )


OFFSETS = st.integers(min_value=0, max_value=int(certs.DOCKER_MACHINE_VALIDITY.total_seconds()) * 2)
WINDOWS = st.integers(min_value=0, max_value=400 * 86400)


@given(OFFSETS, OFFSETS, WINDOWS)
def test_needs_regeneration_never_turns_false_again_as_time_passes(a: int, b: int, window: int) -> None:
    earlier, later = sorted((T0 + timedelta(seconds=a), T0 + timedelta(seconds=b)))
    before = timedelta(seconds=window)
    assert certs.needs_regeneration(BASE, earlier, before) <= certs.needs_regeneration(BASE, later, before)


@given(OFFSETS, WINDOWS, WINDOWS)
def test_a_wider_window_never_regenerates_later(offset: int, a: int, b: int) -> None:
    now = T0 + timedelta(seconds=offset)
    narrow, wide = sorted((timedelta(seconds=a), timedelta(seconds=b)))
    assert certs.needs_regeneration(BASE, now, narrow) <= certs.needs_regeneration(BASE, now, wide)


# -- rotation ------------------------------------------------------------------------------------------------


def test_rotation_keeps_the_previous_ca_for_one_server_validity_plus_grace() -> None:
    # GIVEN base certs rotated a year in
    when = T0 + timedelta(days=365)
    rotated = certs.rotate(BASE, when)
    # THEN the new CA is first in the bundle, the old one follows until its last server certificate expires
    (retired,) = rotated.retired
    assert retired.ca_pem == BASE.ca_pem
    assert retired.trusted_until == when + POLICY.server_validity + certs.ROTATION_GRACE
    assert certs.split_pem(rotated.trust_bundle_pem) == [rotated.ca_pem, BASE.ca_pem]
    assert rotated.previous_ca_trusted_until() == retired.trusted_until
    # AND a machine the old CA signed just before the rotation verifies until it expires
    chain, _ = certs.issue_server_cert(BASE, ["10.9.9.9"], when)
    certs.verify_server(chain, rotated.trust_bundle_pem, "10.9.9.9", when + POLICY.server_validity)
    # AND once the overlap ends, a later read drops the old CA
    assert rotated.trusted_at(retired.trusted_until).retired == ()


@settings(max_examples=15, deadline=None)
@given(st.integers(min_value=0, max_value=int(certs.DOCKER_MACHINE_VALIDITY.total_seconds()) + 86400 * 40))
def test_the_overlap_is_bounded_by_server_validity_and_the_old_ca(offset: int) -> None:
    when = T0 + timedelta(seconds=offset)
    rotated = certs.rotate(BASE, when)
    expected = min(BASE.ca.not_valid_after_utc, when + POLICY.server_validity + certs.ROTATION_GRACE)
    if expected > when:
        assert [r.trusted_until for r in rotated.retired] == [expected]
        certs.verify_client(rotated.client_chain_pem, BASE.trust_bundle_pem, when)
    else:  # the old CA already expired: nothing of it is worth trusting
        assert rotated.retired == ()


def test_two_quick_rotations_keep_a_chain_back_to_the_first_ca() -> None:
    # GIVEN A -> B -> C within one overlap
    b = certs.rotate(BASE, T0 + timedelta(days=1))
    c = certs.rotate(b, T0 + timedelta(days=2))
    # THEN machines that know only A or only B accept C's client, and C's bundle trusts all three
    assert len(c.retired) == 2
    for bundle in (BASE.trust_bundle_pem, b.trust_bundle_pem, c.trust_bundle_pem):
        certs.verify_client(c.client_chain_pem, bundle, T0 + timedelta(days=2))
    server, _ = certs.issue_server_cert(c, ["10.0.0.4"], T0 + timedelta(days=2))
    certs.verify_server(server, BASE.trust_bundle_pem, "10.0.0.4", T0 + timedelta(days=2))


def test_rotation_may_change_the_policy() -> None:
    rotated = certs.rotate(BASE, T0, CertPolicy(key_algorithm=KeyAlgorithm.ECDSA_P384))
    assert rotated.policy.key_algorithm is KeyAlgorithm.ECDSA_P384
    certs.verify_client(rotated.client_chain_pem, BASE.trust_bundle_pem, T0)


# -- serialisation and files ---------------------------------------------------------------------------------


def test_json_round_trip_keeps_everything() -> None:
    rotated = certs.rotate(BASE, T0 + timedelta(days=3))
    assert BaseCerts.from_json(rotated.to_json()) == rotated


@pytest.mark.parametrize(
    "text", ["", "{}", "not json", '{"ca_pem": "x", "ca_key_pem": "", "cert_pem": "", "key_pem": ""}']
)
def test_unusable_json_says_how_to_recover(text: str) -> None:
    with pytest.raises(CertificateError, match="regenerate"):
        BaseCerts.from_json(text)


def test_repr_never_shows_a_private_key() -> None:
    assert "PRIVATE KEY" not in repr(certs.rotate(BASE, T0))


def test_a_key_of_another_certificate_does_not_match() -> None:
    other = certs.generate_base_certs(T0)
    assert not certs.key_matches(BASE.cert_pem, other.key_pem)
    broken = BaseCerts(BASE.ca_pem, other.ca_key_pem, BASE.cert_pem, BASE.key_pem)
    with pytest.raises(CertificateError, match=r"ca-key\.pem"):
        certs.check_base_certs(broken, T0)


def test_export_writes_docker_machine_layout_and_reads_back(tmp_path: Path) -> None:
    rotated = certs.rotate(BASE, T0)
    written = certs.export_dir(rotated, tmp_path, with_state=True)
    names = {p.name: p.stat().st_mode & 0o777 for p in written}
    assert names == {
        "ca.pem": 0o644,
        "ca-key.pem": 0o600,
        "cert.pem": 0o644,
        "key.pem": 0o600,
        "trust-bundle.pem": 0o644,
        "base-certs.json": 0o600,
    }
    assert certs.load_dir(tmp_path) == rotated
    # without our JSON, docker-machine's four files are enough
    (tmp_path / certs.STATE_FILE).unlink()
    plain = certs.load_dir(tmp_path)
    assert (plain.ca_pem, plain.cert_pem, plain.key_pem) == (
        rotated.ca_pem,
        rotated.cert_pem,
        rotated.key_pem,
    )


def test_inspect_lists_ca_client_and_retired_with_fingerprints() -> None:
    infos = certs.inspect(certs.rotate(BASE, T0))
    assert [i.role for i in infos] == ["ca", "client", "retired-ca"]
    assert infos[2].sha256_fingerprint == certs.fingerprint(BASE.ca)
    assert len(infos[0].sha256_fingerprint) == 32 * 3 - 1


@settings(max_examples=10, deadline=None)
@given(st.lists(st.ip_addresses(), min_size=1, max_size=4, unique=True))
def test_any_machine_addresses_become_verifiable_sans(
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    hosts = [str(a) for a in addresses]
    chain, _ = certs.issue_server_cert(BASE, hosts, T0)
    for host in hosts:
        certs.verify_server(chain, BASE.trust_bundle_pem, host, T0)
