"""DuckDB backend: append tables, feature tables and the ``ralf`` schema in one DuckDB file.

The shared skeleton (:mod:`ralf.storage.base`) runs every unit of work; this module is
DuckDB's dialect: Arrow tables registered as relations, the DDL (an aggregate's outputs
are columns DuckDB computes from its helpers), the upsert, ASOF joins, client SQL checked
on DuckDB's own parse tree, snapshots DuckDB writes itself.

Writes go through one connection under a lock (DuckDB connections are not thread-safe);
client reads use one cursor per thread, so they see committed snapshots and never block
ingestion. New files are written in a storage format the PyPI ``duckdb`` shell can open.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ralf.errors import QueryError, RalfError, SchemaError
from ralf.schema import quote
from ralf.storage import readonly
from ralf.storage.base import Storage, Transaction, Watchdog, fetch_limited
from ralf.storage.sql import as_of_column
from ralf.storage.units import (
    CHANGE_DDL,
    DELETED,
    EVENT_TIME,
    SOURCE,
    TableInfo,
    current_table,
    log_table,
    tiles_table,
)

# The duckdb command-line shell on PyPI lags the library; files in this format open in both.
STORAGE_VERSION = "v1.4.0"
_FETCH_ROWS = 65_536  # rows per batch a client query's result is read in
SNAPSHOT_TTL = 600.0  # seconds a snapshot is kept once a newer one is made
UPDATE_BY_COLUMN = 30_000  # rows; see DuckDBStorage._write_rows


class DuckDBTransaction(Transaction):
    """A DuckDB connection (the writer's, in a transaction) or cursor (a reader's);
    staged Arrow tables are registered on it and unregistered when it ends."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.staged: dict[str, pa.Table] = {}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        rows = self.con.execute(sql, list(params)).fetchall()
        # DuckDB answers a data change with its row count; other statements with no rows
        return rows[0][0] if len(rows) == 1 and isinstance(rows[0][0], int) else -1

    def execute_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        self.con.executemany(sql, rows)

    def script(self, sql: str) -> None:
        for statement in self.con.extract_statements(sql):
            self.con.execute(statement)

    def arrow(self, sql: str, params: Sequence[Any] = (),
              types: dict[str, pa.DataType] | None = None) -> pa.Table:
        return self.con.sql(sql, params=list(params) or None).to_arrow_table()

    def stage(self, name: str, table: pa.Table) -> None:
        self.con.register(name, table)
        self.staged[name] = table

    def close(self) -> None:
        """Unregister what was staged."""
        for name in self.staged:
            self.con.unregister(name)
        self.staged.clear()


