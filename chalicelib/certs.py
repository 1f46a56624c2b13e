"""The fleet's Docker TLS material (docker-machine's "base certs"): CA, client and server certificates.

Building and checking certificates reads no clock (`now` is a parameter) and calls no AWS; new keys and
serial numbers are random. Not pure as a whole: `write_private`, `export_dir` and `load_dir` read and write
docker-machine's certificate directory (the CLI's `--local` mode). Imports cryptography and the standard
library only (plus chalicelib.errors).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store, VerificationError

from chalicelib.errors import CertificateError

#: docker-machine's own validity for the CA and the client certificate (libmachine/cert: 1080 days).
DOCKER_MACHINE_VALIDITY = timedelta(days=1080)
#: Machines are short-lived (run-single, `max_use_count` jobs); a month bounds the overlap a rotation needs.
DEFAULT_SERVER_VALIDITY = timedelta(days=30)
#: A lifecycle Lambda may read AWSCURRENT just before finishSecret moves it, and clocks drift: extra overlap.
ROTATION_GRACE = timedelta(hours=1)
#: Certificates start this much before `now`, so a machine whose clock lags a little accepts them.
CLOCK_SKEW = timedelta(minutes=5)
#: Files of docker-machine's certificate directory (`~/.docker/machine/certs`), and their modes.
DOCKER_MACHINE_FILES = {"ca.pem": 0o644, "ca-key.pem": 0o600, "cert.pem": 0o644, "key.pem": 0o600}
#: Our full state (trust bundle, retired CAs, policy) next to docker-machine's files in `--local` mode.
STATE_FILE = "base-certs.json"
TRUST_BUNDLE_FILE = "trust-bundle.pem"
JSON_FORMAT = 1
#: The client certificate's identity (its SAN): Docker daemons do not check it, verifiers require one.
CLIENT_IDENTITY = "urn:runner-scaler:docker-client"

_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.DOTALL)


class KeyAlgorithm(StrEnum):
    """Key types the fleet may use; ECDSA P-256 is fast to generate and every Docker release accepts it."""

    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CertPolicy:
    """How base certs are made; `server_validity` bounds machine certificates, hence the rotation overlap."""

    key_algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256
    ca_validity: timedelta = DOCKER_MACHINE_VALIDITY
    client_validity: timedelta = DOCKER_MACHINE_VALIDITY
    server_validity: timedelta = DEFAULT_SERVER_VALIDITY
    organization: str = "runner-scaler"

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_algorithm", KeyAlgorithm(self.key_algorithm))
        for name in ("ca_validity", "client_validity", "server_validity"):
            if getattr(self, name) <= timedelta(0):
                raise CertificateError(f"CertPolicy.{name} must be positive; give a duration such as 720h")
        if self.server_validity >= self.ca_validity:
            raise CertificateError(
                "CertPolicy.server_validity must be shorter than ca_validity: a rotation keeps the old CA "
                "trusted for one server_validity, so it must end before the CA does"
            )
        if not self.organization.strip():
            raise CertificateError("CertPolicy.organization must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_algorithm": self.key_algorithm.value,
            "ca_validity_seconds": int(self.ca_validity.total_seconds()),
            "client_validity_seconds": int(self.client_validity.total_seconds()),
            "server_validity_seconds": int(self.server_validity.total_seconds()),
            "organization": self.organization,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CertPolicy:
        default = cls()
        return cls(
            key_algorithm=KeyAlgorithm(data.get("key_algorithm", default.key_algorithm)),
            ca_validity=_seconds(data, "ca_validity_seconds", default.ca_validity),
            client_validity=_seconds(data, "client_validity_seconds", default.client_validity),
            server_validity=_seconds(data, "server_validity_seconds", default.server_validity),
            organization=str(data.get("organization", default.organization)),
        )


def _seconds(data: dict[str, Any], key: str, default: timedelta) -> timedelta:
    return timedelta(seconds=int(data[key])) if key in data else default


@dataclass(frozen=True)
class RetiredCa:
    """A CA replaced by a rotation, still trusted until every server certificate it issued has expired.

    `successor_pem` is the CA that replaced it, cross-signed by it: presented in every chain, it lets a
    machine that only knows this CA accept the new client certificate (and an old client a new machine).
    """

    ca_pem: str
    trusted_until: datetime
    successor_pem: str

    def to_dict(self) -> dict[str, str]:
        return {
            "ca_pem": self.ca_pem,
            "trusted_until": self.trusted_until.isoformat(),
            "successor_pem": self.successor_pem,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetiredCa:
        return cls(
            ca_pem=str(data["ca_pem"]),
            trusted_until=_aware(datetime.fromisoformat(str(data["trusted_until"]))),
            successor_pem=str(data["successor_pem"]),
        )


@dataclass(frozen=True)
class BaseCerts:
    """docker-machine's base certs (CA + client certificate) plus what a rotation needs to keep trust.

    Keys are left out of `repr`, so a stray log line never prints them.
    """

    ca_pem: str
    ca_key_pem: str = field(repr=False)
    cert_pem: str
    key_pem: str = field(repr=False)
    policy: CertPolicy = field(default_factory=CertPolicy)
    retired: tuple[RetiredCa, ...] = ()

    @property
    def trust_bundle_pem(self) -> str:
        """The current CA first, then every retired CA still inside its overlap window."""
        return "".join(_pem_block(p) for p in [self.ca_pem, *(r.ca_pem for r in self.retired)])

    @property
    def chain_pem(self) -> str:
        """Cross-signed CAs that link the current CA back to every retired one (sent after each leaf)."""
        return "".join(_pem_block(r.successor_pem) for r in self.retired)

    @property
    def client_chain_pem(self) -> str:
        """docker-machine's `cert.pem`: client certificate, then the cross-signed chain (Go reads both)."""
        return _pem_block(self.cert_pem) + self.chain_pem

    @property
    def ca(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_pem.encode())

    @property
    def client(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode())

    @property
    def expires_at(self) -> datetime:
        """When the first of CA and client certificate stops being valid (what drives regeneration)."""
        return min(self.ca.not_valid_after_utc, self.client.not_valid_after_utc)

    def previous_ca_trusted_until(self) -> datetime | None:
        """When the last retired CA leaves the trust bundle (None when nothing is retired)."""
        return max((r.trusted_until for r in self.retired), default=None)

    def to_json(self) -> str:
        """The secret's value: JSON, with the derived bundle included for readers outside this code base."""
        return json.dumps(
            {
                "format": JSON_FORMAT,
                "ca_pem": self.ca_pem,
                "ca_key_pem": self.ca_key_pem,
                "cert_pem": self.cert_pem,
                "key_pem": self.key_pem,
                "trust_bundle_pem": self.trust_bundle_pem,
                "chain_pem": self.chain_pem,
                "retired_cas": [r.to_dict() for r in self.retired],
                "policy": self.policy.to_dict(),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> BaseCerts:
        """Parse a secret value; derived fields (bundle, chain) are recomputed, never trusted."""
        try:
            data = json.loads(text)
            base = cls(
                ca_pem=str(data["ca_pem"]),
                ca_key_pem=str(data["ca_key_pem"]),
                cert_pem=str(data["cert_pem"]),
                key_pem=str(data["key_pem"]),
                policy=CertPolicy.from_dict(dict(data.get("policy") or {})),
                retired=tuple(RetiredCa.from_dict(r) for r in data.get("retired_cas") or []),
            )
            # Parse now: a broken PEM fails here with a clear message, not deep inside a rotation step.
            base.ca  # noqa: B018
            base.client  # noqa: B018
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CertificateError(
                f"base certs JSON is not usable ({type(exc).__name__}: {exc}); regenerate them with "
                "`runner-scaler certs regenerate-base-certs`"
            ) from None
        return base

    def trusted_at(self, now: datetime) -> BaseCerts:
        """The same material with retired CAs whose overlap ended before `now` dropped."""
        kept = tuple(r for r in self.retired if r.trusted_until > now)
        return self if kept == self.retired else replace(self, retired=kept)


@dataclass(frozen=True)
class CertInfo:
    """What `certs inspect` shows of one certificate."""

    role: str
    subject: str
    issuer: str
    serial: int
    sha256_fingerprint: str
    not_before: datetime
    not_after: datetime
    hosts: tuple[str, ...] = ()


# -- keys and names ------------------------------------------------------------------------------------------


def generate_key(algorithm: KeyAlgorithm) -> PrivateKey:
    """A fresh private key of `algorithm`."""
    if algorithm is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm is KeyAlgorithm.ECDSA_P384:
        return ec.generate_private_key(ec.SECP384R1())
    bits = int(algorithm.value.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_to_pem(key: PrivateKey) -> str:
    """PKCS#8 PEM without a passphrase: the secret's encryption (KMS) protects it at rest."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def load_key(pem: str) -> PrivateKey:
    """A private key from PEM; only the key types this module makes are accepted."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"private key PEM is not readable ({type(exc).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"private key type {type(key).__name__} is not supported; use ECDSA or RSA")
    return key


def key_algorithm_of(key: PrivateKey) -> KeyAlgorithm:
    """The KeyAlgorithm of an existing key (imported docker-machine certs keep their key type)."""
    if isinstance(key, rsa.RSAPrivateKey):
        bits = max(2048, key.key_size)
        return KeyAlgorithm(f"rsa-{bits if bits in (2048, 3072, 4096) else 4096}")
    return KeyAlgorithm.ECDSA_P384 if isinstance(key.curve, ec.SECP384R1) else KeyAlgorithm.ECDSA_P256


def _name(organization: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool, key: PrivateKey) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca and isinstance(key, rsa.RSAPrivateKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: Any, not_before: datetime, not_after: datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _sign(builder: x509.CertificateBuilder, issuer_key: PrivateKey) -> x509.Certificate:
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _pem_block(pem: str) -> str:
    return pem if pem.endswith("\n") else pem + "\n"


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise CertificateError(f"time {moment.isoformat()} has no time zone; pass a UTC-aware datetime")
    return moment.astimezone(UTC)


# -- building ------------------------------------------------------------------------------------------------


def _ca_subject(policy: CertPolicy, now: datetime, key: PrivateKey) -> x509.Name:
    """A unique subject per CA, so chains through cross-signed CAs never confuse two generations."""
    key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest.hex()[:8]
    return _name(policy.organization, f"{policy.organization} docker CA {now:%Y-%m-%d} {key_id}")


def build_ca(now: datetime, policy: CertPolicy) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA (no path length limit: cross-signed successors sit below older CAs)."""
    now = _aware(now)
    key = generate_key(policy.key_algorithm)
    subject = _ca_subject(policy, now, key)
    builder = (
        _builder(subject, subject, key.public_key(), now - CLOCK_SKEW, now + policy.ca_validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True, key=key), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    )
    return _sign(builder, key), key


def _leaf(
    ca: x509.Certificate,
    ca_key: PrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    now: datetime,
    validity: timedelta,
    algorithm: KeyAlgorithm,
    sans: Sequence[x509.GeneralName] = (),
) -> tuple[x509.Certificate, PrivateKey]:
    now = _aware(now)
    if now >= ca.not_valid_after_utc:
        raise CertificateError(
            f"CA {ca.subject.rfc4514_string()} expired at {ca.not_valid_after_utc.isoformat()}; "
            "regenerate the base certs before issuing"
        )
    key = generate_key(algorithm)
    not_after = min(now + validity, ca.not_valid_after_utc)
    builder = (
        _builder(subject, ca.subject, key.public_key(), now - CLOCK_SKEW, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False, key=key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return _sign(builder, ca_key), key


def generate_base_certs(now: datetime, policy: CertPolicy | None = None) -> BaseCerts:
    """A new CA and a client certificate (EKU clientAuth), as `docker-machine regenerate-base-certs` makes."""
    policy = policy or CertPolicy()
    ca, ca_key = build_ca(now, policy)
    client, client_key = _leaf(
        ca,
        ca_key,
        _name(policy.organization, f"{policy.organization} docker client"),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        now,
        policy.client_validity,
        policy.key_algorithm,
        [x509.UniformResourceIdentifier(CLIENT_IDENTITY)],  # RFC 5280 client profiles require a SAN
    )
    return BaseCerts(
        ca_pem=_pem(ca),
        ca_key_pem=key_to_pem(ca_key),
        cert_pem=_pem(client),
        key_pem=key_to_pem(client_key),
        policy=policy,
    )


def cross_sign(successor: x509.Certificate, issuer: x509.Certificate, issuer_key: PrivateKey) -> str:
    """`successor`'s name and key certified by `issuer`, valid no longer than `issuer` itself."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(successor.subject)
        .issuer_name(issuer.subject)
        .public_key(successor.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(successor.not_valid_before_utc)
        .not_valid_after(min(successor.not_valid_after_utc, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True, key=issuer_key), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(successor.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    return _pem(_sign(builder, issuer_key))


def rotate(previous: BaseCerts, now: datetime, policy: CertPolicy | None = None) -> BaseCerts:
    """New base certs that keep trusting `previous`'s CA for as long as a certificate it issued can live.

    The previous CA issued server certificates until now (plus the grace a late lifecycle read needs), each
    valid at most `server_validity`: after `now + server_validity + ROTATION_GRACE` none is left, so the old
    CA leaves the bundle then (or when it expires, if that is sooner).
    """
    now = _aware(now)
    policy = policy or previous.policy
    fresh = generate_base_certs(now, policy)
    old_ca = previous.ca
    trusted_until = min(old_ca.not_valid_after_utc, now + previous.policy.server_validity + ROTATION_GRACE)
    retiring: list[RetiredCa] = []
    if trusted_until > now:
        successor = cross_sign(fresh.ca, old_ca, load_key(previous.ca_key_pem))
        retiring.append(RetiredCa(previous.ca_pem, trusted_until, successor))
    carried = previous.trusted_at(now).retired
    return replace(fresh, retired=(*retiring, *carried))


def needs_regeneration(base: BaseCerts, now: datetime, regenerate_before: timedelta) -> bool:
    """True when CA or client certificate is expired or expires within `regenerate_before` of `now`.

    docker-machine's `regenerate-base-certs --regenerate-before`: regenerate ahead of NotAfter so no
    `create` ever finds outdated certificates (and races to replace them). Monotone in `now`.
    """
    return _aware(now) + max(regenerate_before, timedelta(0)) >= base.expires_at


def regeneration_due_at(base: BaseCerts, regenerate_before: timedelta) -> datetime:
    """The first moment `needs_regeneration` is true."""
    return base.expires_at - max(regenerate_before, timedelta(0))


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return _dns_name(host)


def _dns_name(host: str) -> x509.DNSName:
    name = host.rstrip(".").lower()
    labels = name[2:].split(".") if name.startswith("*.") else name.split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise CertificateError(f"host {host!r} is neither an IP address nor a DNS name; pass e.g. 10.0.1.7")
    return x509.DNSName(name)


def issue_server_cert(
    base: BaseCerts, hosts: Iterable[str], now: datetime, validity: timedelta | None = None
) -> tuple[str, str]:
    """A machine's Docker server certificate (EKU serverAuth, SANs from `hosts`): (cert chain PEM, key PEM).

    The chain is the leaf followed by the cross-signed CAs, so clients that still trust only a retired CA
    accept it. `validity` defaults to, and may not exceed, the policy's `server_validity`: a rotation's
    overlap is computed from that bound.
    """
    unique = list(dict.fromkeys(h.strip() for h in hosts if h.strip()))
    if not unique:
        raise CertificateError("a server certificate needs at least one host (IP address or DNS name)")
    validity = validity or base.policy.server_validity
    if validity > base.policy.server_validity:
        raise CertificateError(
            f"server certificate validity {validity} exceeds the policy's server_validity "
            f"{base.policy.server_validity}; rotation overlap relies on that bound"
        )
    sans = [_general_name(h) for h in unique]
    common_name = unique[0][:64]
    ca = base.ca
    cert, key = _leaf(
        ca,
        load_key(base.ca_key_pem),
        _name(base.policy.organization, common_name),
        ExtendedKeyUsageOID.SERVER_AUTH,
        now,
        validity,
        base.policy.key_algorithm,
        sans,
    )
    return _pem(cert) + base.chain_pem, key_to_pem(key)


# -- reading and checking ------------------------------------------------------------------------------------


def split_pem(bundle: str) -> list[str]:
    """Every certificate PEM block of a bundle, in order."""
    return [_pem_block(m.group(0)) for m in _PEM_CERT.finditer(bundle)]


def load_certs(bundle: str) -> list[x509.Certificate]:
    try:
        return [x509.load_pem_x509_certificate(p.encode()) for p in split_pem(bundle)]
    except ValueError as exc:
        raise CertificateError(f"certificate PEM is not readable: {exc}") from None


def not_after(cert_pem: str) -> datetime:
    """NotAfter (UTC) of the first certificate in `cert_pem`."""
    certs = load_certs(cert_pem)
    if not certs:
        raise CertificateError("no certificate found in the PEM text")
    return certs[0].not_valid_after_utc


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as openssl prints it (AA:BB:...)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def cert_info(role: str, cert_pem: str) -> CertInfo:
    """Subject, issuer, SHA-256 fingerprint and validity of the first certificate in `cert_pem`."""
    cert = load_certs(cert_pem)[0]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = tuple(str(v) for v in san.get_values_for_type(x509.IPAddress)) + tuple(
            san.get_values_for_type(x509.DNSName)
        )
    except x509.ExtensionNotFound:
        hosts = ()
    return CertInfo(
        role=role,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        sha256_fingerprint=fingerprint(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        hosts=hosts,
    )


def inspect(base: BaseCerts) -> list[CertInfo]:
    """CA, client certificate and every retired CA still trusted, for `certs inspect`."""
    infos = [cert_info("ca", base.ca_pem), cert_info("client", base.cert_pem)]
    infos += [cert_info("retired-ca", r.ca_pem) for r in base.retired]
    return infos


def _public_der(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def key_matches(cert_pem: str, key_pem: str) -> bool:
    """Whether `key_pem` is the private key of the first certificate in `cert_pem`."""
    cert = load_certs(cert_pem)[0]
    return _public_der(cert.public_key()) == _public_der(load_key(key_pem).public_key())


def verify_client(chain_pem: str, trust_bundle_pem: str, now: datetime) -> None:
    """Raise CertificateError unless the client chain verifies (RFC 5280, EKU clientAuth) with the bundle."""
    leaf, *intermediates = load_certs(chain_pem)
    verifier = _policy(trust_bundle_pem, now).build_client_verifier()
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise CertificateError(f"client certificate does not verify with the trust bundle: {exc}") from None


def verify_server(chain_pem: str, trust_bundle_pem: str, host: str, now: datetime) -> None:
    """Raise CertificateError unless the server chain verifies for `host` (EKU serverAuth, SAN match)."""
    leaf, *intermediates = load_certs(chain_pem)
    general = _general_name(host)
    subject = IPAddress(general.value) if isinstance(general, x509.IPAddress) else DNSName(general.value)
    verifier = _policy(trust_bundle_pem, now).build_server_verifier(subject)
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise CertificateError(f"server certificate for {host} does not verify: {exc}") from None


def _policy(trust_bundle_pem: str, now: datetime) -> PolicyBuilder:
    roots = load_certs(trust_bundle_pem)
    if not roots:
        raise CertificateError("the trust bundle holds no certificate")
    return PolicyBuilder().store(Store(roots)).time(_aware(now))


def check_base_certs(base: BaseCerts, now: datetime) -> None:
    """Raise CertificateError unless the material is whole: keys match, CA self-signed, client chains up."""
    ca = base.ca
    if not key_matches(base.ca_pem, base.ca_key_pem):
        raise CertificateError("ca-key.pem is not the key of ca.pem")
    if not key_matches(base.cert_pem, base.key_pem):
        raise CertificateError("key.pem is not the key of cert.pem")
    try:
        ca.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError("ca.pem is not a self-signed CA certificate") from None
    verify_client(base.client_chain_pem, base.trust_bundle_pem, now)


# -- files (docker-machine layout) ---------------------------------------------------------------------------


def docker_machine_files(base: BaseCerts) -> dict[str, tuple[str, int]]:
    """File name -> (content, mode) of docker-machine's certificate directory."""
    contents = {
        "ca.pem": base.ca_pem,
        "ca-key.pem": base.ca_key_pem,
        "cert.pem": base.client_chain_pem,
        "key.pem": base.key_pem,
    }
    return {name: (_pem_block(contents[name]), mode) for name, mode in DOCKER_MACHINE_FILES.items()}


def write_private(path: Path, content: str, mode: int) -> None:
    """Write `content` so that it never exists with wider permissions than `mode`, even for an instant."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, content.encode())
    finally:
        os.close(fd)


def export_dir(base: BaseCerts, directory: Path, *, with_state: bool = False) -> list[Path]:
    """Write `ca.pem`, `ca-key.pem`, `cert.pem`, `key.pem` (keys 0600) and `trust-bundle.pem` to `directory`.

    `with_state` also writes our JSON (retired CAs, policy), which `--local` mode reads back.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = docker_machine_files(base)
    files[TRUST_BUNDLE_FILE] = (base.trust_bundle_pem, 0o644)
    if with_state:
        files[STATE_FILE] = (base.to_json() + "\n", 0o600)
    written = []
    for name, (content, mode) in files.items():
        write_private(directory / name, content, mode)
        written.append(directory / name)
    return written


def load_dir(directory: Path) -> BaseCerts:
    """Base certs from a directory: our JSON state if present, else docker-machine's four files."""
    state = directory / STATE_FILE
    if state.is_file():
        return BaseCerts.from_json(state.read_text(encoding="utf-8"))
    missing = [n for n in DOCKER_MACHINE_FILES if not (directory / n).is_file()]
    if missing:
        raise CertificateError(
            f"{directory} holds no base certs (missing {', '.join(missing)}); "
            "create them with `runner-scaler certs regenerate-base-certs --local DIR`"
        )
    read = {n: (directory / n).read_text(encoding="utf-8") for n in DOCKER_MACHINE_FILES}
    client_pems = split_pem(read["cert.pem"])
    ca_key = load_key(read["ca-key.pem"])
    ca = load_certs(read["ca.pem"])[0]
    client = load_certs(read["cert.pem"])[0]
    default = CertPolicy()
    ca_days = ca.not_valid_after_utc - ca.not_valid_before_utc
    policy = CertPolicy(
        key_algorithm=key_algorithm_of(ca_key),
        ca_validity=ca_days,
        client_validity=client.not_valid_after_utc - client.not_valid_before_utc,
        server_validity=min(default.server_validity, ca_days / 2),
    )
    return BaseCerts(
        ca_pem=_pem_block(read["ca.pem"]),
        ca_key_pem=read["ca-key.pem"],
        cert_pem=client_pems[0] if client_pems else read["cert.pem"],
        key_pem=read["key.pem"],
        policy=policy,
    )
