"""`python -m sim.bench_prewarm` (`make bench`): pipeline-aware prewarm on against off, `bench/prewarm.json`.

The goal of issue #12: with prewarm on, the wait p95 of later-stage jobs (stage index >= 1) at most half of
prewarm off's, at <= 10 % more cost, on the multi-stage Windows and macOS scenarios. Every figure is a ratio
to prewarm off measured in the same run (same trace, same seed). Imports the bench's scenarios and the sim.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from chalicelib.config import load_config_file
from sim.bench import BENCH_DIR, SCENARIOS, Scenario
from sim.model import SimOptions
from sim.ours import OursNoPrewarm, OursPrewarm
from sim.simulate import write_json
from sim.traces import read_trace
from sim.world import ScalingPolicy, World, job_wait, percentile

#: The scenarios the goal is judged on: multi-stage pipelines on Windows and on macOS (dedicated hosts).
GOAL_SCENARIOS = ("windows", "macos-hosts")
#: Goal: later-stage wait p95 at most this share of prewarm off's ...
LATER_P95_RATIO = 0.5
#: ... at most this cost ratio to prewarm off.
COST_RATIO = 1.10

Figures = dict[str, float | int | bool | None]


@dataclass(frozen=True)
class Variant:
    """One way to run ours: prewarm off, or on with these settings (None: the product's default)."""

    name: str
    prewarm: bool
    confidence: float | None = None
    max_machines: int | None = None
    pipeline_hooks: str = "transitions"
    what_if: bool = False  # a world GitLab is not (see SimOptions.pipeline_hooks): diagnosis only

    def policy(self) -> ScalingPolicy:
        return OursPrewarm(self.confidence, self.max_machines) if self.prewarm else OursNoPrewarm()


#: Off first (the baseline of every ratio), then the product's defaults, then the sweep.
VARIANTS = (
    Variant("off", prewarm=False),
    Variant("on", prewarm=True),
    Variant("on conf=0.5", prewarm=True, confidence=0.5),
    Variant("on conf=0.95", prewarm=True, confidence=0.95),
    Variant("on max=1", prewarm=True, max_machines=1),
    Variant("on max=4", prewarm=True, max_machines=4),
    Variant("on, hook per job (what-if)", prewarm=True, pipeline_hooks="every_job", what_if=True),
)


def run_variant(scenario: Scenario, variant: Variant, seed: int) -> Figures:
    """One run: wait percentiles of later-stage jobs and of all jobs, cost, idle share, busy kills."""
    config = load_config_file(scenario.config_path)
    trace = read_trace(scenario.trace_path)
    options = replace(SimOptions(), pipeline_hooks=variant.pipeline_hooks)
    world = World(config, trace, seed=seed, options=options)
    result = world.run(variant.policy())
    waits = [(job.trace.stage, job_wait(job, result.run_end_s)) for job in world.jobs]
    later = sorted(w for stage, w in waits if stage >= 1)
    first = sorted(w for stage, w in waits if stage == 0)
    every = sorted(w for _, w in waits)
    m = result.metrics
    return {
        "later_jobs": len(later),
        "later_wait_p50_s": round(percentile(later, 50), 1),
        "later_wait_p95_s": round(percentile(later, 95), 1),
        "first_wait_p95_s": round(percentile(first, 95), 1),
        "wait_p50_s": round(percentile(every, 50), 1),
        "wait_p95_s": round(percentile(every, 95), 1),
        "cost_usd": m["cost_usd"],
        "machine_hours": m["machine_hours"],
        "idle_fraction": m["idle_fraction"],
        "busy_killed": m["busy_killed"],
        "api_calls": m["api_calls"],
    }


def compare(off: Mapping[str, float | int | bool | None], on: Figures) -> Figures:
    """`on` with its ratios to `off` and whether it meets the goal against it."""
    later = _ratio(on["later_wait_p95_s"], off["later_wait_p95_s"])
    cost = _ratio(on["cost_usd"], off["cost_usd"])
    out = dict(on)
    out["later_wait_p95_ratio"] = later
    out["wait_p95_ratio"] = _ratio(on["wait_p95_s"], off["wait_p95_s"])
    out["cost_ratio"] = cost
    out["goal_met"] = (
        bool(later is not None and later <= LATER_P95_RATIO and cost is not None and cost <= COST_RATIO)
        and on["busy_killed"] == 0
    )
    return out


def _ratio(mine: object, other: object) -> float | None:
    """mine / other, rounded; None when other is 0 (a ratio to zero says nothing)."""
    if not isinstance(mine, int | float) or not isinstance(other, int | float) or not other:
        return None
    return round(float(mine) / float(other), 3)


def _task(scenario: Scenario, variant: Variant, seed: int) -> tuple[str, str, Figures]:
    return scenario.name, variant.name, run_variant(scenario, variant, seed)


def run_all(
    scenarios: Sequence[Scenario], variants: Sequence[Variant], seed: int, workers: int
) -> dict[str, dict[str, Figures]]:
    """Every (scenario, variant) run, over `workers` processes; the same numbers whatever the order."""
    tasks = [(s, v) for s in scenarios for v in variants]
    found: dict[tuple[str, str], Figures] = {}
    if workers <= 1:
        for s, v in tasks:
            found[(s.name, v.name)] = _task(s, v, seed)[2]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for name, variant, figures in pool.map(_task, *zip(*tasks, strict=True), [seed] * len(tasks)):
                found[(name, variant)] = figures
    return {s.name: {v.name: found[(s.name, v.name)] for v in variants} for s in scenarios}


def assess(runs: Mapping[str, Figures], variants: Sequence[Variant] = VARIANTS) -> dict[str, Figures]:
    """Each variant against "off" of the same scenario ("off" itself has ratios of 1)."""
    off = runs["off"]
    return {v.name: compare(off, runs[v.name]) for v in variants}


def table(name: str, rows: Mapping[str, Figures]) -> str:
    """The scenario's rows, as printed by `make bench`."""
    lines = [
        f"== {name}",
        f"{'prewarm':<28}{'later p50':>10}{'later p95':>10}{'x off':>7}{'all p95':>9}{'cost $':>9}"
        f"{'x off':>7}{'idle':>7}{'killed':>7}  goal",
    ]
    for variant, r in rows.items():
        lines.append(
            f"{variant:<28}{r['later_wait_p50_s']:>10}{r['later_wait_p95_s']:>10}"
            f"{r['later_wait_p95_ratio']!s:>7}{r['wait_p95_s']:>9}{r['cost_usd']:>9.2f}"
            f"{r['cost_ratio']!s:>7}{r['idle_fraction']:>7}{r['busy_killed']:>7}  "
            f"{'-' if variant == 'off' else ('MET' if r['goal_met'] else 'not met')}"
        )
    return "\n".join(lines)


def markdown_table(document: Mapping[str, object]) -> str:
    """Prewarm off and on (product defaults) per scenario, as the README shows it (a test compares them)."""
    scenarios = document["scenarios"]
    assert isinstance(scenarios, Mapping)
    lines = [
        "| scenario | prewarm | later-stage wait p50 / p95 (s) | all jobs wait p95 (s) | cost × off | idle |",
        "|---|---|---|---|---|---|",
    ]
    for name, scenario in scenarios.items():
        for variant in ("off", "on"):
            r = scenario["variants"][variant]
            lines.append(
                f"| {name} | {variant} | {r['later_wait_p50_s']} / {r['later_wait_p95_s']} | "
                f"{r['wait_p95_s']} | {r['cost_ratio']} | {r['idle_fraction']} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.bench_prewarm", description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="where prewarm.json goes")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = run_all(SCENARIOS, VARIANTS, args.seed, args.workers)
    scenarios: dict[str, object] = {}
    met: dict[str, bool] = {}
    for scenario in SCENARIOS:
        rows = assess(results[scenario.name])
        if scenario.name in GOAL_SCENARIOS:
            met[scenario.name] = bool(rows["on"]["goal_met"])
        scenarios[scenario.name] = {
            "trace": str(scenario.trace_path.relative_to(BENCH_DIR.parent)),
            "config": str(scenario.config_path.relative_to(BENCH_DIR.parent)),
            "goal_scenario": scenario.name in GOAL_SCENARIOS,
            "variants": rows,
        }
        sys.stdout.write(table(scenario.name, rows) + "\n\n")
    document = {
        "seed": args.seed,
        "goal": (
            f"prewarm on (product defaults): later-stage (stage >= 1) wait p95 <= {LATER_P95_RATIO} x off's, "
            f"cost <= {COST_RATIO} x off's, no busy machine killed, on {', '.join(GOAL_SCENARIOS)}"
        ),
        "variants": {
            v.name: {
                "prewarm": v.prewarm,
                "prewarm_confidence": v.confidence,
                "prewarm_max": v.max_machines,
                "pipeline_hooks": v.pipeline_hooks,
                "what_if": v.what_if,
            }
            for v in VARIANTS
        },
        "goal_met": all(met.values()),
        "goal_met_by_scenario": met,
        "scenarios": scenarios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "prewarm.json", document)
    verdict = "MET" if document["goal_met"] else "NOT MET"
    sys.stdout.write(f"issue #12 goal (defaults, {', '.join(GOAL_SCENARIOS)}): {verdict}\n")
    sys.stdout.write(f"wrote {args.out / 'prewarm.json'} in {time.monotonic() - started:.0f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
