"""Use cases behind the reconcile triggers: the one-minute tick and the "pool dirty" queue.

Each reads its event model, reconciles through `Reconciler`, and reports; given its `Ports`, imports use
cases and ports, never the wiring.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from chalicelib.config import Config, Pool
from chalicelib.errors import AwsCallError, MalformedEventError, RunnerScalerError
from chalicelib.events.aws import DirtyPoolMessage, ResolveAsk, ResolveTagsMessage, parse_queue_message
from chalicelib.heal import HealReport, heal, scan_window
from chalicelib.jobs import MAX_TICK_PIPELINES, DirtyMarker
from chalicelib.ports import Ports
from chalicelib.reconcile import ReconcileResult
from chalicelib.resources import TickStep

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass
class TickReport:
    """What one tick did: the pools it reconciled itself, and those it handed to the dirty queue."""

    results: list[ReconcileResult] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    #: Pools the queue did not take (pool -> error): the next tick asks again.
    unqueued: dict[str, str] = field(default_factory=dict)


def run_tick(ports: Ports, owner: str) -> TickReport:
    """Repair the job store from GitLab, then reconcile every pool: heals what lost or late events left.

    Up to `scaler.tick_inline_pools` pools are reconciled here; above that, each pool gets one "pool
    dirty" message and its own `pool_dirty` invocation, so the tick's CPU grows with pools only by the
    messages it sends, never with their machines.
    """
    calls_before = ports.aws_calls()
    fan_out = len(ports.config.pools) > ports.config.scaler.tick_inline_pools
    # Fanning out, every pool gets a message anyway: heal's asks ride in it rather than in a message of
    # their own, which would take the window's deduplication id and drop the tick's.
    held = _HeldMarks()
    healed: HealReport | None = None
    # A failed claim runs no periodic step this tick (the next tick claims again); the reconcile still runs.
    windows = tick_windows(ports.config, ports.now())
    claimed = _isolated(ports, "claim", lambda: ports.store.claim_windows(windows, ports.now())) or set()
    if ports.has_gitlab():
        dirty: DirtyMarker = held if fan_out else ports.queue
        _isolated(ports, "resolve", lambda: _resolve(ports, dirty, None))
        healed = _isolated(ports, "heal", lambda: _heal(ports, dirty, LOST_JOB_SCAN in claimed))
        if HOOK_CHECK in claimed:
            _isolated(ports, "hook check", lambda: _check_hooks(ports))
        if SWEEP in claimed:
            _isolated(ports, "sweep", lambda: _sweep(ports))
    if CERT_CHECK in claimed:
        _isolated(ports, "certs", lambda: _ensure_certs(ports))
    long_pending = healed.long_pending if healed is not None else {}
    if fan_out:
        tick = _fan_out(ports, held.reasons, long_pending)
    else:
        # The pools' jobs heal has just read, for the pools it changed no job of: not read twice in one tick.
        read = healed.unchanged if healed is not None else None
        tick = TickReport(results=ports.reconciler(owner).reconcile_all(ports.now(), jobs_read=read))
    ports.metrics.emit_reconcile(ports.config, tick.results, ports.aws_calls() - calls_before)
    _emit_long_pending(ports, long_pending, tick.results)
    for result in tick.results:
        if result.errors:
            logger.warning("reconcile errors", extra={"pool": result.pool, "errors": result.errors})
        if result.faults:
            logger.warning("pool faults", extra={"pool": result.pool, "faults": result.faults})
    return tick


def _isolated(ports: Ports, step: TickStep, run: Callable[[], _T]) -> _T | None:
    """Run one repair step of the tick so that its failure stops neither the other steps nor the reconcile.

    Resolving unrouted jobs, heal, the hook check, the sweep and the certificate check are each retried by
    a later tick; the reconcile, which puts machines under waiting jobs, must not wait for them. The failure
    is logged with its step and counted (TickStepFailed, dimension `step`), never swallowed silently.
    """
    try:
        return run()
    except Exception as exc:  # any failure of a repair step, a bug included: logged and counted below
        logger.exception("tick step failed", extra={"step": step, "error": str(exc)})
        ports.metrics.emit({"TickStepFailed": 1}, {"step": step})
        return None


def _heal(ports: Ports, dirty: DirtyMarker, scan_claimed: bool) -> HealReport:
    """Repair the job store from GitLab; its report says which jobs are pending too long, per pool, and
    holds the pools' jobs it read. `scan_claimed`: this tick claimed the lost-job scan's window."""
    report = heal(
        ports.config,
        ports.store,
        ports.gitlab,
        dirty,
        ports.now(),
        gitlab_host=ports.gitlab_host,
        scan_claimed=scan_claimed,
    )
    if report.discovered:
        ports.metrics.emit_count("LostJobsFound", len(report.discovered))
    if report.errors:
        logger.warning("heal errors", extra={"errors": report.errors[:5]})
    return report


def _resolve(ports: Ports, dirty: DirtyMarker, asked: ResolveAsk | None) -> None:
    """Route the jobs stored without a pool (chalicelib.jobs.resolve_unrouted): on a webhook's ask, or on
    the tick for any ask lost, failed or read before its job showed in the index. A GitLab failure leaves
    them unrouted for the next tick; a store failure raises (the message is retried)."""
    from chalicelib.jobs import resolve_unrouted

    ask = (asked.project_id, asked.pipeline_id, asked.job_id) if asked is not None else None
    on_pools = None
    if any(p.prewarm for p in ports.config.pools):
        from chalicelib.pipelines import fill_pipeline_pools

        def on_pools(pipeline_id: int, pools: Mapping[int, str]) -> None:
            fill_pipeline_pools(ports.pipelines, ports.gitlab_host, pipeline_id, pools, ports.now())

    report = resolve_unrouted(
        ports.config,
        ports.store,
        ports.gitlab if ports.has_gitlab() else None,
        dirty,
        ports.now(),
        gitlab=ports.gitlab_host,
        asked=ask,
        on_pools=on_pools,
    )
    if on_pools is not None and asked is None:
        _fill_pools(ports, on_pools, MAX_TICK_PIPELINES - report.gitlab_calls)
    if report.unroutable:
        ports.metrics.emit_count("UnroutableJobs", len(report.unroutable))
    if report.errors:
        logger.warning("tags not resolved", extra={"errors": report.errors[:5]})


def _fill_pools(ports: Ports, on_pools: Callable[[int, Mapping[int, str]], None], fetches: int) -> None:
    """The tick's part of prewarm routing (chalicelib.jobs.resolve_pipeline_pools): stored pipelines whose
    jobs to come still have no pool, within what is left of the tick's GitLab budget."""
    from chalicelib.jobs import resolve_pipeline_pools

    report = resolve_pipeline_pools(
        ports.config,
        ports.store,
        ports.gitlab if ports.has_gitlab() else None,
        ports.pipelines.active(ports.gitlab_host, ports.now()),
        ports.now(),
        gitlab=ports.gitlab_host,
        on_pools=on_pools,
        max_fetches=max(0, fetches),
    )
    if report.errors:
        logger.warning("stored pipelines' tags not resolved", extra={"errors": report.errors[:5]})


