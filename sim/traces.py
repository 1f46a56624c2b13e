"""Job traces (`pipeline_id,created_s,stage,name,tags,duration_s`): reader, writer, realistic generator.

`python -m sim.traces` regenerates the traces under `sim/traces/` from their seeds. Imports the stdlib.
"""

from __future__ import annotations

import csv
import io
import math
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HEADER = ("pipeline_id", "created_s", "stage", "name", "tags", "duration_s")
TRACES_DIR = Path(__file__).parent / "traces"
DAY = 86_400.0
HOUR = 3_600.0


class TraceError(ValueError):
    """A trace file that cannot be replayed; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class TraceJob:
    """One job of a trace. All jobs of a pipeline share `created_s`; `stage` orders them (0 runs first)."""

    pipeline_id: int
    created_s: float
    stage: int
    name: str
    tags: tuple[str, ...]
    duration_s: float


# -- reading and writing -------------------------------------------------------------------------------


def read_trace(path: str | Path) -> list[TraceJob]:
    """Every job of a trace file, ordered by (created_s, pipeline_id, stage, name)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"{file}: cannot read the trace: {exc.strerror}") from None
    return parse_trace(text, str(file))


def parse_trace(text: str, source: str) -> list[TraceJob]:
    """Parse CSV text; `source` is named in every error, with the line number."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != HEADER:
        raise TraceError(f"{source}: line 1: the header must be exactly {','.join(HEADER)}")
    jobs = [_row(row, source, number) for number, row in enumerate(reader, start=2) if row]
    _check_pipelines(jobs, source)
    return sorted(jobs, key=_order)


def _row(row: list[str], source: str, number: int) -> TraceJob:
    if len(row) != len(HEADER):
        raise TraceError(f"{source}: line {number}: {len(row)} fields, expected {len(HEADER)}")
    try:
        job = TraceJob(
            pipeline_id=int(row[0]),
            created_s=float(row[1]),
            stage=int(row[2]),
            name=row[3],
            tags=tuple(row[4].split()),
            duration_s=float(row[5]),
        )
    except ValueError:
        raise TraceError(
            f"{source}: line {number}: pipeline_id and stage must be integers, "
            "created_s and duration_s numbers of seconds"
        ) from None
    if job.created_s < 0 or job.duration_s < 0 or job.stage < 0:
        raise TraceError(f"{source}: line {number}: created_s, stage and duration_s cannot be negative")
    return job


def _check_pipelines(jobs: Sequence[TraceJob], source: str) -> None:
    created: dict[int, float] = {}
    for job in jobs:
        first = created.setdefault(job.pipeline_id, job.created_s)
        if first != job.created_s:
            raise TraceError(
                f"{source}: pipeline {job.pipeline_id} has jobs created at {first} and {job.created_s}; "
                "all jobs of a pipeline are created together"
            )


def _order(job: TraceJob) -> tuple[float, int, int, str]:
    return (job.created_s, job.pipeline_id, job.stage, job.name)


def format_trace(jobs: Iterable[TraceJob]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for job in sorted(jobs, key=_order):
        writer.writerow(
            [
                job.pipeline_id,
                _num(job.created_s),
                job.stage,
                job.name,
                " ".join(job.tags),
                _num(job.duration_s),
            ]
        )
    return out.getvalue()


def write_trace(path: str | Path, jobs: Iterable[TraceJob]) -> None:
    Path(path).write_text(format_trace(jobs), encoding="utf-8")


def _num(value: float) -> str:
    """Seconds with one decimal, without a trailing `.0`, so files stay small and diffs stay readable."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


# -- generating ----------------------------------------------------------------------------------------

#: Relative pipeline rate per local hour of a workday: quiet nights, a morning ramp, a lunch dip.
WORKDAY_RHYTHM = (
    0.02, 0.02, 0.02, 0.02, 0.02, 0.03, 0.08, 0.30, 0.70, 1.00, 1.00, 0.95,
    0.55, 0.80, 1.00, 1.00, 0.95, 0.75, 0.45, 0.25, 0.15, 0.10, 0.06, 0.03,
)  # fmt: skip


