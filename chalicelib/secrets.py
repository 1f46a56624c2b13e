"""Secrets Manager adapter (`AwsSecrets`, through `AwsClients`) and its in-memory twin `MemorySecrets`; plus
machine secrets and a TTL cache (`SecretCache`, the container's one cache of secret values). No policy, no
value ever logged. Imports chalicelib.aws and chalicelib.errors only; the only module calling Secrets Manager.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chalicelib.aws import AwsClients
from chalicelib.errors import AwsCallError, NotFoundError, SecretConflictError

logger = logging.getLogger(__name__)

AWSCURRENT = "AWSCURRENT"
AWSPENDING = "AWSPENDING"
AWSPREVIOUS = "AWSPREVIOUS"

#: How long a container reuses a secret it read (seconds): short enough that a rotation lands within a minute.
DEFAULT_CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class SecretVersion:
    """One version of a secret; the value stays out of `repr` so it cannot reach a log by accident."""

    arn: str
    name: str
    version_id: str
    stages: tuple[str, ...]
    value: str = field(repr=False)


@dataclass(frozen=True)
class SecretDescription:
    """DescribeSecret, reduced to what rotation and the lifecycle need (never the value)."""

    arn: str
    name: str
    rotation_enabled: bool
    rotation_lambda_arn: str | None
    versions: Mapping[str, tuple[str, ...]]
    tags: Mapping[str, str] = field(default_factory=dict)
    deleted: bool = False

    def version_with(self, stage: str) -> str | None:
        """The version carrying `stage` (a staging label sits on at most one version)."""
        return next((v for v, stages in self.versions.items() if stage in stages), None)

    def stages_of(self, version_id: str) -> tuple[str, ...]:
        return self.versions.get(version_id, ())

    @property
    def rotation_in_progress(self) -> bool:
        """AWSPENDING on a version other than AWSCURRENT: RotateSecret refuses then (RotateSecret docs)."""
        pending = self.version_with(AWSPENDING)
        return pending is not None and pending != self.version_with(AWSCURRENT)


class Secrets(Protocol):
    """What use cases need from Secrets Manager; `AwsSecrets` and `MemorySecrets` both pass one contract."""

    def get_value(
        self, secret_id: str, *, version_id: str | None = None, version_stage: str | None = None
    ) -> SecretVersion: ...

    def put_value(
        self, secret_id: str, value: str, *, token: str | None = None, stages: Sequence[str] = (AWSCURRENT,)
    ) -> str: ...

    def describe(self, secret_id: str) -> SecretDescription: ...

    def update_version_stage(
        self, secret_id: str, stage: str, *, move_to: str | None = None, remove_from: str | None = None
    ) -> None: ...

    def rotate(self, secret_id: str, *, token: str | None = None, lambda_arn: str | None = None) -> str: ...

    def create(
        self,
        name: str,
        value: str,
        *,
        tags: Mapping[str, str] | None = None,
        token: str | None = None,
        description: str = "",
    ) -> str: ...

    def delete(self, secret_id: str, *, force: bool = True) -> None: ...

    def put_machine_secret(self, name: str, value: str, tags: dict[str, str]) -> None:
        """A machine's own secret (`<prefix>/machines/<instance-id>`), created or overwritten."""
        ...

    def delete_machine_secret(self, name: str) -> None: ...

    def machine_secret_exists(self, name: str) -> bool: ...


def _tag_list(tags: Mapping[str, str] | None) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in (tags or {}).items()]


