"""Use case behind `POST /webhooks/gitlab`: trust, size, parse, de-duplicate, record, mark dirty, answer.

Strict about trust (constant-time token check), lenient about what it does not need (unknown events are
accepted and ignored: a 4xx makes GitLab disable the hook after 4 failures). Never calls GitLab: a job whose
tags are not cached yet is stored unrouted and resolved by the queue's consumer (chalicelib.jobs). At most
three AWS calls on a Job Hook's hot path: the pipeline's cached tags (pending jobs only) or the runner's
machine (a job on a runner; none for a job ending on the runner its stored item names: that write alone
answers with the stored pool and machine), the job's conditional write, and the dirty-pool message or the
resolve ask. That
write is also the de-duplication: it marks the delivery's key on the job item and refuses a key marked before
(chalicelib.store `write_job`). A Pipeline Hook, which writes no job, still writes its key first.
With prewarm on in some pool, a Pipeline Hook adds the pipeline's state (estimate reads and one put) and a
successful job its duration (a read and a write per estimate key).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chalicelib.errors import AwsCallError, MalformedEventError, NotFoundError
from chalicelib.events.gitlab import (
    IgnoredEvent,
    JobHook,
    PipelineHook,
    WebhookHeaders,
    event_identity,
    parse_gitlab_event,
)
from chalicelib.jobs import JobEvent, ingest_job, pipeline_announced
from chalicelib.pipelines import observe_job_duration, record_pipeline_hook
from chalicelib.ports import Ports

logger = logging.getLogger(__name__)

#: The largest body the platform can hand us, so our own cap never refuses what arrived: API Gateway takes a
#: REST payload up to 10 MB ("Amazon API Gateway quotas"), but the Lambda behind it is invoked synchronously,
#: whose request payload (the whole event: body, headers, request context) is at most 6 MB ("Lambda quotas";
#: Invoke: "For synchronous invocations, the maximum payload size is 6 MB"). A Pipeline hook lists every job
#: of the pipeline (`lib/gitlab/data_builder/pipeline.rb`), so a big pipeline's hook passes 1 MiB.
MAX_BODY_BYTES = 6 * 1024 * 1024


@dataclass(frozen=True)
class Answer:
    """The HTTP answer: status and a small JSON body with a one-line reason."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    outcome: str = ""  # accepted | duplicate | ignored | bad_token | too_large | malformed | unavailable


def token_ok(presented: str | None, accepted: list[str]) -> bool:
    """Constant-time comparison against every accepted token (no early exit that leaks which one matched)."""
    if not presented or not accepted:
        return False
    matched = False
    for token in accepted:
        matched |= hmac.compare_digest(presented.encode(), token.encode())
    return matched


