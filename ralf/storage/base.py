"""The storage skeleton: one class owns every unit of work's sequence and ralf's
bookkeeping SQL; a backend fills in a few dialect hooks.

The engine speaks to :class:`Storage`'s public methods. Each unit of work (an append, a
refresh, a SQL table's refresh) runs here, in one transaction, in one order — stage the
rows, upsert them, log their history, move the watermarks, write the checkpoint, then the
crash point before the commit — the way quix-streams keeps its transaction logic in
``state/base`` and lets each store fill in the storage calls. A backend (DuckDB,
PostgreSQL) provides:

* a :class:`Transaction` on its writer, and one on a per-thread reader (``_transaction``,
  ``_reading``): execute, fetch as Arrow, and stage an Arrow table as a named relation;
* its DDL (``_create_ddl``) and its upsert of staged rows with their history
  (``_write_rows``);
* the point-in-time join of ``historical`` (``_as_of_join``: ASOF or LATERAL);
* client SQL (``sql``), result types (``describe``), snapshots and ``close``;
* optionally faster paths (``_insert_appends``, ``_write_rows``) and the layout of a
  sharded progress (``_progress_name``, ``_own_rows``, ``_write_floor`` ...).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ralf.clock import utcnow
from ralf.errors import QueryError, ValueRangeError
from ralf.faults import crashpoint
from ralf.ivm.aggregate import DeltaAggregate
from ralf.ivm.views import Lookup
from ralf.ivm.windows import EXPIRES, TILE, WindowAggregate, timestamp
from ralf.schema import Rejection, Schema, quote
from ralf.storage import migrate
from ralf.storage.sql import (
    current_query,
    log_from,
    pending_rows,
    pending_summary,
    point_as_of_query,
    point_query,
    registered,
    time_column,
)
from ralf.storage.units import (
    BOOKKEEPING_TABLES,
    CHANGE_COLUMNS,
    DELETED,
    DIFF,
    EVENT_TIME,
    FEATURE,
    HISTORY_UPGRADES,
    OP,
    SOURCE,
    Append,
    Changelog,
    Erase,
    LogRead,
    LookupAdvance,
    Refresh,
    SqlRefresh,
    TableInfo,
    current_table,
    history_table,
    log_table,
    rows_relation,
    tiles_table,
)


class Transaction(ABC):
    """One open transaction (or, for reads, one session) of a backend."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed (-1 if none apply)."""

    @abstractmethod
    def execute_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        """Run a statement once per row of parameters."""

    @abstractmethod
    def script(self, sql: str) -> None:
        """Run every statement of a script (a migration file), split by the database's own
        parser: a ``;`` in a string, a comment or a ``$$`` body ends none."""

    @abstractmethod
    def arrow(self, sql: str, params: Sequence[Any] = (),
              types: dict[str, pa.DataType] | None = None) -> pa.Table:
        """A query's result as Arrow; ``types``: the Arrow types of some columns, for a
        backend whose driver does not know them (the others by the database's types)."""

    @abstractmethod
    def stage(self, name: str, table: pa.Table) -> None:
        """``table`` as a relation named ``name`` until the transaction ends."""

    def materialize(self, name: str, query: str, keep: list[str],
                    types: dict[str, pa.DataType]) -> pa.Table:
        """A query's result as a relation named ``name`` until the transaction ends;
        returns its ``keep`` columns."""
        result = self.arrow(query, types=types)
        self.stage(name, result)
        return result.select(keep)


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
        """Why the query was interrupted, for its error."""
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




# The column a timed refresh's versions are ordered by (the order they were computed in).
VERSION_ORDER = "__ralf_order"