class AwsSecrets:
    """Secrets Manager through `AwsClients`: AWS error codes become NotFoundError / SecretConflictError."""

    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        try:
            return self._aws.call("secretsmanager", operation, **params)
        except AwsCallError as exc:
            secret = str(params.get("SecretId") or params.get("Name") or "")
            if exc.code == "ResourceNotFoundException":
                raise NotFoundError(f"secret {secret}: {exc}") from exc
            if exc.code == "ResourceExistsException":
                raise SecretConflictError(f"secret {secret}: {exc}") from exc
            if operation == "rotate_secret" and "previous rotation" in str(exc).lower():
                raise SecretConflictError(f"secret {secret}: a rotation is already in progress") from exc
            raise

    def get_value(
        self, secret_id: str, *, version_id: str | None = None, version_stage: str | None = None
    ) -> SecretVersion:
        """A version's value: by id, by stage (AWSCURRENT if neither is given), or both (they must agree)."""
        params: dict[str, Any] = {"SecretId": secret_id}
        if version_id:
            params["VersionId"] = version_id
        if version_stage or not version_id:
            params["VersionStage"] = version_stage or AWSCURRENT
        try:
            got = self._call("get_secret_value", **params)
        except AwsCallError as exc:
            if exc.code == "InvalidRequestException" and version_id and version_stage:
                # The version exists but does not carry the stage: for the caller, "no such staged version".
                message = f"secret {secret_id}: version {version_id} is not {version_stage}"
                raise NotFoundError(message) from exc
            raise
        if "SecretString" not in got:
            raise NotFoundError(f"secret {secret_id}: version {got.get('VersionId')} holds no string value")
        return SecretVersion(
            arn=str(got["ARN"]),
            name=str(got["Name"]),
            version_id=str(got["VersionId"]),
            stages=tuple(got.get("VersionStages") or ()),
            value=str(got["SecretString"]),
        )

    def put_value(
        self, secret_id: str, value: str, *, token: str | None = None, stages: Sequence[str] = (AWSCURRENT,)
    ) -> str:
        """A new version with `stages`; the same token and value is a no-op, another value conflicts."""
        params: dict[str, Any] = {"SecretId": secret_id, "SecretString": value, "VersionStages": list(stages)}
        if token:
            params["ClientRequestToken"] = token
        return str(self._call("put_secret_value", **params)["VersionId"])

    def describe(self, secret_id: str) -> SecretDescription:
        got = self._call("describe_secret", SecretId=secret_id)
        return SecretDescription(
            arn=str(got["ARN"]),
            name=str(got["Name"]),
            rotation_enabled=bool(got.get("RotationEnabled")),
            rotation_lambda_arn=got.get("RotationLambdaARN") or None,
            versions={str(k): tuple(v) for k, v in (got.get("VersionIdsToStages") or {}).items()},
            tags={t["Key"]: t["Value"] for t in got.get("Tags") or []},
            deleted=got.get("DeletedDate") is not None,
        )

    def update_version_stage(
        self, secret_id: str, stage: str, *, move_to: str | None = None, remove_from: str | None = None
    ) -> None:
        """Move a staging label; AWS refuses (InvalidParameterException) if `remove_from` does not hold it."""
        params: dict[str, Any] = {"SecretId": secret_id, "VersionStage": stage}
        if move_to:
            params["MoveToVersionId"] = move_to
        if remove_from:
            params["RemoveFromVersionId"] = remove_from
        self._call("update_secret_version_stage", **params)

    def rotate(self, secret_id: str, *, token: str | None = None, lambda_arn: str | None = None) -> str:
        """Start a rotation by the secret's rotation Lambda; SecretConflictError if one is already running.

        `lambda_arn` also (re)configures the function; without it AWS uses the configuration stored.
        """
        params: dict[str, Any] = {"SecretId": secret_id}
        if token:
            params["ClientRequestToken"] = token
        if lambda_arn:
            params["RotationLambdaARN"] = lambda_arn
        return str(self._call("rotate_secret", **params)["VersionId"])

    def create(
        self,
        name: str,
        value: str,
        *,
        tags: Mapping[str, str] | None = None,
        token: str | None = None,
        description: str = "",
    ) -> str:
        """Create a secret (its first version is AWSCURRENT); SecretConflictError if the name is taken."""
        params: dict[str, Any] = {"Name": name, "SecretString": value, "Tags": _tag_list(tags)}
        if token:
            params["ClientRequestToken"] = token
        if description:
            params["Description"] = description
        return str(self._call("create_secret", **params)["ARN"])

    def delete(self, secret_id: str, *, force: bool = True) -> None:
        """Delete a secret; `force` skips the recovery window (machine secrets: gone with the machine)."""
        params: dict[str, Any] = {"SecretId": secret_id}
        if force:
            params["ForceDeleteWithoutRecovery"] = True
        try:
            self._call("delete_secret", **params)
        except NotFoundError:
            logger.info("secret already gone", extra={"secret": secret_id})

    def tag(self, secret_id: str, tags: Mapping[str, str]) -> None:
        self._call("tag_resource", SecretId=secret_id, Tags=_tag_list(tags))

    # -- the lifecycle's MachineSecrets port ---------------------------------------------------------------
    def put_machine_secret(self, name: str, value: str, tags: dict[str, str]) -> None:
        """Store a machine's secret; a retried launch replaces the value of the one it created before."""
        put_machine_secret(self, name, value, tags)

    def delete_machine_secret(self, name: str) -> None:
        self.delete(name, force=True)

    def machine_secret_exists(self, name: str) -> bool:
        return machine_secret_exists(self, name)


