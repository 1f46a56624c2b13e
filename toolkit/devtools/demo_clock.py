"""The demo's accelerated clock: simulated UTC time that moves with the wall clock times a speed.

Part of `runner-scaler demo` (toolkit.devtools.demo); imports the standard library only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta


class AcceleratedClock:
    """Simulated UTC time; `advance()` adds the wall time since the last step × `speed`, at most `max_step`.

    Time stands still between two advances, so all the platform does in one step happens at one instant (as
    webhooks delivered within a second do on GitLab). The cap keeps a busy host from skipping events: the demo
    then runs slower than asked instead of jumping ahead; `effective_speed` tells by how much.
    """

    def __init__(
        self,
        start: datetime,
        speed: float,
        *,
        max_step: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be above 0 (simulated seconds per wall second), not {speed}")
        self.origin = start
        self.speed = speed
        self.max_step = max_step
        self._monotonic = monotonic
        self._elapsed = 0.0
        self._wall_start: float | None = None
        self._wall_last = 0.0

    def start(self) -> None:
        self._wall_start = self._wall_last = self._monotonic()

    def advance(self) -> datetime:
        """Move simulated time forward by the wall time since the last step (bounded); the new now."""
        wall = self._monotonic()
        if self._wall_start is None:
            self._wall_start = wall
        self._elapsed += min(self.max_step, (wall - self._wall_last) * self.speed)
        self._wall_last = wall
        return self.now()

    def elapsed(self) -> float:
        """Simulated seconds since `start()`."""
        return self._elapsed

    def now(self) -> datetime:
        return self.origin + timedelta(seconds=self._elapsed)

    @property
    def effective_speed(self) -> float:
        """Simulated seconds per wall second so far (below `speed` when the host could not keep up)."""
        if self._wall_start is None or self._wall_last <= self._wall_start:
            return self.speed
        return self._elapsed / (self._wall_last - self._wall_start)