def receive(ports: Ports, headers: Mapping[str, str], body: bytes | str | None) -> Answer:
    """Handle one delivery; the token is checked before anything is parsed or stored."""
    raw = body.encode() if isinstance(body, str) else (body or b"")
    lowered = {k.lower(): v for k, v in headers.items()}
    if len(raw) > MAX_BODY_BYTES:
        return _reject(ports, 413, "too_large", f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        accepted = ports.webhook_tokens()
    except (AwsCallError, NotFoundError) as exc:
        return _unavailable("webhook tokens unreadable", exc)
    if not token_ok(lowered.get("x-gitlab-token"), accepted):
        return _reject(ports, 401, "bad_token", "missing or wrong X-Gitlab-Token")
    try:
        delivery = WebhookHeaders.from_mapping(lowered)  # read once, for the parse and the identity
        event = parse_gitlab_event(delivery, raw)
    except MalformedEventError as exc:
        return _reject(ports, 400, "malformed", exc.reason)
    if isinstance(event, IgnoredEvent):
        return _ignored(ports, event)
    key = event_identity(delivery, event)
    if isinstance(event, JobHook):
        # No key item: the job's own write refuses a delivery applied before (Store.write_job).
        try:
            return _apply_job(ports, event, key)
        except AwsCallError as exc:  # nothing half-applied: the job write is idempotent, the tick re-reads
            return _unavailable("webhook not recorded", exc)
    return _receive_pipeline(ports, event, key)


def _receive_pipeline(ports: Ports, event: PipelineHook, key: str) -> Answer:
    """A Pipeline Hook writes no job to de-duplicate it: its key is written first (`first_seen`), and
    forgotten when the delivery could not be applied, so that its resend is."""
    try:
        if not ports.store.first_seen(key, ports.now()):
            return _duplicate()
    except AwsCallError as exc:
        return _unavailable("event key not written", exc)
    try:
        return _apply_pipeline(ports, event, ports.gitlab_host)
    except AwsCallError as exc:
        try:
            ports.store.forget_event(key)
        except AwsCallError as forget:
            # The key expires with its TTL; until then a manual resend counts as a duplicate: the tick heals.
            logger.warning("event key kept", extra={"error": str(forget)})
        return _unavailable("webhook not recorded", exc)


def _duplicate() -> Answer:
    return Answer(200, {"status": "duplicate"}, "duplicate")


def _ignored(ports: Ports, event: IgnoredEvent) -> Answer:
    """202: a kind we do not act on, or a Job/Pipeline hook lacking what we need (`reason`, counted in the
    WebhookIgnored metric). Never a 4xx: four of those in a row disable the hook in GitLab."""
    body = {"status": "ignored", "event": event.kind}
    if event.reason:
        ports.metrics.emit_count("WebhookIgnored", 1)
        logger.warning("webhook ignored", extra={"event": event.kind, "reason": event.reason})
        body["reason"] = event.reason
    return Answer(202, body, "ignored")


def _unavailable(what: str, exc: AwsCallError | NotFoundError) -> Answer:
    """503, not 4xx: GitLab does not retry, but a 5xx only pauses the hook a while (a 4xx disables it for
    good). What this delivery carried, the tick finds in GitLab's job lists."""
    logger.error(what, extra={"error": str(exc)})
    return Answer(503, {"error": "state store unavailable, retry"}, "unavailable")


def _apply_job(ports: Ports, event: JobHook, key: str) -> Answer:
    gitlab = ports.gitlab_host  # one GitLab per deployment; X-Gitlab-Instance may spell it differently
    result = ingest_job(
        job_event(event, gitlab),
        config=ports.config,
        store=ports.store,
        dirty=ports.queue,
        resolve=ports.queue,
        now=ports.now(),
        event_key=key,
    )
    if result.duplicate:
        return _duplicate()
    if result.unroutable:
        ports.metrics.emit_count("UnroutableJobs", 1)
    elif result.pool and result.applied:
        _observe(ports, event, gitlab, result.pool)
    body = {
        "status": "accepted",
        "job": event.build_id,
        "pool": result.pool or None,
        "changed": result.applied,
    }
    if result.deferred:
        body["routing"] = "deferred"  # its tags are resolved out of this request
    return Answer(202, body, "accepted")


def _observe(ports: Ports, event: JobHook, gitlab: str, pool: str) -> None:
    """What a routed job's new status tells: its queue wait once running, its duration once successful.
    A job not ours, or not routed yet, has neither under a pool."""
    if event.build_status == "running" and event.build_queued_duration is not None:
        platform = ports.config.pool(pool).platform.value
        ports.metrics.emit_job_wait(pool, platform, event.build_queued_duration)
    elif event.build_status == "success" and _prewarm_on(ports):
        _learn_duration(ports, event, gitlab, pool)


def _apply_pipeline(ports: Ports, event: PipelineHook, gitlab: str) -> Answer:
    """Have the tags of the jobs to come resolved (out of this request) unless cached; with prewarm on,
    keep the pipeline's state for the forecast, its jobs routed by the cached tags (a job not resolved yet
    is forecast from a later hook)."""
    pipeline_id = event.object_attributes.id
    pool_of = pipeline_announced(
        ports.store,
        ports.queue,
        ports.config.pools,
        gitlab=gitlab,
        project_id=event.project_id,
        pipeline_id=pipeline_id,
        waiting=[b.id for b in event.builds if b.status in {"created", "pending"}],
        forecast=_prewarm_on(ports),
        now=ports.now(),
    )
    if _prewarm_on(ports):
        record_pipeline_hook(ports.pipelines, gitlab, event, pool_of, ports.now())
    return Answer(202, {"status": "accepted", "pipeline": pipeline_id}, "accepted")


def _prewarm_on(ports: Ports) -> bool:
    """Pipeline state and durations cost calls on every hook: only kept when some pool prewarms."""
    return any(p.prewarm for p in ports.config.pools)


def _learn_duration(ports: Ports, hook: JobHook, gitlab: str, pool: str) -> None:
    """Best effort: a lost observation only makes one estimate a sample poorer; the job itself is recorded."""
    duration = hook.build_duration
    if duration is None and hook.build_started_at and hook.build_finished_at:
        duration = (hook.build_finished_at - hook.build_started_at).total_seconds()
    if duration is None:
        return
    try:
        observe_job_duration(
            ports.pipelines,
            gitlab,
            project_id=hook.project_id,
            ref=hook.ref or "",
            stage=hook.build_stage or "",
            name=hook.build_name or "",
            pool=pool,
            duration_s=duration,
            now=ports.now(),
        )
    except AwsCallError as exc:
        logger.warning("job duration not learned", extra={"job_id": hook.build_id, "error": str(exc)})


def job_event(hook: JobHook, gitlab: str) -> JobEvent:
    """The scaler's view of a Job Hook."""
    runner = hook.runner
    return JobEvent(
        gitlab=gitlab,
        job_id=hook.build_id,
        status=str(hook.build_status),
        project_id=hook.project_id,
        pipeline_id=hook.pipeline_id,
        name=hook.build_name or "",
        stage=hook.build_stage or "",
        runner_id=runner.id if runner else None,
        runner_description=(runner.description or "") if runner else "",
        created_at=hook.build_created_at,
        started_at=hook.build_started_at,
        finished_at=hook.build_finished_at,
    )


def _reject(ports: Ports, status: int, outcome: str, reason: str) -> Answer:
    ports.metrics.emit_count("WebhookRejected", 1)
    logger.warning("webhook rejected", extra={"reason": outcome})
    return Answer(status, {"error": reason}, outcome)
