"""`python -m sim.bench_never_kill [--runs 1000]` (`make bench`): the never-kill invariant of issue #14 over
many seeded worlds, `bench/never_kill.json`.

Each seed is one bursty world (sim.bursty: machines removed after 1 min idle, hooks lagging assignment by
up to 60 s). It runs with drain-then-terminate on, with the test-only switch that skips the re-check before
termination (the baseline of every ratio: the kills the protocol prevents), and with half the launch
lifecycle events lost, and with the store's per-pool reads 30 s stale (DynamoDB's index is eventually
consistent). Imports the bursty world, ours and the world.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from sim.bench import BENCH_DIR
from sim.bursty import LAGGY, bursty, reuse_config
from sim.model import SimOptions
from sim.ours import Ours
from sim.simulate import write_json
from sim.world import World


@dataclass(frozen=True)
class Variant:
    """One way to run the same seeds: the world's options, and whether the protocol is meant to hold."""

    name: str
    options: SimOptions
    protocol: bool


#: The baseline first: the re-check before termination switched off.
BASELINE = "protocol off"
VARIANTS = (
    Variant(BASELINE, replace(LAGGY, drain_recheck=False), protocol=False),
    Variant("protocol on", LAGGY, protocol=True),
    Variant("protocol on, lifecycle_loss=0.5", replace(LAGGY, lifecycle_loss=0.5), protocol=True),
    Variant("protocol on, stale index 30 s", replace(LAGGY, stale_index_s=30.0), protocol=True),
)

Row = dict[str, object]
#: Seeds with kills listed per variant (enough to replay one).
FIRST_SEEDS = 10


@dataclass(frozen=True)
class Run:
    """One seed's outcome under one variant."""

    variant: str
    seed: int
    busy_killed: int
    jobs: int
    completed: int


def run_seed(variant: Variant, seed: int) -> Run:
    """One bursty world, scaled by our reconciler."""
    world = World(reuse_config(), bursty(seed), seed=seed, options=variant.options)
    result = world.run(Ours())
    completed = sum(1 for job in world.jobs if job.status == "success")
    return Run(variant.name, seed, int(result.metrics["busy_killed"]), len(world.jobs), completed)


def _chunk(variant: Variant, seeds: Sequence[int]) -> list[Run]:
    return [run_seed(variant, seed) for seed in seeds]


def run_all(seeds: Sequence[int], variants: Sequence[Variant] = VARIANTS, workers: int = 2) -> list[Run]:
    """Every (variant, seed), over `workers` processes; the same runs in the same order for any count."""
    chunks = [(v, seeds[i : i + 50]) for v in variants for i in range(0, len(seeds), 50)]
    if workers <= 1:
        return [run for v, part in chunks for run in _chunk(v, part)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = pool.map(_chunk, [v for v, _ in chunks], [part for _, part in chunks])
        return [run for part in parts for run in part]


def summarise(runs: Sequence[Run], variants: Sequence[Variant] = VARIANTS) -> dict[str, Row]:
    """Per variant: runs, runs with kills (and the first seeds), busy machines killed, jobs completed, and
    kills as a ratio to the baseline's."""
    rows: dict[str, Row] = {}
    for variant in variants:
        mine = [r for r in runs if r.variant == variant.name]
        rows[variant.name] = {
            "protocol": variant.protocol,
            "runs": len(mine),
            "runs_with_kills": sum(1 for r in mine if r.busy_killed),
            "busy_killed": sum(r.busy_killed for r in mine),
            "jobs": sum(r.jobs for r in mine),
            "jobs_completed": sum(r.completed for r in mine),
            "first_seeds_with_kills": [r.seed for r in mine if r.busy_killed][:FIRST_SEEDS],
        }
    base = rows[BASELINE]["busy_killed"]
    assert isinstance(base, int)
    for row in rows.values():
        killed = row["busy_killed"]
        assert isinstance(killed, int)
        row["busy_killed_ratio"] = round(killed / base, 3) if base else None
    return rows


def invariant_holds(rows: dict[str, Row]) -> bool:
    """No kill wherever the protocol is on, and kills without it: the check can fail."""
    on = [row for row in rows.values() if row["protocol"]]
    return all(row["busy_killed"] == 0 for row in on) and bool(rows[BASELINE]["busy_killed"])


def table(rows: dict[str, Row]) -> str:
    lines = [
        f"{'variant':<34}{'runs':>6}{'w/ kills':>10}{'killed':>8}{'x off':>7}{'jobs done':>15}",
    ]
    for name, r in rows.items():
        done = f"{r['jobs_completed']}/{r['jobs']}"
        lines.append(
            f"{name:<34}{r['runs']!s:>6}{r['runs_with_kills']!s:>10}{r['busy_killed']!s:>8}"
            f"{r['busy_killed_ratio']!s:>7}{done:>15}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.bench_never_kill", description=__doc__)
    parser.add_argument("--runs", type=int, default=1000, help="seeds 0..runs-1 (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="where never_kill.json goes")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = summarise(run_all(range(args.runs), workers=args.workers))
    holds = invariant_holds(rows)
    document = {
        "issue": 14,
        "seeds": f"0..{args.runs - 1}",
        "world": "sim.bursty: bursty(seed), reuse_config(), LAGGY",
        "baseline": f"{BASELINE}: SimOptions(drain_recheck=False), the kills the protocol prevents",
        "invariant_holds": holds,
        "variants": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "never_kill.json", document)
    sys.stdout.write(table(rows) + "\n")
    sys.stdout.write(f"never kill a busy machine: {'HOLDS' if holds else 'BROKEN'}\n")
    sys.stdout.write(f"wrote {args.out / 'never_kill.json'} in {time.monotonic() - started:.0f} s\n")
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
