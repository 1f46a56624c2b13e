"""Timestamps as GitLab and AWS write them, parsed into aware UTC datetimes; and the small time helpers every
module shares (the wall clock, epoch seconds, ISO 8601 as the store and tags keep it): one definition each.

Imports the standard library and pydantic only. `utc_now` is the one read of the wall clock in chalicelib; it
is the default `clock` the wiring hands to use cases, which take `now` as a parameter.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

# GitLab writes "2021-02-23 02:41:37 UTC" (pipeline hooks, older job hooks), "2021-02-23T02:41:37.886Z"
# (job hooks since the ISO fields arrived), "2016-08-12T17:23:21+02:00" (commit timestamps) and
# "2021-04-28 21:50:00 +0200" (deployment hooks); CloudWatch alarms write "2015-06-03T17:43:27.123+0000".
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"\s*(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)",
    re.IGNORECASE,
)


def parse_timestamp(value: Any) -> datetime | None:
    """One timestamp in any of the spellings above, as an aware datetime in UTC; None stays None.

    A timestamp without a zone is refused rather than guessed: job ages drive stale-job and idle-time
    decisions, and a wrong guess of hours would be worse than a dropped event.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamp has no timezone")
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("timestamp is out of range") from None
    if not isinstance(value, str):
        raise ValueError("timestamp must be a string")
    match = _TIMESTAMP.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value[:40]!r} is not a timestamp with a timezone")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    micros = int((match.group(7) or "0")[:6].ljust(6, "0"))
    try:
        local = datetime(year, month, day, hour, minute, second, micros, tzinfo=_zone(match.group(8)))
        return local.astimezone(UTC)
    except (ValueError, OverflowError) as err:
        raise ValueError(f"{value[:40]!r} is not a valid date: {err}") from None


def _zone(text: str) -> timezone:
    if text.upper() in {"Z", "UTC", "GMT"}:
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or "0")
    if hours > 23 or minutes > 59:
        raise ValueError(f"{text!r} is not a UTC offset")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def format_gitlab_iso(moment: datetime) -> str:
    """GitLab's job-hook spelling, milliseconds and Z: "2021-02-23T02:41:37.886Z"."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def format_gitlab_iso_seconds(moment: datetime) -> str:
    """GitLab's `*_iso` twin spelling, whole seconds and Z: "2021-02-23T02:41:37Z"."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def format_gitlab_legacy(moment: datetime) -> str:
    """GitLab's pipeline-hook spelling, whole seconds: "2016-08-12 15:23:28 UTC"."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds") + " UTC"


#: An aware UTC datetime read from any documented GitLab or AWS spelling; written back as ISO 8601.
Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_timestamp),
    PlainSerializer(lambda moment: moment.isoformat(), return_type=str),
]
#: The same, where the sender may write null (a job that has not started has no started_at).
OptionalTimestamp = Annotated[
    datetime | None,
    BeforeValidator(parse_timestamp),
    PlainSerializer(lambda moment: moment.isoformat() if moment else None, return_type=str | None),
]


def utc_now() -> datetime:
    """The wall clock as an aware UTC datetime (the wiring's default clock; domain code takes `now`)."""
    return datetime.now(UTC)


def epoch_seconds(moment: datetime) -> int:
    """Whole Unix seconds: DynamoDB TTL attributes and number-typed times are stored this way."""
    return int(moment.timestamp())


def from_epoch(seconds: float) -> datetime:
    """Unix seconds back to an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is read as UTC (botocore returns some times without a zone)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def format_iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with its offset ("2026-01-05T10:00:00+00:00"), as the store keeps times."""
    return moment.astimezone(UTC).isoformat() if moment else None


def parse_iso(text: str | None) -> datetime | None:
    """ISO 8601 ("...Z" or "...+00:00") as an aware UTC datetime; zoneless is read as UTC; empty is None.

    Raises ValueError on text that is not ISO 8601 (callers decide whether that is an error or "unset").
    """
    if not text:
        return None
    return as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
