"""Units of work and reads the engine hands to storage, and the catalog row of a table.

The engine hands over whole units (:class:`Append`, :class:`Refresh`, :class:`SqlRefresh`)
and the storage applies each in one transaction, so atomicity lives in storage and
nowhere else.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ralf.schema import Rejection, Schema, quote

SOURCE = "source"
FEATURE = "feature"
# ralf's own tables in the ralf schema (migrations/)
BOOKKEEPING_TABLES = ("tables", "watermarks", "operator_state", "source_state", "rejected",
                      "schema_migrations", "shard_floors", "forgotten")

# A changelog source's log columns beside the user's: the sign of each logged row (+1 a
# row that enters the source's current state, -1 one that leaves it), the change it came
# from (insert / update / delete) and, on a -1 row, the _ralf_seq of the +1 row it retracts.
DIFF = "_ralf_diff"
OP = "_ralf_op"
RETRACTS = "_ralf_retracts"
CHANGE_COLUMNS = (DIFF, OP, RETRACTS)
CHANGE_DDL = f", {DIFF} BIGINT NOT NULL, {OP} VARCHAR NOT NULL, {RETRACTS} BIGINT"


@dataclass(frozen=True)
class Changelog:
    """How a source's records change its rows: ``mode`` "upsert" (a record replaces the
    current row of its identity key; a delete removes it) or "changelog" (each record
    says insert, update or delete); ``key``: the identity key's columns (None: a row is
    identified by all its values, and the source is a multiset of rows)."""

    mode: str
    key: tuple[str, ...] | None = None

    def to_json(self) -> str:
        """The catalog's text of it."""
        return json.dumps({"mode": self.mode, "key": None if self.key is None else list(self.key)})

    @classmethod
    def from_json(cls, text: str | None) -> Changelog | None:
        """The changelog :meth:`to_json` describes (None: an append-only source)."""
        if text is None:
            return None
        data = json.loads(text)
        return cls(data["mode"], None if data["key"] is None else tuple(data["key"]))



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
    # a feature table derived from a table with event time: its rows and history carry
    # EVENT_TIME (a source's event time is the column its schema names)
    timed: bool = False
    # a windowed aggregate's tiles table: its columns (name, SQL type); none for others
    tiles: list[tuple[str, str]] = field(default_factory=list)
    # a source whose records update and delete rows (its log holds signed rows); None for
    # an append-only source and for feature tables
    changelog: Changelog | None = None
    # a feature table derived from a changelog source: its parent's log retracts rows
    retracts: bool = False
    # what computes a feature table's rows beyond its schema (ralf/evolve.py: operator
    # identity, query, the digests of the tables it reads); None if stored before ralf
    # kept it
    definition: dict[str, Any] | None = None

    @property
    def event_column(self) -> str | None:
        """The column of this table's log that holds event time, if it has one."""
        if self.kind == SOURCE:
            return self.schema.event_time
        return EVENT_TIME if self.timed else None


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
    # a changelog source: ``rows`` carry CHANGE_COLUMNS; the current state loses the rows
    # whose _ralf_seq is listed in ``retracted`` and gains ``rows``' +1 rows not retracted
    retracted: list[int] = field(default_factory=list)


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
    # keys whose rows go (an operator deleted them, or a rebuild left them no row): one
    # column, ``key``; their removal is a version of the history
    deleted: pa.Table | None = None
    # a lookup join of a changelog: how far its log is now followed (None: not moved)
    lookup_mark: int | None = None


@dataclass
class SqlRefresh:
    """A SQL table's progress (``aggregate()``/``sql()``): the plan runs over the pending
    appends inside the database; outputs, history and watermarks commit together."""

    table: TableInfo
    read: LogRead
    plan: Any  # ralf.ivm DeltaAggregate | KeyRecompute
    version: int
    updated_at: dt.datetime
    watermark: int
    set_watermarks: dict[str, int]
    clear_watermarks: bool
    # the looked-up table's changes to follow in the same refresh (their reached keys
    # recomputed too, the lookup mark moved to its ``high``), if any
    lookup: LogRead | None = None
    # keys held back (failing): a windowed table leaves their windows alone too (one
    # column, ``key``), if any
    held: pa.Table | None = None


@dataclass
class Erase:
    """The last step of a forget (ralf.engine.forget): the key's records leave the
    ``source``'s log; its rows and history leave the ``aligned`` tables; the watermarks
    the ``marked`` tables keep under its text go; the operator ``states`` (table -> new
    checkpoint) are written; request ``request`` is closed with what was removed."""

    source: TableInfo
    key: Any
    key_text: str
    aligned: list[TableInfo]
    marked: list[str]
    states: dict[str, bytes | None]
    request: int
    at: dt.datetime


@dataclass
class LookupAdvance:
    """A SQL table that looks up another has followed the other's log up to ``lookup_mark``:
    the keys it reached are made stale (``set_watermarks``: key text -> lowered mark), with
    the new mark, atomically."""

    table: TableInfo
    lookup_mark: int
    set_watermarks: dict[str, int]


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


# A timed feature table's event time: of the newest record its row (or history version)
# was computed from; never earlier than its previous version's, so a value is never
# visible in the history before every record it includes happened.
EVENT_TIME = "_ralf_event_time"
# A history's deletion marker: true on the version that records a key's removal (its
# other columns NULL); NULL on every version that holds a row.
DELETED = "_ralf_deleted"
# Migrations that change every feature table's history, beyond what a SQL file can name:
# version -> statement, ``{history}`` standing for each history table.
HISTORY_UPGRADES = {6: f"ALTER TABLE {{history}} ADD COLUMN {DELETED} BOOLEAN"}


def log_table(table: TableInfo) -> str:
    """What children replay: a source's append table, a feature table's history."""
    if table.kind == SOURCE:
        return quote(table.name)
    return history_table(table.name)


def current_table(source: str) -> str:
    """The qualified name of a changelog source's current state: its live rows."""
    return f"ralf.{quote(source + '__current')}"


def rows_relation(table: TableInfo, schema: str = "main") -> str:
    """Where a table's rows as they are now live: a feature table's rows, an append-only
    source's appends, a changelog source's current state (``schema``: the user schema)."""
    if table.changelog is not None:
        return current_table(table.name)
    return f"{schema}.{quote(table.name)}"


def tiles_table(feature_table: str) -> str:
    """The qualified name of a windowed aggregate's tiles (ralf.ivm.windows)."""
    return f"ralf.{quote(feature_table + '__tiles')}"


def history_table(feature_table: str) -> str:
    """The qualified name of a feature table's history."""
    return f"ralf.{quote(feature_table + '__history')}"
