"""Use case: rotate the fleet's base certs by Secrets Manager's four-step protocol, keep them fresh.

Reads and writes through the `Secrets` port (chalicelib.secrets), makes certificates with the pure
chalicelib.certs; imports pydantic, its `CertPorts` (only in the entry points) and no boto3. Never logs key
material.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib import certs
from chalicelib.certs import BaseCerts, CertPolicy, KeyAlgorithm
from chalicelib.errors import (
    AwsCallError,
    CertificateError,
    ConfigError,
    MalformedEventError,
    NotFoundError,
    RotationError,
    SecretConflictError,
)
from chalicelib.resources import TAG_DEPLOYMENT, TAG_MANAGED, Names
from chalicelib.secrets import AWSCURRENT, AWSPENDING, SecretDescription, Secrets, SecretVersion

if TYPE_CHECKING:
    from chalicelib.ports import CertPorts

logger = logging.getLogger(__name__)

#: Racing ticks derive one ClientRequestToken from one AWSCURRENT version, so they write one version.
_TOKEN_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:runner-scaler:base-certs-rotation")
#: The host testSecret issues a throw-away server certificate for.
TEST_HOST = "127.0.0.1"


class RotationStep(StrEnum):
    """The four steps Secrets Manager calls a rotation function with, in this order."""

    CREATE = "createSecret"
    SET = "setSecret"
    TEST = "testSecret"
    FINISH = "finishSecret"


class RotationEvent(BaseModel):
    """The event Secrets Manager invokes the rotation Lambda with (SecretId may be an ARN or a name)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    secret_id: str = Field(alias="SecretId", min_length=1)
    client_request_token: str = Field(alias="ClientRequestToken", min_length=32, max_length=64)
    step: RotationStep = Field(alias="Step")

    @classmethod
    def parse(cls, raw: Any) -> RotationEvent:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in e["loc"]) or "event" for e in exc.errors())
            raise MalformedEventError(f"rotation event is missing or has invalid {fields}") from None


@dataclass(frozen=True)
class StepOutcome:
    """What one step did: created | kept | validated | tested | finished | already-current."""

    step: RotationStep
    secret: str
    token: str
    result: str

    def to_dict(self) -> dict[str, str]:
        return {"step": self.step.value, "secret": self.secret, "token": self.token, "result": self.result}


EnsureAction = Literal[
    "created", "fresh", "rotation-started", "rotated", "resumed", "in-progress", "lost-race"
]
RunAction = Literal["rotated", "resumed", "lost-race"]


@dataclass(frozen=True)
class EnsureOutcome:
    """What `ensure_base_certs` did; `expires_at`: earliest NotAfter of the AWSCURRENT material afterwards."""

    action: EnsureAction
    secret: str
    version_id: str | None = None
    expires_at: datetime | None = None


def rotation_token(secret_arn: str, current_version_id: str) -> str:
    """The ClientRequestToken of the rotation that replaces `current_version_id` (36 chars, as AWS wants)."""
    return str(uuid.uuid5(_TOKEN_NAMESPACE, f"{secret_arn}#{current_version_id}"))


def parse_base_certs(value: str) -> BaseCerts | None:
    """The base certs a secret holds, or None for a placeholder (infra's first value is random text)."""
    try:
        return BaseCerts.from_json(value)
    except CertificateError:
        return None


def _fingerprints(base: BaseCerts) -> dict[str, str]:
    """What logs may say about base certs: fingerprints and dates, never a PEM."""
    return {
        "ca_sha256": certs.fingerprint(base.ca),
        "client_sha256": certs.fingerprint(base.client),
        "expires_at": base.expires_at.isoformat(),
    }


