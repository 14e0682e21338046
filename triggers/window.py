"""A policy's change window: the days and hours automatic triggers may act, in a time zone.

``{"days": ["mon", "tue"], "start": "22:00", "end": "02:00", "timezone": "Europe/Lisbon"}``
opens on each listed day at ``start`` (local time) and closes at ``end``; an ``end`` at or
before ``start`` closes on the next day, so a window may span midnight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class InvalidWindow(ValueError):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class ChangeWindow:
    days: frozenset[int]  # 0 = Monday, as datetime.weekday()
    start: time
    end: time
    zone: ZoneInfo

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ChangeWindow:
        days = raw.get("days")
        if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
            raise InvalidWindow("days", f"a non-empty list of {', '.join(DAYS)}")
        name = raw.get("timezone", "UTC")
        try:
            zone = ZoneInfo(str(name))
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidWindow("timezone", f"{name!r} is not an IANA time zone") from None
        return cls(
            frozenset(DAYS.index(d) for d in days),
            _clock("start", raw.get("start")),
            _clock("end", raw.get("end")),
            zone,
        )

    def _span(self, day: datetime) -> tuple[datetime, datetime]:
        """The window opening on ``day`` (a local date), as aware datetimes."""
        opens = datetime.combine(day.date(), self.start, self.zone)
        closes_on = day.date() + timedelta(days=0 if self.end > self.start else 1)
        return opens, datetime.combine(closes_on, self.end, self.zone)

    def opens_in(self, now: datetime) -> timedelta:
        """Zero while the window is open, else how long until it next opens."""
        local = now.astimezone(self.zone)
        for offset in range(-1, 8):
            day = local + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opens, closes = self._span(day)
            if opens <= now < closes:
                return timedelta(0)
            if opens > now:
                return opens - now
        raise AssertionError("a window with at least one day opens within a week")


def opens_in(raw: Mapping[str, Any] | None, now: datetime | None = None) -> timedelta:
    """For a policy's stored window (None: always open)."""
    if raw is None:
        return timedelta(0)
    return ChangeWindow.parse(raw).opens_in(now or datetime.now(UTC))


def _clock(field: str, value: object) -> time:
    try:
        hours, minutes = str(value).split(":")
        if len(hours) != 2 or len(minutes) != 2:
            raise ValueError
        return time(int(hours), int(minutes))
    except ValueError:
        raise InvalidWindow(field, "a time of day as HH:MM (00:00 to 23:59)") from None
