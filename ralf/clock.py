"""Clocks: where ralf's timestamps and waits come from (a manual one lives in ralf.testing)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    """Where the engine gets the time and how it waits (tests pass a manual clock)."""

    def now(self) -> dt.datetime:
        """The current time, UTC, without tzinfo (as stored in DuckDB)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a manual clock moves its time on instead)."""
        ...


def utcnow() -> dt.datetime:
    """The wall-clock time as ralf stores it: UTC, without tzinfo."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class SystemClock:
    """The real clock: the wall-clock time, and real sleeps."""

    def now(self) -> dt.datetime:
        """The wall-clock time, UTC, without tzinfo (see :func:`utcnow`)."""
        return utcnow()

    def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of real time."""
        time.sleep(seconds)
