"""DuckDB backend: append tables, feature tables and the ``ralf`` schema in one DuckDB file.

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from ralf.clock import utcnow
from ralf.errors import QueryError, RalfError, SchemaError
from ralf.faults import crashpoint
from ralf.ivm.aggregate import DeltaAggregate
from ralf.schema import Rejection, Schema, quote
from ralf.storage import migrate, readonly
from ralf.storage.base import (
    SOURCE,
    Append,
    LogRead,
    Refresh,
    Storage,
    TableInfo,
    ViewRefresh,
    Watchdog,
    fetch_limited,
    log_table,
)
from ralf.storage.sql import (
    current_query,
    pending_rows,
    pending_summary,
    point_as_of_query,
    point_query,
    registered,
    time_column,
)

# The duckdb command-line shell on PyPI lags the library; files in this format open in both.
STORAGE_VERSION = "v1.4.0"
_FETCH_ROWS = 65_536  # rows per batch a client query's result is read in
SNAPSHOT_TTL = 600.0  # seconds a snapshot is kept once a newer one is made
_UPDATE_BY_COLUMN = 30_000  # rows; see DuckDBStorage._upsert


def _first(result: duckdb.DuckDBPyConnection) -> tuple | None:
    """The first row, with the result consumed (DuckDB refuses new work on a connection
    that still holds an unfinished result)."""
    rows = result.fetchall()
    return rows[0] if rows else None


class DuckDBStorage(Storage):
    def __init__(self, path: str | None = None, memory_limit: str | None = None) -> None:
        self.path = path or ":memory:"
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

    # ---- plumbing ---------------------------------------------------------------------------
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
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            con = self._con
            con.begin()
            try:
                yield con
            except BaseException as exc:
                try:
                    con.rollback()
                except duckdb.Error:
                    if not _invalidated(exc):
                        raise
                if _invalidated(exc):
                    self._reopen()
                raise
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

    def migrate(self) -> list[int]:
        """Apply the migrations this file has not seen yet; returns the versions applied."""
        with self._lock:
            exists = self._con.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = 'ralf' AND table_name = 'schema_migrations'"
            ).fetchall()[0][0]
            done = set()
            if exists:
                done = {v for (v,) in self._con.execute(
                    "SELECT version FROM ralf.schema_migrations").fetchall()}
            applied = []
            for migration in migrate.available():
                if migration.version in done:
                    continue
                with self._transaction() as con:
                    for statement in migrate.statements(migration.sql):
                        con.execute(statement)
                    con.execute(
                        "INSERT INTO ralf.schema_migrations VALUES (?, ?, ?)",
                        [migration.version, migration.name, utcnow()],
                    )
                applied.append(migration.version)
            return applied

    def schema_version(self) -> int:
        with self._lock:
            return _first(self._con.execute("SELECT max(version) FROM ralf.schema_migrations"))[0]

    # ---- catalog ----------------------------------------------------------------------------
    def catalog(self) -> dict[str, TableInfo]:
        with self._lock:
            rows = self._con.execute(
                "SELECT name, kind, schema_json, parent, lookup, lookup_on, lazy, watermark "
                "FROM ralf.tables"
            ).fetchall()
        return {
            name: TableInfo(name, kind, Schema.from_json(sj), parent, lookup, on, bool(lazy), wm)
            for name, kind, sj, parent, lookup, on, lazy, wm in rows
        }

    def create_table(self, info: TableInfo) -> None:
        schema = info.schema
        self._stored.pop(info.name, None)
        user_cols = [f"{quote(n)} {schema.sql_type(n)}" for n in schema.names]
        with self._transaction() as con:
            if info.kind == SOURCE:
                con.execute(
                    f"CREATE TABLE {quote(info.name)} ({', '.join(user_cols)}, "
                    "_ralf_seq BIGINT NOT NULL, _ralf_ingested_at TIMESTAMP NOT NULL)"
                )
            else:
                keyed = [
                    c + (" PRIMARY KEY" if n == schema.primary_key else "")
                    + (f" GENERATED ALWAYS AS ({info.derived[n]}) VIRTUAL"
                       if n in info.derived else "")
                    for n, c in zip(schema.names, user_cols, strict=True)
                ]
                keyed += [f"{quote(n)} {t}" for n, t in info.hidden]
                con.execute(
                    f"CREATE TABLE {quote(info.name)} ({', '.join(keyed)}, "
                    "_ralf_seq BIGINT NOT NULL, _ralf_updated_at TIMESTAMP NOT NULL)"
                )
                con.execute(
                    f"CREATE TABLE {log_table(info)} ({', '.join(user_cols)}, "
                    "_ralf_seq BIGINT NOT NULL, _ralf_valid_from TIMESTAMP NOT NULL)"
                )
            con.execute(
                "INSERT INTO ralf.tables (name, kind, schema_json, parent, created_at, lookup, "
                "lookup_on, lazy, watermark) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                [info.name, info.kind, schema.to_json(), info.parent, utcnow(),
                 info.lookup, info.lookup_on, info.lazy],
            )

    def update_definition(self, info: TableInfo) -> None:
        with self._transaction() as con:
            con.execute(
                "UPDATE ralf.tables SET lazy = ?, lookup = ?, lookup_on = ? WHERE name = ?",
                [info.lazy, info.lookup, info.lookup_on, info.name],
            )

    def create_alias(self, alias: str, table: str) -> None:
        with self._transaction() as con:
            con.execute(f"CREATE OR REPLACE VIEW {quote(alias)} AS SELECT * FROM {quote(table)}")

    # ---- writes -------------------------------------------------------------------------------
    def append(self, unit: Append) -> None:
        info, rows = unit.table, unit.rows
        n = rows.num_rows
        data = rows.append_column(
            "_ralf_seq", pa.array(np.arange(unit.first_seq, unit.first_seq + n, dtype=np.int64))
        )
        cols = ", ".join(quote(c) for c in info.schema.names)
        with self._transaction() as con:
            if n:
                con.register("__ralf_rows", data)
                try:
                    con.execute(
                        f"INSERT INTO {quote(info.name)} ({cols}, _ralf_seq, _ralf_ingested_at) "
                        f"SELECT {cols}, _ralf_seq, ?::TIMESTAMP FROM __ralf_rows",
                        [unit.ingested_at],
                    )
                finally:
                    con.unregister("__ralf_rows")
            self._replace_row(con, "ralf.source_state", [
                info.name, unit.source_state, unit.emitted, unit.exhausted, unit.ingested_at])
            self._insert_rejected(con, unit.rejected)
            crashpoint("append.before_commit")

    def refresh(self, unit: Refresh) -> None:
        info, rows = unit.table, unit.rows
        with self._transaction() as con:
            if rows.num_rows:
                with self._staged(con, rows):
                    self._upsert(con, info, rows, unit.version, unit.updated_at)
                    self._append_history(con, info, unit.version, unit.updated_at)
            self._write_watermarks(con, unit)
            if unit.write_state:
                self._replace_row(con, "ralf.operator_state",
                                  [info.name, unit.state, unit.updated_at])
            crashpoint("refresh.before_commit")

    def refresh_view(self, unit: ViewRefresh) -> tuple[pa.Table, list[Any]]:
        info, plan = unit.table, unit.plan
        types = {n: info.schema.sql_type(n) for n in info.schema.names}
        pending = pending_rows(unit.read)
        deleted: list[Any] = []
        with self._transaction() as con, self._registered(con, unit.read):
            if isinstance(plan, DeltaAggregate):
                data = con.sql(plan.new_rows(quote(info.name), pending, types)).to_arrow_table()
            else:
                data, deleted = self._recompute(con, unit, pending)
            if data.num_rows:
                with self._staged(con, data):
                    self._upsert(con, info, data, unit.version, unit.updated_at)
                    self._append_history(con, info, unit.version, unit.updated_at)
            self._write_watermarks(con, unit)
            crashpoint("view.before_commit")
        rows = data.select(info.schema.names)
        return rows.append_column("_ralf_seq", pa.array(np.full(rows.num_rows, unit.version,
                                                                np.int64))), deleted

    def _recompute(self, con: duckdb.DuckDBPyConnection, unit: ViewRefresh, pending: str
                   ) -> tuple[pa.Table, list[Any]]:
        """The stale keys' recomputed groups (to upsert), and the keys that have none now
        (deleted here)."""
        info, plan = unit.table, unit.plan
        key = quote(plan.key)
        parent = unit.read.table
        cols = ", ".join(quote(c) for c in parent.schema.names)
        stale = con.sql(f"SELECT DISTINCT {key} AS key FROM ({pending}) AS s").to_arrow_table()
        if stale.num_rows == 0:
            return info.schema.arrow.empty_table(), []
        con.register("__ralf_stale", stale)
        try:
            parent_rows = (f"SELECT {cols} FROM main.{quote(parent.name)} "
                           f"WHERE {key} IN (SELECT key FROM __ralf_stale)")
            result = con.sql(plan.recompute(parent_rows)).to_arrow_table()
        finally:
            con.unregister("__ralf_stale")
        data, _ = info.schema.to_arrow(result.select(info.schema.names), info.name)
        kept = set(data.column(plan.key).to_pylist())
        deleted = [k for k in stale.column("key").to_pylist() if k not in kept]
        if deleted:
            con.register("__ralf_gone",
                         pa.table({"key": pa.array(deleted, stale.column("key").type)}))
            try:
                con.execute(f"DELETE FROM {quote(info.name)} "
                            f"WHERE {key} IN (SELECT key FROM __ralf_gone)").fetchall()
            finally:
                con.unregister("__ralf_gone")
        return data, deleted

    def describe(self, query: str) -> list[tuple[str, str]]:
        with self._lock:
            try:
                return [(r[0], r[1]) for r in self._con.sql(f"DESCRIBE {query}").fetchall()]
            except duckdb.Error as exc:
                raise SchemaError(f"SQL table: {exc}") from None

    def _write_watermarks(self, con: duckdb.DuckDBPyConnection, unit: Refresh) -> None:
        name = unit.table.name
        con.execute("UPDATE ralf.tables SET watermark = ? WHERE name = ?", [unit.watermark, name])
        if unit.clear_watermarks:
            con.execute("DELETE FROM ralf.watermarks WHERE table_name = ?", [name])
        if len(unit.set_watermarks) == 1:  # a lazy query's key: ~1.7 ms, not ~4 (duckdb 2.0.1)
            [(key, seq)] = unit.set_watermarks.items()
            updated = con.execute("UPDATE ralf.watermarks SET seq = ? WHERE table_name = ? "
                                  "AND key = ?", [seq, name, key]).fetchall()[0][0]
            if not updated:
                con.execute("INSERT INTO ralf.watermarks VALUES (?, ?, ?)", [name, key, seq])
        elif unit.set_watermarks:
            marks = pa.table({
                "key": pa.array(list(unit.set_watermarks), pa.string()),
                "seq": pa.array(list(unit.set_watermarks.values()), pa.int64()),
            })
            con.register("__ralf_marks", marks)
            try:
                con.execute(
                    "INSERT INTO ralf.watermarks SELECT ?, key, seq FROM __ralf_marks "
                    "ON CONFLICT (table_name, key) DO UPDATE SET seq = excluded.seq", [name])
            finally:
                con.unregister("__ralf_marks")

    @staticmethod
    @contextmanager
    def _staged(con: duckdb.DuckDBPyConnection, rows: pa.Table) -> Iterator[None]:
        """``rows`` as ``__ralf_rows`` for the upsert and the history insert (registering
        costs ~0.5 ms: once per refresh, not once per statement)."""
        con.register("__ralf_rows", rows)
        try:
            yield
        finally:
            con.unregister("__ralf_rows")

    def _stored_columns(self, con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
        """The columns a write sets: all but the ones DuckDB computes (an aggregate's
        outputs, from its helpers; tables from before that store them)."""
        if table not in self._stored:
            self._stored[table] = [c for (c,) in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                "'main' AND table_name = ? AND is_generated = 'NEVER' ORDER BY ordinal_position",
                [table]).fetchall()]
        return self._stored[table]

    def _upsert(self, con: duckdb.DuckDBPyConnection, info: TableInfo, data: pa.Table,
                version: int, at: dt.datetime) -> None:
        """Replace the rows of the keys in the staged ``data`` (user columns, maybe helpers)
        with version ``version`` written at ``at``: update the keys that have a row in
        place, then insert the others.

        An in-place UPDATE leaves the primary key's index alone (no key changes): delete +
        insert paid ~18 ms per 10,000 keys to maintain it, three times the UPDATE's cost
        for 60,000 keys. Not MERGE / INSERT ... ON CONFLICT, nor UPDATE ... RETURNING: each
        slowed from ~9 ms to ~30-200 ms per refresh within a few refreshes (duckdb 2.0,
        benchmarks/ivm.py). An UPDATE and its commit cost ~2 ms per column for 10,000
        rows, hence outputs computed from helpers rather than stored.

        Above ``_UPDATE_BY_COLUMN`` rows, one UPDATE per column: an UPDATE of several
        columns of the ~100,000 rows the previous transaction inserted took 1.5 s where
        the same columns one by one took 6 ms each (duckdb 2.0.1; part b of
        benchmarks/ivm.py, its second batch), while otherwise the one UPDATE is the
        faster (4 ms against 11 ms for 10,000 rows, 28 against 48 for 100,000)."""
        table, key = quote(info.name), quote(info.schema.primary_key)
        written = [c for c in self._stored_columns(con, info.name) if c in data.column_names]
        values = [(f"{quote(c)} = r.{quote(c)}", []) for c in written
                  if c != info.schema.primary_key]
        values += [("_ralf_seq = ?", [version]), ("_ralf_updated_at = ?", [at])]
        if data.num_rows <= _UPDATE_BY_COLUMN:
            values = [(", ".join(v for v, _ in values), [version, at])]
        for assignments, args in values:
            updated = con.execute(f"UPDATE {table} AS t SET {assignments} FROM __ralf_rows AS r "
                                  f"WHERE t.{key} = r.{key}", args).fetchall()[0][0]
        if updated < data.num_rows:
            cols = ", ".join(quote(c) for c in written)
            con.execute(f"INSERT INTO {table} ({cols}, _ralf_seq, _ralf_updated_at) "
                        f"SELECT {cols}, ?, ? FROM __ralf_rows AS r WHERE NOT EXISTS "
                        f"(SELECT 1 FROM {table} AS t WHERE t.{key} = r.{key})",
                        [version, at]).fetchall()

    @staticmethod
    def _append_history(con: duckdb.DuckDBPyConnection, info: TableInfo, version: int,
                        at: dt.datetime) -> None:
        """Log the staged rows as version ``version``, valid from ``at``."""
        cols = ", ".join(quote(c) for c in info.schema.names)
        con.execute(f"INSERT INTO {log_table(info)} ({cols}, _ralf_seq, _ralf_valid_from) "
                    f"SELECT {cols}, ?, ?::TIMESTAMP FROM __ralf_rows", [version, at]).fetchall()

    @staticmethod
    def _replace_row(con: duckdb.DuckDBPyConnection, table: str, values: list[Any]) -> None:
        """Replace a table's row for a table name (its first column). DELETE + INSERT: an
        ON CONFLICT upsert of a 1.6 MB operator state took 19-46 ms where these take 4 ms
        (duckdb 2.0.1), and 2 ms for a source's small checkpoint where these take 1."""
        con.execute(f"DELETE FROM {table} WHERE table_name = ?", values[:1])
        con.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(values))})", values)

    def reject(self, rejected: list[Rejection]) -> None:
        if rejected:
            with self._transaction() as con:
                self._insert_rejected(con, rejected)

    @staticmethod
    def _insert_rejected(con: duckdb.DuckDBPyConnection, rejected: list[Rejection]) -> None:
        if not rejected:
            return
        now = utcnow()
        con.executemany(
            "INSERT INTO ralf.rejected (table_name, reason, column_name, record, rejected_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [[r.table, r.reason, r.column, r.raw_json(), now] for r in rejected],
        )

    def reset_progress(self, table: str) -> None:
        with self._transaction() as con:
            con.execute("UPDATE ralf.tables SET watermark = 0 WHERE name = ?", [table])
            con.execute("DELETE FROM ralf.watermarks WHERE table_name = ?", [table])
            con.execute("DELETE FROM ralf.operator_state WHERE table_name = ?", [table])

    # ---- engine reads -------------------------------------------------------------------------
    def max_seq(self, table: TableInfo) -> int:
        with self._lock:
            return self._con.execute(f"SELECT coalesce(max(_ralf_seq), 0) FROM {log_table(table)}"
                                     ).fetchall()[0][0]

    @contextmanager
    def _registered(self, con: duckdb.DuckDBPyConnection, read: LogRead) -> Iterator[None]:
        names = registered(read)
        for name, table in names.items():
            con.register(name, table)
        try:
            yield
        finally:
            for name in names:
                con.unregister(name)

    def _log_query(self, read: LogRead, query: str) -> pa.Table:
        with self._lock, self._registered(self._con, read):
            return self._con.sql(query).to_arrow_table()

    def read_log(self, read: LogRead) -> pa.Table:
        return self._log_query(read, f"{pending_rows(read)} ORDER BY p._ralf_seq")

    def pending_summary(self, read: LogRead) -> pa.Table:
        return self._log_query(read, pending_summary(read))

    def current_rows(self, table: TableInfo) -> pa.Table:
        with self._lock:
            return self._con.sql(current_query(table, "_ralf_updated_at")).to_arrow_table()

    def load_floor(self, table: str) -> int:
        with self._lock:
            return _first(self._con.execute("SELECT watermark FROM ralf.tables WHERE name = ?",
                                            [table]))[0]

    def load_watermarks(self, table: str) -> dict[str, int]:
        with self._lock:
            rows = self._con.execute(
                "SELECT key, seq FROM ralf.watermarks WHERE table_name = ?", [table]).fetchall()
        return dict(rows)

    def load_operator_state(self, table: str) -> tuple[bool, bytes | None]:
        with self._lock:
            row = _first(self._con.execute(
                "SELECT state FROM ralf.operator_state WHERE table_name = ?", [table]))
        return (False, None) if row is None else (True, row[0])

    def load_source_state(self, table: str) -> tuple[bytes | None, int, bool] | None:
        with self._lock:
            row = _first(self._con.execute(
                "SELECT state, emitted, exhausted FROM ralf.source_state WHERE table_name = ?",
                [table]))
        return None if row is None else (row[0], row[1], row[2])

    # ---- client reads -------------------------------------------------------------------------
    def _one(self, query: str, params: list[Any]) -> dict[str, Any] | None:
        result = self._reader().execute(query, params)
        row = _first(result)
        if row is None:
            return None
        return dict(zip([d[0] for d in result.description], row, strict=True))

    def point(self, table: TableInfo, key: Any) -> dict[str, Any] | None:
        return self._one(point_query(table, "?"), [key])

    def point_as_of(self, table: TableInfo, key: Any, at: dt.datetime) -> dict[str, Any] | None:
        return self._one(point_as_of_query(table, "?"), [key, at])

    def historical(self, entities: pa.Table, timestamp: str,
                   features: list[tuple[TableInfo, str, str]]) -> pa.Table:
        cur = self._reader()
        ts = quote(timestamp)
        selects, joins = ["e.* EXCLUDE (__ralf_row)"], []
        tables = {t.name: t for t, _, _ in features}
        for i, table in enumerate(tables.values()):
            alias = f"h{i}"
            key = quote(table.schema.primary_key)
            time = time_column(table)
            joins.append(f"ASOF LEFT JOIN {log_table(table)} {alias} ON e.{key} = {alias}.{key} "
                         f"AND e.{ts} >= {alias}.{time}")
            selects += [f"{alias}.{quote(column)} AS {quote(out)}"
                        for t, column, out in features if t.name == table.name]
        cur.register("__ralf_entities", entities)
        try:
            return cur.sql(f"SELECT {', '.join(selects)} FROM __ralf_entities e "
                           f"{' '.join(joins)} ORDER BY e.__ralf_row").to_arrow_table()
        finally:
            cur.unregister("__ralf_entities")

    def compact_history(self, table: TableInfo, cutoff: dt.datetime, keep_from_seq: int
                        ) -> int:
        log, time = log_table(table), time_column(table)
        key = quote(table.schema.primary_key)
        with self._transaction() as con:
            return con.execute(
                f"DELETE FROM {log} AS h WHERE {time} < ? AND _ralf_seq < ? AND _ralf_seq < ("
                f"SELECT max(_ralf_seq) FROM {log} AS v WHERE v.{key} = h.{key} "
                f"AND v.{time} < ?)", [cutoff, keep_from_seq, cutoff]).fetchall()[0][0]

    def bulk(self, table: TableInfo, with_metadata: bool = False) -> pa.Table:
        meta = ("_ralf_seq", "_ralf_updated_at") if with_metadata else ()
        key = quote(table.schema.primary_key)
        return self._reader().sql(f"{current_query(table, *meta)} ORDER BY {key}"
                                  ).to_arrow_table()

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

    def _read(self, query: str, params: list[Any]) -> pa.Table:
        return self._reader().sql(query, params=params).to_arrow_table()

    def count_rows(self, table: TableInfo) -> int:
        return self._reader().execute(f"SELECT count(*) FROM {quote(table.name)}").fetchall()[0][0]

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
            made, database = self._made, _first(self._con.execute("SELECT current_database()"))[0]
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
