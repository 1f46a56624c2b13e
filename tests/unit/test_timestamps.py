"""The shared time helpers (chalicelib.events.timestamps): one definition each, used by the store, the
pipelines and hosts adapters, the GitLab adapter and the wiring."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from chalicelib.events.timestamps import as_utc, epoch_seconds, format_iso, from_epoch, parse_iso

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)


def test_epoch_seconds_round_trip_whole_seconds() -> None:
    # GIVEN a moment with a fraction of a second; WHEN it goes to epoch seconds and back
    # THEN the whole second survives, in UTC
    assert from_epoch(epoch_seconds(T0 + timedelta(milliseconds=900))) == T0
    assert from_epoch(epoch_seconds(T0)).tzinfo is UTC


def test_iso_written_by_the_store_reads_back_as_the_same_instant() -> None:
    paris = T0.astimezone(timezone(timedelta(hours=1)))
    assert format_iso(paris) == "2026-01-05T10:00:00+00:00"
    assert parse_iso(format_iso(paris)) == T0
    assert format_iso(None) is None


@pytest.mark.parametrize(
    "text",
    ["2026-01-05T10:00:00Z", "2026-01-05T10:00:00+00:00", "2026-01-05T11:00:00+01:00", "2026-01-05T10:00:00"],
)
def test_parse_iso_reads_z_offsets_and_zoneless_text_as_utc(text: str) -> None:
    parsed = parse_iso(text)
    assert parsed == T0 and parsed is not None and parsed.utcoffset() == timedelta(0)


def test_parse_iso_leaves_empty_as_none_and_refuses_nonsense() -> None:
    assert parse_iso("") is None and parse_iso(None) is None
    with pytest.raises(ValueError):
        parse_iso("last tuesday")


def test_as_utc_reads_a_naive_time_as_utc() -> None:
    assert as_utc(datetime(2026, 1, 5, 10, 0, 0)) == T0
    assert as_utc(T0.astimezone(timezone(timedelta(hours=-5)))) == T0
