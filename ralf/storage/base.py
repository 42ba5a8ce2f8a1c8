"""The storage interface the engine speaks; backends (DuckDB, later PostgreSQL) implement it.

The engine hands over whole units of work (:class:`Append`, :class:`Refresh`) and each
backend applies one unit in one transaction, so atomicity lives here and nowhere else.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ralf.schema import Rejection, Schema

SOURCE = "source"
FEATURE = "feature"


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
    def sql(self, query: str) -> pa.Table:
        """Run one read-only query; anything that could write raises QueryError."""

    @abstractmethod
    def count_rows(self, table: TableInfo) -> int: ...

    @abstractmethod
    def snapshot(self, directory: str | None) -> str:
        """What other programs may open for a consistent view of the database while this
        one writes (a copy written into ``directory``, a new temporary one when None; or
        the database's own address, if it gives every reader a consistent view itself)."""

    @abstractmethod
    def close(self) -> None: ...