@dataclass(frozen=True)
class StageShape:
    """One stage of a pipeline template: how many parallel jobs (inclusive range) and how long they run.

    Durations are lognormal: `median_s` and `sigma` (0.8 gives a p99 about six times the median).
    """

    name: str
    fanout: tuple[int, int]
    median_s: float
    sigma: float = 0.8


@dataclass(frozen=True)
class TagMix:
    """A share of pipelines whose jobs carry `tags` (empty: untagged), with their own scale of work."""

    tags: tuple[str, ...]
    weight: float
    duration_scale: float = 1.0
    fanout_scale: float = 1.0


@dataclass(frozen=True)
class Burst:
    """`pipelines` more pipelines created within `spread_s` of `at_s` (a release, a merge train, a rebase)."""

    at_s: float
    pipelines: int
    spread_s: float = 120.0


DEFAULT_STAGES = (
    StageShape("build", (1, 1), 180.0),
    StageShape("test", (2, 10), 240.0),
    StageShape("package", (1, 2), 90.0, 0.5),
)


@dataclass(frozen=True)
class TraceSpec:
    """What a generated trace looks like. Time 0 is a midnight, local time, on `start_weekday` (0 = Monday).

    `short_share` of pipelines stop after their first two stages (merge-request pipelines without packaging).
    `nightly` pipelines run every night at `nightly_at_s` with a wider fan-out. `window` keeps only
    pipelines created inside it (seconds), for traces of a few hours.
    """

    days: int = 1
    start_weekday: int = 0
    pipelines_per_workday: float = 250.0
    weekend_factor: float = 0.15
    rhythm: tuple[float, ...] = WORKDAY_RHYTHM
    stages: tuple[StageShape, ...] = DEFAULT_STAGES
    mixes: tuple[TagMix, ...] = (TagMix(("linux",), 1.0),)
    bursts: tuple[Burst, ...] = ()
    short_share: float = 0.25
    nightly: int = 0
    nightly_at_s: float = 2 * HOUR
    nightly_fanout_scale: float = 2.0
    max_duration_s: float = 3 * HOUR
    min_duration_s: float = 10.0
    window: tuple[float, float] | None = None
    first_pipeline_id: int = 1


def generate_trace(spec: TraceSpec, seed: int) -> list[TraceJob]:
    """A trace drawn from `spec` with `random.Random(seed)`: the same seed always gives the same file."""
    rng = random.Random(seed)
    arrivals = sorted(_arrivals(spec, rng))
    jobs: list[TraceJob] = []
    for offset, (created, nightly) in enumerate(arrivals):
        mix = _choose_mix(spec.mixes, rng)
        scale = spec.nightly_fanout_scale if nightly else 1.0
        short = not nightly and rng.random() < spec.short_share
        jobs.extend(_pipeline(spec, mix, spec.first_pipeline_id + offset, created, scale, short, rng))
    return sorted(jobs, key=_order)


def _arrivals(spec: TraceSpec, rng: random.Random) -> list[tuple[float, bool]]:
    """Pipeline creation times: an hourly Poisson process shaped by the rhythm, plus bursts and nightlies."""
    total = sum(spec.rhythm)
    out: list[tuple[float, bool]] = []
    for day in range(spec.days):
        weekend = (spec.start_weekday + day) % 7 >= 5
        factor = spec.weekend_factor if weekend else 1.0
        for hour, weight in enumerate(spec.rhythm):
            start = day * DAY + hour * HOUR
            for _ in range(_poisson(rng, spec.pipelines_per_workday * factor * weight / total)):
                out.append((round(start + rng.random() * HOUR, 1), False))
        for _ in range(spec.nightly):
            out.append((round(day * DAY + spec.nightly_at_s + rng.random() * 300.0, 1), True))
    for burst in spec.bursts:
        for _ in range(burst.pipelines):
            out.append((round(burst.at_s + rng.random() * burst.spread_s, 1), False))
    if spec.window is not None:
        low, high = spec.window
        out = [a for a in out if low <= a[0] < high]
    return out


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw: Knuth's product method for small means, a rounded normal above 30."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit = math.exp(-mean)
    count, product = 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _choose_mix(mixes: Sequence[TagMix], rng: random.Random) -> TagMix:
    return rng.choices(list(mixes), weights=[m.weight for m in mixes], k=1)[0]


