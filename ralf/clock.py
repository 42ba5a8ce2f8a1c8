"""Clocks: where ralf's timestamps and waits come from (a manual one lives in ralf.testing)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, UTC, without tzinfo (as stored in DuckDB)."""
        ...

    def sleep(self, seconds: float) -> None: ...


def utcnow() -> dt.datetime:
    """The wall-clock time as ralf stores it: UTC, without tzinfo."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class SystemClock:
    def now(self) -> dt.datetime:
        return utcnow()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