@dataclass
class BaseCertsRotation:
    """The rotation function's steps for the base-certs secret; each step is safe to run again after a crash.

    `policy` None keeps the policy the current material was made with (defaults for a placeholder);
    `validity` and `key_algorithm` (config's `scaler.cert_validity`, `scaler.cert_key_algorithm`) then set
    how long the new CA and client certificate live and their key type.
    """

    secrets: Secrets
    policy: CertPolicy | None = None
    validity: timedelta | None = None
    key_algorithm: KeyAlgorithm | None = None

    def handle(self, event: RotationEvent, now: datetime) -> StepOutcome:
        """Check the rotation contract, then run the event's step (the AWS rotation template's flow)."""
        description = self.secrets.describe(event.secret_id)
        token = event.client_request_token
        check_contract(description, token)
        if AWSCURRENT in description.stages_of(token) and event.step is not RotationStep.FINISH:
            logger.info("version already AWSCURRENT", extra=self._log(event.step, description, token))
            return StepOutcome(event.step, description.name, token, "already-current")
        run = {
            RotationStep.CREATE: self.create_secret,
            RotationStep.SET: self.set_secret,
            RotationStep.TEST: self.test_secret,
            RotationStep.FINISH: self.finish_secret,
        }[event.step]
        return StepOutcome(event.step, description.name, token, run(description.arn, token, now))

    @staticmethod
    def _log(step: RotationStep, description: SecretDescription, token: str) -> dict[str, str]:
        return {"step": step.value, "secret": description.name, "token": token}

    def create_secret(self, secret_id: str, token: str, now: datetime) -> str:
        """createSecret: if the token's AWSPENDING version exists do nothing, else put new material there.

        The new material is `certs.rotate(AWSCURRENT)`: a new CA and client certificate whose trust bundle
        keeps the current CA (cross-signed) until the last server certificate it issued has expired.
        """
        current = self.secrets.get_value(secret_id, version_stage=AWSCURRENT)
        if self._has_pending(secret_id, token):
            logger.info("createSecret: pending version exists", extra={"token": token})
            return "kept"
        previous = parse_base_certs(current.value)
        policy = next_policy(previous, self.policy, self.validity, self.key_algorithm)
        if previous is None:
            logger.warning(
                "createSecret: AWSCURRENT holds no base certs yet; making the first CA",
                extra={"secret": current.name},
            )
            fresh = certs.generate_base_certs(now, policy)
        else:
            fresh = certs.rotate(previous.trusted_at(now), now, policy)
        try:
            self.secrets.put_value(secret_id, fresh.to_json(), token=token, stages=(AWSPENDING,))
        except SecretConflictError:
            logger.info("createSecret: another writer put this version first", extra={"token": token})
            return "kept"
        logger.info(
            "createSecret: new base certs put as AWSPENDING",
            extra={"secret": current.name, "token": token, **_fingerprints(fresh)},
        )
        return "created"

    def _has_pending(self, secret_id: str, token: str) -> bool:
        """Whether the token's version holds a value staged AWSPENDING (RotateSecret's version is empty)."""
        try:
            self.secrets.get_value(secret_id, version_id=token, version_stage=AWSPENDING)
        except NotFoundError:
            return False
        return True

    def _pending(self, secret_id: str, token: str) -> BaseCerts:
        version = self.secrets.get_value(secret_id, version_id=token, version_stage=AWSPENDING)
        pending = parse_base_certs(version.value)
        if pending is None:
            raise RotationError(
                f"secret {version.name} version {token}: AWSPENDING holds no base certs; run createSecret "
                "again (rotate the secret) so a fresh pending version is written"
            )
        return pending

    def set_secret(self, secret_id: str, token: str, now: datetime) -> str:
        """setSecret: nothing outside the secret holds this CA, so there is nothing to set; validate instead.

        A database rotation sets the new password on the database here. Our CA is self-contained: machines
        get their server certificate and trust bundle from AWSCURRENT when they launch, and a running machine
        keeps working through the overlap (its CA stays in the bundle, cross-signed), so no running daemon
        is reconfigured. The step still checks the material so a broken version never reaches testSecret.
        """
        pending = self._pending(secret_id, token)
        try:
            certs.check_base_certs(pending, now)
        except CertificateError as exc:
            raise RotationError(f"setSecret: pending base certs of {secret_id} are not whole: {exc}") from exc
        return "validated"

    def test_secret(self, secret_id: str, token: str, now: datetime) -> str:
        """testSecret: the pending material works for new machines and for machines launched before it.

        Keys match their certificates; a fresh server certificate and the client certificate verify
        against the pending bundle; and, while the current CA is kept, against the current bundle too
        (old machines accept the new client, old clients accept new machines).
        """
        pending = self._pending(secret_id, token)
        current = parse_base_certs(self.secrets.get_value(secret_id, version_stage=AWSCURRENT).value)
        bundles = [("pending", pending.trust_bundle_pem)]
        if current is not None and any(r.ca_pem == current.ca_pem for r in pending.retired):
            bundles.append(("current", current.trusted_at(now).trust_bundle_pem))
        try:
            certs.check_base_certs(pending, now)
            server_chain, server_key = certs.issue_server_cert(pending, [TEST_HOST], now)
            if not certs.key_matches(server_chain, server_key):
                raise CertificateError("a server certificate from the pending CA does not match its key")
            for label, bundle in bundles:
                certs.verify_server(server_chain, bundle, TEST_HOST, now)
                certs.verify_client(pending.client_chain_pem, bundle, now)
                logger.info("testSecret: pending material verifies", extra={"bundle": label, "token": token})
        except CertificateError as exc:
            raise RotationError(f"testSecret: pending base certs of {secret_id} failed: {exc}") from exc
        return "tested"

    def finish_secret(self, secret_id: str, token: str, now: datetime) -> str:
        """finishSecret: move AWSCURRENT to the token's version; done already is fine (idempotent).

        UpdateSecretVersionStage with RemoveFromVersionId fails if that version no longer holds AWSCURRENT,
        so two finishers cannot both move it: the second re-reads and finds the token current.
        """
        description = self.secrets.describe(secret_id)
        current = description.version_with(AWSCURRENT)
        if current != token:
            try:
                self.secrets.update_version_stage(secret_id, AWSCURRENT, move_to=token, remove_from=current)
            except AwsCallError as exc:
                description = self.secrets.describe(secret_id)
                if description.version_with(AWSCURRENT) != token:
                    raise RotationError(f"finishSecret: cannot make {token} AWSCURRENT: {exc}") from exc
        result = "finished" if current != token else "already-current"
        self._drop_pending(secret_id, token)
        logger.info("finishSecret: base certs rotated", extra={"secret": description.name, "token": token})
        return result

    def _drop_pending(self, secret_id: str, token: str) -> None:
        """Remove AWSPENDING from the now-current version, so the next RotateSecret is not refused."""
        if AWSPENDING not in self.secrets.describe(secret_id).stages_of(token):
            return
        try:
            self.secrets.update_version_stage(secret_id, AWSPENDING, remove_from=token)
        except AwsCallError as exc:
            logger.info("finishSecret: AWSPENDING already moved", extra={"token": token, "error": exc.code})


