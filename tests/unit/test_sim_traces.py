"""Traces: the CSV format round-trips, bad files are refused with the line to fix, and the shipped traces are
exactly what the generator makes from their seeds (small, with a workday rhythm)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.traces import (
    HOUR,
    SHIPPED,
    TRACES_DIR,
    TraceError,
    TraceJob,
    TraceSpec,
    format_trace,
    generate_trace,
    parse_trace,
    read_trace,
    write_trace,
)

HEADER = "pipeline_id,created_s,stage,name,tags,duration_s\n"


def test_a_trace_round_trips_through_its_csv(tmp_path: Path) -> None:
    jobs = [
        TraceJob(1, 0.5, 0, "build", ("linux", "docker"), 120.0),
        TraceJob(1, 0.5, 1, "test 1/2", ("linux", "docker"), 33.3),
        TraceJob(2, 60.0, 0, "lint", (), 5.0),
    ]
    path = tmp_path / "t.csv"
    write_trace(path, jobs)
    assert path.read_text().startswith(HEADER)
    assert read_trace(path) == jobs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pipeline,created\n", "line 1: the header must be exactly"),
        (HEADER + "1,0,0,build,linux\n", "line 2: 5 fields, expected 6"),
        (HEADER + "1,soon,0,build,linux,10\n", "line 2: pipeline_id and stage must be integers"),
        (HEADER + "1,0,0,build,linux,-3\n", "line 2: created_s, stage and duration_s cannot be negative"),
        (HEADER + "1,0,0,a,linux,1\n1,5,1,b,linux,1\n", "pipeline 1 has jobs created at 0.0 and 5.0"),
    ],
)
def test_a_bad_trace_names_the_file_the_line_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message) as raised:
        parse_trace(text, "trace.csv")
    assert str(raised.value).startswith("trace.csv")


def test_the_same_seed_generates_the_same_trace_and_another_seed_another() -> None:
    spec = TraceSpec(pipelines_per_workday=40)
    assert generate_trace(spec, 1) == generate_trace(spec, 1)
    assert generate_trace(spec, 1) != generate_trace(spec, 2)


def test_generated_traces_follow_the_workday_rhythm_and_quiet_weekends() -> None:
    jobs = generate_trace(TraceSpec(days=7, pipelines_per_workday=200), 3)
    created = {j.pipeline_id: j.created_s for j in jobs}.values()
    office = sum(1 for t in created if t < 5 * 24 * HOUR and 9 * HOUR <= t % (24 * HOUR) < 17 * HOUR)
    night = sum(1 for t in created if t < 5 * 24 * HOUR and t % (24 * HOUR) < 6 * HOUR)
    weekend = sum(1 for t in created if t >= 5 * 24 * HOUR)
    assert office > 10 * night
    assert weekend < 0.2 * sum(1 for t in created if t < 5 * 24 * HOUR)


def test_pipelines_fan_out_with_long_tailed_durations() -> None:
    jobs = generate_trace(TraceSpec(pipelines_per_workday=300), 4)
    widths = [
        sum(1 for j in jobs if j.pipeline_id == p and j.stage == 1) for p in {j.pipeline_id for j in jobs}
    ]
    durations = sorted(j.duration_s for j in jobs if j.stage == 1)
    assert max(widths) >= 8
    assert durations[int(0.99 * len(durations))] > 4 * durations[len(durations) // 2]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_traces_are_regenerated_exactly_from_their_seed_and_stay_small(name: str) -> None:
    spec, seed = SHIPPED[name]
    path = TRACES_DIR / f"{name}.csv"
    assert path.read_text(encoding="utf-8") == format_trace(generate_trace(spec, seed))
    assert path.stat().st_size < 200 * 1024
