"""The serving cache: a table's current rows by key, for point queries that never wait for
the engine.

A mapping ``key -> (values, updated_at, event_time)`` kept in one numpy structured array,
a record per key (numbers and booleans inline with a validity flag for nulls, other types as Python
objects), and a dict from key to slot. A refresh writes its rows with one vectorised
scatter per column; a point query reads its row with one ``item()``. As a dict of per-row
tuples it paid for a fresh tuple per row and for freeing the old ones, scattered across
the heap: ~1 µs a row, a quarter of a 10,000-key aggregate refresh (benchmarks/ivm.py,
part a).

One thread writes (the engine, under its lock); any number read. A row spans several
fields, so a read and the scatters take a small lock of their own: a reader sees a key's
row wholly before or wholly after a refresh, never half of each.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ralf.schema import Schema

_NUMPY = {int: np.int64, float: np.float64, bool: np.bool_}
_FILL = {int: 0, float: 0.0, bool: False}
# Keys added since the writer's index was built are looked up in a dict until they are this
# many, or an eighth of the index: then the index is rebuilt (O(keys), so rarely).
_REINDEX_MIN = 4096


class ServingCache(Mapping):
    """A table's current rows as a mapping ``key -> (values, updated_at, event_time)``, the
    values in column order; the engine writes, point queries read (see the module
    docstring). ``event``: the column of the written rows that holds their event time
    (None: the table has none, and every event_time is None)."""

    def __init__(self, schema: Schema, event: str | None = None) -> None:
        self._schema = schema
        self._event = event
        self._width = len(schema.names)
        self._typed = [i for i, t in enumerate(schema.columns.values()) if t in _NUMPY]
        # fields: the values (f0, f1, ...), the time (at), then a validity flag per typed
        # column (v0, ...), so a record's item() is (values..., at, flags...)
        self._dtype = np.dtype(
            [(f"f{i}", _NUMPY.get(t, object)) for i, t in enumerate(schema.columns.values())]
            + [("at", object), ("event", object)]
            + [(f"v{i}", np.bool_) for i in self._typed])
        self._rows = np.zeros(0, self._dtype)
        self._lock = threading.Lock()  # a record's fields change together under it
        self._slots: dict[Any, int] = {}
        self._free: list[int] = []  # slots of popped keys, for reuse
        self._used = 0  # slots ever handed out
        # The writer's bulk lookup: the keys as a hash index and their slots, plus the keys
        # added since (``_recent``). None after a pop, rebuilt on the next write.
        self._integer_keys = pa.types.is_integer(
            schema.arrow.field(schema.primary_key).type)
        self._index: pd.Index | None = None
        self._index_slots = np.zeros(0, np.int64)
        self._recent: dict[Any, int] = {}

    # ---- reads -------------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> tuple[tuple, Any, Any]:
        row = self.get(key)
        if row is None:
            raise KeyError(key)
        return row

    def get(self, key: Any, default: Any = None) -> Any:
        """The key's ``(values, updated_at, event_time)``, or ``default``; the point-query
        path."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return default
            record = self._rows.item(slot)
        width = self._width
        values, flags = record[:width], record[width + 2:]
        if not all(flags):
            values = list(values)
            for i, valid in zip(self._typed, flags, strict=True):
                if not valid:
                    values[i] = None
            values = tuple(values)
        return values, record[width], None if self._event is None else record[width + 1]

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def __iter__(self) -> Iterator[Any]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    # ---- writes (the engine's thread) ----------------------------------------------------
    def put(self, rows: pa.Table, at: Any) -> None:
        """Write rows (the schema's columns, maybe more) through; the last row of a key wins.
        ``at``: one time for all rows, or a list of times."""
        n = rows.num_rows
        if n == 0:
            return
        slots, new, used = self._assign(rows.column(self._schema.primary_key))
        if np.count_nonzero(np.bincount(slots)) < n:  # a key twice (appends to a lookup
            # source): numpy leaves which write wins unspecified, so keep the last row only
            last = n - 1 - np.unique(slots[::-1], return_index=True)[1]
            rows, slots = rows.take(pa.array(last)), slots[last]
            if isinstance(at, list):
                at = [at[i] for i in last]
        fields: dict[str, Any] = {"at": _objects(at) if isinstance(at, list) else at}
        if self._event is not None:
            fields["event"] = _objects(rows.column(self._event).to_pylist())
        for i, (name, typ) in enumerate(self._schema.columns.items()):
            column = rows.column(name)
            if typ in _NUMPY:
                fields[f"f{i}"] = column.fill_null(_FILL[typ]).to_numpy()
                fields[f"v{i}"] = column.is_valid().to_numpy() if column.null_count else True
            else:
                fields[f"f{i}"] = _objects(column.to_pylist())
        with self._lock:
            if used > len(self._rows):
                grown = np.zeros(max(1024, used, 2 * len(self._rows)), self._dtype)
                grown[:len(self._rows)] = self._rows
                self._rows = grown
            for name, values in fields.items():
                self._rows[name][slots] = values
            self._slots.update(new)
        self._used = used
        self._recent.update(new)

    def _assign(self, keys: pa.ChunkedArray) -> tuple[np.ndarray, dict[Any, int], int]:
        """Each key's slot; new keys get free slots, not yet visible to readers. Returns the
        slots, the new keys' slots and the slots used after this write.

        Found by a hash index over the keys' values: a dict lookup per key missed the CPU
        caches (its keys are objects all over the heap), ~0.4 µs a key, 4 ms of a
        10,000-key refresh. Keys added since the index was built are found in a dict:
        rebuilding it for every write that adds keys cost 5-15 ms at 1,000,000 keys."""
        if self._index is None or len(self._recent) > max(_REINDEX_MIN, len(self._index) // 8):
            self._index = pd.Index(list(self._slots),
                                   dtype=np.int64 if self._integer_keys else object)
            self._index_slots = np.fromiter(self._slots.values(), np.int64, len(self._slots))
            self._recent = {}
        values = keys.to_numpy() if self._integer_keys else _objects(keys.to_pylist())
        positions = self._index.get_indexer(values)
        slots = np.full(len(positions), -1, np.int64)
        known = positions >= 0
        slots[known] = self._index_slots[positions[known]]
        new: dict[Any, int] = {}
        used = self._used
        missing = np.flatnonzero(~known)
        if missing.size:
            for i, key in zip(missing, keys.take(pa.array(missing)).to_pylist(), strict=True):
                slot = self._recent.get(key)
                if slot is None:
                    if key not in new:
                        if self._free:
                            new[key] = self._free.pop()
                        else:
                            new[key], used = used, used + 1
                    slot = new[key]
                slots[i] = slot
        return slots, new, used

    def pop(self, key: Any, default: Any = None) -> Any:
        """Forget a key's row (its table deleted it); returns it, or ``default``."""
        row = self.get(key)
        if row is None:
            return default
        with self._lock:
            slot = self._slots.pop(key)
            self._rows[slot] = np.zeros(1, self._dtype)[0]  # let its objects go
        self._free.append(slot)
        self._index = None
        return row


def _objects(values: list[Any]) -> np.ndarray:
    """A 1-d object array of the values as they are (lists stay lists, not a dimension)."""
    return np.fromiter(values, object, len(values))
