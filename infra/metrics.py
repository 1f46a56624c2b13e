"""The app's EMF metric names that infra/ graphs and alarms on (chalicelib/metrics.py emits them).

Plain names, no CDK, so tests can compare them with what chalicelib emits without starting jsii.
"""

from __future__ import annotations

#: Per pool (dimensions pool + platform, plus Powertools' service), grouped as the dashboard shows them.
MACHINE_METRICS = (
    "Desired",
    "InService",
    "MachinesBooting",
    "MachinesIdle",
    "MachinesBusy",
    "MachinesDraining",
)
JOB_METRICS = ("PendingJobs", "RunningJobs")
SCALING_METRICS = ("ScaleUp", "ScaleIn", "DrainCancelled", "ReconcileErrors", "PoolFaults")
#: Per pool, seconds per reconcile: graphed as their maximum, never summed.
TIMING_METRICS = ("ReconcileSeconds", "DrainSeconds")
#: Per pool, one value per event (a job started, a machine came into service), graphed as p50 and p95.
LATENCY_METRICS = ("JobQueueSeconds", "ScaleUpSeconds")
#: Deployment-wide (only Powertools' `service` dimension).
GLOBAL_METRICS = ("Reconciles", "AwsCalls")