def next_policy(
    previous: BaseCerts | None,
    policy: CertPolicy | None,
    validity: timedelta | None,
    key_algorithm: KeyAlgorithm | None = None,
) -> CertPolicy:
    """The policy of new material: `policy`, else the current material's (key type, server validity kept),
    with `validity` applied to CA and client certificate; `key_algorithm` (config) replaces the current
    key type, but never an explicit `policy` (the CLI's --key-algorithm)."""
    chosen = policy or (previous.policy if previous is not None else CertPolicy())
    changes: dict[str, Any] = {}
    if validity is not None and (chosen.ca_validity, chosen.client_validity) != (validity, validity):
        changes.update(ca_validity=validity, client_validity=validity)
    if policy is None and key_algorithm is not None and chosen.key_algorithm != key_algorithm:
        changes["key_algorithm"] = KeyAlgorithm(key_algorithm)
    return replace(chosen, **changes) if changes else chosen


def check_contract(description: SecretDescription, token: str) -> None:
    """The AWS rotation template's checks: rotation enabled, and the token is a version staged for it."""
    if not description.rotation_enabled:
        raise RotationError(
            f"secret {description.name} is not enabled for rotation; set its rotation function (infra/) "
            "or run `runner-scaler certs regenerate-base-certs`"
        )
    stages = description.stages_of(token)
    if not stages:
        raise RotationError(f"secret version {token} has no stage for rotation of secret {description.name}")
    if AWSCURRENT not in stages and AWSPENDING not in stages:
        raise RotationError(
            f"secret version {token} is not AWSPENDING for rotation of secret {description.name}; "
            "start a new rotation (RotateSecret)"
        )


