"""Time in one place, so tests and the demo can pin 'today'."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo


def utcnow() -> datetime:
    return datetime.now(UTC)


def today() -> date:
    return utcnow().date()


def district_today(timezone: str) -> date:
    """Today where the district is: a nightly run at 01:00 UTC is still yesterday in Chicago."""
    return utcnow().astimezone(ZoneInfo(timezone)).date()