class DuckDBStorage(Storage):
    """ralf's tables in one DuckDB file (or in memory), for one process."""

    out_of_range = (duckdb.ConversionException, duckdb.OutOfRangeException)

    def __init__(self, path: str | None = None, memory_limit: str | None = None) -> None:
        self.path = path or ":memory:"
        schema = readonly.BOOKKEEPING_SCHEMA
        if Path(self.path).name.split(".")[0].lower() == schema:
            # DuckDB names the database after the file (up to its first dot): a database
            # named "ralf" makes every reference to the schema "ralf" ambiguous
            raise ValueError(f"{self.path!r}: DuckDB would name this database {schema!r}, "
                             "the name of ralf's own schema in it; choose another file name "
                             "(e.g. features.duckdb)")
        self.memory_limit = memory_limit
        # Snapshots are written here, the only place the database may write files to
        # (never a copy of the live file by ordinary file APIs: closing any descriptor of
        # it would drop this process's lock on it).
        self._snapshots = (None if self.path == ":memory:"
                           else Path(tempfile.mkdtemp(prefix="ralf-snapshots-")))
        self._made = 0  # snapshots made
        self._lock = threading.RLock()
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._generation = 0  # connections opened; a reader of an older one is stale
        self._stored: dict[str, list[str]] = {}  # table -> its stored (not computed) columns
        self._con = self._connect()
        self.migrate()

    # ---- connections and transactions -------------------------------------------------------
    def _connect(self) -> duckdb.DuckDBPyConnection:
        config = {"storage_compatibility_version": STORAGE_VERSION}
        if self.memory_limit:
            config["memory_limit"] = self.memory_limit
        try:
            con = duckdb.connect(self.path, config=config)
        except duckdb.Error as exc:
            raise RalfError(f"cannot open DuckDB database {self.path!r}: {exc}") from exc
        if self._snapshots is not None:
            con.execute(f"SET allowed_directories = [{_literal(str(self._snapshots) + '/')}]")
        # no files for client SQL to read, and no setting it can change back
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        self._generation += 1
        return con

    def _reopen(self) -> None:
        """Open the file again after DuckDB invalidated the database (it does after some
        fatal I/O errors): what a restart would do, for the in-process recovery."""
        with self._lock:
            self._close_connections()
            self._con = self._connect()

    @contextmanager
    def _transaction(self) -> Iterator[DuckDBTransaction]:
        with self._lock:
            con = self._con
            con.begin()
            tx = DuckDBTransaction(con)
            try:
                yield tx
            except BaseException as exc:
                try:
                    con.rollback()
                    tx.close()
                except duckdb.Error:
                    if not _invalidated(exc):
                        raise
                if _invalidated(exc):
                    self._reopen()
                raise
            tx.close()
            try:
                con.commit()
            except duckdb.Error as exc:
                if _invalidated(exc):
                    self._reopen()
                raise

    def _reader(self) -> duckdb.DuckDBPyConnection:
        generation, cursor = getattr(self._local, "cursor", (0, None))
        if cursor is None or generation != self._generation:
            with self._lock:
                cursor = self._con.cursor()
                self._cursors.append(cursor)
            self._local.cursor = (self._generation, cursor)
        return cursor

    @contextmanager
    def _reading(self) -> Iterator[DuckDBTransaction]:
        tx = DuckDBTransaction(self._reader())
        try:
            yield tx
        finally:
            tx.close()

    # ---- the dialect ------------------------------------------------------------------------
    def _create_ddl(self, info: TableInfo) -> list[str]:
        schema = info.schema
        self._stored.pop(info.name, None)
        user_cols = [f"{quote(n)} {schema.sql_type(n)}" for n in schema.names]
        if info.kind == SOURCE:
            changes = CHANGE_DDL if info.changelog is not None else ""
            ddl = [f"CREATE TABLE {quote(info.name)} ({', '.join(user_cols)}, "
                   f"_ralf_seq BIGINT NOT NULL, _ralf_ingested_at TIMESTAMP NOT NULL{changes})"]
            if info.changelog is not None:
                ddl.append(f"CREATE TABLE {current_table(info.name)} ({', '.join(user_cols)}, "
                           "_ralf_seq BIGINT NOT NULL, _ralf_ingested_at TIMESTAMP NOT NULL)")
            return ddl
        keyed = [
            c + (" PRIMARY KEY" if n == schema.primary_key else "")
            + (f" GENERATED ALWAYS AS ({info.derived[n]}) VIRTUAL" if n in info.derived else "")
            for n, c in zip(schema.names, user_cols, strict=True)
        ]
        keyed += [f"{quote(n)} {t}" for n, t in info.hidden]
        timed = f", {EVENT_TIME} TIMESTAMP" if info.timed else ""
        tiles = [f"CREATE TABLE {tiles_table(info.name)} ("
                 f"{', '.join(f'{quote(n)} {t}' for n, t in info.tiles)})"] if info.tiles else []
        return [f"CREATE TABLE {quote(info.name)} ({', '.join(keyed)}, "
                f"_ralf_seq BIGINT NOT NULL, _ralf_updated_at TIMESTAMP NOT NULL{timed})",
                f"CREATE TABLE {log_table(info)} ({', '.join(user_cols)}, "
                "_ralf_seq BIGINT NOT NULL, _ralf_valid_from TIMESTAMP NOT NULL, "
                f"{DELETED} BOOLEAN{timed})", *tiles]

    def _stored_columns(self, tx: Transaction, table: str) -> list[str]:
        """The columns a write sets: all but the ones DuckDB computes (an aggregate's
        outputs, from its helpers; tables from before that store them)."""
        if table not in self._stored:
            self._stored[table] = tx.arrow(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                "'main' AND table_name = ? AND is_generated = 'NEVER' ORDER BY ordinal_position",
                [table]).column(0).to_pylist()
        return self._stored[table]

    def _write_rows(self, tx: DuckDBTransaction, info: TableInfo, relation: str,
                    columns: list[str], version: int, at: dt.datetime,
                    history: str | None = None) -> None:
        """Update the keys that have a row in place, then insert the others; then the
        history.

        An in-place UPDATE leaves the primary key's index alone (no key changes): delete +
        insert paid ~18 ms per 10,000 keys to maintain it, three times the UPDATE's cost
        for 60,000 keys. Not MERGE / INSERT ... ON CONFLICT, nor UPDATE ... RETURNING: each
        slowed from ~9 ms to ~30-200 ms per refresh within a few refreshes (duckdb 2.0,
        benchmarks/ivm.py). An UPDATE and its commit cost ~2 ms per column for 10,000
        rows, hence outputs computed from helpers rather than stored.

        Above ``UPDATE_BY_COLUMN`` rows, one UPDATE per column: an UPDATE of several
        columns of the ~100,000 rows the previous transaction inserted took 1.5 s where
        the same columns one by one took 6 ms each (duckdb 2.0.1; part b of
        benchmarks/ivm.py, its second batch), while otherwise the one UPDATE is the
        faster (4 ms against 11 ms for 10,000 rows, 28 against 48 for 100,000)."""
        table, key = quote(info.name), quote(info.schema.primary_key)
        rows = tx.staged[relation].num_rows
        written = [c for c in self._stored_columns(tx, info.name) if c in columns]
        values = [(f"{quote(c)} = r.{quote(c)}", []) for c in written
                  if c != info.schema.primary_key]
        values += [("_ralf_seq = ?", [version]), ("_ralf_updated_at = ?", [at])]
        if rows <= UPDATE_BY_COLUMN:
            values = [(", ".join(v for v, _ in values), [version, at])]
        for assignments, args in values:
            updated = tx.execute(f"UPDATE {table} AS t SET {assignments} FROM {relation} AS r "
                                 f"WHERE t.{key} = r.{key}", args)
        if updated < rows:
            cols = ", ".join(quote(c) for c in written)
            tx.execute(f"INSERT INTO {table} ({cols}, _ralf_seq, _ralf_updated_at) "
                       f"SELECT {cols}, ?, ? FROM {relation} AS r WHERE NOT EXISTS "
                       f"(SELECT 1 FROM {table} AS t WHERE t.{key} = r.{key})", [version, at])
        self._append_history(tx, info, history or relation, version, at)

    def _as_of_join(self, table: TableInfo, alias: str, columns: list[str],
                    timestamp: str, by: str) -> str:
        key, time = quote(table.schema.primary_key), as_of_column(table, by)
        log = log_table(table)
        if time != as_of_column(table, "processing"):
            # versions at the same event time (a late record's, a source's duplicates):
            # ASOF picks any of them, so the log is cut to the newest of each first
            log = (f"(SELECT * FROM {log} QUALIFY row_number() OVER (PARTITION BY {key}, "
                   f"{time} ORDER BY _ralf_seq DESC) = 1)")
        return (f"ASOF LEFT JOIN {log} {alias} ON e.{key} = {alias}.{key} "
                f"AND e.{quote(timestamp)} >= {alias}.{time}")

    def _epoch_us(self, expression: str) -> str:
        return f"epoch_us({expression})"

    def _bucket(self, width: int, expression: str) -> str:
        return (f"time_bucket(INTERVAL '{width} microseconds', {expression}, "
                "TIMESTAMP '1970-01-01')")

    def describe(self, query: str) -> list[tuple[str, str]]:
        """Column names and types of a query's result, from DuckDB's DESCRIBE."""
        with self._lock:
            try:
                return [(r[0], r[1]) for r in self._con.sql(f"DESCRIBE {query}").fetchall()]
            except duckdb.Error as exc:
                raise SchemaError(f"SQL table: {exc}") from None

    # ---- clients ------------------------------------------------------------------------------
    def sql(self, query: str, *, max_rows: int | None = None, timeout: float | None = None,
            cancel: threading.Event | None = None) -> pa.Table:
        cur = self._reader()
        try:
            serialized = cur.execute("SELECT json_serialize_sql(?)", [query]).fetchall()
        except duckdb.Error as exc:
            raise QueryError(f"invalid SQL: {exc}") from None
        readonly.check_duckdb(json.loads(serialized[0][0]))
        with Watchdog(cur.interrupt, timeout, cancel) as watchdog:
            cur.begin()
            reader = None
            try:
                reader = _exact_in_arrow(cur.sql(query)).to_arrow_reader(_FETCH_ROWS)
                return fetch_limited(reader, reader.schema, max_rows)
            except duckdb.InterruptException:
                raise QueryError(watchdog.why()) from None
            except duckdb.Error as exc:
                raise QueryError(str(exc)) from None
            finally:
                if reader is not None:
                    reader.close()  # the cursor refuses new work while a result is open
                cur.rollback()

    def snapshot(self, directory: str | None) -> str:
        """A consistent copy of the database, made by DuckDB itself (``COPY FROM DATABASE``
        into a new file, in a transaction of its own, so ingestion goes on meanwhile).
        Snapshots live in a folder of this process's and are deleted when they are older
        than ``SNAPSHOT_TTL`` seconds and a newer one is made, or with :meth:`drop_snapshot`,
        and all of them at close."""
        if self._snapshots is None:
            raise RalfError("an in-memory database has no file to snapshot")
        with self._lock:
            self._made += 1
            made = self._made
            database = self._con.execute("SELECT current_database()").fetchall()[0][0]
        path = self._snapshots / f"snapshot-{made}.duckdb"
        alias = f"__ralf_snapshot_{made}"
        cursor = self._reader()
        cursor.execute(f"ATTACH {_literal(str(path))} AS {alias} "
                       f"(STORAGE_VERSION '{STORAGE_VERSION}')")
        try:
            cursor.execute(f"COPY FROM DATABASE {quote(database)} TO {alias}")
        finally:
            cursor.execute(f"DETACH {alias}")
        self._expire_snapshots(path)
        if directory is not None:
            path = Path(shutil.move(path, Path(directory) / path.name))
        return str(path)

    def _expire_snapshots(self, newest: Path) -> None:
        cutoff = time.time() - SNAPSHOT_TTL
        for old in self._snapshots.glob("snapshot-*.duckdb"):
            if old != newest and old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)

    def drop_snapshot(self, path: str) -> bool:
        """Delete a snapshot this process made (no other file); True if it was there."""
        if self._snapshots is None:
            return False
        target = Path(path).resolve()
        if target.parent != self._snapshots.resolve() or not target.name.startswith(
                "snapshot-"):
            return False
        existed = target.exists()
        target.unlink(missing_ok=True)
        return existed

    def _close_connections(self) -> None:
        for cursor in self._cursors:
            try:
                cursor.close()
            except duckdb.Error:  # already closed with its thread: nothing to release
                continue
        self._cursors.clear()
        self._con.close()

    def close(self) -> None:
        """Close the connections, then delete this process's snapshots."""
        with self._lock:
            self._close_connections()
        if self._snapshots is not None:
            shutil.rmtree(self._snapshots, ignore_errors=True)


# Types Arrow cannot carry exactly: DuckDB's own conversion wraps UHUGEINT values above
# 2^127 into negatives, and BIGNUM has no Arrow type at all. They travel as decimal text.
_AS_TEXT = ("UHUGEINT", "BIGNUM", "VARINT")


def _exact_in_arrow(relation: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """The result with every column Arrow would carry wrongly cast to text."""
    types = [str(t) for t in relation.types]
    if not any(name in t for t in types for name in _AS_TEXT):
        return relation
    return relation.project(", ".join(
        f"CAST({quote(c)} AS VARCHAR) AS {quote(c)}" if any(n in t for n in _AS_TEXT)
        else quote(c) for c, t in zip(relation.columns, types, strict=True)))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _invalidated(exc: BaseException) -> bool:
    """DuckDB gave up on the database after a fatal error: only reopening helps."""
    return isinstance(exc, duckdb.FatalException) or "invalidated" in str(exc)
