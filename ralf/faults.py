"""Fault injection: the places where the crash tests kill the process or raise.

Each point names a *window*: a state of memory and storage that no other point shows
(points inside one open transaction would all show the same one, so each transaction has
one point, just before its commit). ``WINDOWS`` says what is in flight at each.

* ``RALF_CRASH_AT=point[@n]`` SIGKILLs the process the n-th time (default: the first)
  execution reaches ``crashpoint("point")``;
* ``RALF_RAISE_AT=point[@n]`` raises :class:`InjectedFault` there instead;
* ``RALF_COUNT_POINTS=FILE`` counts every point reached and writes the counts to FILE (as
  JSON) when the process exits, so a test can aim at a late hit;
* in process, :func:`arm` and :func:`disarm` do the same for the calling test.

Unarmed (always, outside tests) a point costs one global lookup.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
from collections import Counter

WINDOWS: dict[str, str] = {
    # ingestion
    "ingest.before_next": "between ticks: nothing in flight",
    "ingest.after_next": "a batch taken from the source, not yet validated or appended",
    "ingest.after_validate": "the batch validated and the source's rejected lines taken",
    "append.before_commit": "the append, the source position and the rejected records "
                            "written in an open transaction",
    "append.after_commit": "the append committed; the in-memory position not yet moved",
    # refresh of a Python operator
    "refresh.after_read": "pending appends read; the operator not yet run",
    "refresh.in_operator": "the operator part way through a refresh's records",
    "refresh.after_operator": "the operator's state moved and its checkpoint taken; "
                              "nothing written",
    "refresh.before_commit": "rows, history, watermarks and operator state written in an "
                             "open transaction",
    "refresh.after_commit": "the refresh committed; watermarks, cache and pending index in "
                            "memory not yet moved",
    "refresh.after_cache": "the cache and watermarks moved; the pending index and the "
                           "children not yet told",
    # refresh of a SQL table (aggregate() / sql())
    "sql.before_commit": "the plan's rows, history and watermarks written in an open "
                          "transaction",
    "sql.after_commit": "the refresh committed; nothing in memory moved yet",
    # a SQL table that looks up another table follows that table's changes
    "lookup.before_commit": "the reached keys' lowered watermarks and the new lookup mark "
                            "written in an open transaction",
    "lookup.after_commit": "the lookup mark committed; marks and stale-key index in memory "
                           "not yet moved",
    # forgetting a key (ralf.engine.forget)
    "forget.before_commit": "the forget request and the key's retraction written in an open "
                            "transaction",
    "forget.after_ask": "the forget request committed (acknowledged); nothing derived from "
                        "it refreshed yet",
    "forget.after_retract": "every derived table refreshed the retraction; nothing erased",
    "erase.before_commit": "the key's records, rows, history and state erased and the audit "
                           "row completed in an open transaction",
    "forget.after_erase": "the erasure committed; caches and watermarks in memory not yet "
                          "moved",
    # a changed table rebuilt (ralf.evolve)
    "evolve.before_swap": "the old table dropped and its caught-up shadow renamed into its "
                          "place in an open transaction",
    # lazy refresh on query, and the tick boundary
    "lazy.before_refresh": "a query about to refresh a lazy table's key",
    "tick.end": "a tick done (history compacted)",
}
POINTS = tuple(WINDOWS)


class InjectedFault(RuntimeError):
    """Raised at an armed fault point (``RALF_RAISE_AT`` or :func:`arm`)."""


class _Armed:
    """Which point fires, on which hit, and how; or, counting, none."""

    def __init__(self, point: str | None, nth: int, action: str) -> None:
        if point is not None and point not in WINDOWS:
            raise ValueError(f"unknown fault point {point!r} (known: {', '.join(POINTS)})")
        if action not in ("kill", "raise", "count"):
            raise ValueError(f"fault action must be kill, raise or count, got {action!r}")
        self.point, self.nth, self.action = point, nth, action
        self.seen: Counter[str] = Counter()

    def hit(self, name: str) -> None:
        self.seen[name] += 1
        if name != self.point or self.seen[name] != self.nth:
            return
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedFault(f"fault injected at {name} (hit {self.nth})")


_armed: _Armed | None = None


def arm(point: str, nth: int = 1, action: str = "raise") -> None:
    """Make the ``nth`` hit of ``point`` (counted from now) raise or kill."""
    global _armed
    _armed = _Armed(point, nth, action)


def disarm() -> dict[str, int]:
    """Stop injecting; returns how often each point was reached while armed."""
    global _armed
    seen, _armed = (dict(_armed.seen) if _armed else {}), None
    return seen


def crashpoint(name: str) -> None:
    """Fault point ``name``: counted, and killed or raised at when armed for it (else a no-op)."""
    if _armed is not None:
        _armed.hit(name)


def _from_environment() -> None:
    for variable, action in (("RALF_CRASH_AT", "kill"), ("RALF_RAISE_AT", "raise")):
        spec = os.environ.get(variable)
        if spec:
            point, _, nth = spec.partition("@")
            arm(point, int(nth or 1), action)
            return
    counts = os.environ.get("RALF_COUNT_POINTS")
    if counts:
        global _armed
        _armed = _Armed(None, 0, "count")
        armed = _armed

        def write() -> None:
            with open(counts, "w") as out:
                json.dump(dict(armed.seen), out)

        atexit.register(write)


_from_environment()
