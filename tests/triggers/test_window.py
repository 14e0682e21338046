"""A policy's change window: open inside it, how long until it opens outside it, across
midnight and in a time zone with daylight saving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from triggers.window import ChangeWindow, InvalidWindow, opens_in

LISBON_NIGHTS = {
    "days": ["mon", "fri"],
    "start": "22:00",
    "end": "02:00",
    "timezone": "Europe/Lisbon",
}


def _utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "wait"),
    [
        # Monday 2026-11-30, Lisbon is on UTC in winter.
        (_utc(2026, 11, 30, 22, 0), timedelta(0)),  # opens
        (_utc(2026, 12, 1, 1, 59), timedelta(0)),  # Monday's window, past midnight
        (_utc(2026, 12, 1, 2, 0), timedelta(days=3, hours=20)),  # closed until Friday 22:00
        (_utc(2026, 11, 30, 21, 0), timedelta(hours=1)),
        (_utc(2026, 11, 29, 23, 0), timedelta(hours=23)),  # Sunday night is not in it
    ],
)
def test_a_window_opens_on_its_days_and_spans_midnight(now: datetime, wait: timedelta) -> None:
    assert ChangeWindow.parse(LISBON_NIGHTS).opens_in(now) == wait


def test_the_window_follows_local_time_through_daylight_saving() -> None:
    # Monday 2026-06-01: Lisbon is UTC+1, so 22:00 local is 21:00 UTC.
    assert opens_in(LISBON_NIGHTS, _utc(2026, 6, 1, 21, 0)) == timedelta(0)
    assert opens_in(LISBON_NIGHTS, _utc(2026, 6, 1, 20, 30)) == timedelta(minutes=30)


def test_no_window_is_always_open() -> None:
    assert opens_in(None) == timedelta(0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"days": []}, "days"),
        ({"days": ["mon", "someday"]}, "days"),
        ({"start": "24:00"}, "start"),
        ({"end": "9:00"}, "end"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
    ],
)
def test_a_bad_window_names_its_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidWindow) as refused:
        ChangeWindow.parse({**LISBON_NIGHTS, **change})
    assert refused.value.field == field
