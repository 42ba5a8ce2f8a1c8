"""Durations as users write them (ralf/durations.py): TTLs, lateness, windows, tiles."""

from __future__ import annotations

import datetime as dt

import pytest

from ralf.durations import seconds, timedelta


@pytest.mark.parametrize(("given", "expected"), [
    ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0), ("7d", 604800.0), ("2w", 1209600.0),
    ("250ms", 0.25), (" 1.5 H ", 5400.0), (42, 42.0), (0.5, 0.5),
    (dt.timedelta(minutes=2), 120.0)])
def test_a_duration_in_any_of_its_spellings(given, expected):
    assert seconds(given, "ttl") == expected
    assert timedelta(given, "ttl") == dt.timedelta(seconds=expected)


@pytest.mark.parametrize("given", ["soon", "1y", "", "h", "-1h", True, None, [1]])
def test_what_is_not_a_duration_is_refused_by_name(given):
    with pytest.raises(ValueError, match="window: .* not a duration"):
        seconds(given, "window")


@pytest.mark.parametrize("given", [0, -3, float("inf"), float("nan"), dt.timedelta(0)])
def test_a_duration_must_be_positive_and_finite(given):
    with pytest.raises(ValueError, match="not a positive duration"):
        seconds(given, "ttl")