class _HeldMarks:
    """A `DirtyMarker` that keeps heal's asks (the first reason per pool) for the tick's own messages."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def mark_dirty(self, pool: str, reason: str, now: datetime) -> None:
        self.reasons.setdefault(pool, reason)


def _fan_out(ports: Ports, held: Mapping[str, str], long_pending: Mapping[str, int]) -> TickReport:
    """One "pool dirty" message per pool; a pool the queue refused counts as a reconcile error."""
    pools = [p.name for p in ports.config.pools]
    reasons = {name: held.get(name, "tick") for name in pools}
    unqueued = ports.queue.mark_dirty_batch(reasons, ports.now(), long_pending)
    for name, error in unqueued.items():
        logger.warning("pool not queued for its reconcile", extra={"pool": name, "error": error})
        ports.metrics.emit(
            {"ReconcileErrors": 1}, {"pool": name, "platform": ports.config.pool(name).platform.value}
        )
    return TickReport(queued=[p for p in pools if p not in unqueued], unqueued=unqueued)


def _emit_long_pending(
    ports: Ports, long_pending: Mapping[str, int], results: Iterable[ReconcileResult]
) -> None:
    """Jobs pending past `stale_job_after` in a pool that had room (below `max_instances`, or an idle
    machine): nothing explains the wait, so it is alarm-worthy. At the cap the wait is the cap's (Desired)."""
    by_pool = {r.pool: r for r in results}
    for name, count in long_pending.items():
        pool, result = ports.config.pool(name), by_pool.get(name)
        if result is None or result.skipped:
            continue
        if result.desired_after < pool.max_instances or result.machines.get("idle", 0) > 0:
            ports.metrics.emit({"LongPendingJobs": count}, {"pool": name, "platform": pool.platform.value})


SWEEP_INTERVAL_SECONDS = 300
CERT_CHECK_INTERVAL_SECONDS = 900


#: The tick's periodic steps, each run by one container per window (`tick_windows`).
LOST_JOB_SCAN = "lost-job-scan"
SWEEP = "sweep"
CERT_CHECK = "certs"
HOOK_CHECK = "hook-check"


def tick_windows(config: Config, now: datetime) -> dict[str, int]:
    """Each periodic step's window number at `now`: the tick claims them all in one store write
    (`Store.claim_windows`) and runs the steps it claimed, so each runs once per window across containers."""
    from chalicelib.hook_sync import HOOK_CHECK_INTERVAL

    stamp = int(now.timestamp())
    windows = {
        LOST_JOB_SCAN: scan_window(config, now),
        SWEEP: stamp // SWEEP_INTERVAL_SECONDS,
        CERT_CHECK: stamp // CERT_CHECK_INTERVAL_SECONDS,
    }
    if config.gitlab.webhook_url:
        windows[HOOK_CHECK] = stamp // max(60, int(HOOK_CHECK_INTERVAL.total_seconds()))
    return windows


