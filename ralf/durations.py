"""Durations as users write them: ``"90s"``, ``"15m"``, ``"1h"``, ``"7d"``, ``"2w"``, a
number of seconds, or a :class:`datetime.timedelta` (for TTLs, lateness and windows)."""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$", re.IGNORECASE)


def seconds(value: Any, what: str) -> float:
    """``value`` as a positive number of seconds; ``what`` names it in the error."""
    if isinstance(value, dt.timedelta):
        result = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    elif isinstance(value, str) and (match := _TEXT.match(value)):
        result = float(match.group(1)) * _UNITS[match.group(2).lower()]
    else:
        raise ValueError(f"{what}: {value!r} is not a duration (write e.g. '30s', '15m', "
                         "'1h', '7d', '2w', a number of seconds or a timedelta)")
    if not (math.isfinite(result) and result > 0):
        raise ValueError(f"{what}: {value!r} is not a positive duration")
    return result


def timedelta(value: Any, what: str) -> dt.timedelta:
    """``value`` (see :func:`seconds`) as a timedelta."""
    return dt.timedelta(seconds=seconds(value, what))
