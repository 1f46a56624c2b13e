"""The incident the demo stages: throttled Auto Scaling reads for a while, to show alarms and recovery.

Part of `runner-scaler demo` (toolkit.devtools.demo); imports the standard library and the report's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from toolkit.devtools.demo_report import clock_text

#: How long the staged incident throttles the app's Auto Scaling reads (long enough for 3-of-5 alarms).
DRILL_DURATION = timedelta(minutes=5)


@dataclass(frozen=True)
class Drill:
    """An incident the demo stages: the app's Auto Scaling reads are throttled for a while (simulated s).

    Reconciles fail, the reconcile-error alarms go to ALARM and back to OK through the alarm topic, and the
    scaler must catch up afterwards without breaking an invariant.
    """

    start_s: float
    end_s: float
    operation: str = "DescribeAutoScalingGroups"
    code: str = "Throttling"

    def active(self, elapsed_s: float) -> bool:
        return self.start_s <= elapsed_s < self.end_s

    def describe(self, elapsed_s: float) -> str:
        state = "ACTIVE" if self.active(elapsed_s) else ("over" if elapsed_s >= self.end_s else "to come")
        return (
            f"drill: Auto Scaling {self.operation} → {self.code} from {clock_text(self.start_s)} "
            f"to {clock_text(self.end_s)} ({state})"
        )