def put_machine_secret(
    secrets: AwsSecrets | MemorySecrets, name: str, value: str, tags: dict[str, str]
) -> None:
    try:
        secrets.create(name, value, tags=tags, description="runner-scaler machine: runner token and TLS")
    except SecretConflictError:
        secrets.put_value(name, value, stages=(AWSCURRENT,))
        secrets.tag(name, tags)


def machine_secret_exists(secrets: Secrets, name: str) -> bool:
    try:
        return not secrets.describe(name).deleted
    except NotFoundError:
        return False


# -- in-memory twin ------------------------------------------------------------------------------------------


@dataclass
class _Version:
    value: str | None
    stages: list[str]


@dataclass
class _Secret:
    arn: str
    name: str
    tags: dict[str, str]
    versions: dict[str, _Version] = field(default_factory=dict)
    rotation_lambda_arn: str | None = None
    rotation_enabled: bool = False

    def holder(self, stage: str) -> str | None:
        return next((v for v, ver in self.versions.items() if stage in ver.stages), None)


#: Called by `MemorySecrets.rotate` as Secrets Manager calls the rotation Lambda: (secret arn, token).
RotationHook = Callable[[str, str], None]


class MemorySecrets:
    """Secrets Manager in memory, with the semantics AWS documents (and moto only partly mimics).

    PutSecretValue: the same ClientRequestToken and value again does nothing, another value fails.
    RotateSecret: refused while AWSPENDING sits on a version other than AWSCURRENT; adds an empty AWSPENDING
    version and calls `rotation_hook` (the rotation Lambda) unless none is set.
    """

    def __init__(self, rotation_hook: RotationHook | None = None, region: str = "us-east-1") -> None:
        self._secrets: dict[str, _Secret] = {}
        self._lock = threading.RLock()
        self._region = region
        self.rotation_hook = rotation_hook
        self.calls: dict[str, int] = {}

    def _count(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1

    def _find(self, secret_id: str) -> _Secret:
        found = self._secrets.get(secret_id) or next(
            (s for s in self._secrets.values() if s.arn == secret_id), None
        )
        if found is None:
            raise NotFoundError(f"secret {secret_id}: Secrets Manager can't find the specified secret")
        return found

    @staticmethod
    def _refuse(operation: str, code: str, message: str) -> AwsCallError:
        return AwsCallError("secretsmanager", operation, code, message, retryable=False)

    def get_value(
        self, secret_id: str, *, version_id: str | None = None, version_stage: str | None = None
    ) -> SecretVersion:
        with self._lock:
            self._count("get_secret_value")
            secret = self._find(secret_id)
            stage = version_stage or (None if version_id else AWSCURRENT)
            vid = version_id or (secret.holder(stage) if stage else None)
            version = secret.versions.get(vid or "")
            if version is None or (stage and stage not in version.stages) or version.value is None:
                raise NotFoundError(f"secret {secret_id}: no value for version {vid} / stage {stage}")
            return SecretVersion(secret.arn, secret.name, str(vid), tuple(version.stages), version.value)

    def put_value(
        self, secret_id: str, value: str, *, token: str | None = None, stages: Sequence[str] = (AWSCURRENT,)
    ) -> str:
        with self._lock:
            self._count("put_secret_value")
            secret = self._find(secret_id)
            vid = token or str(uuid.uuid4())
            existing = secret.versions.get(vid)
            if existing is not None and existing.value is not None:
                if existing.value != value:
                    raise SecretConflictError(f"secret {secret_id}: token {vid} is in use by another version")
                return vid
            secret.versions[vid] = _Version(value, existing.stages if existing else [])
            for stage in stages:
                self._attach(secret, stage, vid)
            return vid

    def _attach(self, secret: _Secret, stage: str, vid: str) -> None:
        holder = secret.holder(stage)
        if holder == vid:
            return
        if holder is not None:
            secret.versions[holder].stages.remove(stage)
            if stage == AWSCURRENT:
                self._attach(secret, AWSPREVIOUS, holder)
        secret.versions[vid].stages.append(stage)
        if stage == AWSCURRENT and AWSPREVIOUS in secret.versions[vid].stages:
            secret.versions[vid].stages.remove(AWSPREVIOUS)

    def describe(self, secret_id: str) -> SecretDescription:
        with self._lock:
            self._count("describe_secret")
            s = self._find(secret_id)
            return SecretDescription(
                arn=s.arn,
                name=s.name,
                rotation_enabled=s.rotation_enabled,
                rotation_lambda_arn=s.rotation_lambda_arn,
                versions={v: tuple(ver.stages) for v, ver in s.versions.items() if ver.stages},
                tags=dict(s.tags),
            )

    def update_version_stage(
        self, secret_id: str, stage: str, *, move_to: str | None = None, remove_from: str | None = None
    ) -> None:
        with self._lock:
            self._count("update_secret_version_stage")
            secret = self._find(secret_id)
            holder = secret.holder(stage)
            if holder is not None and holder != move_to and holder != remove_from:
                raise self._refuse(
                    "update_secret_version_stage",
                    "InvalidParameterException",
                    f"{stage} is attached to version {holder}; name it in RemoveFromVersionId",
                )
            if remove_from is not None and holder != remove_from:
                raise self._refuse(
                    "update_secret_version_stage",
                    "InvalidParameterException",
                    f"version {remove_from} does not carry {stage}",
                )
            if move_to is not None and move_to not in secret.versions:
                raise self._refuse(
                    "update_secret_version_stage", "InvalidParameterException", f"no version {move_to}"
                )
            if move_to is not None:
                self._attach(secret, stage, move_to)
            elif holder is not None:
                secret.versions[holder].stages.remove(stage)

    def rotate(self, secret_id: str, *, token: str | None = None, lambda_arn: str | None = None) -> str:
        with self._lock:
            self._count("rotate_secret")
            secret = self._find(secret_id)
            pending, current = secret.holder(AWSPENDING), secret.holder(AWSCURRENT)
            if pending is not None and pending != current:
                raise SecretConflictError(f"secret {secret_id}: a previous rotation isn't complete")
            secret.rotation_lambda_arn = lambda_arn or secret.rotation_lambda_arn
            if not secret.rotation_lambda_arn:
                raise self._refuse("rotate_secret", "InvalidRequestException", "no rotation function set")
            secret.rotation_enabled = True
            vid = token or str(uuid.uuid4())
            secret.versions.setdefault(vid, _Version(None, []))
            self._attach(secret, AWSPENDING, vid)
            arn = secret.arn
        if self.rotation_hook is not None:
            self.rotation_hook(arn, vid)
        return vid

    def create(
        self,
        name: str,
        value: str,
        *,
        tags: Mapping[str, str] | None = None,
        token: str | None = None,
        description: str = "",
    ) -> str:
        with self._lock:
            self._count("create_secret")
            existing = self._secrets.get(name)
            if existing is not None:
                same = existing.versions.get(token or "")
                if same is not None and same.value == value:
                    return existing.arn
                raise SecretConflictError(f"secret {name} already exists")
            suffix = uuid.uuid4().hex[:6]
            arn = f"arn:aws:secretsmanager:{self._region}:000000000000:secret:{name}-{suffix}"
            secret = _Secret(arn=arn, name=name, tags=dict(tags or {}))
            vid = token or str(uuid.uuid4())
            secret.versions[vid] = _Version(value, [AWSCURRENT])
            self._secrets[name] = secret
            return arn

    def delete(self, secret_id: str, *, force: bool = True) -> None:
        with self._lock:
            self._count("delete_secret")
            try:
                secret = self._find(secret_id)
            except NotFoundError:
                return
            del self._secrets[secret.name]

    def tag(self, secret_id: str, tags: Mapping[str, str]) -> None:
        with self._lock:
            self._find(secret_id).tags.update(tags)

    def enable_rotation(self, secret_id: str, lambda_arn: str) -> None:
        """Configure a rotation Lambda without starting a rotation (infra does this at deploy time)."""
        with self._lock:
            secret = self._find(secret_id)
            secret.rotation_lambda_arn = lambda_arn
            secret.rotation_enabled = True

    def put_machine_secret(self, name: str, value: str, tags: dict[str, str]) -> None:
        put_machine_secret(self, name, value, tags)

    def delete_machine_secret(self, name: str) -> None:
        self.delete(name, force=True)

    def machine_secret_exists(self, name: str) -> bool:
        return machine_secret_exists(self, name)


def parse_token_list(value: str) -> list[str]:
    """The webhook tokens a secret holds (several, so a token rotates without downtime): JSON
    `{"tokens": [...]}`, a JSON list, or one plain token."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        return [value.strip()] if value.strip() else []
    if isinstance(data, dict):
        data = data.get("tokens", [])
    if isinstance(data, str):
        data = [data]
    return [str(t) for t in data if str(t)]


# -- per-container cache -------------------------------------------------------------------------------------


class SecretCache:
    """Secrets read once per `ttl_seconds` per container (webhook tokens, the GitLab token).

    A rotated secret is picked up within one TTL without a redeploy. `clock` is monotonic seconds, injected
    so tests never sleep. Values are held in memory only, never logged.
    """

    def __init__(
        self,
        secrets: Secrets,
        ttl_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secrets = secrets
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[str, tuple[float, str, Any]] = {}
        self._lock = threading.Lock()

    def text(self, name: str) -> str:
        """The secret's AWSCURRENT string, from cache while fresh."""
        return self._entry(name)[1]

    def json(self, name: str) -> Any:
        """The secret's AWSCURRENT value parsed as JSON (parsed once per read, not per call)."""
        entry = self._entry(name)
        if entry[2] is _UNPARSED:
            try:
                parsed = json.loads(entry[1])
            except json.JSONDecodeError:
                raise ValueError(f"secret {name} is not JSON; store it as a JSON document") from None
            with self._lock:
                self._entries[name] = (entry[0], entry[1], parsed)
            return parsed
        return entry[2]

    def invalidate(self, name: str | None = None) -> None:
        """Forget one secret (or all): the next read goes to Secrets Manager (e.g. after a 401)."""
        with self._lock:
            if name is None:
                self._entries.clear()
            else:
                self._entries.pop(name, None)

    def _entry(self, name: str) -> tuple[float, str, Any]:
        now = self._clock()
        with self._lock:
            cached = self._entries.get(name)
        if cached is not None and now - cached[0] < self._ttl:
            return cached
        value = self._secrets.get_value(name).value
        entry = (now, value, _UNPARSED)
        with self._lock:
            self._entries[name] = entry
        return entry


_UNPARSED = object()
