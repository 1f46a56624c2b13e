"""GitLab webhook deliveries (Job and Pipeline hooks) as frozen pydantic models, plus their dedup key.

Pure: imports pydantic, the standard library and chalicelib.errors; no I/O, no clock, no boto3.
Shapes follow GitLab's "Webhook events" page and lib/gitlab/data_builder/{build,pipeline}.rb.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from chalicelib.errors import MalformedEventError
from chalicelib.events.timestamps import OptionalTimestamp


class JobStatus(StrEnum):
    """Every status a GitLab job or pipeline reports today: gitlabhq `app/models/concerns/ci/has_status.rb`
    (`AVAILABLE_STATUSES`), the states of `app/models/commit_status.rb` and `app/models/ci/pipeline.rb`.

    `canceling` means the job was canceled while its runner still runs `after_script`: it still holds a slot.
    `waiting_for_callback` waits on an outside service, not on a runner. GitLab adds statuses over time, so
    the hook models take any status string: this enum names the ones the scaler knows, nothing more.
    """

    CREATED = "created"
    WAITING_FOR_RESOURCE = "waiting_for_resource"
    PREPARING = "preparing"
    WAITING_FOR_CALLBACK = "waiting_for_callback"
    SCHEDULED = "scheduled"
    MANUAL = "manual"
    PENDING = "pending"
    RUNNING = "running"
    CANCELING = "canceling"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"
    SKIPPED = "skipped"


# Ranks follow GitLab's state machine (CommitStatus / Ci::Build): every status before `pending` waits on
# something other than a runner, `pending` wants a runner, `running` and `canceling` hold one, then the job
# is done. One caveat from GitLab itself: `process`/`enqueue` can move a `skipped` job (same id) back to
# `created`/`pending` when an earlier job is retried; a rank-monotone store ignores that late reopening and
# the reconcile tick, which reads GitLab's own view, is what heals it.
_RANK: dict[str, int] = {
    JobStatus.CREATED: 0,
    JobStatus.WAITING_FOR_RESOURCE: 0,
    JobStatus.PREPARING: 0,
    JobStatus.WAITING_FOR_CALLBACK: 0,
    JobStatus.SCHEDULED: 0,
    JobStatus.MANUAL: 0,
    JobStatus.PENDING: 1,
    JobStatus.RUNNING: 2,
    JobStatus.CANCELING: 3,
    JobStatus.SUCCESS: 4,
    JobStatus.FAILED: 4,
    JobStatus.CANCELED: 4,
    JobStatus.SKIPPED: 4,
}
#: A status GitLab may add later ranks like `created`: known to exist, wanting no runner yet. The next known
#: status moves the job on; the tick's refresh from GitLab's Jobs API settles anything in between.
UNKNOWN_RANK = 0
TERMINAL_RANK = 4
_ACTIVE = frozenset({JobStatus.PENDING, JobStatus.RUNNING, JobStatus.CANCELING})


def status_rank(status: JobStatus | str) -> int:
    """Position of a status in the monotone job order (0 waiting, 1 pending, 2 running, 3 canceling, 4 done).

    The job store only ever moves a job to a higher rank, so a late `pending` never overwrites `running`.
    A status this code does not know (a newer GitLab's) ranks like `created`.
    """
    return _RANK.get(str(status), UNKNOWN_RANK)


def is_terminal(status: JobStatus | str) -> bool:
    """True once the job is finished (success, failed, canceled, skipped) and frees its slot for good."""
    return status_rank(status) == TERMINAL_RANK


def is_active(status: JobStatus | str) -> bool:
    """True while the job wants a runner slot (pending) or holds one (running, canceling)."""
    return str(status) in _ACTIVE


#: A status as GitLab writes it: any non-empty text (a 64-character cap keeps a hostile body's junk short).
Status = Annotated[str, Field(min_length=1, max_length=64)]


def _none_as_empty_list(value: Any) -> Any:
    return [] if value is None else value


class _Model(BaseModel):
    """Lenient about what we do not read (unknown fields ignored), immutable once parsed."""

    model_config = ConfigDict(extra="ignore", frozen=True)


_ID_HEADER = 256

_HEADER_FIELDS = {
    "x-gitlab-event": "x_gitlab_event",
    "x-gitlab-token": "x_gitlab_token",
    "x-gitlab-event-uuid": "x_gitlab_event_uuid",
    "x-gitlab-webhook-uuid": "x_gitlab_webhook_uuid",
    "idempotency-key": "idempotency_key",
    "x-gitlab-instance": "x_gitlab_instance",
    "user-agent": "user_agent",
}


class WebhookHeaders(_Model):
    """The delivery headers GitLab sends (docs: Webhooks > Delivery headers; web_hook_service.rb).

    `x_gitlab_token` is a SecretStr: it prints as stars in reprs and logs. Every header is optional because
    older GitLab versions send fewer of them (Event-UUID 14.8, Instance 15.5, Webhook-UUID 16.2,
    Idempotency-Key 17.4).
    """

    x_gitlab_event: str | None = Field(default=None, max_length=128)
    x_gitlab_token: SecretStr | None = Field(default=None, max_length=4096)
    x_gitlab_event_uuid: str | None = Field(default=None, max_length=_ID_HEADER)
    x_gitlab_webhook_uuid: str | None = Field(default=None, max_length=_ID_HEADER)
    idempotency_key: str | None = Field(default=None, max_length=_ID_HEADER)
    x_gitlab_instance: str | None = Field(default=None, max_length=2048)
    user_agent: str | None = Field(default=None, max_length=1024)

    @classmethod
    def from_mapping(cls, headers: Mapping[str, str] | WebhookHeaders) -> WebhookHeaders:
        """Read the headers we know from any mapping, whatever the case or `-`/`_` spelling of the names
        (headers read already are taken as they are).

        Raises MalformedEventError (naming the header, never its value) for a value that is not text, is too
        long, or a header given twice with different values.
        """
        if isinstance(headers, WebhookHeaders):
            return headers
        fields: dict[str, str] = {}
        for raw_name, raw_value in headers.items():
            field = _HEADER_FIELDS.get(str(raw_name).strip().lower().replace("_", "-"))
            if field is None:
                continue
            value = _header_text(field, raw_value)
            if value is None:
                continue
            if fields.get(field, value) != value:
                raise MalformedEventError(
                    f"header {_header_name(field)} is given twice with different values"
                )
            fields[field] = value
        try:
            return cls.model_validate(fields)
        except ValidationError as err:
            first = err.errors(include_url=False, include_input=False, include_context=False)[0]
            raise MalformedEventError(
                f"header {_header_name(str(first['loc'][0]))}: {first['msg']}"
            ) from None


def _header_name(field: str) -> str:
    names = {value: key for key, value in _HEADER_FIELDS.items()}
    return "-".join(part.capitalize() for part in names.get(field, field).split("-"))


def _header_text(field: str, value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        raise MalformedEventError(f"header {_header_name(field)} is not text")
    return value.strip() or None


class JobRunner(_Model):
    """The runner that picked the job; `tags` are the RUNNER's tags (hooks carry no job tag list)."""

    id: int
    description: str | None = None
    runner_type: str | None = None
    active: bool | None = None
    is_shared: bool | None = None
    tags: Annotated[list[str], BeforeValidator(_none_as_empty_list)] = Field(default_factory=list)


class GitLabUser(_Model):
    """The user who triggered the job or pipeline (email may read "[REDACTED]")."""

    id: int | None = None
    name: str | None = None
    username: str | None = None
    email: str | None = None
    avatar_url: str | None = None


class JobCommit(_Model):
    """Job hook `commit`: despite the name, `id` is the PIPELINE id (GitLab docs say so)."""

    id: int | None = None
    name: str | None = None
    sha: str | None = None
    message: str | None = None
    author_name: str | None = None
    author_email: str | None = None
    author_url: str | None = None
    status: str | None = None
    duration: float | None = None
    started_at: OptionalTimestamp = None
    finished_at: OptionalTimestamp = None


class Repository(_Model):
    """Job hook `repository` (deprecated by GitLab in favour of `project`, still sent)."""

    name: str | None = None
    url: str | None = None
    description: str | None = None
    homepage: str | None = None
    git_http_url: str | None = None
    git_ssh_url: str | None = None
    visibility_level: int | None = None


class Project(_Model):
    """The project as GitLab's `project.hook_attrs` writes it (only `id` is needed to route a job).

    `id` may be missing: older GitLab wrote `hook_attrs` without it (the 2016-2017 Pipeline hook examples of
    GitLab's webhook docs have none).
    """

    id: int | None = None
    name: str | None = None
    description: str | None = None
    web_url: str | None = None
    namespace: str | None = None
    path_with_namespace: str | None = None
    default_branch: str | None = None
    visibility_level: int | None = None


class Environment(_Model):
    """A deployment environment; only present for jobs with an `environment:` keyword."""

    name: str | None = None
    action: str | None = None
    deployment_tier: str | None = None


class SourceProject(_Model):
    """The upstream project of a downstream (multi-project or child) pipeline."""

    id: int | None = None
    web_url: str | None = None
    path_with_namespace: str | None = None


class SourcePipeline(_Model):
    """Set when this pipeline was triggered by a job of another pipeline."""

    project: SourceProject | None = None
    pipeline_id: int | None = None
    job_id: int | None = None


class JobHook(_Model):
    """A Job hook (`object_kind: build`, `X-Gitlab-Event: Job Hook`): one job changed status.

    Required is only what identifies the job and its project: `build_id`, `build_status` (any text: GitLab
    adds statuses) and `project_id` (or `project.id`). The rest is optional so a GitLab that sends less
    (older versions) or more (newer ones) still parses: GitLab before `pipeline_id` was added to
    `lib/gitlab/data_builder/build.rb` sent the pipeline only as `commit.id` ("commit.id is actually the
    pipeline id", same file), which fills `pipeline_id` then. Timestamps accept both of GitLab's spellings.
    """

    object_kind: Literal["build"]
    build_id: int
    build_status: Status
    project_id: int
    build_name: str = ""
    build_stage: str = ""
    pipeline_id: int | None = None
    project_name: str | None = None
    ref: str | None = None
    tag: bool | None = None
    before_sha: str | None = None
    sha: str | None = None
    build_created_at: OptionalTimestamp = None
    build_started_at: OptionalTimestamp = None
    build_finished_at: OptionalTimestamp = None
    build_duration: float | None = None
    build_queued_duration: float | None = None
    build_allow_failure: bool = False
    build_failure_reason: str | None = None
    retries_count: int = 0
    runner: JobRunner | None = None
    user: GitLabUser | None = None
    commit: JobCommit | None = None
    repository: Repository | None = None
    project: Project | None = None
    environment: Environment | None = None
    source_pipeline: SourcePipeline | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_from_twins(cls, data: Any) -> Any:
        """Fill a missing field from where another GitLab version puts it: `build_*_at_iso` twins (newer),
        `project.id` for `project_id`, `commit.id` (the pipeline id) for `pipeline_id` (older)."""
        if not isinstance(data, dict):
            return data
        filled = dict(data)
        for name in ("build_created_at", "build_started_at", "build_finished_at"):
            if filled.get(name) is None and filled.get(f"{name}_iso") is not None:
                filled[name] = filled[f"{name}_iso"]
        for name, parent in (("project_id", "project"), ("pipeline_id", "commit")):
            twin = filled.get(parent)
            if filled.get(name) is None and isinstance(twin, dict) and twin.get("id") is not None:
                filled[name] = twin["id"]
        return filled

    @property
    def runner_id(self) -> int | None:
        """The GitLab runner id running (or having run) the job; None while nobody picked it."""
        return self.runner.id if self.runner else None


class PipelineVariable(_Model):
    """A variable passed to the pipeline at creation; the value may be a secret, so it never prints."""

    key: str
    value: SecretStr | None = Field(default=None, repr=False)


class PipelineAttributes(_Model):
    """Pipeline hook `object_attributes` (GitLab's Pipeline#hook_attrs)."""

    id: int
    status: Status
    iid: int | None = None
    name: str | None = None
    ref: str | None = None
    tag: bool | None = None
    sha: str | None = None
    before_sha: str | None = None
    source: str | None = None
    detailed_status: str | None = None
    stages: Annotated[list[str], BeforeValidator(_none_as_empty_list)] = Field(default_factory=list)
    created_at: OptionalTimestamp = None
    finished_at: OptionalTimestamp = None
    duration: float | None = None
    queued_duration: float | None = None
    protected_ref: bool | None = None
    variables: Annotated[list[PipelineVariable], BeforeValidator(_none_as_empty_list)] = Field(
        default_factory=list
    )
    url: str | None = None


class PipelineBuild(_Model):
    """One job of the pipeline as the Pipeline hook lists it (latest try of each job only)."""

    id: int
    status: Status
    stage: str = ""
    name: str = ""
    created_at: OptionalTimestamp = None
    started_at: OptionalTimestamp = None
    finished_at: OptionalTimestamp = None
    duration: float | None = None
    queued_duration: float | None = None
    failure_reason: str | None = None
    when: str | None = None
    manual: bool | None = None
    allow_failure: bool | None = None
    user: GitLabUser | None = None
    runner: JobRunner | None = None
    environment: Environment | None = None


class CommitAuthor(_Model):
    """Author of the pipeline's commit."""

    name: str | None = None
    email: str | None = None


class PipelineCommit(_Model):
    """Pipeline hook `commit` (a real commit here, unlike the Job hook's)."""

    id: str | None = None
    message: str | None = None
    title: str | None = None
    timestamp: OptionalTimestamp = None
    url: str | None = None
    author: CommitAuthor | None = None


class MergeRequestRef(_Model):
    """The merge request of a merge-request pipeline."""

    id: int | None = None
    iid: int | None = None
    title: str | None = None
    source_branch: str | None = None
    target_branch: str | None = None
    state: str | None = None
    url: str | None = None


class PipelineHook(_Model):
    """A Pipeline hook (`object_kind: pipeline`, `X-Gitlab-Event: Pipeline Hook`): a pipeline changed status.

    `builds` lists every job of the pipeline (latest try), which is what pipeline-aware prewarming reads.
    """

    object_kind: Literal["pipeline"]
    object_attributes: PipelineAttributes
    project: Project | None = None
    builds: Annotated[list[PipelineBuild], BeforeValidator(_none_as_empty_list)] = Field(default_factory=list)
    user: GitLabUser | None = None
    commit: PipelineCommit | None = None
    merge_request: MergeRequestRef | None = None
    source_pipeline: SourcePipeline | None = None

    @property
    def project_id(self) -> int:
        """The pipeline's project; `parse_gitlab_event` never returns a PipelineHook without one."""
        if self.project is None or self.project.id is None:
            raise ValueError(f"pipeline {self.object_attributes.id} came without project.id")
        return self.project.id


class IgnoredEvent(_Model):
    """A valid delivery we do not act on: a kind we ignore (push, merge_request, note, ...), or a Job or
    Pipeline hook lacking what the scaler needs (`reason` says what). Accepted (202), then dropped.

    `digest` is a SHA-256 of the payload's canonical JSON, so even these have a stable identity.
    """

    kind: str
    digest: str
    reason: str = ""


#: What one webhook delivery parses into: a Job hook, a Pipeline hook, or an event we accept and ignore.
ParsedDelivery = JobHook | PipelineHook | IgnoredEvent


# X-Gitlab-Event is "<Event> Hook" (WebHookService.hook_to_event); "Build Hook" is the pre-"job" spelling.
_KIND_OF_EVENT = {"job hook": "build", "build hook": "build", "pipeline hook": "pipeline"}
_ACTED_ON = frozenset(_KIND_OF_EVENT.values())
_ModelT = TypeVar("_ModelT", bound=BaseModel)


def parse_gitlab_event(
    headers: Mapping[str, str] | WebhookHeaders, body: bytes | str | Mapping[str, Any]
) -> ParsedDelivery:
    """Parse one webhook request into a JobHook, a PipelineHook or an IgnoredEvent (`headers` raw, or read
    once with `WebhookHeaders.from_mapping` by a caller that also asks for the `event_identity`).

    Raises MalformedEventError with a one-line reason (never quoting the token) when the body is not a JSON
    object, the X-Gitlab-Event header and `object_kind` disagree about a Job or Pipeline hook, or a Job or
    Pipeline hook misses a field we need. Other kinds are accepted and ignored, even ones we do not know.
    """
    webhook_headers = WebhookHeaders.from_mapping(headers)
    try:
        return _parse_event(webhook_headers, _load_payload(body))
    except MalformedEventError as err:
        raise _without_token(err, webhook_headers) from None


def _load_payload(body: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(body, Mapping):
        payload: Any = dict(body)
    else:
        payload = _decode_json(body)
    if not isinstance(payload, dict):
        raise MalformedEventError(f"body is a JSON {type(payload).__name__}, not an object")
    return payload


def _decode_json(body: object) -> Any:
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEventError("body is not UTF-8 text") from None
    if not isinstance(body, str):
        raise MalformedEventError(f"body is a {type(body).__name__}, not JSON text")
    try:
        return json.loads(body)
    except json.JSONDecodeError as err:
        raise MalformedEventError(f"body is not JSON: {err.msg} at char {err.pos}") from None
    except (ValueError, RecursionError) as err:
        raise MalformedEventError(f"body is not usable JSON: {type(err).__name__}") from None


def _parse_event(headers: WebhookHeaders, payload: dict[str, Any]) -> ParsedDelivery:
    kind = _resolve_kind(headers, payload)
    if kind == "build":
        _require_identity(payload, "Job Hook", ("build_id",))
        return _validate(JobHook, "Job Hook", payload, identity=("build_id",))
    if kind == "pipeline":
        _require_identity(payload, "Pipeline Hook", ("object_attributes", "id"))
        parsed = _validate(PipelineHook, "Pipeline Hook", payload, identity=("object_attributes", "id"))
        if isinstance(parsed, PipelineHook) and (parsed.project is None or parsed.project.id is None):
            reason = "Pipeline Hook has no project.id (older GitLab); its jobs' own hooks name the project"
            return _unusable("pipeline", payload, reason)
        return parsed
    return IgnoredEvent(kind=kind[:64], digest=_payload_digest(payload))


def _require_identity(payload: dict[str, Any], what: str, path: tuple[str, ...]) -> None:
    """A Job or Pipeline hook without its own id cannot be recorded nor de-duplicated: the one 4xx case."""
    value: Any = payload
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    if value is None or isinstance(value, bool) or not isinstance(value, int | str):
        raise MalformedEventError(f"{what} field {'.'.join(path)}: missing or not an id")
    try:
        int(value)
    except ValueError:
        raise MalformedEventError(f"{what} field {'.'.join(path)}: not an integer id") from None


def _unusable(kind: str, payload: dict[str, Any], reason: str) -> IgnoredEvent:
    return IgnoredEvent(kind=kind, digest=_payload_digest(payload), reason=" ".join(reason.split())[:300])


def _resolve_kind(headers: WebhookHeaders, payload: dict[str, Any]) -> str:
    """The event's kind from `object_kind`, checked against X-Gitlab-Event for the kinds we act on."""
    declared = (headers.x_gitlab_event or "").strip().lower() or None
    object_kind = payload.get("object_kind")
    if object_kind is not None and not isinstance(object_kind, str):
        raise MalformedEventError(f"object_kind is a {type(object_kind).__name__}, not a string")
    expected = _KIND_OF_EVENT.get(declared or "")
    if expected is not None and object_kind != expected:
        raise MalformedEventError(
            f"X-Gitlab-Event {_quote(headers.x_gitlab_event)} needs object_kind {expected!r}, "
            f"body has {_quote(object_kind)}"
        )
    if object_kind in _ACTED_ON and declared is not None and expected != object_kind:
        raise MalformedEventError(
            f"object_kind {object_kind!r} arrived as X-Gitlab-Event {_quote(headers.x_gitlab_event)}"
        )
    kind = object_kind or _text(payload.get("event_name")) or _kind_from_header(declared)
    if not kind:
        raise MalformedEventError("body has no object_kind and no X-Gitlab-Event header names the event")
    return kind


def _kind_from_header(declared: str | None) -> str | None:
    if declared is None:
        return None
    return declared.removesuffix(" hook").strip().replace(" ", "_") or None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _quote(value: object) -> str:
    return "none" if value is None else repr(str(value)[:64])


#: Rounds of dropping unusable fields before a hook is given up on (each round drops every field it names).
_LENIENT_ROUNDS = 8


def _validate(
    model: type[_ModelT], what: str, payload: dict[str, Any], *, identity: tuple[str, ...]
) -> _ModelT | IgnoredEvent:
    """The hook as far as it goes: a field we cannot read (a new enum spelling, a changed type) is dropped
    and its default used, a list item missing its own id is dropped, and only a hook whose required fields
    are unusable is ignored with the reason. The identity was checked before, so this never raises."""
    try:
        return _validate_rounds(model, what, payload, identity)
    except RecursionError:
        raise MalformedEventError(f"{what} nests too deeply to read") from None


def _validate_rounds(
    model: type[_ModelT], what: str, payload: dict[str, Any], identity: tuple[str, ...]
) -> _ModelT | IgnoredEvent:
    try:  # the common case: the hook reads as it is, and no copy of it is made to drop fields from
        return model.model_validate(payload)
    except ValidationError as err:
        errors = err.errors(include_url=False, include_input=False, include_context=False)
    work: Any = _compact(payload)
    dropped: list[str] = []
    for round_ in range(_LENIENT_ROUNDS):
        if round_:
            try:
                return model.model_validate(work)
            except ValidationError as err:
                errors = err.errors(include_url=False, include_input=False, include_context=False)
        fatal: list[str] = []
        for error in errors:
            where = _clean_loc(error["loc"])
            name = ".".join(str(part) for part in where) or "body"
            # A missing required field takes its holder with it (a runner without an id is no runner).
            target = where[:-1] if error["type"] == "missing" else where
            if not target or identity[: len(target)] == target:
                fatal.append(f"{name} ({error['msg'].lower()})")
            else:
                _drop(work, target)
                dropped.append(name)
        if fatal:
            return _unusable(
                _KIND_NAMES[what], payload, f"{what} without {', '.join(fatal)}: nothing to record"
            )
        work = _compact(work)
    fields = ", ".join(dropped[:5])
    return _unusable(_KIND_NAMES[what], payload, f"{what}: too many unusable fields ({fields})")


_KIND_NAMES = {"Job Hook": "build", "Pipeline Hook": "pipeline"}


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """pydantic's error path without its union and validator tags (`function-before[...]`, model names)."""
    return tuple(part for part in loc if isinstance(part, int) or not _is_tag(part))


def _is_tag(part: str) -> bool:
    return "[" in part or part[:1].isupper()


def _drop(work: Any, path: tuple[int | str, ...]) -> None:
    """Remove what `path` names so its default applies. A list item is only marked (`_GONE`) so the other
    errors of the same round keep their indexes; `_compact` removes it after the round."""
    parent: Any = work
    for part in path[:-1]:
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            return  # already gone with an earlier drop this round
    last = path[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
        parent[last] = _GONE


_GONE = object()


def _compact(value: Any) -> Any:
    """The payload without the list items `_drop` marked gone."""
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compact(v) for v in value if v is not _GONE]
    return value


def _payload_digest(payload: dict[str, Any]) -> str:
    try:
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    except (ValueError, TypeError, RecursionError) as err:
        raise MalformedEventError(f"body cannot be fingerprinted: {type(err).__name__}") from None
    return hashlib.sha256(canonical.encode()).hexdigest()


def _without_token(err: MalformedEventError, headers: WebhookHeaders) -> MalformedEventError:
    """Withhold a reason that quotes any 8-character piece of the webhook token (a body may echo it)."""
    if headers.x_gitlab_token is None:
        return err
    token = headers.x_gitlab_token.get_secret_value()
    width = min(8, len(token))
    if any(token[start : start + width] in err.reason for start in range(len(token) - width + 1)):
        return MalformedEventError(
            "malformed GitLab event (details withheld: they would quote the webhook token)"
        )
    return err


def event_identity(headers: Mapping[str, str] | WebhookHeaders, event: ParsedDelivery) -> str:
    """The key that makes a webhook delivery idempotent, scoped to the GitLab instance (X-Gitlab-Instance).

    GitLab's own facts decide the choice (docs: Webhooks > Delivery headers; web_hook_service.rb):
    - `Idempotency-Key` (GitLab 17.4+) is "consistent across webhook retries", and manual resends from the
      webhook log reuse it, so when present it is the key.
    - `X-Gitlab-Event-UUID` is NOT used: it is a recursion-detection id that every hook fired by the same
      request shares, so distinct job events would collide and all but the first be dropped.
    - `X-Gitlab-Webhook-UUID` is NOT used: GitLab draws a new one for every request, retries included, so it
      never matches a duplicate.
    Without the key (before 17.4) the key is a SHA-256 of what makes the event distinct - kind, job id, status
    and its timestamps (Job hook) or pipeline id, status, finish time and every (job id, status) (Pipeline
    hook) - not of the raw bytes, so a resend serialized differently (key order, timestamp spelling, fields a
    GitLab upgrade added) still matches. `headers` may be the raw mapping (a bad one: MalformedEventError).
    """
    headers = WebhookHeaders.from_mapping(headers)
    instance = (headers.x_gitlab_instance or "unknown-instance").strip().rstrip("/").lower()
    if headers.idempotency_key:
        return f"{instance}|idempotency-key|{headers.idempotency_key}"
    digest = hashlib.sha256(json.dumps(_identity_parts(event)).encode()).hexdigest()
    return f"{instance}|sha256|{digest}"


def _identity_parts(event: ParsedDelivery) -> list[Any]:
    if isinstance(event, JobHook):
        return [
            event.object_kind,
            event.build_id,
            event.build_status,
            _iso(event.build_started_at),
            _iso(event.build_finished_at),
            _iso(event.build_created_at),
        ]
    if isinstance(event, PipelineHook):
        attributes = event.object_attributes
        builds = sorted((build.id, build.status) for build in event.builds)
        return [
            event.object_kind,
            attributes.id,
            attributes.status,
            _iso(attributes.finished_at),
            builds,
        ]
    return [event.kind, event.digest]


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None