def _sweep(ports: Ports) -> None:
    """Every 5 minutes: delete runners of vanished instances; mark for removal machines that never came up or
    whose runner is gone (the reconcile below plans and drains them)."""
    from chalicelib.sweep import sweep

    try:
        groups = ports.fleet.read_groups([p.asg for p in ports.config.pools])
    except AwsCallError as exc:
        logger.warning("sweep skipped: cannot read the groups", extra={"error": str(exc)})
        return  # the next window retries; the reconcile below still runs
    report = sweep(ports.config, ports.names, ports.store, ports.gitlab, ports.secrets, groups, ports.now())
    if report.deleted_runners or report.marked:
        ports.metrics.emit_count("OrphansRemoved", len(report.deleted_runners) + len(report.marked))
    if report.errors:
        logger.warning("sweep errors", extra={"errors": report.errors[:5]})


def _ensure_certs(ports: Ports) -> None:
    """Every 15 minutes: create the base certificates, or rotate them once inside regenerate_before."""
    from chalicelib.rotation import ensure_base_certs_for

    try:
        outcome = ensure_base_certs_for(ports.certs)
    except RunnerScalerError as exc:
        logger.error("base certificate check failed", extra={"error": str(exc)})
        ports.metrics.emit_count("CertificateCheckFailed", 1)
        return
    logger.info("base certificates", extra={"action": outcome.action, "secret": outcome.secret})


def _check_hooks(ports: Ports) -> None:
    """Every 15 minutes (one container does it): re-enable our project hooks that GitLab auto-disabled."""
    from chalicelib.hook_sync import check_hooks

    health = check_hooks(ports.gitlab, ports.config, None, ports.now())
    logger.info("webhook health", extra={"health": health.as_dict()})


#: A reconcile holds its pool's lease for well under a second (bench/reconcile.json): wait that out a few
#: times before leaving the news to the next tick, a minute away.
LEASE_RETRIES = 4
LEASE_WAIT_SECONDS = 0.5


def _reconcile_past_lease(ports: Ports, pool: Pool, owner: str) -> ReconcileResult:
    for attempt in range(LEASE_RETRIES):
        result = ports.reconciler(owner).reconcile_pool(pool, ports.now())
        if not result.skipped or attempt == LEASE_RETRIES - 1:
            break
        ports.sleep(LEASE_WAIT_SECONDS)
    return result


def process_dirty_batch(ports: Ports, event: dict[str, Any], owner: str) -> dict[str, Any]:
    """Reconcile each pool named in a batch once; a failed apply is reported as a batch item failure.

    A malformed message is logged and dropped (a retry would never fix it). A pool whose lease is held is
    waited for: the holder may have read the state before the news this message brings.
    """
    done: dict[str, ReconcileResult] = {}
    long_pending: dict[str, int] = {}
    calls_before = ports.aws_calls()

    def handle(record: SQSRecord) -> None:
        try:
            message = parse_queue_message(record.body)
            pool = ports.config.pool(message.pool) if isinstance(message, DirtyPoolMessage) else None
        except (MalformedEventError, KeyError) as exc:
            logger.error(
                "dropping malformed dirty message", extra={"message_id": record.message_id, "error": str(exc)}
            )
            return
        if isinstance(message, ResolveTagsMessage):  # a webhook's ask (chalicelib.queue.ask_resolve)
            _resolve(ports, ports.queue, message.resolve)
            return
        assert isinstance(message, DirtyPoolMessage) and pool is not None
        if message.long_pending:
            long_pending[pool.name] = max(long_pending.get(pool.name, 0), message.long_pending)
        if pool.name in done:
            return
        result = _reconcile_past_lease(ports, pool, owner)
        done[pool.name] = result
        if result.faults:
            logger.warning("pool faults", extra={"pool": pool.name, "faults": result.faults})
        if result.errors:
            # Only a failed apply is worth SQS's retry: it holds back every later message of the pool's
            # FIFO group until the visibility timeout passes. A pool fault is left to the next tick.
            raise RuntimeError(f"reconcile of {pool.name} failed: {result.errors[0]}")

    processor = SqsFifoPartialProcessor()
    # A batch whose every reconcile failed is a Lambda error (powertools raises BatchProcessingError). The
    # `chalice deploy` path's event source mapping has no ReportBatchItemFailures (Chalice 1.34 cannot set
    # it), and Lambda deletes every message of a batch the function returned from without error ("Handling
    # errors for an SQS event source in Lambda"): only an error leaves the message on the queue, to be
    # retried after its visibility timeout and dead-lettered after maxReceiveCount receives. `pool_dirty`
    # takes batches of one, so "every" is "the one"; infra/ also reports item failures for larger batches.
    processor.raise_on_entire_batch_failure = True
    try:
        response = process_partial_response(event=event, record_handler=handle, processor=processor)
    finally:
        ports.metrics.emit_reconcile(ports.config, done.values(), ports.aws_calls() - calls_before)
        _emit_long_pending(ports, long_pending, done.values())
    return dict(response)
