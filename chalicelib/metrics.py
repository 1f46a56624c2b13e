"""CloudWatch metrics as EMF log lines (powertools), one blob per pool per reconcile.

Dimensions stay low-cardinality: pool and platform only. Never a token, never an instance id.
"""

from __future__ import annotations

from collections.abc import Iterable

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from chalicelib.config import Config
from chalicelib.reconcile import ReconcileResult

NAMESPACE = "RunnerScaler"


def emit_reconcile(config: Config, results: Iterable[ReconcileResult], aws_calls: int) -> None:
    """Per pool: desired, machines by state, pending/running jobs, scale-up/in counts, errors."""
    for result in results:
        if result.skipped:
            continue
        platform = config.pool(result.pool).platform.value
        dims = {"pool": result.pool, "platform": platform}
        with single_metric(
            "Desired", MetricUnit.Count, result.desired_after, namespace=NAMESPACE, default_dimensions=dims
        ) as metric:
            for state in ("booting", "idle", "busy", "draining"):
                metric.add_metric(
                    f"Machines{state.capitalize()}", MetricUnit.Count, result.machines.get(state, 0)
                )
            metric.add_metric("InService", MetricUnit.Count, sum(result.machines.values()))
            metric.add_metric("PendingJobs", MetricUnit.Count, result.pending)
            metric.add_metric("RunningJobs", MetricUnit.Count, result.running)
            metric.add_metric("ScaleUp", MetricUnit.Count, result.launched)
            metric.add_metric("ScaleIn", MetricUnit.Count, len(result.terminated))
            metric.add_metric("DrainCancelled", MetricUnit.Count, len(result.drain_cancelled))
            metric.add_metric("ReconcileErrors", MetricUnit.Count, len(result.errors))
            if result.host_plan is not None:
                for name, value in result.host_plan.metrics.as_metrics().items():
                    metric.add_metric(name, MetricUnit.Count, value)
    with single_metric("AwsCalls", MetricUnit.Count, aws_calls, namespace=NAMESPACE) as metric:
        metric.add_metric("Reconciles", MetricUnit.Count, sum(1 for r in results if not r.skipped))


def emit_count(name: str, value: float, pool: str | None = None) -> None:
    """One counter (e.g. UnroutableJobs, WebhookRejected), optionally per pool."""
    dims = {"pool": pool} if pool else None
    with single_metric(name, MetricUnit.Count, value, namespace=NAMESPACE, default_dimensions=dims):
        return
