"""`runner-scaler status` reads the same state as the Lambda: pools, machines by state, jobs by state."""

from __future__ import annotations

from chalicelib.status import snapshot
from chalicelib.store import JobRecord
from tests.functional.conftest import Stack


def test_status_counts_machines_and_jobs_per_pool(stack: Stack) -> None:
    rt = stack.runtime
    for n in (1, 2):
        rt.store.record_job(JobRecord(rt.gitlab_host, n, "pending", pool="linux"), rt.now())
    rt.reconciler("test").reconcile_pool(stack.config.pool("linux"), rt.now())
    machine = sorted(i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].instances)[0]
    rt.reconciler("test").reconcile_pool(
        stack.config.pool("linux"), stack.advance(minutes=1)
    )  # adopt + ready
    rt.store.record_job(JobRecord(rt.gitlab_host, 1, "running", pool="linux", machine_id=machine), rt.now())
    rt.reconciler("test").reconcile_pool(stack.config.pool("linux"), stack.advance(minutes=1))
    rows = {r.pool: r for r in snapshot(stack.config, rt.store, rt.fleet, rt.now())}
    linux = rows["linux"]
    assert (linux.desired, linux.in_service, linux.busy, linux.idle) == (2, 2, 1, 1)
    assert (linux.pending_jobs, linux.running_jobs) == (1, 1)
    assert rows["gpu"].desired == 0 and rows["gpu"].faults == ()
