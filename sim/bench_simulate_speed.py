"""`python -m sim.bench_simulate_speed`: how long `simulate` takes over a held-out 10,000-job workday with
every policy, as a ratio to an older revision of the simulator timed in the same run, on the same machine.

The older revision is extracted from git (`git archive`) into a temporary directory and run in a child
process with the same interpreter and the same number of worker processes (one, for a revision that has no
workers); its figures are compared with this revision's, policy by policy (a speed change must change none:
those that differ are listed). Writes bench/simulate_speed.json. Wall-clock seconds depend on the machine
and its load; the ratio of two runs made back to back is what to read. CPU seconds (user and system, of the
run's process and its workers) depend less on what else the machine runs, so both are written.
Imports the simulator, config, the stdlib.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from chalicelib.config import load_config_file
from sim.simulate import POLICIES, simulate, write_json
from sim.traces import SHIPPED, TraceJob, generate_trace

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
CONFIG = ROOT / "sim" / "scenarios" / "linux.toml"
#: The revision just before the speed-ups of issue #22. Later model changes (ours' call counts, the peers'
#: real configurations) change figures on purpose: `changed_figures` lists them, and the commit log says why.
AGAINST = "d78aaeb"
#: The held-out workday: the Linux workday's shape at 1,150 pipelines (about 9,700 jobs), from a seed no
#: shipped trace uses. Nothing is tuned on it.
HELD_OUT_PIPELINES = 1150
HELD_OUT_SEED = 2222


def held_out_workday() -> list[TraceJob]:
    """The held-out 10,000-job workday (the generator's, so no file is needed by either revision)."""
    spec, _ = SHIPPED["linux_workday"]
    return generate_trace(replace(spec, pipelines_per_workday=HELD_OUT_PIPELINES), HELD_OUT_SEED)


def time_simulate(workers: int, policies: Sequence[str] | None = None) -> dict[str, object]:
    """Seconds to simulate the held-out workday with `policies` (default: every standard one of the
    revision that runs it, as `simulate --policies all` does), and the figures. Runs in whatever
    revision of `sim` is importable: this script's, or the older one's."""
    trace, config = held_out_workday(), load_config_file(CONFIG)
    names = list(policies or POLICIES)
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    try:
        results = simulate(trace, config, names, workers=workers)
    except TypeError:  # a revision without processes: one after the other
        workers = 1
        results = simulate(trace, config, names)
    seconds = time.perf_counter() - started
    return {
        "jobs": len(trace),
        "seconds": round(seconds, 1),
        "cpu_s": round(_cpu_seconds() - cpu_before, 1),
        "workers": workers,
        "metrics": {name: result.metrics for name, result in results.items()},
    }


def _cpu_seconds() -> float:
    """User and system CPU seconds of this process and of its children that have ended (the workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _extract(revision: str, into: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    tar_path = into / "rev.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into / "tree", filter="data")


def time_revision(revision: str, workers: int, policies: Sequence[str]) -> dict[str, object]:
    """`time_simulate` in a child process that imports `revision`'s sim and chalicelib: this file is run
    there by path (`--child`), with the older tree first on the path and as the working directory."""
    with tempfile.TemporaryDirectory() as tmp:
        _extract(revision, Path(tmp))
        tree = Path(tmp) / "tree"
        argv = [__file__, "--child", "--workers", str(workers), "--policies", ",".join(policies)]
        code = f"import runpy, sys; sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
        done = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(tree)},
            cwd=tree,
        )
        if done.returncode != 0:
            raise RuntimeError(f"revision {revision} failed to simulate:\n{done.stderr}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _differ(before: dict[str, object], after: dict[str, object]) -> bool:
    """A figure both revisions report differs (a key only one has, e.g. a new metric, is no change)."""
    return any(before[key] != after[key] for key in before.keys() & after.keys())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.bench_simulate_speed", description=__doc__)
    parser.add_argument("--against", default=AGAINST, help=f"git revision to time against ({AGAINST})")
    parser.add_argument("--workers", type=int, default=2, help="processes for each revision (default 2)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "simulate_speed.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policies", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # inside time_revision's child process: time this tree's sim ("all": its own policies)
        names = None if args.policies == "all" else args.policies.split(",")
        sys.stdout.write(json.dumps(time_simulate(args.workers, names)) + "\n")
        return 0
    policies = list(POLICIES)
    before = time_revision(args.against, args.workers, ["all"])
    after = time_simulate(args.workers, policies)
    before_metrics, after_metrics = before["metrics"], after["metrics"]
    assert isinstance(before_metrics, dict) and isinstance(after_metrics, dict)
    shared = [p for p in policies if p in before_metrics]
    changed = [p for p in shared if _differ(before_metrics[p], after_metrics[p])]
    document = {
        "trace": f"held-out workday: linux_workday's shape at {HELD_OUT_PIPELINES} pipelines, seed "
        f"{HELD_OUT_SEED} ({after['jobs']} jobs)",
        "config": str(CONFIG.relative_to(ROOT)),
        "policies": policies,
        "policies_before": sorted(before_metrics),
        "against": args.against,
        "before_s": before["seconds"],
        "after_s": after["seconds"],
        "workers_before": before.get("workers", 1),
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "ratio": round(float(str(after["seconds"])) / float(str(before["seconds"])), 3),
        "before_cpu_s": before.get("cpu_s"),
        "after_cpu_s": after["cpu_s"],
        "cpu_ratio": round(float(str(after["cpu_s"])) / float(str(before["cpu_s"])), 3),
        "same_figures": [p for p in shared if p not in changed],
        "changed_figures": changed,
        "missing_before": [p for p in policies if p not in before_metrics],
    }
    write_json(args.out, document)
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