def run_rotation_steps(rotation: BaseCertsRotation, secret_id: str, token: str, now: datetime) -> RunAction:
    """All four steps in this process (no rotation Lambda, e.g. locally): "rotated", "resumed" or "lost-race".

    Racers share `token` (see `rotation_token`), so Secrets Manager keeps one version; whoever finds the
    version written by another resumes the remaining steps, which are idempotent.
    """
    created = rotation.create_secret(secret_id, token, now)
    stages = rotation.secrets.describe(secret_id).stages_of(token)
    if AWSCURRENT in stages:
        return "lost-race"
    if AWSPENDING not in stages:
        logger.info("another rotation moved AWSPENDING on; leaving it", extra={"token": token})
        return "lost-race"
    try:
        rotation.set_secret(secret_id, token, now)
        rotation.test_secret(secret_id, token, now)
        finished = rotation.finish_secret(secret_id, token, now)
    except NotFoundError:
        # A racer finished between our stage check and our read: AWSPENDING moved off the shared version.
        if AWSCURRENT in rotation.secrets.describe(secret_id).stages_of(token):
            return "lost-race"
        raise
    if finished == "already-current":
        return "lost-race"
    return "rotated" if created == "created" else "resumed"


def ensure_base_certs(
    secrets: Secrets,
    names: Names,
    now: datetime,
    regenerate_before: timedelta,
    policy: CertPolicy | None = None,
    *,
    validity: timedelta | None = None,
    key_algorithm: KeyAlgorithm | None = None,
    secret_name: str | None = None,
) -> EnsureOutcome:
    """The tick's `docker-machine regenerate-base-certs --regenerate-before`: create, or rotate once, if due.

    Missing secret: create it. Inside the window: RotateSecret when a rotation Lambda is set (AWS refuses a
    second one while the first runs), else the four steps in-process under a token derived from AWSCURRENT,
    so concurrent callers produce exactly one new version and the losers return "lost-race"/"in-progress".
    `policy`/`validity`/`key_algorithm` as for `BaseCertsRotation`; `secret_name` overrides
    `names.base_certs_secret`.
    """
    name = secret_name or names.base_certs_secret
    try:
        description = secrets.describe(name)
    except NotFoundError:
        return _create(secrets, name, names, now, next_policy(None, policy, validity, key_algorithm))
    if description.deleted:
        raise RotationError(
            f"secret {name} is scheduled for deletion; restore it: aws secretsmanager restore-secret"
        )
    current = secrets.get_value(name, version_stage=AWSCURRENT)
    base = parse_base_certs(current.value)
    if base is not None and not certs.needs_regeneration(base, now, regenerate_before):
        return EnsureOutcome("fresh", name, current.version_id, base.expires_at)
    token = rotation_token(description.arn, current.version_id)
    if description.rotation_enabled and description.rotation_lambda_arn:
        return _start_rotation(secrets, description, token)
    rotation = BaseCertsRotation(secrets, policy, validity, key_algorithm)
    action = run_rotation_steps(rotation, name, token, now)
    after = _read_current(secrets, name)
    rotated = parse_base_certs(after.value)
    return EnsureOutcome(action, name, after.version_id, rotated.expires_at if rotated else None)


def _read_current(secrets: Secrets, name: str, attempts: int = 3) -> SecretVersion:
    """AWSCURRENT after a rotation another caller may be finishing: AWS moves the label atomically, but a
    store that moves it in two writes (moto, a test double) can show no AWSCURRENT for an instant."""
    for attempt in range(attempts):
        try:
            return secrets.get_value(name, version_stage=AWSCURRENT)
        except NotFoundError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _create(secrets: Secrets, name: str, names: Names, now: datetime, policy: CertPolicy) -> EnsureOutcome:
    fresh = certs.generate_base_certs(now, policy)
    try:
        secrets.create(
            name,
            fresh.to_json(),
            tags={TAG_MANAGED: "true", TAG_DEPLOYMENT: names.prefix},
            description="Fleet Docker TLS CA and client certificate, rotated by rotate_base_certs.",
        )
    except SecretConflictError:
        logger.info("base certs secret created by another caller", extra={"secret": name})
        return EnsureOutcome("lost-race", name)
    logger.info("base certs secret created", extra={"secret": name, **_fingerprints(fresh)})
    return EnsureOutcome("created", name, expires_at=fresh.expires_at)


