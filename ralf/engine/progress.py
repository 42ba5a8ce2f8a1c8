"""Where a feature table stands: per-key watermarks and the index of stale keys.

A key's watermark is the last parent ``_ralf_seq`` applied for it. Most keys share one
*floor*; only keys refreshed on their own (budgets, lazy queries) or held back (failures)
carry an override, so a table refreshed in full each tick keeps no per-key state at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

_EPOCH = dt.datetime(1970, 1, 1)


class Watermarks:
    """A table's per-key watermarks: the ``floor`` most keys share, and ``overrides`` for
    the keys whose mark differs from it."""

    def __init__(self, floor: int = 0, overrides: dict[Any, int] | None = None) -> None:
        self.floor = floor
        self.overrides: dict[Any, int] = dict(overrides or {})

    def of(self, key: Any) -> int:
        """The key's watermark: its override, else the floor."""
        return self.overrides.get(key, self.floor)

    def arrow(self, key_type: pa.DataType, keys: list[Any] | None = None,
              unread: Collection[Any] = (), high: int = 0) -> pa.Table:
        """(key, wm) rows: for the given keys; or for every override, and for the
        ``unread`` keys a mark of ``high`` so that a read up to ``high`` leaves them out."""
        if keys is None:
            every = {**self.overrides, **dict.fromkeys(unread, high)}
            keys, marks = list(every), list(every.values())
        else:
            marks = [self.of(k) for k in keys]
        return pa.table({"key": pa.array(keys, key_type), "wm": pa.array(marks, pa.int64())})

    def advance(self, refreshed: list[Any], still_stale: list[Any] | None, high: int
                ) -> Advance:
        """Where a refresh that applied the parent's appends up to ``high`` leaves the
        marks. ``still_stale``: the keys left behind if the refresh drained all others (the
        floor moves to ``high``, only they keep a mark), else None (``refreshed`` get one)."""
        if still_stale is not None:
            kept = {k: self.of(k) for k in still_stale if self.of(k) < high}
            # the database holds what the overrides do: only then is there a mark to clear
            return Advance(high, kept, bool(self.overrides), kept)
        changed = {k: high for k in refreshed}
        return Advance(self.floor, changed, False, {**self.overrides, **changed})

    def move(self, advance: Advance) -> None:
        """The refresh committed: take the marks it wrote."""
        self.floor, self.overrides = advance.floor, advance.overrides


@dataclass
class Advance:
    """A refresh's move of the watermarks: what its unit of work writes (``floor``,
    ``changed`` marks, after deleting the stored ones if ``clear``), and the overrides in
    memory once it has committed."""

    floor: int
    changed: dict[Any, int]
    clear: bool
    overrides: dict[Any, int]


@dataclass(slots=True)
class Pending:
    """A stale key: how many parent appends wait, and since when.

    The time is kept as microseconds and made a datetime only when asked: making one per
    key of each append cost a tick ~11 ms per 10,000 keys (benchmarks/ivm.py, part e)."""

    count: int
    first_seq: int
    first_us: int  # ingestion time of the oldest pending append, microseconds since 1970
    last_seq: int

    @property
    def first_at(self) -> dt.datetime:
        """Ingestion time of the oldest pending append (UTC, without tzinfo)."""
        return _EPOCH + dt.timedelta(microseconds=self.first_us)


class PendingIndex:
    """Stale keys of a table that is refreshed key by key (budgeted or lazy).

    The dict keeps the order in which keys became stale, which is FIFO order for free.
    """

    def __init__(self) -> None:
        self.keys: dict[Any, Pending] = {}

    def add(self, summary: pa.Table) -> list[Any]:
        """Merge a ``pending_summary`` of new appends; returns the touched keys in the order
        of their newest append."""
        index = self.keys
        summary = summary.sort_by("first_seq")
        c = summary.select(["key", "n", "first_seq", "last_seq"]).to_pydict()
        first_us = pc.cast(summary.column("first_at"), pa.timestamp("us")).cast(pa.int64())
        for key, n, first_seq, last_seq, first in zip(
            c["key"], c["n"], c["first_seq"], c["last_seq"], first_us.to_pylist(), strict=True
        ):
            entry = index.get(key)
            if entry is None:
                index[key] = Pending(n, first_seq, first, last_seq)
            else:
                entry.count += n
                entry.last_seq = max(entry.last_seq, last_seq)
        order = sorted(range(len(c["key"])), key=c["last_seq"].__getitem__)
        return [c["key"][i] for i in order]

    def pop(self, key: Any) -> Pending | None:
        """Drop a key from the index; returns its entry, or None if it was not stale."""
        return self.keys.pop(key, None)

    def by_newest(self) -> list[Any]:
        """Stale keys in the order of their newest pending append."""
        return sorted(self.keys, key=lambda k: self.keys[k].last_seq)

    def __contains__(self, key: Any) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)


class StaleKeys(Sequence):
    """The stale keys a prioritization policy chooses from, with what is known of each.

    Iteration is in FIFO order (oldest pending append first); membership and per-key
    look-ups are O(1), so built-in policies never need to copy the whole set.
    """

    def __init__(self, pending: PendingIndex, excluded: set[Any],
                 cache: dict[Any, tuple[Any, dt.datetime]], now: dt.datetime) -> None:
        self._pending = pending.keys
        self._excluded = {k for k in excluded if k in pending.keys}
        self._cache = cache
        self.now = now

    def __len__(self) -> int:
        return len(self._pending) - len(self._excluded)

    def __iter__(self) -> Iterator[Any]:
        if not self._excluded:
            return iter(self._pending)
        return (k for k in self._pending if k not in self._excluded)

    def __contains__(self, key: object) -> bool:
        return key in self._pending and key not in self._excluded

    def __getitem__(self, index: int) -> Any:
        return list(self)[index]

    def pending_count(self, key: Any) -> int:
        """How many parent appends wait for the key."""
        return self._pending[key].count

    def first_seq(self, key: Any) -> int:
        """Parent sequence number of the key's oldest pending append."""
        return self._pending[key].first_seq

    def last_seq(self, key: Any) -> int:
        """Parent sequence number of the key's newest pending append."""
        return self._pending[key].last_seq

    def first_at(self, key: Any) -> dt.datetime:
        """Ingestion time of the key's oldest pending append."""
        return self._pending[key].first_at

    def updated_at(self, key: Any) -> dt.datetime | None:
        """When the key's feature row was last written (None: never)."""
        entry = self._cache.get(key)
        return entry[1] if entry is not None else None