def _pipeline(
    spec: TraceSpec,
    mix: TagMix,
    pipeline_id: int,
    created: float,
    fanout_scale: float,
    short: bool,
    rng: random.Random,
) -> list[TraceJob]:
    stages = spec.stages[:2] if short else spec.stages
    jobs: list[TraceJob] = []
    for index, shape in enumerate(stages):
        low, high = shape.fanout
        count = max(1, round(rng.randint(low, high) * mix.fanout_scale * fanout_scale))
        for n in range(count):
            duration = shape.median_s * mix.duration_scale * math.exp(rng.gauss(0.0, shape.sigma))
            duration = min(spec.max_duration_s, max(spec.min_duration_s, duration))
            name = shape.name if count == 1 else f"{shape.name} {n + 1}/{count}"
            jobs.append(TraceJob(pipeline_id, created, index, name, mix.tags, round(duration, 1)))
    return jobs


# -- the traces shipped with the simulator -------------------------------------------------------------

LINUX = ("linux", "docker")

#: name -> (spec, seed). Regenerate with `python -m sim.traces`; a test checks the files match.
SHIPPED: dict[str, tuple[TraceSpec, int]] = {
    "linux_workday": (
        TraceSpec(
            pipelines_per_workday=240,
            mixes=(TagMix(LINUX, 0.7), TagMix((), 0.3, duration_scale=0.7)),
            bursts=(Burst(10.5 * HOUR, 18, 120.0), Burst(15.25 * HOUR, 10, 60.0)),
            nightly=4,
        ),
        1101,
    ),
    "burst": (
        TraceSpec(
            pipelines_per_workday=120,
            mixes=(TagMix(LINUX, 1.0),),
            bursts=(Burst(10 * HOUR, 45, 300.0),),
            stages=(
                StageShape("build", (1, 1), 150.0),
                StageShape("test", (4, 12), 200.0),
                StageShape("package", (1, 1), 60.0, 0.5),
            ),
            window=(9 * HOUR, 12 * HOUR),
        ),
        2202,
    ),
    "multi_pool": (
        TraceSpec(
            pipelines_per_workday=220,
            mixes=(
                TagMix(LINUX, 0.5),
                TagMix(("linux", "large"), 0.3, duration_scale=1.6, fanout_scale=0.7),
                TagMix(("arm64",), 0.2, duration_scale=1.2),
            ),
            nightly=3,
        ),
        3303,
    ),
    "windows": (
        TraceSpec(
            pipelines_per_workday=70,
            mixes=(TagMix(("windows",), 1.0),),
            stages=(
                StageShape("build", (1, 1), 600.0, 0.6),
                StageShape("test", (1, 4), 900.0, 0.7),
                StageShape("package", (1, 1), 300.0, 0.5),
            ),
            nightly=1,
        ),
        4404,
    ),
    "macos": (
        TraceSpec(
            days=3,
            pipelines_per_workday=18,
            mixes=(TagMix(("macos", "xcode"), 1.0),),
            stages=(
                StageShape("build", (1, 1), 900.0, 0.5),
                StageShape("test", (1, 2), 1200.0, 0.6),
            ),
            short_share=0.4,
        ),
        5505,
    ),
}


def shipped_trace(name: str) -> list[TraceJob]:
    """A shipped trace by name (`linux_workday`, `burst`, `multi_pool`, `windows`, `macos`)."""
    return read_trace(TRACES_DIR / f"{name}.csv")


def regenerate(directory: Path = TRACES_DIR) -> list[Path]:
    """Write every shipped trace from its spec and seed; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, (spec, seed) in SHIPPED.items():
        path = directory / f"{name}.csv"
        write_trace(path, generate_trace(spec, seed))
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in regenerate():
        sys.stdout.write(f"{written_path} ({written_path.stat().st_size // 1024} KB)\n")
