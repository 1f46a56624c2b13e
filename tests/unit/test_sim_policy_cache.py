"""The simulator's `CachedPool` answers `active_policy` as `Pool` does, whether it remembers
answers per minute or (periods whose minute field is `*`) per local hour of each policy's zone: across a
daylight-saving change, in zones with half- and quarter-hour offsets, and with a minute-level period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib.config import Pool
from sim.model import CachedPool
from tests.builders import pool

#: 2026-03-29: Europe's clocks go forward at 01:00 UTC; the two days around it are walked every 7 minutes
#: (every minute of an hour comes up, and each zone's hour changes are crossed at every offset).
START = datetime(2026, 3, 28, 0, 0, 17, tzinfo=UTC)
STEPS = range(0, 2 * 24 * 60, 7)

HOURLY = [
    {"idle_count": 0, "idle_time": "5m"},
    {"periods": ["* 8-18 * * mon-fri"], "timezone": "Europe/Paris", "idle_count": 2, "idle_time": "20m"},
    {"periods": ["* 9 * * *", "* 22-23 * * sat"], "timezone": "Asia/Kolkata", "idle_count": 3},
    {"periods": ["* 0-5 1-10 * *"], "timezone": "Asia/Kathmandu", "idle_count": 4},
]
BY_MINUTE = [*HOURLY, {"periods": ["*/20 12 * * *"], "timezone": "America/New_York", "idle_count": 5}]


@pytest.mark.parametrize("policies", [HOURLY, BY_MINUTE], ids=["hourly periods", "a minute-level period"])
def test_cached_pool_picks_the_policy_pool_picks_every_minute(policies: list[dict[str, Any]]) -> None:
    # GIVEN a pool with policies in several zones, as the product reads it and as the simulator caches it
    plain: Pool = pool(policy=policies)
    cached = CachedPool.model_validate(plain.model_dump())
    # WHEN both are asked over two days (at odd seconds, and again later in the same minute)
    times = [START + timedelta(minutes=m, seconds=s) for m in STEPS for s in (0, 41)]
    # THEN each answer is the same policy
    assert [cached.active_policy(t) for t in times] == [plain.active_policy(t) for t in times]
