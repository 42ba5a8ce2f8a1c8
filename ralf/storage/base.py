"""The storage interface the engine speaks; backends (DuckDB, later PostgreSQL) implement it.

The engine hands over whole units of work (:class:`Append`, :class:`Refresh`) and each
backend applies one unit in one transaction, so atomicity lives here and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ralf.errors import QueryError
from ralf.schema import Rejection, Schema, quote

SOURCE = "source"
FEATURE = "feature"
# ralf's own tables in the ralf schema (migrations/)
BOOKKEEPING_TABLES = ("tables", "watermarks", "operator_state", "source_state", "rejected",
                      "schema_migrations", "shard_floors")



@dataclass
class TableInfo:
    """A catalog row: what the storage needs to know about a table."""

    name: str
    kind: str
    schema: Schema
    parent: str | None = None
    lookup: str | None = None
    lookup_on: str | None = None
    lazy: bool = False
    watermark: int = 0
    hidden: list[tuple[str, str]] = field(default_factory=list)  # (name, SQL type) helpers
    # output column -> SQL expression over the helpers, for a backend that computes
    # outputs rather than storing them (DuckDB: fewer columns for each refresh to update)
    derived: dict[str, str] = field(default_factory=dict)


@dataclass
class Append:
    """New records of a source: appended with their checkpoint, atomically."""

    table: TableInfo
    rows: pa.Table  # user columns, validated
    first_seq: int
    ingested_at: dt.datetime
    source_state: bytes | None
    emitted: int
    exhausted: bool
    rejected: list[Rejection] = field(default_factory=list)


@dataclass
class Refresh:
    """A feature table's progress: outputs, watermarks and state, atomically."""

    table: TableInfo
    rows: pa.Table  # user columns, one row per key (last write wins already applied)
    version: int  # the _ralf_seq every row written by this refresh carries
    updated_at: dt.datetime
    watermark: int  # new floor
    set_watermarks: dict[str, int]  # key text -> seq
    clear_watermarks: bool  # drop every override first
    state: bytes | None
    write_state: bool


@dataclass
class ViewRefresh:
    """A SQL-maintained table's progress: the plan runs over the pending appends inside
    the database; outputs, history and watermarks commit together."""

    table: TableInfo
    read: LogRead
    plan: Any  # ralf.ivm DeltaAggregate | KeyRecompute
    version: int
    updated_at: dt.datetime
    watermark: int
    set_watermarks: dict[str, int]
    clear_watermarks: bool


@dataclass
class LogRead:
    """Which parent appends to read: ``floor < seq <= high`` per key, overrides aside.

    ``keys`` restricts the read to some keys; ``watermarks`` holds per-key watermarks
    (columns ``key`` and ``wm``) that replace the floor for those keys.
    """

    table: TableInfo
    floor: int
    high: int
    watermarks: pa.Table | None
    keys: pa.Table | None = None


