"""Which machines skip the drain's assignment window: only those whose `run-single` has provably exited
(gitlab-runner `commands/single.go`: `postBuild` counts a build once it has run, `checkFinishedConditions`
stops the loop after `--max-builds`; a job canceled before the runner's first update is not counted)."""

from __future__ import annotations

import pytest

from chalicelib.drain import takes_no_job
from chalicelib.store import MachineRecord
from tests.builders import T0


def machine(jobs: set[int], running: set[int] | None = None) -> MachineRecord:
    return MachineRecord(
        "i-1", "linux", T0, runner_id=7, job_ids=frozenset(jobs), running=frozenset(running or set())
    )


@pytest.mark.parametrize(
    ("record", "max_use_count", "statuses", "exempt"),
    [
        (machine({1}), 1, {1: "success"}, True),  # counted and exited
        (machine({1, 2}), 2, {1: "failed", 2: "success"}, True),
        (machine({1}), 1, {1: "canceled"}, False),  # maybe canceled before it started: not counted
        (machine({1}), 1, {}, False),  # its status is not known (expired): no proof
        (machine({1}), 1, {1: "running"}, False),  # still running in the store's view
        (machine({1}, running={1}), 1, {1: "success"}, False),  # the record still shows it running
        (machine({1}), 2, {1: "success"}, False),  # one build left: run-single still polls
        (machine({1}), 0, {1: "success"}, False),  # max_use_count 0: run-single runs forever
    ],
)
def test_only_a_machine_whose_run_single_has_exited_skips_the_window(
    record: MachineRecord, max_use_count: int, statuses: dict[int, str], exempt: bool
) -> None:
    # GIVEN a machine's record and its jobs' stored statuses; WHEN asked; THEN only proof exempts it
    assert takes_no_job(record, max_use_count, statuses.get) is exempt
