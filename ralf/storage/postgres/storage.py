"""PostgreSQL backend: the same tables and ``ralf`` schema as on DuckDB, in a PostgreSQL
database reached through SQLAlchemy (psycopg 3 underneath), so several ralf processes can
share one database (see ``Ralf(..., shard=, num_shards=)``).

The shared skeleton (:mod:`ralf.storage.base`) runs every unit of work; this module is
PostgreSQL's dialect: Arrow tables staged by ``COPY`` into temporary tables, the DDL with
its indexes, an upsert that logs its history in the same statement, LATERAL joins for
point-in-time reads, client SQL checked on sqlglot's parse tree and run as the
``ralf_sql`` role, and each shard's progress kept apart from the others'.

ralf's SQL dialect is DuckDB's everywhere: SQL tables and ``sql()`` queries are parsed as
DuckDB SQL and translated to PostgreSQL (:mod:`ralf.storage.postgres.translate`), and
result types are worked out by DuckDB itself over an empty copy of the catalog, so one
pipeline gets the same schemas on both backends.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy

from ralf.errors import QueryError, RalfError, SchemaError
from ralf.schema import quote
from ralf.storage import readonly
from ralf.storage.base import (
    Storage,
    Transaction,
    Watchdog,
    append_columns,
    fetch_limited,
    history_columns,
)
from ralf.storage.postgres.translate import Translator, catalog_columns
from ralf.storage.postgres.types import (
    allow_infinities,
    duck_type,
    pg_type,
    record_batch,
    to_arrow,
)
from ralf.storage.sql import as_of_column, pending_rows
from ralf.storage.units import (
    CHANGE_DDL,
    DELETED,
    EVENT_TIME,
    SOURCE,
    LogRead,
    TableInfo,
    current_table,
    log_table,
    tiles_table,
)

_ADVISORY_LOCK = 0x7261_6C66  # "ralf": serialises migrations and table creation
SQL_ROLE = "ralf_sql"  # client SQL runs as this role: SELECT on the readable tables only
_FETCH_ROWS = 10_000  # rows per batch a client query's result is read in
SHARD_BITS = 40  # shard i numbers what it writes from i << SHARD_BITS on

log = logging.getLogger("ralf")


class PostgresTransaction(Transaction):
    """A psycopg cursor in a transaction; staged tables are temporary tables dropped at
    commit."""

    def __init__(self, cur: psycopg.Cursor) -> None:
        self.cur = cur
        self._staged: set[str] = set()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.cur.execute(sql, list(params) or None)
        return self.cur.rowcount

    def execute_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        self.cur.executemany(sql, rows)

    def script(self, sql: str) -> None:
        self.cur.execute(sql)  # without parameters: the simple query protocol runs them all

    def arrow(self, sql: str, params: Sequence[Any] = (),
              types: dict[str, pa.DataType] | None = None) -> pa.Table:
        self.cur.execute(sql, list(params) or None)
        return to_arrow(self.cur, types)

    def _fresh(self, name: str) -> None:
        if name in self._staged:  # staged again in the same transaction
            self.cur.execute(f"DROP TABLE {quote(name)}")
        self._staged.add(name)

    def stage(self, name: str, table: pa.Table) -> None:
        self._fresh(name)
        columns = ", ".join(f"{quote(f.name)} {pg_type(duck_type(f.type))}"
                            for f in table.schema)
        self.cur.execute(f"CREATE TEMP TABLE {quote(name)} ({columns}) ON COMMIT DROP")
        names = ", ".join(quote(n) for n in table.column_names)
        with self.cur.copy(f"COPY {quote(name)} ({names}) FROM STDIN") as copy:
            for row in zip(*(c.to_pylist() for c in table.columns), strict=True):
                copy.write_row(row)

    def materialize(self, name: str, query: str, keep: list[str],
                    types: dict[str, pa.DataType]) -> pa.Table:
        """The query's rows into a temporary table, left in the server; returns ``keep``."""
        self._fresh(name)  # the rows stay in the server
        self.cur.execute(f"CREATE TEMP TABLE {quote(name)} ON COMMIT DROP AS {query}")
        return self.arrow(f"SELECT {', '.join(quote(c) for c in keep)} FROM {quote(name)}",
                          types=types)


