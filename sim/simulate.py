"""Run policies on a trace: the registry of policies, one run per policy in a fresh world, JSON out.

Imports the simulator's world, ours and the baselines; the CLI and the bench call `simulate`.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from queue import Queue

from chalicelib.config import Config
from sim.baselines import (
    DockerMachine,
    NaiveHosts,
    Oracle,
    StaticFleet,
    Taskscaler,
    TaskscalerNonPreemptive,
    TaskscalerWarm,
    WebhookScaler,
)
from sim.model import SimOptions
from sim.ours import Ours, OursPrewarm
from sim.traces import TraceJob
from sim.world import RunResult, ScalingPolicy, World

#: Every policy by name, in report order: ours first, the baselines, the oracle last.
POLICIES: dict[str, Callable[[], ScalingPolicy]] = {
    "ours": Ours,
    "docker-machine": DockerMachine,
    "taskscaler": Taskscaler,
    "taskscaler-nonpreemptive": TaskscalerNonPreemptive,
    "taskscaler-warm": TaskscalerWarm,
    "webhook-scaler": WebhookScaler,
    "static": StaticFleet,
    "oracle": Oracle,
}

#: Variants of ours with a setting the shipped config leaves off (prewarm); run by name, never part of "all".
EXPERIMENTS: dict[str, Callable[[], ScalingPolicy]] = {"ours-prewarm": OursPrewarm}

#: Baselines that only mean something for pools on dedicated hosts; run by name, never part of "all".
HOST_BASELINES: dict[str, Callable[[], ScalingPolicy]] = {"naive-hosts": NaiveHosts}

#: Every name `simulate` runs.
ALL_POLICIES: dict[str, Callable[[], ScalingPolicy]] = {**POLICIES, **EXPERIMENTS, **HOST_BASELINES}

PolicyProgress = Callable[[str, float], None]


def policy_names(spec: str) -> list[str]:
    """`all`, or comma-separated names from ALL_POLICIES; a ValueError names the unknown ones."""
    if spec.strip() == "all":
        return list(POLICIES)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_POLICIES]
    if unknown or not names:
        given = ", ".join(unknown) or "(none given)"
        raise ValueError(f"unknown policies: {given}; choose from all, {', '.join(ALL_POLICIES)}")
    return names


def simulate(
    trace: Sequence[TraceJob],
    config: Config,
    policies: Sequence[str],
    *,
    seed: int = 0,
    options: SimOptions | None = None,
    progress: PolicyProgress | None = None,
    workers: int = 1,
) -> dict[str, RunResult]:
    """Each named policy on the same trace and seed, each in its own fresh world.

    With `workers` > 1 the runs go to that many processes; a run depends only on its own world and seed,
    so the results are the same as in one process (tests/unit/test_sim_figures.py runs both ways).
    """
    opts = options or SimOptions()
    if workers <= 1 or len(policies) <= 1:
        results: dict[str, RunResult] = {}
        for name in policies:
            results[name] = run_policy(trace, config, name, seed, opts, progress)
            if progress is not None:
                progress(name, 1.0)
    else:
        results = _in_processes(trace, config, policies, seed, opts, progress, workers)
    return oracle_at_ours_wait(results, trace, config, seed, opts)


def oracle_at_ours_wait(
    results: dict[str, RunResult], trace: Sequence[TraceJob], config: Config, seed: int, options: SimOptions
) -> dict[str, RunResult]:
    """With ours and the oracle both run and a pool on dedicated hosts, the oracle again, its host plan held
    to ours' wait p95 on each host pool: on hosts, zero wait costs more hosts than a scaler that lets jobs
    wait a little pays, so the cost bound is the one at ours' wait (issue #22)."""
    host_pools = [p.name for p in config.pools if p.hosts is not None]
    if not host_pools or "oracle" not in results or "ours" not in results:
        return results
    ours = results["ours"].pools
    targets = {name: float(ours[name]["wait_p95_s"]) for name in host_pools if name in ours}
    world = World(config, trace, seed=seed, options=options)
    return {**results, "oracle": world.run(Oracle(targets))}


def run_policy(
    trace: Sequence[TraceJob],
    config: Config,
    name: str,
    seed: int,
    options: SimOptions,
    progress: PolicyProgress | None = None,
) -> RunResult:
    """One policy's run in a fresh world."""
    world = World(config, trace, seed=seed, options=options)
    report = None if progress is None else _bind(progress, name)
    return world.run(ALL_POLICIES[name](), report)


def _bind(progress: PolicyProgress, name: str) -> Callable[[float], None]:
    return lambda fraction: progress(name, fraction)


def _in_processes(
    trace: Sequence[TraceJob],
    config: Config,
    policies: Sequence[str],
    seed: int,
    options: SimOptions,
    progress: PolicyProgress | None,
    workers: int,
) -> dict[str, RunResult]:
    """The runs in `workers` processes, ours' (the longest) first; progress comes back through a queue."""
    order = sorted(policies, key=lambda n: (n not in _SLOW, list(policies).index(n)))
    done: dict[str, RunResult] = {}
    with multiprocessing.Manager() as manager, ProcessPoolExecutor(max_workers=workers) as pool:
        updates = manager.Queue() if progress is not None else None
        futures = {
            pool.submit(_run_reporting, list(trace), config, name, seed, options, updates): name
            for name in order
        }
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(updates, progress)
            for future in finished:
                done[futures[future]] = future.result()
                if progress is not None:
                    progress(futures[future], 1.0)
    return {name: done[name] for name in policies}


#: Policies whose run takes the longest (the real engine on every event): started first.
_SLOW = frozenset({"ours", "ours-prewarm"})


def _run_reporting(
    trace: list[TraceJob],
    config: Config,
    name: str,
    seed: int,
    options: SimOptions,
    updates: Queue[tuple[str, float]] | None,
) -> RunResult:
    report = None if updates is None else _queue_progress(updates)
    return run_policy(trace, config, name, seed, options, report)


def _queue_progress(updates: Queue[tuple[str, float]]) -> PolicyProgress:
    return lambda name, fraction: updates.put((name, fraction))


def _drain(updates: Queue[tuple[str, float]] | None, progress: PolicyProgress | None) -> None:
    while updates is not None and progress is not None and not updates.empty():
        progress(*updates.get_nowait())


def metrics_json(results: dict[str, RunResult]) -> dict[str, dict[str, object]]:
    """{policy: {metrics..., "pools": {pool: pool metrics}}}, the shape `--json` writes: the run's figures
    (METRIC_KEYS) and each pool's (POOL_METRIC_KEYS)."""
    return {name: {**result.metrics, "pools": result.pools} for name, result in results.items()}


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
