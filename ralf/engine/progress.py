"""Where a feature table stands: per-key watermarks and the index of stale keys.

A key's watermark is the last parent ``_ralf_seq`` applied for it. Most keys share one
*floor*; only keys refreshed on their own (budgets, lazy queries) or held back (failures)
carry an override, so a table refreshed in full each tick keeps no per-key state at all.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pyarrow as pa


class Watermarks:
    def __init__(self, floor: int = 0, overrides: dict[Any, int] | None = None) -> None:
        self.floor = floor
        self.overrides: dict[Any, int] = dict(overrides or {})

    def of(self, key: Any) -> int:
        return self.overrides.get(key, self.floor)

    def arrow(self, key_type: pa.DataType, keys: list[Any] | None = None) -> pa.Table:
        """(key, wm) rows: for the given keys, or for every override."""
        if keys is None:
            keys = list(self.overrides)
            marks = list(self.overrides.values())
        else:
            marks = [self.of(k) for k in keys]
        return pa.table({"key": pa.array(keys, key_type), "wm": pa.array(marks, pa.int64())})


@dataclass
class Pending:
    """A stale key: how many parent appends wait, and since when."""

    count: int
    first_seq: int
    first_at: dt.datetime
    last_seq: int


class PendingIndex:
    """Stale keys of a table that is refreshed key by key (budgeted or lazy)."""

    def __init__(self) -> None:
        self.keys: dict[Any, Pending] = {}

    def add(self, summary: pa.Table) -> None:
        """Merge a ``pending_summary`` (key, n, first_seq, last_seq, first_at) of new appends."""
        index = self.keys
        c = summary.to_pydict()
        for key, n, first_seq, last_seq, first_at in zip(
            c["key"], c["n"], c["first_seq"], c["last_seq"], c["first_at"], strict=True
        ):
            entry = index.get(key)
            if entry is None:
                index[key] = Pending(n, first_seq, first_at, last_seq)
            else:
                entry.count += n
                entry.last_seq = max(entry.last_seq, last_seq)

    def pop(self, key: Any) -> Pending | None:
        return self.keys.pop(key, None)

    def __contains__(self, key: Any) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def total(self) -> int:
        return sum(p.count for p in self.keys.values())


class KeyView:
    """What a prioritization policy may know about a table's stale keys."""

    def __init__(self, pending: PendingIndex, cache: dict[Any, tuple[Any, dt.datetime]]) -> None:
        self._pending = pending.keys
        self._cache = cache

    def pending_count(self, key: Any) -> int:
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