class Watchdog:
    """Interrupts a client query that runs past ``timeout`` seconds or whose ``cancel``
    event is set (its client went away, the server is shutting down). ``interrupt`` is
    the database's own: DuckDB's ``interrupt()``, PostgreSQL's cancel request."""

    def __init__(self, interrupt: Callable[[], Any], timeout: float | None,
                 cancel: threading.Event | None) -> None:
        self._interrupt, self._timeout, self._cancel = interrupt, timeout, cancel
        self._done = threading.Event()
        self._fired: str | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watchdog:
        if self._timeout is not None or self._cancel is not None:
            self._thread = threading.Thread(target=self._watch, name="ralf-query-watchdog",
                                            daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while not self._done.is_set():
            if self._cancel is not None and self._cancel.is_set():
                self._fired = "the query was cancelled (its client went away, or the server " \
                              "is stopping)"
            elif deadline is not None and time.monotonic() >= deadline:
                self._fired = f"the query ran longer than its {self._timeout:g} s time limit"
            if self._fired:
                self._interrupt()
                return
            wait = 0.05 if deadline is None else min(0.05, max(0.0, deadline - time.monotonic()))
            self._done.wait(wait)

    def why(self) -> str:
        return self._fired or "the query was interrupted"

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def fetch_limited(batches: Iterable[pa.RecordBatch], schema: pa.Schema | None,
                  max_rows: int | None) -> pa.Table:
    """A result read batch by batch, refused as soon as it passes ``max_rows`` (before the
    rest is computed or held in memory). ``schema``: the result's, if known up front."""
    kept, rows = [], 0
    for batch in batches:
        rows += batch.num_rows
        if max_rows is not None and rows > max_rows:
            raise QueryError(f"the result has more than {max_rows:,} rows, the limit "
                             "(add a LIMIT or a filter)")
        kept.append(batch)
    if schema is None and len({b.schema for b in kept}) > 1:  # typed from each batch's values
        return pa.concat_tables([pa.Table.from_batches([b]) for b in kept],
                                promote_options="permissive")
    return pa.Table.from_batches(kept, schema)


def log_table(table: TableInfo) -> str:
    """What children replay: a source's append table, a feature table's history."""
    if table.kind == SOURCE:
        return quote(table.name)
    return f"ralf.{quote(table.name + '__history')}"


class Storage(ABC):
    """What the engine needs from a database."""

    # Sequence numbers this process writes start above this (a shard's own range, so its
    # log reads see only its own appends; see ralf.storage.postgres).
    seq_base: int = 0

    # ---- catalog ---------------------------------------------------------------------------
    @abstractmethod
    def catalog(self) -> dict[str, TableInfo]: ...

    @abstractmethod
    def create_table(self, info: TableInfo) -> None:
        """Create a source's append table, or a feature table and its history log."""

    @abstractmethod
    def create_alias(self, alias: str, table: str) -> None: ...

    @abstractmethod
    def update_definition(self, info: TableInfo) -> None:
        """Store a table's changed lazy flag or lookup side (same schema and parent)."""

    def unstorable(self, rows: pa.Table) -> dict[int, tuple[str, str]]:
        """Rows this database cannot hold, by index: (column, why). DuckDB holds any valid
        row; PostgreSQL refuses NUL characters in text."""
        return {}

    # ---- writes (each one transaction) -----------------------------------------------------
    @abstractmethod
    def append(self, unit: Append) -> None: ...

    @abstractmethod
    def refresh(self, unit: Refresh) -> None: ...

    @abstractmethod
    def refresh_view(self, unit: ViewRefresh) -> tuple[pa.Table, list[Any]]:
        """Apply a SQL-maintained refresh; returns (rows written: user columns and
        ``_ralf_seq``, keys deleted)."""

    @abstractmethod
    def describe(self, query: str) -> list[tuple[str, str]]:
        """Column names and SQL types of a query's result."""

    @abstractmethod
    def reject(self, rejected: list[Rejection]) -> None: ...

    @abstractmethod
    def reset_progress(self, table: str) -> None:
        """Forget a feature table's watermarks (its state could not be restored)."""

    # ---- reads for the engine -------------------------------------------------------------
    @abstractmethod
    def max_seq(self, table: TableInfo) -> int: ...

    @abstractmethod
    def read_log(self, read: LogRead) -> pa.Table:
        """Pending appends: user columns plus ``_ralf_seq``, in seq order."""

    @abstractmethod
    def pending_summary(self, read: LogRead) -> pa.Table:
        """Per key of the read: ``key, n, first_seq, last_seq, first_at``."""

    @abstractmethod
    def current_rows(self, table: TableInfo) -> pa.Table:
        """A feature table's rows, or a source's latest append per key."""

    @abstractmethod
    def load_floor(self, table: str) -> int:
        """A feature table's watermark floor as committed."""

    @abstractmethod
    def load_watermarks(self, table: str) -> dict[str, int]: ...

    @abstractmethod
    def load_operator_state(self, table: str) -> tuple[bool, bytes | None]:
        """(found, state); state None when found means 'rebuild by replay'."""

    @abstractmethod
    def load_source_state(self, table: str) -> tuple[bytes | None, int, bool] | None: ...

    # ---- reads for clients -----------------------------------------------------------------
    @abstractmethod
    def point(self, table: TableInfo, key: Any) -> dict[str, Any] | None: ...

    @abstractmethod
    def point_as_of(self, table: TableInfo, key: Any, at: dt.datetime) -> dict[str, Any] | None:
        """The key's row as it was at ``at`` (the newest version valid from ``at`` or before)."""

    @abstractmethod
    def historical(self, entities: pa.Table, timestamp: str,
                   features: list[tuple[TableInfo, str, str]]) -> pa.Table:
        """Point-in-time join: for each entity row, each (table, column, output name) as of
        the row's timestamp; rows in the entities' order."""

    @abstractmethod
    def compact_history(self, table: TableInfo, cutoff: dt.datetime, keep_from_seq: int
                        ) -> int:
        """Drop versions older than ``cutoff`` that a query at ``cutoff`` or later cannot
        see, sparing versions from ``keep_from_seq`` on (children still replay them)."""

    @abstractmethod
    def bulk(self, table: TableInfo, with_metadata: bool = False) -> pa.Table:
        """One row per key, sorted by key (a source: its latest append per key)."""

    @abstractmethod
    def sql(self, query: str, *, max_rows: int | None = None, timeout: float | None = None,
            cancel: threading.Event | None = None) -> pa.Table:
        """Run one read-only query (:mod:`ralf.storage.readonly`); anything that could
        write, a result over ``max_rows`` rows, a run past ``timeout`` seconds and a set
        ``cancel`` event raise QueryError."""

    @abstractmethod
    def count_rows(self, table: TableInfo) -> int: ...

    @abstractmethod
    def snapshot(self, directory: str | None) -> str:
        """What other programs may open for a consistent view of the database while this
        one writes (a copy written into ``directory``, a new temporary one when None; or
        the database's own address, if it gives every reader a consistent view itself)."""

    def digest(self) -> dict[str, str]:
        """A hash of every table's rows — user tables, histories and ralf's bookkeeping,
        internal ones included — in any row order: to check that something (a client
        request, a failed tick) changed nothing."""
        import hashlib

        names = [quote(info.name) for info in self.catalog().values()]
        names += [log_table(info) for info in self.catalog().values() if info.kind != SOURCE]
        names += [f"ralf.{quote(t)}" for t in BOOKKEEPING_TABLES]
        digests = {}
        for name in names:
            rows = sorted(map(repr, self._read(f"SELECT * FROM {name}", []).to_pylist()))
            digests[name] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        return digests

    def rejected(self, table: str | None, limit: int) -> pa.Table:
        """The newest ``limit`` rejected records (of one table, or all), newest first."""
        mark = self.placeholder
        where = f"WHERE table_name = {mark} " if table is not None else ""
        return self._read(
            "SELECT id, table_name, reason, column_name, record, rejected_at FROM "
            f"ralf.rejected {where}ORDER BY id DESC LIMIT {mark}",
            [table, limit] if table is not None else [limit])

    # The dialect's parameter placeholder in SQL text.
    placeholder = "?"

    @abstractmethod
    def _read(self, query: str, params: list[Any]) -> pa.Table:
        """Run one of ralf's own queries (unrestricted, unlike :meth:`sql`) on a reader."""

    def drop_snapshot(self, path: str) -> bool:
        """Delete a snapshot this process made; True if there was one (PostgreSQL makes
        none: its snapshot is the database's address)."""
        return False

    @abstractmethod
    def close(self) -> None: ...