class Storage(ABC):
    """What the engine needs from a database: the units of work, the reads, the catalog.
    Everything that is not the backend's own SQL dialect is written here once."""

    # Sequence numbers this process writes start above this (a shard's own range, so its
    # log reads see only its own appends; see ralf.storage.postgres).
    seq_base: int = 0
    # The dialect's parameter placeholder, and the schema user tables live in.
    mark = "?"
    user_schema = "main"
    # What DROP TABLE adds to drop the views over a table too (PostgreSQL refuses to drop
    # a table an alias's view reads; DuckDB's views are resolved when queried).
    _drop_dependents = ""
    # Errors of the driver that mean "this value cannot be in this database" (a point
    # query for such a key finds nothing).
    unreadable_value: tuple[type[BaseException], ...] = ()
    # Errors of the driver that mean "a value computed from the data does not fit its
    # type" (a sum past BIGINT): a SQL table's refresh raises ValueRangeError for them.
    out_of_range: tuple[type[BaseException], ...] = ()

    # ---- the backend's hooks ----------------------------------------------------------------
    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Transaction]:
        """The writer's transaction: committed when the block ends, rolled back if it
        raises."""

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Transaction]:
        """This thread's reader session (a committed snapshot per statement)."""

    @abstractmethod
    def _create_ddl(self, info: TableInfo) -> list[str]:
        """The statements that create a source's append table, or a feature table and its
        history."""

    @abstractmethod
    def _write_rows(self, tx: Transaction, info: TableInfo, relation: str,
                    columns: list[str], version: int, at: dt.datetime,
                    history: str | None = None) -> None:
        """Replace the rows of the keys in the staged ``relation`` (``columns``: user
        columns, maybe helpers and the event time) with version ``version`` written at
        ``at``, and log them in the history (:meth:`_append_history`, or in the same
        statement) — or log the relation ``history`` instead, when given (a timed table's
        versions, one per event time)."""

    @abstractmethod
    def _as_of_join(self, table: TableInfo, alias: str, columns: list[str],
                    timestamp: str, by: str) -> str:
        """The join that gives each entity row (alias ``e``) ``table``'s ``columns`` as of
        the row's ``timestamp`` (``by``: see :func:`ralf.storage.sql.as_of_column`), as
        ``alias``; of several versions at the same time, the newest."""

    @abstractmethod
    def describe(self, query: str) -> list[tuple[str, str]]:
        """Column names and DuckDB type names of a query's result."""

    @abstractmethod
    def sql(self, query: str, *, max_rows: int | None = None, timeout: float | None = None,
            cancel: threading.Event | None = None) -> pa.Table:
        """Run one read-only query (:mod:`ralf.storage.readonly`); anything that could
        write, a result over ``max_rows`` rows, a run past ``timeout`` seconds and a set
        ``cancel`` event raise QueryError."""

    @abstractmethod
    def snapshot(self, directory: str | None) -> str:
        """What other programs may open for a consistent view of the database while this
        one writes (a copy written into ``directory``, a new temporary one when None; or
        the database's own address, if it gives every reader a consistent view itself)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and files."""

    @abstractmethod
    def _epoch_us(self, expression: str) -> str:
        """Microseconds since 1970 of a timestamp expression, exactly, in this dialect."""

    @abstractmethod
    def _bucket(self, width: int, expression: str) -> str:
        """The start of the ``width``-microsecond bucket (counted from 1970) a timestamp
        expression falls in, in this dialect."""

    def _migration_script(self, script: str) -> str:
        """A migration file's statements as this dialect says them."""
        return script

    def _lock_catalog(self, tx: Transaction) -> None:
        """Serialise catalog changes with other processes sharing the database (one
        process per file: nothing to do)."""
        return None

    def _after_create(self, tx: Transaction, names: list[str]) -> None:
        """After tables (quoted names) were created: e.g. who may read them."""
        return None

    def _dialect(self, query: str) -> str:
        """ralf's SQL (DuckDB's dialect) as this database runs it."""
        return query

    def _pending_relation(self, tx: Transaction, read: LogRead) -> str:
        """A SELECT of the read's pending appends, for a SQL table's plan."""
        return pending_rows(read)

    def _text(self, text: str, escape: str) -> str:
        """Text as this database can hold it (``escape`` replaces what it cannot)."""
        return text

    def unstorable(self, rows: pa.Table) -> dict[int, tuple[str, str]]:
        """Rows this database cannot hold, by index: (column, why)."""
        return {}

    # Progress kept per writer (one unsharded process: per table). A sharded backend
    # keeps each shard's floor, marks and checkpoints under its own name.
    def _progress_name(self, table: str) -> str:
        """The name a table's marks and checkpoints are kept under."""
        return table

    def _own_rows(self) -> str:
        """A predicate on ``_ralf_seq``: the rows this process wrote."""
        return "TRUE"

    def _write_floor(self, tx: Transaction, table: str, floor: int) -> None:
        tx.execute(f"UPDATE ralf.tables SET watermark = {self.mark} WHERE name = {self.mark}",
                   [floor, table])

    def load_floor(self, table: str) -> int:
        """A feature table's watermark floor as committed."""
        with self._reading() as tx:
            return tx.arrow(f"SELECT watermark FROM ralf.tables WHERE name = {self.mark}",
                            [table]).column(0)[0].as_py()

    def load_lookup_floor(self, table: str) -> int:
        """How far a SQL table has followed the log of the table it looks up."""
        with self._reading() as tx:
            return tx.arrow(f"SELECT lookup_watermark FROM ralf.tables WHERE name = {self.mark}",
                            [table]).column(0)[0].as_py() or 0

    def lookup_changes(self, parent: TableInfo, lookup: Lookup, read: LogRead) -> pa.Table:
        """The keys of ``parent`` whose rows a change of the looked-up table within ``read``
        reaches (one column, ``key``)."""
        key_type = parent.schema.arrow.field(parent.schema.primary_key).type
        with self._reading() as tx:
            return tx.arrow(f"SELECT DISTINCT key FROM ({self._reached(parent, lookup, read)})"
                            " AS r", types={"key": key_type})

    def _reached(self, parent: TableInfo, lookup: Lookup, read: LogRead) -> str:
        """A SELECT of the parent keys (column ``key``) a lookup's changes reach: the rows
        naming a changed key in the lookup column (and, for an IN, the rows where it is
        NULL: their value depends on whether the set is empty)."""
        key, on = quote(parent.schema.primary_key), quote(lookup.on)
        other_key = quote(read.table.schema.primary_key)
        nulls = f" OR t.{on} IS NULL" if lookup.nulls else ""
        return (f"SELECT t.{key} AS key FROM {self.user_schema}.{quote(parent.name)} t "
                f"WHERE t.{on} IN (SELECT p.{other_key} {log_from(read)}){nulls}")

    def advance_lookup(self, unit: LookupAdvance) -> None:
        """Make the reached keys stale and move the lookup mark, in one transaction."""
        name = unit.table.name
        with self._transaction() as tx:
            if unit.set_watermarks:
                self._set_marks(tx, self._progress_name(name), unit.set_watermarks)
            self._write_lookup_mark(tx, name, unit.lookup_mark)
            crashpoint("lookup.before_commit")

    def _write_lookup_mark(self, tx: Transaction, table: str, mark: int) -> None:
        tx.execute(f"UPDATE ralf.tables SET lookup_watermark = {self.mark} WHERE name = "
                   f"{self.mark}", [mark, table])

    def _catalog_query(self) -> str:
        return ("SELECT name, kind, schema_json, parent, lookup, lookup_on, lazy, watermark, "
                "changelog, definition FROM ralf.tables")

    # ---- catalog ----------------------------------------------------------------------------
    def migrate(self, directory: Path | None = None) -> list[int]:
        """Apply the migrations this database has not seen yet (one process at a time), from
        ``directory`` (default: ralf's own, :func:`ralf.storage.migrate.migrations_dir`);
        returns the versions applied."""
        applied = []
        with self._transaction() as tx:
            self._lock_catalog(tx)
            exists = tx.arrow("SELECT count(*) AS n FROM information_schema.tables WHERE "
                              "table_schema = 'ralf' AND table_name = 'schema_migrations'")
            done = set()
            if exists.column(0)[0].as_py():
                done = set(tx.arrow("SELECT version FROM ralf.schema_migrations")
                           .column(0).to_pylist())
            for migration in migrate.available(directory):
                if migration.version in done:
                    continue
                tx.script(self._migration_script(migration.sql))
                if migration.version in HISTORY_UPGRADES:
                    features = tx.arrow(f"SELECT name FROM ralf.tables WHERE kind = {self.mark}",
                                        [FEATURE]).column(0).to_pylist()
                    for name in features:
                        tx.execute(HISTORY_UPGRADES[migration.version].format(
                            history=history_table(name)))
                tx.execute(f"INSERT INTO ralf.schema_migrations VALUES ({self.mark}, "
                           f"{self.mark}, {self.mark})",
                           [migration.version, migration.name, utcnow()])
                applied.append(migration.version)
        return applied

    def schema_version(self) -> int:
        """The newest migration applied."""
        with self._reading() as tx:
            return tx.arrow("SELECT max(version) FROM ralf.schema_migrations").column(0)[0].as_py()

    def catalog(self) -> dict[str, TableInfo]:
        """Every table's catalog row, by name."""
        with self._reading() as tx:
            rows = tx.arrow(self._catalog_query()).to_pylist()
        infos = {r["name"]: TableInfo(r["name"], r["kind"], Schema.from_json(r["schema_json"]),
                                      r["parent"], r["lookup"], r["lookup_on"], bool(r["lazy"]),
                                      r["watermark"],
                                      changelog=Changelog.from_json(r["changelog"]),
                                      definition=_json_or_none(r["definition"]))
                 for r in rows}
        for info in infos.values():  # a feature table has event time if its source has
            root = info
            while root.kind == FEATURE and root.parent in infos:
                root = infos[root.parent]
            info.timed = info.kind == FEATURE and root.event_column is not None
            info.retracts = info.kind == FEATURE and root.changelog is not None
        return infos

    def create_table(self, info: TableInfo) -> None:
        """Create a source's append table, or a feature table and its history log, with its
        catalog row (a process sharing the database that created it first wins)."""
        with self._transaction() as tx:
            self._lock_catalog(tx)
            if tx.arrow(f"SELECT 1 FROM ralf.tables WHERE name = {self.mark}",
                        [info.name]).num_rows:
                return
            self._create(tx, info)

    def replace_table(self, info: TableInfo) -> None:
        """Drop a table and everything kept about it, and create it anew as ``info``
        defines it, in one transaction (ralf/evolve.py: a shadow table left by another
        definition)."""
        with self._transaction() as tx:
            self._lock_catalog(tx)
            self._drop(tx, info.name)
            self._create(tx, info)

    def swap_table(self, shadow: str, name: str) -> None:
        """Drop table ``name`` with everything kept about it and put table ``shadow`` (its
        new version, caught up) in its place — its rows, history, tiles, progress and
        catalog row renamed — in one transaction (ralf/evolve.py)."""
        mark = self.mark
        with self._transaction() as tx:
            self._lock_catalog(tx)
            info = self._stored_info(tx, shadow)
            self._drop(tx, name)
            renamed = TableInfo(name, info.kind, info.schema, changelog=info.changelog,
                                tiles=info.tiles)
            for old, new in zip(self._parts(info), self._parts(renamed), strict=True):
                tx.execute(f"ALTER TABLE {old} RENAME TO {new.split('.', 1)[-1]}")
            for table in ("ralf.watermarks", "ralf.operator_state"):
                tx.execute(f"UPDATE {table} SET table_name = {mark} WHERE table_name = {mark}",
                           [self._progress_name(name), self._progress_name(shadow)])
            tx.execute(f"UPDATE ralf.settings SET name = {mark} WHERE name = {mark}",
                       [f"tiles:{name}", f"tiles:{shadow}"])
            tx.execute(f"UPDATE ralf.tables SET name = {mark} WHERE name = {mark}",
                       [name, shadow])
            crashpoint("evolve.before_swap")

    def drop_table(self, name: str) -> None:
        """Drop a table, its logs, progress and catalog row, in one transaction."""
        with self._transaction() as tx:
            self._lock_catalog(tx)
            self._drop(tx, name)

    def _create(self, tx: Transaction, info: TableInfo) -> None:
        mark = self.mark
        for statement in self._create_ddl(info):
            tx.execute(statement)
        self._after_create(tx, self._parts(info))
        tx.execute("INSERT INTO ralf.tables (name, kind, schema_json, parent, created_at, "
                   "lookup, lookup_on, lazy, changelog, definition, watermark) VALUES "
                   f"({', '.join([mark] * 10)}, 0)",
                   [info.name, info.kind, info.schema.to_json(), info.parent, utcnow(),
                    info.lookup, info.lookup_on, info.lazy,
                    info.changelog.to_json() if info.changelog else None,
                    _json_or_null(info.definition)])

    @staticmethod
    def _parts(info: TableInfo) -> list[str]:
        """The database tables that hold a ralf table (quoted names)."""
        parts = [quote(info.name)] + ([] if info.kind == SOURCE else [log_table(info)])
        parts += [tiles_table(info.name)] if info.tiles else []
        return parts + ([current_table(info.name)] if info.changelog else [])

    def _stored_info(self, tx: Transaction, name: str) -> TableInfo | None:
        """What the catalog says of a table's parts (None: no such table)."""
        rows = tx.arrow(f"SELECT kind, schema_json, changelog FROM ralf.tables WHERE name = "
                        f"{self.mark}", [name]).to_pylist()
        if not rows:
            return None
        has_tiles = tx.arrow(f"SELECT 1 FROM ralf.settings WHERE name = {self.mark}",
                             [f"tiles:{name}"]).num_rows
        return TableInfo(name, rows[0]["kind"], Schema.from_json(rows[0]["schema_json"]),
                         changelog=Changelog.from_json(rows[0]["changelog"]),
                         tiles=[("", "")] if has_tiles else [])

    def _drop(self, tx: Transaction, name: str) -> None:
        mark = self.mark
        info = self._stored_info(tx, name)
        if info is None:
            return
        # a tiles table exists for windowed aggregates only; IF EXISTS spares asking
        for part in dict.fromkeys([*self._parts(info), tiles_table(name)]):
            tx.execute(f"DROP TABLE IF EXISTS {part} {self._drop_dependents}")
        progress = self._progress_name(name)
        for table in ("ralf.watermarks", "ralf.operator_state"):
            tx.execute(f"DELETE FROM {table} WHERE table_name = {mark}", [progress])
        tx.execute(f"DELETE FROM ralf.settings WHERE name = {mark}", [f"tiles:{name}"])
        tx.execute(f"DELETE FROM ralf.tables WHERE name = {mark}", [name])

    def create_alias(self, alias: str, table: str) -> None:
        """A view named ``alias`` over ``table``."""
        with self._transaction() as tx:
            tx.execute(f"CREATE OR REPLACE VIEW {quote(alias)} AS SELECT * FROM {quote(table)}")
            self._after_create(tx, [quote(alias)])

    def update_definition(self, info: TableInfo) -> None:
        """Store a table's changed lazy flag or lookup side, or the definition adopted for
        a table stored without one (same schema and parent)."""
        mark = self.mark
        with self._transaction() as tx:
            tx.execute(f"UPDATE ralf.tables SET lazy = {mark}, lookup = {mark}, "
                       f"lookup_on = {mark}, definition = {mark} WHERE name = {mark}",
                       [info.lazy, info.lookup, info.lookup_on,
                        _json_or_null(info.definition), info.name])

    # ---- units of work (each one transaction) --------------------------------------------------
    def append(self, unit: Append) -> None:
        """New records of a source with its position and its rejected records."""
        info = unit.table
        with self._transaction() as tx:
            self._log_appends(tx, unit)
            self._replace(tx, "ralf.source_state", [
                self._progress_name(info.name), unit.source_state, unit.emitted,
                unit.exhausted, unit.ingested_at])
            self._insert_rejected(tx, unit.rejected)
            crashpoint("append.before_commit")

    def _log_appends(self, tx: Transaction, unit: Append) -> None:
        """Append the unit's rows, and (a changelog source) move its current state."""
        if unit.rows.num_rows:
            self._insert_appends(tx, unit.table, unit.rows, unit.first_seq, unit.ingested_at)
            if unit.table.changelog is not None:
                self._change_current(tx, unit.table, unit)

    def _change_current(self, tx: Transaction, info: TableInfo, unit: Append) -> None:
        """A changelog source's current state follows its appended changes: the retracted
        rows leave, the +1 rows that were not retracted in the same batch enter."""
        current, mark = current_table(info.name), self.mark
        first, last = unit.first_seq, unit.first_seq + unit.rows.num_rows - 1
        if unit.retracted:
            tx.stage("__ralf_retracted", pa.table({"seq": pa.array(unit.retracted, pa.int64())}))
            tx.execute(f"DELETE FROM {current} WHERE _ralf_seq IN "
                       "(SELECT seq FROM __ralf_retracted)")
        cols = ", ".join(quote(c) for c in info.schema.names)
        tx.execute(f"INSERT INTO {current} ({cols}, _ralf_seq, _ralf_ingested_at) "
                   f"SELECT {cols}, _ralf_seq, _ralf_ingested_at FROM {quote(info.name)} a "
                   f"WHERE a._ralf_seq >= {mark} AND a._ralf_seq <= {mark} AND a._ralf_diff > 0 "
                   f"AND NOT EXISTS (SELECT 1 FROM {quote(info.name)} r WHERE r._ralf_seq >= "
                   f"{mark} AND r._ralf_seq <= {mark} AND r._ralf_retracts = a._ralf_seq)",
                   [first, last, first, last])

    def current_changes(self, info: TableInfo, identities: pa.Table) -> pa.Table:
        """A changelog source's current rows whose identity (the columns of
        ``identities``) is among ``identities``': user columns and ``_ralf_seq``."""
        on = " AND ".join(f"c.{quote(n)} IS NOT DISTINCT FROM i.{quote(n)}"
                          for n in identities.column_names)
        cols = ", ".join(f"c.{quote(c)}" for c in info.schema.names)
        with self._reading() as tx:
            tx.stage("__ralf_identities", identities)
            return tx.arrow(f"SELECT {cols}, c._ralf_seq FROM {current_table(info.name)} c "
                            f"WHERE EXISTS (SELECT 1 FROM __ralf_identities i WHERE {on}) "
                            "ORDER BY c._ralf_seq", types=_arrow_types(info, "_ralf_seq"))

    # ---- forgetting a key (ralf.engine.forget) ------------------------------------------
    def forget_requested(self, table: str, key_text: str) -> int | None:
        """The open forget request of a key, if any."""
        with self._reading() as tx:
            rows = tx.arrow(f"SELECT id FROM ralf.forgotten WHERE table_name = {self.mark} "
                            f"AND key_text = {self.mark} AND done_at IS NULL",
                            [table, key_text]).column(0).to_pylist()
        return rows[0] if rows else None

    def open_forgets(self) -> list[tuple[int, str, str]]:
        """The forget requests a crash left open: (id, table, key text), oldest first."""
        with self._reading() as tx:
            rows = tx.arrow("SELECT id, table_name, key_text FROM ralf.forgotten WHERE "
                            "done_at IS NULL ORDER BY id").to_pylist()
        return [(r["id"], r["table_name"], r["key_text"]) for r in rows]

    def ask_forget(self, unit: Append, key_text: str, sha256: str) -> int:
        """A forget request with the retraction of the key's current rows (``unit``), in
        one transaction; returns the request's id."""
        info, mark = unit.table, self.mark
        with self._transaction() as tx:
            self._log_appends(tx, unit)
            tx.execute("INSERT INTO ralf.forgotten (table_name, key_text, key_sha256, seq, "
                       f"requested_at) VALUES ({mark}, {mark}, {mark}, {mark}, {mark})",
                       [info.name, key_text, sha256, unit.first_seq - 1, unit.ingested_at])
            request = tx.arrow(f"SELECT max(id) FROM ralf.forgotten WHERE table_name = {mark} "
                               f"AND key_text = {mark}", [info.name, key_text]
                               ).column(0)[0].as_py()
            crashpoint("forget.before_commit")
        return request

    def forgotten(self) -> pa.Table:
        """The forget audit, oldest first (no key: its SHA-256)."""
        with self._reading() as tx:
            return tx.arrow("SELECT id, table_name, key_sha256, requested_at, done_at, removed "
                            "FROM ralf.forgotten ORDER BY id")

    def forget_seq(self, request: int) -> int:
        """The source's sequence number before a forget's retraction."""
        with self._reading() as tx:
            return tx.arrow(f"SELECT seq FROM ralf.forgotten WHERE id = {self.mark}",
                            [request]).column(0)[0].as_py()

    def source_records(self, info: TableInfo, key: Any) -> pa.Table:
        """Every record a changelog source logged for a key (its +1 rows), oldest first."""
        cols = ", ".join(quote(c) for c in info.schema.names)
        with self._reading() as tx:
            return tx.arrow(f"SELECT {cols} FROM {quote(info.name)} WHERE "
                            f"{quote(info.schema.primary_key)} = {self.mark} AND {DIFF} > 0 "
                            "ORDER BY _ralf_seq", [key], types=_arrow_types(info))

    def erase(self, unit: Erase) -> dict[str, int]:
        """The last step of a forget, in one transaction; returns rows removed per table
        (``<table>``: records or rows, ``<table>__history``: versions)."""
        mark, removed = self.mark, {}
        with self._transaction() as tx:
            source = unit.source
            removed[source.name] = self._erase_log(tx, quote(source.name), source, unit.key,
                                                   f"{DIFF} = 0, {OP} = 'forgotten'")
            tx.execute(f"DELETE FROM {current_table(source.name)} WHERE "
                       f"{quote(source.schema.primary_key)} = {mark}", [unit.key])
            for info in unit.aligned:
                key = quote(info.schema.primary_key)
                removed[info.name] = tx.execute(f"DELETE FROM {quote(info.name)} WHERE {key} = "
                                                f"{mark}", [unit.key])
                removed[info.name + "__history"] = self._erase_log(
                    tx, log_table(info), info, unit.key, f"{DELETED} = true")
            for name in unit.marked:
                tx.execute(f"DELETE FROM ralf.watermarks WHERE table_name = {mark} AND key = "
                           f"{mark}", [self._progress_name(name), unit.key_text])
            for name, state in unit.states.items():
                self._replace(tx, "ralf.operator_state", [self._progress_name(name), state,
                                                          unit.at])
            tx.execute(f"UPDATE ralf.forgotten SET key_text = NULL, done_at = {mark}, "
                       f"removed = {mark} WHERE id = {mark}",
                       [unit.at, json.dumps(removed, sort_keys=True), unit.request])
            crashpoint("erase.before_commit")
        return removed

    def _erase_log(self, tx: Transaction, table: str, info: TableInfo, key: Any,
                   scrubbed: str) -> int:
        """Delete a key's rows from a log (a source's, a history) — but for the newest row
        of the log, if it is the key's: that one is scrubbed (its values NULL, ``scrubbed``
        set) and kept, so the log's newest sequence number, which its readers' watermarks
        count from, stays where it is. Returns the rows removed."""
        mark, pk = self.mark, quote(info.schema.primary_key)
        nulls = ", ".join(f"{quote(c)} = NULL" for c in info.schema.names)
        kept = tx.execute(f"UPDATE {table} SET {nulls}, {scrubbed} WHERE {pk} = {mark} AND "
                          f"_ralf_seq = (SELECT max(_ralf_seq) FROM {table})", [key])
        return max(kept, 0) + tx.execute(f"DELETE FROM {table} WHERE {pk} = {mark}", [key])

    def live_rows(self, info: TableInfo, keys: pa.Array | None) -> pa.Table:
        """A source's current rows — a changelog's live rows, an append-only source's
        every append — (of ``keys``, or all), oldest first: user columns and
        ``_ralf_seq``."""
        cols = ", ".join(quote(c) for c in info.schema.names)
        where = ""
        with self._reading() as tx:
            if keys is not None:
                tx.stage("__ralf_wanted", pa.table({"key": keys}))
                where = (f" WHERE {quote(info.schema.primary_key)} IN "
                         "(SELECT key FROM __ralf_wanted)")
            return tx.arrow(f"SELECT {cols}, _ralf_seq FROM "
                            f"{rows_relation(info, self.user_schema)}{where} "
                            "ORDER BY _ralf_seq", types=_arrow_types(info, "_ralf_seq"))

    def refresh(self, unit: Refresh) -> pa.Table:
        """A Python operator's outputs, their history, the watermarks and the operator's
        checkpoint. Returns the rows written: ``unit.rows``, or a timed table's newest
        version per key with its event time."""
        info = unit.table
        written = unit.rows
        with self._transaction() as tx:
            if unit.rows.num_rows and info.timed:
                tx.stage("__ralf_versions", unit.rows)
                written = self._write_versions(
                    tx, info, self._running_event_time(info), info.schema.names,
                    VERSION_ORDER, unit.version, unit.updated_at)
            elif unit.rows.num_rows:
                tx.stage("__ralf_rows", unit.rows)
                self._write_rows(tx, info, "__ralf_rows", unit.rows.column_names,
                                 unit.version, unit.updated_at)
            if unit.deleted is not None and unit.deleted.num_rows:
                self._delete_keys(tx, info, unit.deleted, unit.version, unit.updated_at)
            self._write_watermarks(tx, unit)
            if unit.lookup_mark is not None:
                self._write_lookup_mark(tx, info.name, unit.lookup_mark)
            if unit.write_state:
                self._replace(tx, "ralf.operator_state", [
                    self._progress_name(info.name), unit.state, unit.updated_at])
            crashpoint("refresh.before_commit")
        return written

    def _running_event_time(self, info: TableInfo) -> str:
        """A Python operator's staged ``__ralf_versions`` (every output of a refresh, in
        the order made, with its record's event time) with each version's event time the
        newest of its key's so far, the key's current row's included."""
        key, table = quote(info.schema.primary_key), quote(info.name)
        cols = ", ".join(f"v.{quote(c)}" for c in info.schema.names)
        return (f"SELECT {cols}, greatest(max(v.{EVENT_TIME}) OVER (PARTITION BY v.{key} "
                f"ORDER BY v.{VERSION_ORDER} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT "
                f"ROW), t.{EVENT_TIME}) AS {EVENT_TIME}, v.{VERSION_ORDER} "
                f"FROM __ralf_versions v LEFT JOIN {table} t ON t.{key} = v.{key}")

    def _write_versions(self, tx: Transaction, info: TableInfo, versions: str,
                        columns: list[str], order: str, version: int, at: dt.datetime
                        ) -> pa.Table:
        """A timed table's refresh: ``versions`` (a query of ``columns``, the final event
        time and ``order``) holds every version the refresh computed; each key's row
        becomes its last one, and the history keeps the last one per event time. Returns
        the rows written (``columns`` and the event time)."""
        key = quote(info.schema.primary_key)
        names = [*columns, EVENT_TIME]
        types = _arrow_types(info, EVENT_TIME)
        tx.materialize("__ralf_timed", versions, names, types)
        cols = ", ".join(quote(c) for c in names)

        def newest(partition: str) -> str:
            return (f"SELECT {cols} FROM (SELECT {cols}, row_number() OVER (PARTITION BY "
                    f"{partition} ORDER BY {quote(order)} DESC) AS __ralf_rank FROM "
                    "__ralf_timed) AS r WHERE __ralf_rank = 1")

        rows = tx.materialize("__ralf_rows", newest(key), names, types)
        history = f"({newest(f'{key}, {EVENT_TIME}')}) AS __ralf_history"  # read once
        self._write_rows(tx, info, "__ralf_rows", names, version, at, history=history)
        return rows

    def refresh_sql_table(self, unit: SqlRefresh) -> tuple[pa.Table, list[Any]]:
        """A SQL table's plan over the pending appends, inside the database: returns (the
        rows written — user columns and ``_ralf_seq`` —, the keys deleted)."""
        try:
            return self._run_sql_refresh(unit)
        except (*self.out_of_range, OverflowError) as exc:  # in the database, or converting
            first_line = str(exc).strip().splitlines()[0]
            raise ValueRangeError(f"a value does not fit its column: {first_line}") from exc

    def _run_sql_refresh(self, unit: SqlRefresh) -> tuple[pa.Table, list[Any]]:
        info, plan = unit.table, unit.plan
        names = info.schema.names
        with self._transaction() as tx:
            for name, table in registered(unit.read).items():
                tx.stage(name, table)
            pending = self._pending_relation(tx, unit.read)
            if isinstance(plan, WindowAggregate):
                data = self._refresh_windows(tx, unit, pending)
                deleted, columns = [], []  # written already
            elif isinstance(plan, DeltaAggregate) and info.timed:
                types = {n: info.schema.sql_type(n) for n in names}
                columns = [plan.key, *(o.name for o in plan.outputs), *plan.helpers]
                query = self._dialect(plan.new_versions(quote(info.name), pending, types,
                                                        EVENT_TIME, VERSION_ORDER))
                data = self._write_versions(tx, info, query, columns, VERSION_ORDER,
                                            unit.version, unit.updated_at)
                deleted, columns = [], []  # written already
            elif isinstance(plan, DeltaAggregate) and plan.retracting:
                data, deleted = self._retract(tx, unit, pending)
                columns = [plan.key, *(o.name for o in plan.outputs), *plan.helpers]
            elif isinstance(plan, DeltaAggregate):
                types = {n: info.schema.sql_type(n) for n in names}
                query = self._dialect(plan.new_rows(quote(info.name), pending, types))
                data = tx.materialize("__ralf_rows", query, names, _arrow_types(info))
                columns, deleted = [plan.key, *(o.name for o in plan.outputs),
                                    *plan.helpers], []
            else:
                data, deleted = self._recompute(tx, unit, pending)
                columns = names
            if data.num_rows and columns:
                self._write_rows(tx, info, "__ralf_rows", columns, unit.version,
                                 unit.updated_at)
            self._write_watermarks(tx, unit)
            if unit.lookup is not None:
                self._write_lookup_mark(tx, info.name, unit.lookup.high)
            crashpoint("sql.before_commit")
        rows = data.select(names + ([EVENT_TIME] if info.timed else []))
        return rows.append_column("_ralf_seq", pa.array(
            np.full(rows.num_rows, unit.version, np.int64))), deleted

    def _retract(self, tx: Transaction, unit: SqlRefresh, pending: str
                 ) -> tuple[pa.Table, list[Any]]:
        """An aggregate over a changelog: the changed groups (signed deltas, see
        :meth:`DeltaAggregate.retracted_rows`) staged as ``__ralf_rows``; the groups left
        without rows deleted. Returns both."""
        info, plan = unit.table, unit.plan
        names = info.schema.names
        types = {n: info.schema.sql_type(n) for n in names}
        current = rows_relation(unit.read.table, self.user_schema)
        query = self._dialect(plan.retracted_rows(quote(info.name), pending, current, types))
        rows = quote(plan.group_rows)
        key_type = info.schema.arrow.field(plan.key).type
        tx.materialize("__ralf_changed", query, [plan.key], {plan.key: key_type})
        gone = tx.arrow(f"SELECT {quote(plan.key)} AS key FROM __ralf_changed WHERE "
                        f"{rows} = 0", types={"key": key_type})
        data = tx.materialize("__ralf_rows", f"SELECT * FROM __ralf_changed WHERE {rows} > 0",
                              names, _arrow_types(info))
        deleted = (self._delete_keys(tx, info, gone, unit.version, unit.updated_at)
                   if gone.num_rows else [])
        return data, deleted

    def _refresh_windows(self, tx: Transaction, unit: SqlRefresh, pending: str) -> pa.Table:
        """A windowed aggregate: the pending appends merged into the tiles, then the
        windows of the keys they touched — and of the keys asked for, or (a whole
        refresh) whose window changed since with time — computed as of the refresh's
        time and written. Returns the rows written."""
        info, plan, read = unit.table, unit.plan, unit.read
        key, tiles = quote(plan.key), tiles_table(info.name)
        key_type = info.schema.arrow.field(plan.key).type
        merged = plan.merged_tiles(pending, tiles, self._epoch_us)
        tx.materialize("__ralf_new_tiles", self._dialect(merged), [plan.key], {})
        tx.execute(f"DELETE FROM {tiles} AS t WHERE EXISTS (SELECT 1 FROM __ralf_new_tiles n "
                   f"WHERE n.{key} = t.{key} AND n.{TILE} = t.{TILE})")
        tx.execute(f"INSERT INTO {tiles} SELECT * FROM __ralf_new_tiles")
        probes = (f"SELECT {key} AS key FROM ({pending}) AS s UNION SELECT {key} AS key "
                  f"FROM {quote(info.name)} WHERE {EXPIRES} <= {timestamp(unit.updated_at)}")
        if read.keys is not None:  # of the keys asked for only
            probes += f" AND {key} IN (SELECT key FROM __ralf_keys)"
        if unit.held is not None:  # their appends wait: their windows too
            tx.stage("__ralf_held", unit.held)
            probes = (f"SELECT key FROM ({probes}) AS k "
                      "WHERE key NOT IN (SELECT key FROM __ralf_held)")
        tx.materialize("__ralf_probes", self._dialect(probes), ["key"], {"key": key_type})
        types = {n: info.schema.sql_type(n) for n in info.schema.names}
        query = plan.values_at(unit.updated_at, "__ralf_probes", tiles,
                               f"{self.user_schema}.{quote(read.table.name)}",
                               f"r._ralf_seq <= {int(read.high)}", types)
        names = [*info.schema.names, EXPIRES]
        data = tx.materialize("__ralf_rows", self._dialect(query), names,
                              {**_arrow_types(info), EXPIRES: pa.timestamp("us")})
        if data.num_rows:
            self._write_rows(tx, info, "__ralf_rows", names, unit.version, unit.updated_at)
        return data

    def setting(self, name: str, default: str) -> str:
        """A setting the database keeps for its life (``ralf.settings``); a new one is
        stored as ``default`` and returned."""
        with self._transaction() as tx:
            rows = tx.arrow(f"SELECT value FROM ralf.settings WHERE name = {self.mark}",
                            [name]).column(0).to_pylist()
            if rows:
                return rows[0]
            tx.execute(f"INSERT INTO ralf.settings VALUES ({self.mark}, {self.mark})",
                       [name, default])
            return default

    def next_expiry(self, table: TableInfo) -> dt.datetime | None:
        """The earliest time a windowed aggregate's row changes with no new record."""
        with self._reading() as tx:
            return tx.arrow(f"SELECT min({EXPIRES}) AS at FROM {quote(table.name)}",
                            types={"at": pa.timestamp("us")}).column(0)[0].as_py()

    def expired_keys(self, table: TableInfo, at: dt.datetime, seq: int) -> pa.Table:
        """A windowed aggregate's keys whose rows time has changed by ``at``, as a
        ``pending_summary`` (no appends; stale since their change, as of ``seq``)."""
        key = quote(table.schema.primary_key)
        with self._reading() as tx:
            return tx.arrow(
                f"SELECT {key} AS key, CAST(0 AS BIGINT) AS n, CAST({int(seq)} AS BIGINT) AS "
                f"first_seq, CAST({int(seq)} AS BIGINT) AS last_seq, {EXPIRES} AS first_at "
                f"FROM {quote(table.name)} WHERE {EXPIRES} <= {timestamp(at)}",
                types={"key": table.schema.arrow.field(table.schema.primary_key).type,
                       "n": pa.int64(), "first_seq": pa.int64(), "last_seq": pa.int64(),
                       "first_at": pa.timestamp("us")})

    def window_rows(self, table: TableInfo, plan: WindowAggregate, source: TableInfo,
                    entities: pa.Table, timestamp_column: str) -> pa.Table:
        """A windowed aggregate's outputs as of each entity row's timestamp, computed from
        the source's records (rows in the entities' order)."""
        types = {n: table.schema.sql_type(n) for n in table.schema.names}
        query = plan.at_rows("__ralf_entities", timestamp_column,
                             f"{self.user_schema}.{quote(source.name)}", types, self._bucket)
        try:
            with self._reading() as tx:
                tx.stage("__ralf_entities", entities)
                return tx.arrow(self._dialect(query), types=_arrow_types(table))
        except Exception as exc:  # the database's refusal of these entity rows
            raise QueryError(f"historical_query: {exc}") from None

    def _recompute(self, tx: Transaction, unit: SqlRefresh, pending: str
                   ) -> tuple[pa.Table, list[Any]]:
        """The stale keys' groups recomputed from the parent's rows, staged as
        ``__ralf_rows``; the keys that have no group now are deleted. Returns both."""
        info, plan = unit.table, unit.plan
        key, parent = quote(plan.key), unit.read.table
        key_type = info.schema.arrow.field(plan.key).type
        if plan.whole:  # one group over every parent row: recomputed whole on any change
            if not tx.arrow(f"SELECT count(*) AS n FROM ({pending}) AS s").column(0)[0].as_py():
                return info.schema.arrow.empty_table(), []
            stale = tx.arrow(f"SELECT {key} AS key FROM {quote(info.name)}",
                             types={"key": key_type})
            result = tx.arrow(self._dialect(plan.query), types=_arrow_types(info))
        else:
            stale = self._stale_keys(tx, unit, pending, key_type)
            if stale.num_rows == 0:
                return info.schema.arrow.empty_table(), []
            tx.stage("__ralf_stale", stale)
            cols = ", ".join(quote(c) for c in parent.schema.names)
            parent_rows = (f"SELECT {cols} FROM {rows_relation(parent, self.user_schema)} "
                           f"WHERE {key} IN (SELECT key FROM __ralf_stale)")
            result = tx.arrow(self._dialect(plan.recompute(parent_rows)),
                              types=_arrow_types(info))
        data, rejected = info.schema.to_arrow(result.select(info.schema.names), info.name)
        if rejected:  # a value the table's column cannot hold: never a silent deletion
            raise ValueRangeError(f"a value does not fit its column {rejected[0].column!r}: "
                                  f"{rejected[0].reason}")
        kept = set(data.column(plan.key).to_pylist())
        gone = [k for k in stale.column("key").to_pylist() if k not in kept]
        deleted: list[Any] = []
        if gone:  # of the keys without a group now, the ones that had a row: deleted
            deleted = self._delete_keys(tx, info, pa.table({"key": pa.array(gone, key_type)}),
                                        unit.version, unit.updated_at)
        tx.stage("__ralf_rows", data)
        return data, deleted

    def _delete_keys(self, tx: Transaction, info: TableInfo, keys: pa.Table, version: int,
                     at: dt.datetime) -> list[Any]:
        """Delete the rows of ``keys`` (one column, ``key``) from a feature table; the
        history records each removal as version ``version`` (so as_of answers and children
        see it). Returns the keys that had a row."""
        key, key_type = quote(info.schema.primary_key), keys.schema.field("key").type
        tx.stage("__ralf_gone", keys)
        had_row = (f"SELECT {key} AS key FROM {quote(info.name)} WHERE {key} IN "
                   "(SELECT key FROM __ralf_gone)")
        deleted = tx.arrow(had_row, types={"key": key_type}).column(0).to_pylist()
        if deleted:
            timed = f", {EVENT_TIME}" if info.timed else ""
            tx.execute(f"INSERT INTO {log_table(info)} ({key}, _ralf_seq, _ralf_valid_from, "
                       f"{DELETED}{timed}) SELECT d.key, {self.mark}, CAST({self.mark} AS "
                       f"TIMESTAMP), true{', t.' + EVENT_TIME if timed else ''} FROM "
                       f"({had_row}) AS d JOIN {quote(info.name)} t ON t.{key} = d.key",
                       [version, at])
            tx.execute(f"DELETE FROM {quote(info.name)} WHERE {key} IN "
                       "(SELECT key FROM __ralf_gone)")
        return deleted

    def _stale_keys(self, tx: Transaction, unit: SqlRefresh, pending: str,
                    key_type: pa.DataType) -> pa.Table:
        """The keys a recompute refreshes: the pending appends' keys, and the keys the
        looked-up table's changes reach."""
        key = quote(unit.plan.key)
        stale_keys = f"SELECT DISTINCT {key} AS key FROM ({pending}) AS s"
        if unit.lookup is not None:
            stale_keys += (f" UNION "
                           f"{self._reached(unit.read.table, unit.plan.lookup, unit.lookup)}")
        return tx.arrow(stale_keys, types={"key": key_type})

    def _insert_appends(self, tx: Transaction, info: TableInfo, rows: pa.Table,
                        first_seq: int, at: dt.datetime) -> None:
        """Append validated rows, numbered from ``first_seq``, ingested at ``at``."""
        data = rows.append_column("_ralf_seq", pa.array(
            np.arange(first_seq, first_seq + rows.num_rows, dtype=np.int64)))
        tx.stage("__ralf_rows", data)
        cols = ", ".join(quote(c) for c in append_columns(info))
        tx.execute(f"INSERT INTO {quote(info.name)} ({cols}, _ralf_seq, _ralf_ingested_at) "
                   f"SELECT {cols}, _ralf_seq, CAST({self.mark} AS TIMESTAMP) FROM __ralf_rows",
                   [at])

    def _append_history(self, tx: Transaction, info: TableInfo, relation: str,
                        version: int, at: dt.datetime) -> None:
        """Log the rows of ``relation`` (a staged name, or an aliased subquery) in the
        history as version ``version``, valid from ``at`` (and, a timed table's, from
        their event time)."""
        cols = ", ".join(quote(c) for c in history_columns(info))
        tx.execute(f"INSERT INTO {log_table(info)} ({cols}, _ralf_seq, _ralf_valid_from) "
                   f"SELECT {cols}, {self.mark}, CAST({self.mark} AS TIMESTAMP) "
                   f"FROM {relation}", [version, at])

    def _write_watermarks(self, tx: Transaction, unit: Refresh | SqlRefresh) -> None:
        mark, name = self.mark, self._progress_name(unit.table.name)
        self._write_floor(tx, unit.table.name, unit.watermark)
        if unit.clear_watermarks:
            tx.execute(f"DELETE FROM ralf.watermarks WHERE table_name = {mark}", [name])
        self._set_marks(tx, name, unit.set_watermarks)

    def _set_marks(self, tx: Transaction, name: str, marks: dict[str, int]) -> None:
        """Upsert per-key watermarks (key text -> seq) kept under ``name``."""
        mark = self.mark
        if len(marks) == 1:  # a lazy query's key: ~1.7 ms, not ~4 (duckdb 2.0.1)
            [(key, seq)] = marks.items()
            if not tx.execute(f"UPDATE ralf.watermarks SET seq = {mark} WHERE table_name = "
                              f"{mark} AND key = {mark}", [seq, name, key]):
                tx.execute(f"INSERT INTO ralf.watermarks VALUES ({mark}, {mark}, {mark})",
                           [name, key, seq])
        elif marks:
            tx.stage("__ralf_marks", pa.table({
                "key": pa.array(list(marks), pa.string()),
                "seq": pa.array(list(marks.values()), pa.int64())}))
            tx.execute(f"INSERT INTO ralf.watermarks SELECT {mark}, key, seq FROM __ralf_marks "
                       "ON CONFLICT (table_name, key) DO UPDATE SET seq = excluded.seq", [name])

    def _replace(self, tx: Transaction, table: str, values: list[Any]) -> None:
        """Replace a bookkeeping row, keyed by its first column (a table name). DELETE +
        INSERT: an ON CONFLICT upsert of a 1.6 MB operator state took 19-46 ms where these
        take 4 ms (duckdb 2.0.1)."""
        mark = self.mark
        tx.execute(f"DELETE FROM {table} WHERE table_name = {mark}", values[:1])
        tx.execute(f"INSERT INTO {table} VALUES ({', '.join([mark] * len(values))})", values)

    def reject(self, rejected: list[Rejection]) -> None:
        """File records refused at the door of a table."""
        if rejected:
            with self._transaction() as tx:
                self._insert_rejected(tx, rejected)

    def _insert_rejected(self, tx: Transaction, rejected: list[Rejection]) -> None:
        if not rejected:
            return
        now = utcnow()
        tx.execute_many(
            "INSERT INTO ralf.rejected (table_name, reason, column_name, record, rejected_at) "
            f"VALUES ({', '.join([self.mark] * 5)})",
            [[r.table, self._text(r.reason, "\\x00"), r.column,
              self._text(r.raw_json(), "\\u0000"), now] for r in rejected])

    def reset_progress(self, table: str) -> None:
        """Forget a feature table's watermarks and checkpoint (its state could not be
        restored: it is rebuilt by replay)."""
        mark, name = self.mark, self._progress_name(table)
        with self._transaction() as tx:
            self._write_floor(tx, table, self.seq_base)
            tx.execute(f"DELETE FROM ralf.watermarks WHERE table_name = {mark}", [name])
            tx.execute(f"DELETE FROM ralf.operator_state WHERE table_name = {mark}", [name])

    def compact_history(self, table: TableInfo, cutoff: dt.datetime, keep_from_seq: int
                        ) -> int:
        """Drop versions older than ``cutoff`` that a query at ``cutoff`` or later cannot
        see, sparing versions from ``keep_from_seq`` on (children still replay them)."""
        log, time_col, mark = log_table(table), time_column(table), self.mark
        key = quote(table.schema.primary_key)
        with self._transaction() as tx:
            return tx.execute(
                f"DELETE FROM {log} AS h WHERE {self._own_rows()} AND {time_col} < {mark} "
                f"AND _ralf_seq < {mark} AND _ralf_seq < (SELECT max(_ralf_seq) FROM {log} "
                f"AS v WHERE v.{key} = h.{key} AND v.{time_col} < {mark})",
                [cutoff, keep_from_seq, cutoff])

    # ---- reads for the engine -------------------------------------------------------------
    def max_seq(self, table: TableInfo) -> int:
        """The newest sequence number this process wrote to a table's log."""
        with self._reading() as tx:
            return tx.arrow(f"SELECT coalesce(max(_ralf_seq), {int(self.seq_base)}) FROM "
                            f"{log_table(table)} WHERE {self._own_rows()}").column(0)[0].as_py()

    def newest_event_time(self, table: TableInfo) -> dt.datetime | None:
        """The newest event time this process appended to a source (None: none yet)."""
        with self._reading() as tx:
            return tx.arrow(f"SELECT max({quote(table.event_column)}) AS newest FROM "
                            f"{log_table(table)} WHERE {self._own_rows()}",
                            types={"newest": pa.timestamp("us")}).column(0)[0].as_py()

    def _log_query(self, read: LogRead, query: str, types: dict[str, pa.DataType]
                   ) -> pa.Table:
        with self._transaction() as tx:
            for name, table in registered(read).items():
                tx.stage(name, table)
            return tx.arrow(query, types=types)

    def read_log(self, read: LogRead) -> pa.Table:
        """Pending appends: user columns plus ``_ralf_seq`` (and ``_ralf_event_time``), in
        seq order — in event-time order, then seq, from a table with event time."""
        event = read.table.event_column
        order = "p._ralf_seq" if event is None else f"p.{quote(event)}, p._ralf_seq"
        return self._log_query(read, f"{pending_rows(read)} ORDER BY {order}",
                               _arrow_types(read.table, "_ralf_seq", EVENT_TIME, DIFF, OP))

    def pending_summary(self, read: LogRead) -> pa.Table:
        """Per key of the read: ``key, n, first_seq, last_seq, first_at``."""
        key_type = read.table.schema.arrow.field(read.table.schema.primary_key).type
        return self._log_query(read, pending_summary(read), {
            "key": key_type, "n": pa.int64(), "first_seq": pa.int64(),
            "last_seq": pa.int64(), "first_at": pa.timestamp("us")})

    def current_rows(self, table: TableInfo, keys: pa.Array | None = None) -> pa.Table:
        """A feature table's rows (this process's), or a source's latest append per key
        (a changelog source's latest current row); ``keys``: of those keys only."""
        meta = ("_ralf_updated_at", "_ralf_seq", *([EVENT_TIME] if table.timed else []))
        query = f"SELECT * FROM ({current_query(table, *meta)}) AS c WHERE {self._own_rows()}"
        with self._reading() as tx:
            if keys is not None:
                tx.stage("__ralf_wanted", pa.table({"key": keys}))
                query += (f" AND {quote(table.schema.primary_key)} IN "
                          "(SELECT key FROM __ralf_wanted)")
            return tx.arrow(query, types=_arrow_types(table, *meta))

    def load_watermarks(self, table: str) -> dict[str, int]:
        """A table's per-key watermarks: key text -> seq."""
        with self._reading() as tx:
            rows = tx.arrow(f"SELECT key, seq FROM ralf.watermarks WHERE table_name = "
                            f"{self.mark}", [self._progress_name(table)]).to_pydict()
        return dict(zip(rows["key"], rows["seq"], strict=True))

    def load_operator_state(self, table: str) -> tuple[bool, bytes | None]:
        """(found, state); state None when found means 'rebuild by replay'."""
        with self._reading() as tx:
            rows = tx.arrow(f"SELECT state FROM ralf.operator_state WHERE table_name = "
                            f"{self.mark}", [self._progress_name(table)],
                            types={"state": pa.binary()})
        return (False, None) if rows.num_rows == 0 else (True, rows.column(0)[0].as_py())

    def load_source_state(self, table: str) -> tuple[bytes | None, int, bool] | None:
        """A source's committed (checkpoint, records emitted, exhausted), or None."""
        with self._reading() as tx:
            rows = tx.arrow(f"SELECT state, emitted, exhausted FROM ralf.source_state WHERE "
                            f"table_name = {self.mark}", [self._progress_name(table)],
                            types={"state": pa.binary(), "emitted": pa.int64(),
                                   "exhausted": pa.bool_()}).to_pylist()
        return None if not rows else (rows[0]["state"], rows[0]["emitted"],
                                      rows[0]["exhausted"])

    # ---- reads for clients -----------------------------------------------------------------
    def _one(self, table: TableInfo, query: str, params: list[Any]) -> dict[str, Any] | None:
        try:
            with self._reading() as tx:
                rows = tx.arrow(query, params, types=_arrow_types(
                    table, "_ralf_updated_at", EVENT_TIME)).to_pylist()
        except self.unreadable_value:  # a key this database cannot hold: it has no row
            return None
        return rows[0] if rows else None

    def point(self, table: TableInfo, key: Any) -> dict[str, Any] | None:
        """A key's current row and its ``_ralf_updated_at``."""
        return self._one(table, point_query(table, self.mark), [key])

    def point_as_of(self, table: TableInfo, key: Any, at: dt.datetime, by: str = "event"
                    ) -> dict[str, Any] | None:
        """The key's row as it was at ``at`` (the newest version valid from ``at`` or
        before; ``by``: see :func:`ralf.storage.sql.as_of_column`)."""
        return self._one(table, point_as_of_query(table, self.mark, by), [key, at])

    def versions(self, table: TableInfo, key: Any, limit: int) -> pa.Table:
        """A key's newest ``limit`` versions in a table's log, newest first: a feature
        table's history (``_ralf_deleted`` marks a deletion) or a source's appends, each
        with its ``_ralf_seq`` and the time ralf wrote it as ``_ralf_updated_at``."""
        cols = [quote(c) for c in table.schema.names]
        if table.kind != SOURCE:
            cols.append(DELETED)
        if table.timed:
            cols.append(EVENT_TIME)
        query = (f"SELECT {', '.join(cols)}, _ralf_seq, {time_column(table)} AS "
                 f"_ralf_updated_at FROM {log_table(table)} WHERE "
                 f"{quote(table.schema.primary_key)} = {self.mark} "
                 f"ORDER BY _ralf_seq DESC LIMIT {self.mark}")
        with self._reading() as tx:
            return tx.arrow(query, [key, limit], types={
                **_arrow_types(table, "_ralf_seq", "_ralf_updated_at", EVENT_TIME),
                DELETED: pa.bool_()})

    def historical(self, entities: pa.Table, timestamp: str,
                   features: list[tuple[TableInfo, str, str]], by: str = "event",
                   ttls: dict[str, dt.timedelta] | None = None) -> pa.Table:
        """Point-in-time join: for each entity row, each (table, column, output name) as of
        the row's timestamp (``by``: see :func:`ralf.storage.sql.as_of_column`); rows in
        the entities' order. ``ttls``: per table, how old a version may be at the row's
        timestamp (older: NULL, as if missing)."""
        ttls = ttls or {}
        kept = [c for c in entities.column_names if c != "__ralf_row"]
        selects, joins = [f"e.{quote(c)}" for c in kept], []
        types = {f.name: f.type for f in entities.schema}
        tables = {t.name: t for t, _, _ in features}
        for i, table in enumerate(tables.values()):
            alias = f"h{i}"
            wanted = [(column, out) for t, column, out in features if t.name == table.name]
            marker = [DELETED] if table.kind == FEATURE else []  # a key deleted by then: NULLs
            gone = [f"{alias}.{DELETED}"] if marker else []
            ttl = ttls.get(table.name)
            if ttl is not None:  # a version older than the TTL at the row's time: missing
                age = EVENT_TIME if table.timed else "_ralf_valid_from"
                marker.append(age)
                micros = ttl // dt.timedelta(microseconds=1)
                gone.append(f"{alias}.{age} < e.{quote(timestamp)} - "
                            f"INTERVAL '{micros} microseconds'")
            joins.append(self._as_of_join(table, alias, [c for c, _ in wanted] + marker,
                                          timestamp, by))
            selects += [(f"CASE WHEN {' OR '.join(gone)} THEN NULL ELSE {alias}.{quote(c)} END"
                         if gone else f"{alias}.{quote(c)}") + f" AS {quote(out)}"
                        for c, out in wanted]
            types.update({out: table.schema.arrow.field(c).type for c, out in wanted})
        query = (f"SELECT {', '.join(selects)} FROM __ralf_entities e {' '.join(joins)} "
                 "ORDER BY e.__ralf_row")
        try:
            with self._reading() as tx:
                tx.stage("__ralf_entities", entities)
                return tx.arrow(query, types=types)
        except Exception as exc:  # the database's refusal of these entity rows
            raise QueryError(f"historical_query: {exc}") from None

    def bulk(self, table: TableInfo, with_metadata: bool = False,
             live_since: dt.datetime | None = None) -> pa.Table:
        """One row per key, sorted by key (a source: its latest append per key);
        ``live_since``: only rows whose age (event time, or the time written) is no older."""
        meta: tuple[str, ...] = ("_ralf_seq", "_ralf_updated_at") if with_metadata else ()
        if with_metadata and table.timed:
            meta += (EVENT_TIME,)
        key = quote(table.schema.primary_key)
        where, params = "", []
        if live_since is not None:
            where, params = f" WHERE {age_column(table)} >= {self.mark}", [live_since]
        with self._reading() as tx:
            return tx.arrow(f"{current_query(table, *meta)}{where} ORDER BY {key}", params,
                            types=_arrow_types(table, *meta))

    def count_rows(self, table: TableInfo) -> int:
        """Rows of a table (a source: appends)."""
        with self._reading() as tx:
            return tx.arrow(f"SELECT count(*) FROM {quote(table.name)}").column(0)[0].as_py()

    def rejected(self, table: str | None, limit: int) -> pa.Table:
        """The newest ``limit`` rejected records (of one table, or all), newest first."""
        where = f"WHERE table_name = {self.mark} " if table is not None else ""
        with self._reading() as tx:
            return tx.arrow(
                "SELECT id, table_name, reason, column_name, record, rejected_at FROM "
                f"ralf.rejected {where}ORDER BY id DESC LIMIT {self.mark}",
                [table, limit] if table is not None else [limit])

    def digest(self) -> dict[str, str]:
        """A hash of every table's rows — user tables, histories and ralf's bookkeeping,
        internal ones included — in any row order: to check that something (a client
        request, a failed tick) changed nothing."""
        catalog = self.catalog().values()
        names = [quote(info.name) for info in catalog]
        names += [log_table(info) for info in catalog if info.kind != SOURCE]
        names += [current_table(info.name) for info in catalog if info.changelog is not None]
        names += [f"ralf.{quote(t)}" for t in BOOKKEEPING_TABLES]
        digests = {}
        with self._reading() as tx:
            for name in names:
                rows = sorted(map(repr, tx.arrow(f"SELECT * FROM {name}").to_pylist()))
                digests[name] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        return digests

    def drop_snapshot(self, path: str) -> bool:
        """Delete a snapshot this process made; True if there was one (PostgreSQL makes
        none: its snapshot is the database's address)."""
        return False


def _json_or_none(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


def _json_or_null(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _arrow_types(table: TableInfo, *extra: str) -> dict[str, pa.DataType]:
    """Arrow types of a table's user columns and of the bookkeeping columns named."""
    types = {f.name: f.type for f in table.schema.arrow}
    times = {"_ralf_updated_at", "_ralf_ingested_at", "_ralf_valid_from", EVENT_TIME}
    types.update({e: pa.timestamp("us") if e in times else pa.string() if e == OP
                  else pa.int64() for e in extra})
    return types


def append_columns(info: TableInfo) -> list[str]:
    """The columns an append writes besides ralf's numbering: the user's, and a changelog
    source's signs (``CHANGE_COLUMNS``)."""
    return [*info.schema.names, *(CHANGE_COLUMNS if info.changelog is not None else ())]


def age_column(info: TableInfo) -> str:
    """What a feature table's TTL measures a row's age from: its event time, or (a table
    without one) the time ralf wrote it."""
    return EVENT_TIME if info.timed else "_ralf_updated_at"


def history_columns(info: TableInfo) -> list[str]:
    """The columns a feature table's history keeps of each version besides ralf's own:
    the user columns, and a timed table's event time."""
    return [*info.schema.names, *([EVENT_TIME] if info.timed else [])]
