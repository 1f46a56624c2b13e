"""The bursty world of the never-kill invariant (issue #14): a seeded trace of clumped pipelines, a reused
Linux pool that drops machines after 1 min idle, and hooks that lag job assignment by up to 60 s.

One definition for the invariant tests and `sim.bench_never_kill`. Imports config, the model and traces.
"""

from __future__ import annotations

import random
from typing import Any

from chalicelib.config import Config, config_from_dict
from sim.model import SimOptions
from sim.traces import TraceJob

#: Hooks (and the busy flag) lag assignment by 25 s on average, up to 60 s; 5 % of hooks are lost.
LAGGY = SimOptions(busy_lag_mean_s=25.0, busy_lag_max_s=60.0, webhook_loss=0.05, tail_s=300.0)
#: Machines are reused (no max_use_count) and removed after 1 min idle: removal races assignment.
REUSE: dict[str, Any] = {
    "max_use_count": 0,
    "max_instances": 10,
    "policy": [{"idle_count": 0, "idle_time": "1m"}],
}


def reuse_config() -> Config:
    """One Linux pool with the REUSE settings, priced at 0.36 USD per machine-hour."""
    pool = {"name": "linux", "asg": "asg-linux", "tags": ["linux"]} | REUSE
    data = {
        "gitlab": {"url": "https://gitlab.example.com"},
        "prices": {"default_instance": 0.36},
        "pools": [pool],
    }
    return config_from_dict(data, "sim.bursty")


def bursty(seed: int) -> list[TraceJob]:
    """Clumps of small two-stage pipelines separated by lulls longer than idle_time: idle machines get jobs
    right when the scaler considers removing them."""
    rng = random.Random(seed)
    trace: list[TraceJob] = []
    clock, pipeline = 0.0, 0
    for _ in range(6):
        for _ in range(rng.randint(2, 5)):
            pipeline += 1
            created = round(clock + rng.uniform(0, 20), 1)
            trace.append(_job(pipeline, created, 0, round(rng.uniform(20, 90), 1), f"job-{pipeline}-0"))
            for n in range(rng.randint(1, 3)):
                trace.append(_job(pipeline, created, 1, round(rng.uniform(10, 60), 1), f"test {n}"))
        clock += rng.uniform(90, 240)
    return trace


def _job(pipeline: int, created: float, stage: int, duration: float, name: str) -> TraceJob:
    return TraceJob(pipeline, created, stage, name, ("linux",), duration)
