"""The clock: a heap of timed callbacks run in (time, insertion) order. A dozen lines of heapq, not simpy:
callbacks are instantaneous, ties break by insertion order (deterministic runs), and nothing is installed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

Callback = Callable[[], None]


class EventLoop:
    """Simulated seconds since the trace's start; `now` only moves forward."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callback]] = []
        self._seq = itertools.count()

    def at(self, when: float, callback: Callback) -> None:
        """Run `callback` at `when` (never in the past: a late request runs now, after what is queued)."""
        heapq.heappush(self._heap, (max(when, self.now), next(self._seq), callback))

    def after(self, delay: float, callback: Callback) -> None:
        self.at(self.now + max(0.0, delay), callback)

    def every(
        self, period: float, callback: Callback, *, start: float, keep_going: Callable[[], bool]
    ) -> None:
        """Run `callback` at `start`, then every `period` seconds while `keep_going()` holds."""

        def fire() -> None:
            callback()
            if keep_going():
                self.after(period, fire)

        self.at(start, fire)

    def run(self, until: float) -> None:
        """Process events in order until none is left or the next one is later than `until`."""
        while self._heap and self._heap[0][0] <= until:
            when, _, callback = heapq.heappop(self._heap)
            self.now = when
            callback()

    @property
    def pending(self) -> int:
        return len(self._heap)
