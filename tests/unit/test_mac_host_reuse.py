"""After run-single exits on a Mac: restore its root volume on the same host, or terminate as before.

Replacing the root volume keeps the instance on its host, so no host scrub follows (EC2 User Guide, "Replace a
root volume"); it pays only while the host is inside its 24-hour minimum allocation and a job waits.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib.capacity import Machine, MachineState
from chalicelib.capacity.hosts import (
    AfterRunSingle,
    Host,
    HostState,
    ReusePlan,
    after_run_single,
    plan_reuse,
)
from chalicelib.drain import takes_no_job
from chalicelib.store import MachineRecord
from tests.builders import T0
from tests.functional.test_hosts_contract import MAC, WINDOWS

REPLACE, TERMINATE = AfterRunSingle.REPLACE_ROOT_VOLUME, AfterRunSingle.TERMINATE


def mac_host(allocated_hours_ago: float) -> Host:
    return Host(
        "h-0123456789abcdef0",
        HostState.AVAILABLE,
        allocated_at=T0 - timedelta(hours=allocated_hours_ago),
        instance_ids=("i-0123456789abcdef0",),
    )


@pytest.mark.parametrize(
    ("scenario", "allocated_hours_ago", "demand", "expected"),
    [
        ("paid window, a job waits", 2, 1, REPLACE),
        ("paid window, a minute left, jobs wait", 24 - 1 / 60, 3, REPLACE),
        ("paid window, no demand", 2, 0, TERMINATE),
        ("minimum allocation just ended", 24, 1, TERMINATE),
        ("past the minimum allocation", 30, 5, TERMINATE),
    ],
)
def test_a_mac_reuses_its_host_only_inside_the_paid_window_with_demand(
    scenario: str, allocated_hours_ago: float, demand: int, expected: AfterRunSingle
) -> None:
    # GIVEN a Mac host allocated `allocated_hours_ago`, WHEN run-single exits with `demand` jobs waiting
    decision = after_run_single(MAC, mac_host(allocated_hours_ago), demand, now=T0)
    # THEN the root volume is replaced only inside the 24 h minimum allocation and with demand
    assert decision is expected, scenario


def test_a_windows_host_pool_always_terminates() -> None:
    # GIVEN a Windows BYOL host pool (several machines per host, no scrub), THEN nothing is reused
    assert after_run_single(WINDOWS, mac_host(2), 4, now=T0) is TERMINATE


def used_up(instance_id: str, finished_minutes_ago: float) -> Machine:
    """A Mac whose one job ended `finished_minutes_ago`: run-single has exited, its boot script waits."""
    return Machine(
        instance_id,
        MachineState.IDLE,
        launched_at=T0 - timedelta(hours=1),
        jobs_started=1,
        last_busy_at=T0 - timedelta(minutes=finished_minutes_ago),
    )


def hosts_of(*instance_ids: str, allocated_hours_ago: float = 2) -> list[Host]:
    return [
        Host(f"h-{i}", HostState.AVAILABLE, T0 - timedelta(hours=allocated_hours_ago), instance_ids=(i,))
        for i in instance_ids
    ]


def test_only_as_many_macs_are_reused_as_jobs_need_and_the_others_wait() -> None:
    # GIVEN three used Macs, freed 1, 3 and 5 minutes ago, and two slots wanted
    macs = [used_up("i-a", 5), used_up("i-b", 1), used_up("i-c", 3)]
    plan = plan_reuse(MAC, macs, hosts_of("i-a", "i-b", "i-c"), need_slots=2, now=T0)
    # THEN the two freed last (the most wait left) are reused, the third waits for a job
    assert plan == ReusePlan(reuse=("i-b", "i-c"), hold=("i-a",))


@pytest.mark.parametrize(
    ("scenario", "finished_minutes_ago", "allocated_hours_ago"),
    [
        ("its boot script is about to shut it down", 8, 2),  # reuse_wait 10 min, margin 2 min
        ("its host's paid window is over", 1, 25),
    ],
)
def test_a_mac_is_neither_reused_nor_kept_when(
    scenario: str, finished_minutes_ago: float, allocated_hours_ago: float
) -> None:
    mac = used_up("i-a", finished_minutes_ago)
    plan = plan_reuse(MAC, [mac], hosts_of("i-a", allocated_hours_ago=allocated_hours_ago), 1, T0)
    assert plan == ReusePlan(), scenario


def test_a_mac_whose_host_is_not_in_view_is_not_reused() -> None:
    assert plan_reuse(MAC, [used_up("i-a", 1)], [], need_slots=1, now=T0) == ReusePlan()


def test_reuse_turned_off_reuses_nothing() -> None:
    hosts = MAC.hosts.model_copy(update={"reuse_root_volume": False})  # type: ignore[union-attr]
    off = MAC.model_copy(update={"hosts": hosts})
    assert plan_reuse(off, [used_up("i-a", 1)], hosts_of("i-a"), need_slots=1, now=T0) == ReusePlan()


def test_a_reused_mac_that_ran_no_job_on_its_new_volume_still_waits_out_the_drain_window() -> None:
    # GIVEN a Mac reused after its one job: that job is over, but its new runner polls GitLab for work
    record = MachineRecord("i-a", "macos", T0, runner_id=8, job_ids=frozenset({1}), reused_jobs=1)
    # THEN its run-single has not exited: a drain waits out GitLab's assignment window before it re-checks
    assert not takes_no_job(record, max_use_count=1, status_of=lambda _job: "success")
    # AND once it ran its own job, it has
    done = MachineRecord("i-a", "macos", T0, runner_id=8, job_ids=frozenset({1, 2}), reused_jobs=1)
    assert takes_no_job(done, max_use_count=1, status_of=lambda _job: "success")
