"""The never-kill benchmark on a handful of seeds: its rows have the figures issue #14 asks for, the
protocol holds where it is on, and the baseline (re-check switched off) is what every ratio divides by."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.bench_never_kill import BASELINE, VARIANTS, Run, invariant_holds, main, run_all, summarise

SEEDS = range(5)


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, object]]:
    return summarise(run_all(SEEDS, workers=1))


def test_each_variant_reports_runs_kills_and_jobs_completed(rows: dict[str, dict[str, object]]) -> None:
    # GIVEN 5 seeded bursty worlds run under every variant
    # THEN each variant has one row with the same keys, and every run is counted once
    assert list(rows) == [v.name for v in VARIANTS]
    assert rows[BASELINE]["busy_killed_ratio"] == 1.0
    for row in rows.values():
        assert set(row) == {
            "protocol",
            "runs",
            "runs_with_kills",
            "busy_killed",
            "jobs",
            "jobs_completed",
            "first_seeds_with_kills",
            "busy_killed_ratio",
        }
        assert row["runs"] == len(SEEDS)
        assert row["jobs"] == rows[BASELINE]["jobs"]  # the same trace per seed in every variant


def test_with_the_protocol_on_no_busy_machine_is_killed_and_every_job_completes(
    rows: dict[str, dict[str, object]],
) -> None:
    for row in rows.values():
        if row["protocol"]:
            assert row["busy_killed"] == 0 and row["runs_with_kills"] == 0
            assert row["first_seeds_with_kills"] == []
            assert row["busy_killed_ratio"] == 0.0
            assert row["jobs_completed"] == row["jobs"]


def test_without_the_recheck_the_same_seeds_kill_so_the_check_can_fail(
    rows: dict[str, dict[str, object]],
) -> None:
    off = rows[BASELINE]
    assert off["protocol"] is False
    assert isinstance(off["busy_killed"], int) and off["busy_killed"] > 0
    assert invariant_holds(rows)


def test_one_kill_with_the_protocol_on_breaks_the_invariant() -> None:
    # GIVEN a protocol-on run that killed a busy machine
    runs = [Run(v.name, 0, 0, 10, 10) for v in VARIANTS] + [Run(VARIANTS[0].name, 1, 3, 10, 10)]
    runs.append(Run(VARIANTS[1].name, 7, 1, 10, 9))
    rows = summarise(runs)
    # THEN it names the seed and the invariant is broken
    assert rows[VARIANTS[1].name]["first_seeds_with_kills"] == [7]
    assert not invariant_holds(rows)


def test_main_writes_the_results_file(tmp_path: Path) -> None:
    assert main(["--runs", "2", "--workers", "1", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "never_kill.json").read_text(encoding="utf-8"))
    assert document["invariant_holds"] is True
    assert document["variants"]["protocol on"]["runs"] == 2
