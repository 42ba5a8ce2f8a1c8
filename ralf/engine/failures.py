"""Failure tracking: consecutive failures per unit (an operator's key, a table, a source),
exponential backoff in ticks, and quarantine after too many.

One object for every kind of unit, so sources, tables and keys back off and are released
the same way. Failures of user code (an operator, a policy, a source's ``next()``) count
towards quarantine; failures of the environment (a database error, a full disk) only
back off — they are retried until the environment recovers, with the wait capped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Environment failures wait at most this many ticks between attempts.
MAX_BACKOFF_TICKS = 64
# The unit that stands for a whole table or source (no key is None: null keys are refused).
WHOLE = None


class Failures:
    """Per unit: how many failures in a row, the tick before which it is not retried, and
    whether it is quarantined (held until released)."""

    def __init__(self) -> None:
        self.count: dict[Any, int] = {}
        self.retry_tick: dict[Any, int] = {}
        self.quarantined: set[Any] = set()
        self.last_error: dict[Any, str] = {}

    def record(self, unit: Any, tick: int, max_failures: int, why: str,
               user_code: bool = True) -> bool:
        """Count a failure of ``unit`` at ``tick``; returns whether it is now quarantined
        (only user code is: an environment failure just waits longer)."""
        count = self.count.get(unit, 0) + 1
        self.count[unit] = count
        self.last_error[unit] = why
        if user_code and count >= max_failures:
            self.quarantined.add(unit)
            self.retry_tick.pop(unit, None)
            return True
        self.retry_tick[unit] = tick + min(2 ** (count - 1), MAX_BACKOFF_TICKS)
        return False

    def held(self, tick: int) -> set[Any]:
        """Units not to try at ``tick``: quarantined, or waiting out a backoff."""
        waiting = {u for u, t in self.retry_tick.items() if t > tick}
        return self.quarantined | waiting if waiting else self.quarantined

    def is_held(self, unit: Any, tick: int) -> bool:
        """Whether ``unit`` is not to be tried at ``tick``: quarantined, or backing off."""
        return unit in self.quarantined or self.retry_tick.get(unit, -1) > tick

    def succeeded(self, units: Iterable[Any]) -> None:
        """These units worked: their failure counts start again."""
        if self.count:  # the common case, nothing failing, costs no loop over the units
            for unit in units:
                self.count.pop(unit, None)
                self.retry_tick.pop(unit, None)
                self.last_error.pop(unit, None)

    def release(self, unit: Any) -> bool:
        """Give a quarantined (or backing-off) unit another chance; True if it was held."""
        held = unit in self.quarantined or unit in self.retry_tick
        self.quarantined.discard(unit)
        self.count.pop(unit, None)
        self.retry_tick.pop(unit, None)
        self.last_error.pop(unit, None)
        return held

    def __len__(self) -> int:
        """Units currently failing (quarantined or backing off)."""
        return len(self.quarantined) + len(self.retry_tick)