def _start_rotation(secrets: Secrets, description: SecretDescription, token: str) -> EnsureOutcome:
    name = description.name
    if description.rotation_in_progress:
        return EnsureOutcome("in-progress", name, description.version_with(AWSPENDING))
    try:
        # No configuration parameters: AWS then rotates "with the values already stored in the secret".
        version = secrets.rotate(name, token=token)
    except SecretConflictError:
        logger.info("rotation already in progress", extra={"secret": name})
        return EnsureOutcome("in-progress", name, token)
    logger.info("rotation started", extra={"secret": name, "token": version})
    return EnsureOutcome("rotation-started", name, version)


@dataclass
class ServerCertIssuer:
    """The lifecycle's TlsIssuer: a machine's server certificate from AWSCURRENT; the CA key stays here."""

    secrets: Secrets
    secret_id: str

    def issue(self, hosts: list[str], now: datetime) -> tuple[str, str, str]:
        """(server certificate chain PEM, server key PEM, trust bundle PEM) for a machine at `hosts`."""
        base = parse_base_certs(self.secrets.get_value(self.secret_id, version_stage=AWSCURRENT).value)
        if base is None:
            raise NotFoundError(
                f"secret {self.secret_id} holds no base certs yet; wait for the first rotation or run "
                "`runner-scaler certs regenerate-base-certs`"
            )
        base = base.trusted_at(now)
        cert_pem, key_pem = certs.issue_server_cert(base, hosts, now)
        return cert_pem, key_pem, base.trust_bundle_pem


# -- entry points for handlers (the only code here that touches the ports) -------------------------------


def validity_for(ports: CertPorts) -> timedelta | None:
    """Config's `scaler.cert_validity`, or None (keep the current material's) when config is not readable.

    The rotation Lambda needs no pool config; it only borrows this knob (and `key_algorithm_for`'s) so the
    CA lives as long as infra's rotation schedule assumes.
    """
    try:
        return ports.config.scaler.cert_validity
    except (ConfigError, AwsCallError) as exc:
        logger.warning("config not readable; keeping certificate validity", extra={"error": str(exc)[:200]})
        return None


def key_algorithm_for(ports: CertPorts) -> KeyAlgorithm | None:
    """Config's `scaler.cert_key_algorithm`, or None (keep the current key type) when unset or unreadable."""
    try:
        chosen = ports.config.scaler.cert_key_algorithm
    except (ConfigError, AwsCallError) as exc:
        logger.warning("config not readable; keeping the key type", extra={"error": str(exc)[:200]})
        return None
    return KeyAlgorithm(chosen) if chosen is not None else None


@functools.lru_cache(maxsize=8)
def rotation_for(ports: CertPorts) -> BaseCertsRotation:
    """One rotation use case per container (per set of ports, which the wiring builds once)."""
    return BaseCertsRotation(
        ports.secrets, validity=validity_for(ports), key_algorithm=key_algorithm_for(ports)
    )


def run_rotation_event(ports: CertPorts, raw_event: Any) -> dict[str, str]:
    """The rotation Lambda: parse Secrets Manager's event, run its step, report what happened."""
    event = RotationEvent.parse(raw_event)
    return rotation_for(ports).handle(event, ports.now()).to_dict()


def ensure_base_certs_for(ports: CertPorts) -> EnsureOutcome:
    """The tick's call: `ensure_base_certs` with this deployment's names, config and clock."""
    scaler = ports.config.scaler
    return ensure_base_certs(
        ports.secrets,
        ports.names,
        ports.now(),
        scaler.regenerate_before,
        validity=scaler.cert_validity,
        key_algorithm=KeyAlgorithm(scaler.cert_key_algorithm) if scaler.cert_key_algorithm else None,
    )
