"""Run policies on a trace: the registry of policies, one run per policy in a fresh world, JSON out.

Imports the simulator's world, ours and the baselines; the CLI and the bench call `simulate`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from chalicelib.config import Config
from sim.baselines import DockerMachine, NaiveHosts, Oracle, StaticFleet, Taskscaler, WebhookScaler
from sim.model import SimOptions
from sim.ours import Ours, OursPrewarm
from sim.traces import TraceJob
from sim.world import RunResult, ScalingPolicy, World

#: Every policy by name, in report order: ours first, the baselines, the oracle last.
POLICIES: dict[str, Callable[[], ScalingPolicy]] = {
    "ours": Ours,
    "docker-machine": DockerMachine,
    "taskscaler": Taskscaler,
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
) -> dict[str, RunResult]:
    """Each named policy on the same trace and seed, each in its own fresh world."""
    results: dict[str, RunResult] = {}
    for name in policies:
        world = World(config, trace, seed=seed, options=options or SimOptions())
        report = None if progress is None else _bind(progress, name)
        results[name] = world.run(ALL_POLICIES[name](), report)
        if progress is not None:
            progress(name, 1.0)
    return results


def _bind(progress: PolicyProgress, name: str) -> Callable[[float], None]:
    return lambda fraction: progress(name, fraction)


def metrics_json(results: dict[str, RunResult]) -> dict[str, dict[str, float | int]]:
    """{policy: metrics}, the shape `--json` writes."""
    return {name: result.metrics for name, result in results.items()}


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