class PostgresStorage(Storage):
    """``shard``/``num_shards``: this process owns one hash partition of the keys; its
    sequence numbers, watermarks and checkpoints are kept apart from the other shards'."""

    mark = "%s"
    user_schema = "public"
    _drop_dependents = "CASCADE"
    unreadable_value = (psycopg.DataError,)  # e.g. a text key with a NUL in it
    out_of_range = (psycopg.DataError,)  # class 22: out of range, division by zero ...

    def __init__(self, url: str, shard: int = 0, num_shards: int = 1) -> None:
        parsed = sqlalchemy.make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.url = url
        # search_path pinned: a role named like ralf's schema would otherwise make
        # unqualified names (user tables) resolve to the bookkeeping schema "$user" first
        self._engine = sqlalchemy.create_engine(
            parsed, pool_size=8, max_overflow=40, pool_pre_ping=False,
            connect_args={"options": "-c search_path=public"})
        try:
            self._writer = self._connect()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise RalfError(f"cannot connect to PostgreSQL at {parsed.render_as_string()}: "
                            f"{exc.orig or exc}") from None
        self._con: psycopg.Connection = self._writer.driver_connection
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[Any] = []
        self._translate = Translator(self.catalog)
        self.shard, self.num_shards = shard, num_shards
        self.sharded = num_shards > 1
        self.seq_base = shard << SHARD_BITS if self.sharded else 0
        self._seq_top = (shard + 1) << SHARD_BITS if self.sharded else 1 << 62
        self._sql_role = False
        self.migrate()
        self._check_shard_count()
        self._sql_role = self._prepare_sql_role()

    # ---- connections and transactions -------------------------------------------------------
    def _connect(self) -> Any:
        raw = self._engine.raw_connection()
        raw.driver_connection.autocommit = True
        return raw

    @contextmanager
    def _transaction(self) -> Iterator[PostgresTransaction]:
        with self._lock:
            if _lost(self._con):  # e.g. its backend was terminated: a new session
                self._writer.invalidate()
                self._writer = self._connect()
                self._con = self._writer.driver_connection
            with self._con.transaction(), self._con.cursor() as cur:
                yield PostgresTransaction(cur)

    def _reader(self) -> psycopg.Connection:
        raw = getattr(self._local, "raw", None)
        if raw is not None and _lost(raw.driver_connection):
            raw.invalidate()
            with self._lock:
                self._readers.remove(raw)
            raw = None
        if raw is None:
            raw = self._connect()
            allow_infinities(raw.driver_connection)
            self._local.raw = raw
            with self._lock:
                self._readers.append(raw)
        return raw.driver_connection

    @contextmanager
    def _reading(self) -> Iterator[PostgresTransaction]:
        con = self._reader()
        with con.transaction(), con.cursor() as cur:
            yield PostgresTransaction(cur)

    # ---- the dialect ------------------------------------------------------------------------
    def _migration_script(self, script: str) -> str:
        return re.sub(r"\bBLOB\b", "BYTEA", script)

    def _lock_catalog(self, tx: Transaction) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK])

    def _after_create(self, tx: Transaction, names: list[str]) -> None:
        if self._sql_role:  # client SQL may read them
            tx.execute(f"GRANT SELECT ON {', '.join(names)} TO {SQL_ROLE}")

    def _dialect(self, query: str) -> str:
        return self._translate(query)

    def _pending_relation(self, tx: Transaction, read: LogRead) -> str:
        # a relation of its own, so the plan's SQL is the same text every time (translated
        # once)
        tx.execute(f"CREATE TEMP TABLE __ralf_pending_rows ON COMMIT DROP AS "
                   f"{pending_rows(read)}")
        return "SELECT * FROM __ralf_pending_rows"

    def _text(self, text: str, escape: str) -> str:
        return text.replace("\x00", escape)

    def _create_ddl(self, info: TableInfo) -> list[str]:
        schema, name = info.schema, quote(info.name)
        user_cols = [f"{quote(n)} {pg_type(schema.sql_type(n))}" for n in schema.names]
        key = quote(schema.primary_key)
        if info.kind == SOURCE:
            ddl = [f"CREATE TABLE {name} ({', '.join(user_cols)}, "
                   f"_ralf_seq BIGINT NOT NULL, _ralf_ingested_at TIMESTAMP NOT NULL"
                   f"{CHANGE_DDL if info.changelog else ''})",
                   f"CREATE INDEX ON {name} (_ralf_seq)",
                   f"CREATE INDEX ON {name} ({key}, _ralf_seq)"]
            if info.changelog is not None:
                current = current_table(info.name)
                ddl += [f"CREATE TABLE {current} ({', '.join(user_cols)}, "
                        "_ralf_seq BIGINT PRIMARY KEY, _ralf_ingested_at TIMESTAMP NOT NULL)",
                        f"CREATE INDEX ON {current} ({key})"]
            return ddl
        hidden = [f"{quote(n)} {pg_type(t)}" for n, t in info.hidden]
        log_ = log_table(info)
        timed = f"{EVENT_TIME} TIMESTAMP, " if info.timed else ""
        return [f"CREATE TABLE {name} ({', '.join(user_cols + hidden)}, "
                f"_ralf_seq BIGINT NOT NULL, _ralf_updated_at TIMESTAMP NOT NULL, {timed}"
                f"PRIMARY KEY ({key}))",
                f"CREATE TABLE {log_} ({', '.join(user_cols)}, {timed}"
                "_ralf_seq BIGINT NOT NULL, _ralf_valid_from TIMESTAMP NOT NULL, "
                f"{DELETED} BOOLEAN)",
                f"CREATE INDEX ON {log_} (_ralf_seq)",
                f"CREATE INDEX ON {log_} ({key}, _ralf_seq)", *self._tiles_ddl(info)]

    def _tiles_ddl(self, info: TableInfo) -> list[str]:
        if not info.tiles:
            return []
        columns = ", ".join(f"{quote(n)} {pg_type(t)}" for n, t in info.tiles)
        name = tiles_table(info.name)
        return [f"CREATE TABLE {name} ({columns})",
                f"CREATE INDEX ON {name} ({quote(info.tiles[0][0])}, {quote(info.tiles[1][0])})"]

    def _epoch_us(self, expression: str) -> str:
        return f"CAST(EXTRACT(EPOCH FROM {expression}) * 1000000 AS BIGINT)"

    def _bucket(self, width: int, expression: str) -> str:
        return (f"date_bin(INTERVAL '{width} microseconds', {expression}, "
                "TIMESTAMP '1970-01-01')")

    def _insert_appends(self, tx: PostgresTransaction, info: TableInfo, rows: pa.Table,
                        first_seq: int, at: dt.datetime) -> None:
        """Straight into the append table by COPY (staging would copy them twice)."""
        written = append_columns(info)
        names = [*written, "_ralf_seq", "_ralf_ingested_at"]
        seqs = range(first_seq, first_seq + rows.num_rows)
        columns = [rows.column(c).to_pylist() for c in written]
        with tx.cur.copy(f"COPY {quote(info.name)} ({', '.join(map(quote, names))}) "
                         "FROM STDIN") as copy:
            for row in zip(*columns, seqs, strict=True):
                copy.write_row((*row, at))

    def _write_rows(self, tx: Transaction, info: TableInfo, relation: str,
                    columns: list[str], version: int, at: dt.datetime,
                    history: str | None = None) -> None:
        """Upsert the staged rows and log each written version in the history, in one
        statement (or, given ``history``, log that)."""
        names = [*columns, "_ralf_seq", "_ralf_updated_at"]
        key = quote(info.schema.primary_key)
        logged = ", ".join(quote(c) for c in history_columns(info))
        sets = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in names
                         if c != info.schema.primary_key)
        upsert = (f"INSERT INTO {quote(info.name)} ({', '.join(map(quote, names))}) SELECT "
                  f"{', '.join(quote(c) for c in columns)}, %s::BIGINT, %s::TIMESTAMP "
                  f"FROM {relation} ON CONFLICT ({key}) DO UPDATE SET {sets}")
        if history is not None:
            tx.execute(upsert, [version, at])
            self._append_history(tx, info, history, version, at)
            return
        tx.execute(f"WITH written AS ({upsert} RETURNING {logged}, _ralf_seq, "
                   f"_ralf_updated_at) INSERT INTO {log_table(info)} ({logged}, _ralf_seq, "
                   f"_ralf_valid_from) SELECT {logged}, _ralf_seq, _ralf_updated_at FROM written",
                   [version, at])

    def _as_of_join(self, table: TableInfo, alias: str, columns: list[str],
                    timestamp: str, by: str) -> str:
        key, time_col = quote(table.schema.primary_key), as_of_column(table, by)
        inner = ", ".join(quote(c) for c in columns)
        return (f"LEFT JOIN LATERAL (SELECT {inner} FROM {log_table(table)} v "
                f"WHERE v.{key} = e.{key} AND v.{time_col} <= e.{quote(timestamp)} "
                f"ORDER BY v.{time_col} DESC, v._ralf_seq DESC LIMIT 1) {alias} ON true")

    def describe(self, query: str) -> list[tuple[str, str]]:
        """Result columns as DuckDB types, found by DuckDB over an empty copy of the catalog
        (so both backends give a SQL table the same schema)."""
        scratch = duckdb.connect()
        try:
            for table, columns in catalog_columns(self.catalog()).items():
                scratch.execute(f"CREATE TABLE {quote(table)} ("
                                f"{', '.join(f'{quote(c)} {t}' for c, t in columns.items())})")
            described = [(r[0], r[1]) for r in scratch.sql(f"DESCRIBE {query}").fetchall()]
        except duckdb.Error as exc:
            raise SchemaError(f"SQL table: {exc}") from None
        finally:
            scratch.close()
        # the query runs here as translated: one PostgreSQL cannot plan (a DuckDB-only
        # function such as max(x, n)) is refused now rather than failing every refresh
        try:
            with self._reading() as tx:
                tx.execute(f"EXPLAIN {self._translate(query)}")
        except psycopg.Error as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise SchemaError("SQL table: PostgreSQL cannot run this query as translated "
                              f"from DuckDB's SQL: {first_line}") from None
        return described

    @staticmethod
    def unstorable(rows: pa.Table) -> dict[int, tuple[str, str]]:
        """Rows with a NUL character in a text value, which PostgreSQL refuses."""
        refused: dict[int, tuple[str, str]] = {}
        for field, column in zip(rows.schema, rows.columns, strict=True):
            if pa.types.is_list(field.type) and pa.types.is_string(field.type.value_type):
                values = pc.list_flatten(column)
                owners = pc.list_parent_indices(column)
            elif pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                values, owners = column, None
            else:
                continue
            hits = pc.indices_nonzero(pc.fill_null(pc.match_substring(values, "\x00"), False))
            if owners is not None:
                hits = pc.take(owners, hits)
            for i in hits.to_pylist():
                refused.setdefault(i, (field.name, f"column {field.name!r}: PostgreSQL text "
                                                  "cannot contain NUL (\\x00) characters"))
        return refused

    # ---- shards: each keeps its own progress ---------------------------------------------
    def _progress_name(self, table: str) -> str:
        return f"{table}#{self.shard}" if self.sharded else table

    def _own_rows(self) -> str:
        return f"_ralf_seq >= {self.seq_base} AND _ralf_seq < {self._seq_top}"

    def _write_floor(self, tx: Transaction, table: str, floor: int) -> None:
        if not self.sharded:
            super()._write_floor(tx, table, floor)
            return
        tx.execute("INSERT INTO ralf.shard_floors VALUES (%s, %s, %s) ON CONFLICT (name) "
                   "DO UPDATE SET watermark = excluded.watermark",
                   [self._progress_name(table), self.num_shards, floor])

    def load_floor(self, table: str) -> int:
        """The floor as committed (a shard's own, under its progress name)."""
        if not self.sharded:
            return super().load_floor(table)
        with self._reading() as tx:
            rows = tx.arrow("SELECT watermark FROM ralf.shard_floors WHERE name = %s",
                            [self._progress_name(table)])
        return self.seq_base if rows.num_rows == 0 else rows.column(0)[0].as_py()

    def _catalog_query(self) -> str:
        if not self.sharded:
            return super()._catalog_query()
        return ("SELECT t.name, kind, schema_json, parent, lookup, lookup_on, lazy, "
                f"coalesce(f.watermark, {int(self.seq_base)}) AS watermark, changelog, "
                "definition FROM ralf.tables t LEFT JOIN ralf.shard_floors f "
                f"ON f.name = t.name || '#{int(self.shard)}'")

    def _check_shard_count(self) -> None:
        """Refuse to open the database with another number of shards than the one that
        wrote it (keys would go to shards that do not hold their state: records applied
        twice). A database is stamped with its count when first opened; one from before
        the stamp is judged by what it holds."""
        with self._transaction() as tx:
            self._lock_catalog(tx)
            stamp = tx.arrow("SELECT value FROM ralf.settings WHERE name = 'num_shards'")
            if stamp.num_rows:
                written = {int(stamp.column(0)[0].as_py())}
            else:
                written = set(tx.arrow("SELECT DISTINCT num_shards FROM ralf.shard_floors")
                              .column(0).to_pylist())
                if not written and tx.arrow("SELECT count(*) FROM ralf.source_state"
                                            ).column(0)[0].as_py():
                    written = {1}  # ingested by one unsharded process
                tx.execute("INSERT INTO ralf.settings VALUES ('num_shards', %s)",
                           [str(self.num_shards if not written else min(written))])
        if written - {self.num_shards}:
            raise RalfError(f"this database was written by {sorted(written)[0]} shard(s); "
                            f"reopening it with num_shards={self.num_shards} would give keys "
                            "to other shards than the ones holding their state "
                            f"(use num_shards={sorted(written)[0]}, e.g. --num-shards)")

    # ---- client SQL -------------------------------------------------------------------------
    def _prepare_sql_role(self) -> bool:
        """Make sure the ``ralf_sql`` role exists and may read the readable tables; True
        if this session can switch to it. Creating it needs CREATEROLE (docs/serving.md
        gives the commands for an administrator); without it, client SQL runs as the
        engine's role, still parsed, read-only and time-limited."""
        for _ in range(2):  # another database on the server may create it concurrently
            try:
                with self._transaction() as tx:
                    if not tx.arrow("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                    [SQL_ROLE]).num_rows:
                        tx.execute(f"CREATE ROLE {SQL_ROLE} NOLOGIN NOINHERIT")
                break
            except psycopg.errors.DuplicateObject:
                continue
            except psycopg.errors.InsufficientPrivilege as exc:
                log.warning("PostgreSQL: cannot create the role %s for client SQL (%s); "
                            "see docs/serving.md", SQL_ROLE, str(exc).strip())
                break
        for attempt in range(3):  # catalog rows two sessions update at once: try again
            try:
                return self._grant_sql_role()
            except psycopg.errors.InternalError_:
                if attempt == 2:
                    raise
        return False

    def _grant_sql_role(self) -> bool:
        catalog = self.catalog().values()
        with self._transaction() as tx:
            self._lock_catalog(tx)
            member = tx.arrow("SELECT pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles "
                              "WHERE rolname = %s", [SQL_ROLE])
            if member.num_rows == 0:
                return False
            if not member.column(0)[0].as_py():
                try:
                    with self._con.transaction():
                        tx.execute(f"GRANT {SQL_ROLE} TO CURRENT_USER")
                except psycopg.errors.InsufficientPrivilege:
                    log.warning("PostgreSQL: this role may not switch to %s; client SQL "
                                "runs as the engine's role (see docs/serving.md)", SQL_ROLE)
                    return False
            tx.execute(f"GRANT USAGE ON SCHEMA public, ralf TO {SQL_ROLE}")
            readable = [quote(info.name) for info in catalog] + ["ralf.tables"] + [
                log_table(info) for info in catalog if info.kind != SOURCE]
            tx.execute(f"GRANT SELECT ON {', '.join(readable)} TO {SQL_ROLE}")
            views = tx.arrow("SELECT table_name FROM information_schema.views "
                             "WHERE table_schema = 'public'").column(0).to_pylist()
            if views:
                tx.execute(f"GRANT SELECT ON {', '.join(map(quote, views))} TO {SQL_ROLE}")
        return True

    def sql(self, query: str, *, max_rows: int | None = None, timeout: float | None = None,
            cancel: threading.Event | None = None) -> pa.Table:
        """Client SQL: checked on sqlglot's tree, translated, run as ``ralf_sql`` in a read-only
        transaction with a time limit, fetched in batches."""
        tree = readonly.check_sqlglot(self._translate.parse(query))
        translated = self._translate(query, tree)
        con = self._reader()
        try:
            with Watchdog(con.cancel, timeout, cancel) as watchdog:
                try:
                    return self._read_only(con, translated, max_rows, timeout,
                                           self._sql_role)
                except psycopg.errors.QueryCanceled:
                    raise QueryError(watchdog.why()) from None
        except psycopg.Error as exc:
            raise QueryError(str(exc).strip()) from None
        finally:
            if not _lost(con):  # nothing a query did outlives it (belt and braces)
                con.execute("SELECT pg_advisory_unlock_all()")

    @staticmethod
    def _read_only(con: psycopg.Connection, query: str, max_rows: int | None,
                   timeout: float | None, as_sql_role: bool) -> pa.Table:
        """Run ``query`` in a READ ONLY transaction that is rolled back, as the role
        ``ralf_sql`` (it reads the readable tables and nothing else, holds no privilege
        over the engine's sessions and cannot read the server's files), fetching through
        a server-side cursor batch by batch (a result over ``max_rows`` is refused before
        the rest is sent)."""
        with con.transaction(force_rollback=True):
            con.execute("SET TRANSACTION READ ONLY")
            if as_sql_role:
                con.execute(f"SET LOCAL ROLE {SQL_ROLE}")  # until the rollback
            if timeout is not None:
                con.execute(f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}")
            with con.cursor(name="ralf_sql") as cur:
                cur.execute(query)
                first = cur.fetchmany(_FETCH_ROWS)
                description = cur.description
                batches = iter(lambda: cur.fetchmany(_FETCH_ROWS), [])
                chunks = (record_batch(description, rows, None)
                          for rows in itertools.chain([first], batches))
                table = fetch_limited(chunks, None, max_rows)
        return table

    def snapshot(self, directory: str | None) -> str:
        """The database's URL without its password: PostgreSQL gives every session a
        consistent view itself, so there is nothing to copy."""
        return sqlalchemy.make_url(self.url)._replace(password=None).render_as_string(
            hide_password=False)

    def close(self) -> None:
        """Close every session and the connection pool."""
        with self._lock:
            for raw in self._readers:
                raw.close()
            self._readers.clear()
            self._writer.close()
            self._engine.dispose()


def _lost(con: psycopg.Connection) -> bool:
    """The session is gone (closed, or broken by a lost server connection)."""
    return con.closed or con.broken
