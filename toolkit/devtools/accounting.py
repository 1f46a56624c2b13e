"""How a run is scored, one rule for the simulator (sim/world.py) and the demo (demo_report.py): job waits,
their percentiles, machine time. Pure: data in seconds on any one clock in, figures out; imports the standard
library only, so sim/ and the demo can both import it without pulling in each other.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """The `pct` (0-100) percentile, linearly interpolated between closest ranks (numpy's default method);
    0.0 for no values. The simulator's bench figures were computed this way. Sorted input is fine too."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def job_wait_s(waits_s: Iterable[float], pending_since_s: float | None, end_s: float) -> float:
    """Seconds one job waited for a runner: every attempt's wait added up (a retry after a killed machine
    waits again), plus, when its latest attempt is still pending at `end_s`, its wait so far (censored).

    `waits_s`: the pending -> running wait of each attempt a runner took (a running total is fine).
    `pending_since_s`: when the latest attempt became pending if it is pending now, else None. A job that
    never became pending (a later stage that never started) waited 0 s and still counts as a job.
    """
    censored = max(0.0, end_s - pending_since_s) if pending_since_s is not None else 0.0
    return sum(waits_s) + censored


def machine_seconds(launched_s: float, stopped_s: float | None, end_s: float) -> float:
    """Seconds a machine is billed: from launch to termination, or to `end_s` if it is still alive."""
    return max(0.0, (stopped_s if stopped_s is not None else end_s) - launched_s)
