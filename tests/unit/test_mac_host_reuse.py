"""After run-single exits on a Mac: restore its root volume on the same host, or terminate as before.

Replacing the root volume keeps the instance on its host, so no host scrub follows (EC2 User Guide, "Replace a
root volume"); it pays only while the host is inside its 24-hour minimum allocation and a job waits.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib.capacity.hosts import AfterRunSingle, Host, HostState, after_run_single
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
