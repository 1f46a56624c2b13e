"""CloudWatch metrics as EMF log lines (powertools), one blob per pool per reconcile.

Dimensions stay low-cardinality: pool and platform only. Never a token, never an instance id.
(powertools' `single_metric` keeps only its first metric, so each blob is an isolated EphemeralMetrics.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

if TYPE_CHECKING:  # the lifecycle and webhook handlers emit too, without importing the reconciler
    from chalicelib.capacity.hosts import HostPlan
    from chalicelib.config import Config


class ReconcileFigures(Protocol):
    """What `emit_reconcile` reads of a reconcile's result (`reconcile.ReconcileResult` has it): an adapter
    names the figures it publishes instead of importing the use case that produces them."""

    @property
    def pool(self) -> str: ...
    @property
    def skipped(self) -> str: ...
    @property
    def desired_after(self) -> int: ...
    @property
    def machines(self) -> Mapping[str, int]: ...
    @property
    def pending(self) -> int: ...
    @property
    def unpickable(self) -> int: ...
    @property
    def running(self) -> int: ...
    @property
    def launched(self) -> int: ...
    @property
    def terminated(self) -> Sequence[str]: ...
    @property
    def drain_cancelled(self) -> Sequence[str]: ...
    @property
    def errors(self) -> Sequence[str]: ...
    @property
    def faults(self) -> Sequence[str]: ...
    @property
    def seconds(self) -> float: ...
    @property
    def drain_seconds(self) -> Sequence[float]: ...
    @property
    def host_plan(self) -> HostPlan | None: ...


NAMESPACE = "RunnerScaler"
SERVICE = "runner-scaler"


def emit(
    values: Mapping[str, float],
    dimensions: Mapping[str, str] | None = None,
    unit: MetricUnit = MetricUnit.Count,
) -> None:
    """One EMF blob: every value under the same dimensions."""
    blob = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
    for key, label in (dimensions or {}).items():
        blob.add_dimension(key, label)
    for name, value in values.items():
        blob.add_metric(name=name, unit=unit, value=value)
    blob.flush_metrics()


def emit_job_wait(pool: str, platform: str, queued_seconds: float) -> None:
    """How long a job waited for a runner (GitLab's `build_queued_duration`), one value per started job.

    CloudWatch computes p50/p95 from the individual EMF values, answering the first question: "do jobs wait?".
    """
    emit({"JobQueueSeconds": queued_seconds}, {"pool": pool, "platform": platform}, MetricUnit.Seconds)


def emit_scale_up(pool: str, platform: str, seconds: float) -> None:
    """Scale-up latency: how long the job a new machine takes had been pending when that machine came into
    service. One value per launched machine that a job waited for; CloudWatch gives p50/p95 per pool.

    Measured when the machine's launch lifecycle hook completes (its runner is registered and the ASG puts it
    InService). The job is the pool's oldest pending one not already covered by free slots of machines in
    service, since GitLab hands out jobs oldest first; "pending since" is when the scaler recorded the job
    pending. No value when no job waited (idle_count or prewarm machines, or the backlog was already
    covered). JobQueueSeconds minus this is roughly gitlab-runner's own start on the new machine.
    """
    emit({"ScaleUpSeconds": seconds}, {"pool": pool, "platform": platform}, MetricUnit.Seconds)


def emit_reconcile(config: Config, results: Iterable[ReconcileFigures], aws_calls: int) -> None:
    """Per pool: desired, machines by state, pending/running jobs, scale-up/in counts, errors, decision
    latency, the longest drain window, hosts."""
    done = [r for r in results if not r.skipped]
    for result in done:
        values: dict[str, float] = {
            "Desired": result.desired_after,
            "InService": sum(n for state, n in result.machines.items() if state != "booting"),
            "PendingJobs": result.pending,
            "UnpickableJobs": result.unpickable,
            "RunningJobs": result.running,
            "ScaleUp": result.launched,
            "ScaleIn": len(result.terminated),
            "DrainCancelled": len(result.drain_cancelled),
            "ReconcileErrors": len(result.errors),
            "PoolFaults": len(result.faults),
            "ReconcileSeconds": round(result.seconds, 3),
        }
        if result.drain_seconds:
            values["DrainSeconds"] = round(max(result.drain_seconds), 3)
        for state in ("booting", "idle", "busy", "draining"):
            values[f"Machines{state.capitalize()}"] = result.machines.get(state, 0)
        if result.host_plan is not None:
            values.update(result.host_plan.metrics.as_metrics())
        emit(values, {"pool": result.pool, "platform": config.pool(result.pool).platform.value})
    emit({"AwsCalls": aws_calls, "Reconciles": len(done)})


def emit_count(name: str, value: float, pool: str | None = None) -> None:
    """One counter (e.g. UnroutableJobs, WebhookRejected), optionally per pool."""
    emit({name: value}, {"pool": pool} if pool else None)


class Metrics(Protocol):
    """The metrics port use cases emit through (EmfMetrics in Lambda; a recorder in a test or the sim)."""

    def emit(
        self, values: Mapping[str, float], dimensions: Mapping[str, str] | None = None, unit: MetricUnit = ...
    ) -> None: ...

    def emit_count(self, name: str, value: float, pool: str | None = None) -> None: ...

    def emit_job_wait(self, pool: str, platform: str, queued_seconds: float) -> None: ...

    def emit_scale_up(self, pool: str, platform: str, seconds: float) -> None: ...

    def emit_reconcile(self, config: Config, results: Iterable[ReconcileFigures], aws_calls: int) -> None: ...


class EmfMetrics:
    """`Metrics` as EMF log lines: the functions above, as the port the wiring hands to use cases."""

    def emit(
        self,
        values: Mapping[str, float],
        dimensions: Mapping[str, str] | None = None,
        unit: MetricUnit = MetricUnit.Count,
    ) -> None:
        emit(values, dimensions, unit)

    def emit_count(self, name: str, value: float, pool: str | None = None) -> None:
        emit_count(name, value, pool)

    def emit_job_wait(self, pool: str, platform: str, queued_seconds: float) -> None:
        emit_job_wait(pool, platform, queued_seconds)

    def emit_scale_up(self, pool: str, platform: str, seconds: float) -> None:
        emit_scale_up(pool, platform, seconds)

    def emit_reconcile(self, config: Config, results: Iterable[ReconcileFigures], aws_calls: int) -> None:
        emit_reconcile(config, results, aws_calls)
