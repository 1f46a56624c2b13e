"""Scale-up latency (pure): which waiting job a new machine in service is charged with, and for how long."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.lifecycle import pending_since, scale_up_seconds
from chalicelib.store import JobRecord

NOW = datetime(2026, 11, 23, 12, 5, tzinfo=UTC)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("pending", "ahead", "expected"),
    [
        ([ago(100)], 0, 100.0),  # the one waiting job
        ([ago(30), ago(100), ago(60)], 0, 100.0),  # oldest first, whatever the read order
        ([ago(30), ago(100), ago(60)], 1, 60.0),  # one free slot in service takes the oldest
        ([ago(30), ago(100), ago(60)], 3, None),  # every job already has a slot
        ([], 0, None),  # nothing waited: an idle_count or prewarm machine
        ([NOW + timedelta(seconds=2)], 0, 0.0),  # clock skew never makes a negative wait
    ],
)
def test_the_machine_takes_the_oldest_job_no_free_slot_covers(
    pending: list[datetime], ahead: int, expected: float | None
) -> None:
    assert scale_up_seconds(pending, ahead, NOW) == expected


@given(
    st.lists(st.integers(min_value=0, max_value=86_400), max_size=30),
    st.integers(min_value=0, max_value=40),
)
def test_more_free_slots_ahead_never_charge_a_longer_wait(waits: list[int], ahead: int) -> None:
    pending = [ago(w) for w in waits]
    this = scale_up_seconds(pending, ahead, NOW)
    later = scale_up_seconds(pending, ahead + 1, NOW)
    assert (this is None) == (ahead >= len(waits))
    if this is not None:
        assert 0 <= this <= max(waits)
        assert later is None or later <= this


def test_pending_since_is_when_the_scaler_saw_the_job_go_pending() -> None:
    created = ago(900)  # a later stage: created with its pipeline, pending only when the stage before ended
    job = JobRecord("gitlab.example.com", 1, "pending", created_at=created, updated_at=ago(40))
    assert pending_since(job) == ago(40)
    assert pending_since(JobRecord("gitlab.example.com", 2, "pending", created_at=created)) == created
    assert pending_since(JobRecord("gitlab.example.com", 3, "running", updated_at=ago(5))) is None
