"""Tests of the exchange clock: session bars, completed-bar lookup, boundaries and staleness."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.base import BAR_NS
from providers.calendar import (
    BAR,
    BARS_PER_SESSION,
    NY,
    is_stale,
    is_trading_day,
    last_completed_bar_position,
    last_completed_bar_start,
    next_bar_boundary,
    next_trading_day,
    previous_trading_day,
    session_bar_starts,
    session_open,
    to_epoch_ns,
)


def ny(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=NY)


def utc_of_ns(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


def reference_last_completed(moment: datetime) -> datetime:
    """Obviously correct: the newest of all bar starts of the past week that has completed."""
    today = moment.astimezone(NY).date()
    starts = np.concatenate([session_bar_starts(today - timedelta(days=back)) for back in range(8)])
    completed = starts[starts + BAR_NS <= to_epoch_ns(moment)]
    return utc_of_ns(int(completed.max()))


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2024, 3, 8), True),  # Friday
        (date(2024, 3, 9), False),  # Saturday
        (date(2024, 3, 10), False),  # Sunday
        (date(2024, 3, 11), True),  # Monday
        (date(2024, 12, 25), True),  # a holiday: not modelled, documented
    ],
)
def test_is_trading_day(day: date, expected: bool) -> None:
    assert is_trading_day(day) is expected


@pytest.mark.parametrize(
    ("day", "previous", "following"),
    [
        (date(2024, 3, 11), date(2024, 3, 8), date(2024, 3, 12)),  # Monday
        (date(2024, 3, 8), date(2024, 3, 7), date(2024, 3, 11)),  # Friday
        (date(2024, 3, 9), date(2024, 3, 8), date(2024, 3, 11)),  # Saturday
        (date(2024, 3, 10), date(2024, 3, 8), date(2024, 3, 11)),  # Sunday
    ],
)
def test_previous_and_next_trading_day(day: date, previous: date, following: date) -> None:
    assert previous_trading_day(day) == previous
    assert next_trading_day(day) == following


@pytest.mark.parametrize(
    ("day", "open_utc_hour"),
    [
        (date(2024, 1, 2), 14),  # EST
        (date(2024, 3, 8), 14),  # Friday before spring-forward
        (date(2024, 3, 11), 13),  # Monday after: EDT
        (date(2024, 7, 1), 13),  # EDT
        (date(2024, 11, 1), 13),  # Friday before fall-back
        (date(2024, 11, 4), 14),  # Monday after: EST
    ],
)
def test_session_bar_starts_are_78_bars_from_0930_new_york(day: date, open_utc_hour: int) -> None:
    starts = session_bar_starts(day)
    assert starts.dtype == np.int64
    assert starts.shape == (BARS_PER_SESSION,)
    first = utc_of_ns(int(starts[0]))
    assert first == datetime(day.year, day.month, day.day, open_utc_hour, 30, tzinfo=UTC)
    assert first.astimezone(NY).time().isoformat() == "09:30:00"
    assert utc_of_ns(int(starts[-1])).astimezone(NY).time().isoformat() == "15:55:00"
    assert np.all(np.diff(starts) == BAR_NS)
    assert session_open(day) == first


def test_session_bar_starts_is_empty_on_weekends() -> None:
    starts = session_bar_starts(date(2024, 3, 9))
    assert starts.dtype == np.int64
    assert starts.shape == (0,)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (ny(2024, 3, 12, 0, 1), ny(2024, 3, 11, 15, 55)),  # after midnight
        (ny(2024, 3, 12, 9, 0), ny(2024, 3, 11, 15, 55)),  # pre-open
        (ny(2024, 3, 12, 9, 30), ny(2024, 3, 11, 15, 55)),  # open: 09:30 bar not complete
        (ny(2024, 3, 12, 9, 34, 59), ny(2024, 3, 11, 15, 55)),
        (ny(2024, 3, 12, 9, 35), ny(2024, 3, 12, 9, 30)),  # first bar completes
        (ny(2024, 3, 12, 12, 2), ny(2024, 3, 12, 11, 55)),  # midday, inside a bar
        (ny(2024, 3, 12, 12, 5), ny(2024, 3, 12, 12, 0)),  # midday, on a boundary
        (ny(2024, 3, 12, 15, 59), ny(2024, 3, 12, 15, 50)),
        (ny(2024, 3, 12, 16, 0), ny(2024, 3, 12, 15, 55)),  # close: the last bar completes
        (ny(2024, 3, 12, 20, 0), ny(2024, 3, 12, 15, 55)),  # evening
        (ny(2024, 3, 9, 12, 0), ny(2024, 3, 8, 15, 55)),  # Saturday
        (ny(2024, 3, 10, 12, 0), ny(2024, 3, 8, 15, 55)),  # Sunday, spring-forward day
        (ny(2024, 3, 11, 3, 0), ny(2024, 3, 8, 15, 55)),  # Monday night after the switch
        (ny(2024, 3, 11, 9, 40), ny(2024, 3, 11, 9, 35)),  # first EDT session
        (ny(2024, 11, 3, 1, 30), ny(2024, 11, 1, 15, 55)),  # fall-back, ambiguous hour
        (ny(2024, 11, 4, 10, 0), ny(2024, 11, 4, 9, 55)),  # first EST session
        (datetime(2024, 3, 11, 13, 35, tzinfo=UTC), ny(2024, 3, 11, 9, 30)),  # UTC input, EDT
        (datetime(2024, 1, 3, 14, 35, tzinfo=UTC), ny(2024, 1, 3, 9, 30)),  # UTC input, EST
        (datetime(2024, 1, 3, 13, 35, tzinfo=UTC), ny(2024, 1, 2, 15, 55)),  # 08:35 EST
        (datetime(2024, 1, 3, 2, 0, tzinfo=UTC), ny(2024, 1, 2, 15, 55)),  # UTC date ahead of NY
    ],
)
def test_last_completed_bar_start(moment: datetime, expected: datetime) -> None:
    result = last_completed_bar_start(moment)
    assert result == expected
    assert result.tzinfo is UTC
    assert result + BAR <= moment


def test_last_completed_bar_position_gives_session_and_index() -> None:
    assert last_completed_bar_position(ny(2024, 3, 12, 9, 35)) == (date(2024, 3, 12), 0)
    assert last_completed_bar_position(ny(2024, 3, 12, 16, 0)) == (date(2024, 3, 12), 77)
    assert last_completed_bar_position(ny(2024, 3, 9, 12, 0)) == (date(2024, 3, 8), 77)


def test_naive_times_are_rejected() -> None:
    naive = datetime(2024, 3, 12, 10, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        last_completed_bar_start(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_bar_boundary(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        is_stale(naive, ny(2024, 3, 12, 10, 0), 60.0)


aware_times = st.datetimes(
    min_value=datetime(2023, 1, 1),
    max_value=datetime(2026, 1, 1),
    timezones=st.sampled_from([UTC, NY]),
)


@settings(max_examples=300, deadline=None)
@given(moment=aware_times)
def test_last_completed_bar_start_matches_reference(moment: datetime) -> None:
    assert last_completed_bar_start(moment) == reference_last_completed(moment)


@settings(max_examples=300, deadline=None)
@given(moment=aware_times)
def test_next_bar_boundary_is_when_the_newest_bar_changes(moment: datetime) -> None:
    boundary = next_bar_boundary(moment)
    assert boundary > moment
    assert boundary.tzinfo is UTC
    # Nothing changes before the boundary, and at it the bar ending there becomes the newest.
    assert last_completed_bar_start(boundary - timedelta(microseconds=1)) == (
        last_completed_bar_start(moment)
    )
    assert last_completed_bar_start(boundary) == boundary - BAR


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (ny(2024, 3, 12, 9, 0), ny(2024, 3, 12, 9, 35)),
        (ny(2024, 3, 12, 9, 35), ny(2024, 3, 12, 9, 40)),
        (ny(2024, 3, 12, 9, 37), ny(2024, 3, 12, 9, 40)),
        (ny(2024, 3, 12, 15, 56), ny(2024, 3, 12, 16, 0)),
        (ny(2024, 3, 12, 16, 0), ny(2024, 3, 13, 9, 35)),
        (ny(2024, 3, 8, 16, 0), ny(2024, 3, 11, 9, 35)),  # over the spring-forward weekend
        (ny(2024, 3, 9, 12, 0), ny(2024, 3, 11, 9, 35)),
    ],
)
def test_next_bar_boundary(moment: datetime, expected: datetime) -> None:
    assert next_bar_boundary(moment) == expected


def test_a_feed_holding_fridays_last_bar_is_not_stale_over_the_weekend() -> None:
    friday_last = ny(2024, 3, 8, 15, 55)
    assert not is_stale(friday_last, ny(2024, 3, 8, 20, 0), 600.0)
    assert not is_stale(friday_last, ny(2024, 3, 9, 12, 0), 600.0)
    assert not is_stale(friday_last, ny(2024, 3, 11, 9, 34), 600.0)  # Monday before 09:35
    # Once Monday's first bar has completed, the lag is measured in wall-clock time (SPEC §6).
    assert is_stale(friday_last, ny(2024, 3, 11, 9, 35), 600.0)


def test_is_stale_threshold_is_strict() -> None:
    newest = ny(2024, 3, 12, 11, 45)
    as_of = ny(2024, 3, 12, 12, 0)  # newest completed bar: 11:55, ten minutes later
    assert not is_stale(newest, as_of, 600.0)
    assert is_stale(newest, as_of, 599.0)
    assert not is_stale(ny(2024, 3, 12, 11, 55), as_of, 0.0)
