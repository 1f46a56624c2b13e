"""Small builders for tests: a pool, a machine, a demand, with sensible defaults and fixed times; a race."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.capacity import Machine, MachineState
from chalicelib.config import Pool

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday, 13:00 in Paris


def pool(**overrides: Any) -> Pool:
    base: dict[str, Any] = {
        "name": "linux",
        "asg": "asg-linux",
        "tags": ["linux"],
        "run_untagged": True,
        "max_instances": 10,
        "policy": [{"idle_count": 0, "idle_time": "10m"}],
    }
    base.update(overrides)
    return Pool.model_validate(base)


def machine(
    instance_id: str = "i-1",
    state: MachineState | str = MachineState.IDLE,
    *,
    age: timedelta = timedelta(minutes=30),
    idle_for: timedelta | None = None,
    jobs_started: int = 0,
    running_jobs: int = 0,
    now: datetime = T0,
) -> Machine:
    launched = now - age
    last_busy = now - idle_for if idle_for is not None else None
    st = MachineState(state)
    if st is MachineState.BUSY and running_jobs == 0:
        running_jobs = 1
    return Machine(
        instance_id=instance_id,
        state=st,
        launched_at=launched,
        ready_at=None if st is MachineState.BOOTING else launched + timedelta(minutes=1),
        jobs_started=max(jobs_started, running_jobs),
        running_jobs=running_jobs,
        last_busy_at=last_busy,
    )


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run `calls` in threads released together; return their results (an exception fails the test)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int, call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[index] = call()
        except BaseException as exc:  # re-raised in the test's thread below
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
