"""PostgreSQL backend: the same tables and ``ralf`` schema as on DuckDB, in a PostgreSQL
database reached through SQLAlchemy (psycopg 3 underneath), so several ralf processes can
share one database (see ``Ralf(..., shard=, num_shards=)``).

ralf's SQL dialect is DuckDB's everywhere: SQL tables and ``sql()`` queries are parsed as
DuckDB SQL and translated to PostgreSQL with sqlglot, and result types are worked out by
DuckDB itself over an empty copy of the catalog, so one pipeline gets the same schemas on
both backends. Arrow tables reach the server by ``COPY`` into temporary tables.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import logging
import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb
import psycopg
import psycopg.types.datetime as pg_datetime
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy
import sqlglot
from sqlglot import exp
from sqlglot.optimizer.qualify import qualify

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

_ADVISORY_LOCK = 0x7261_6C66  # "ralf": serialises migrations and table creation
SQL_ROLE = "ralf_sql"  # client SQL runs as this role: SELECT on the readable tables only
_FETCH_ROWS = 10_000  # rows per batch a client query's result is read in

log = logging.getLogger("ralf")

# DuckDB type names (ralf's lingua franca) -> PostgreSQL
_PG_TYPES = {
    "BIGINT": "BIGINT", "INTEGER": "INTEGER", "SMALLINT": "SMALLINT", "TINYINT": "SMALLINT",
    "HUGEINT": "NUMERIC", "UBIGINT": "NUMERIC", "UINTEGER": "BIGINT", "DOUBLE": "DOUBLE PRECISION",
    "FLOAT": "REAL", "REAL": "REAL", "VARCHAR": "TEXT", "BOOLEAN": "BOOLEAN", "BLOB": "BYTEA",
    "TIMESTAMP": "TIMESTAMP", "DATE": "DATE",
}
_ARROW_TO_DUCK = [
    (pa.types.is_int64, "BIGINT"), (pa.types.is_integer, "INTEGER"),
    (pa.types.is_floating, "DOUBLE"), (pa.types.is_boolean, "BOOLEAN"),
    (pa.types.is_timestamp, "TIMESTAMP"), (pa.types.is_date, "DATE"),
    (pa.types.is_binary, "BLOB"), (pa.types.is_large_binary, "BLOB"),
]
# PostgreSQL type OIDs -> Arrow, for results of arbitrary queries
_OID_ARROW = {
    16: pa.bool_(), 17: pa.binary(), 20: pa.int64(), 21: pa.int16(), 23: pa.int32(),
    25: pa.string(), 1043: pa.string(), 19: pa.string(), 18: pa.string(), 700: pa.float32(),
    701: pa.float64(), 1700: pa.float64(), 1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"), 1082: pa.date32(), 1022: pa.list_(pa.float64()),
    1016: pa.list_(pa.int64()), 1007: pa.list_(pa.int32()), 1009: pa.list_(pa.string()),
}


def pg_type(duck_type: str) -> str:
    """The PostgreSQL column type for a DuckDB type name."""
    base = duck_type.upper()
    if base.endswith("[]"):
        return pg_type(base[:-2]) + "[]"
    if base.startswith("DECIMAL"):
        return base.replace("DECIMAL", "NUMERIC")
    if base.startswith("TIMESTAMP"):
        return "TIMESTAMP"
    try:
        return _PG_TYPES[base]
    except KeyError:
        raise SchemaError(f"SQL type {duck_type} has no PostgreSQL column type") from None


def _duck_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _duck_type(arrow_type.value_type) + "[]"
    for test, name in _ARROW_TO_DUCK:
        if test(arrow_type):
            return name
    return "VARCHAR"


class Translator:
    """ralf's SQL (DuckDB's dialect) as PostgreSQL: identifiers quoted and spelled as in the
    catalog (DuckDB matches them case-insensitively, and ``user`` is a keyword in
    PostgreSQL), ``* EXCLUDE (...)`` expanded from the catalog, ``round(x, places)`` on
    any number. Cached by query text."""

    def __init__(self, catalog: Any) -> None:
        self._catalog = catalog  # () -> dict[str, TableInfo], read on a cache miss
        self._done: dict[str, str] = {}

    def parse(self, query: str) -> list[exp.Expression]:
        try:
            return [s for s in sqlglot.parse(query, read="duckdb") if s is not None]
        except sqlglot.errors.ParseError as exc:
            raise QueryError(f"invalid SQL: {exc}") from None

    def __call__(self, query: str, tree: exp.Expression | None = None) -> str:
        done = self._done.get(query)
        if done is not None:
            return done
        if tree is None:
            (tree,) = self.parse(query)
        columns = catalog_columns(self._catalog())
        spelling = {name.lower(): name for table, names in columns.items()
                    for name in (table, *names)}
        if any(star.args.get("except_") for star in tree.find_all(exp.Star)):
            tree = qualify(tree, dialect="duckdb", schema=columns,
                           validate_qualify_columns=False, identify=False)
        for call in tree.find_all(exp.Round):  # PostgreSQL rounds only NUMERIC to places
            if call.args.get("decimals") is not None:
                call.set("this", exp.cast(call.this, "DECIMAL"))
        for kind in tree.find_all(exp.DataType):  # 128-bit integers: PostgreSQL's NUMERIC
            if kind.this in (exp.DataType.Type.INT128, exp.DataType.Type.UINT128):
                kind.set("this", exp.DataType.Type.DECIMAL)
        for identifier in tree.find_all(exp.Identifier):
            if not identifier.quoted:
                identifier.set("this", spelling.get(identifier.name.lower(), identifier.name))
        done = tree.sql("postgres", identify=True)
        if len(self._done) > 1000:
            self._done.clear()
        self._done[query] = done
        return done


def catalog_columns(catalog: dict[str, TableInfo]) -> dict[str, dict[str, str]]:
    """Each table's columns and their DuckDB types, bookkeeping included."""
    schema = {}
    for info in catalog.values():
        columns = {n: info.schema.sql_type(n) for n in info.schema.names}
        columns.update(dict(info.hidden))
        columns["_ralf_seq"] = "BIGINT"
        time = "_ralf_ingested_at" if info.kind == SOURCE else "_ralf_updated_at"
        columns[time] = "TIMESTAMP"
        schema[info.name] = columns
    return schema


def _infinite(base: type) -> type:
    """A loader of ``base``'s type that reads PostgreSQL's infinite dates and timestamps
    as ±inf (psycopg refuses them: no Python date holds them)."""

    class Loader(base):
        def load(self, data: Any) -> Any:
            text = bytes(data)
            if text == b"infinity":
                return math.inf
            if text == b"-infinity":
                return -math.inf
            return super().load(data)

    return Loader


def _allow_infinities(con: psycopg.Connection) -> None:
    for name, loader in (("timestamp", pg_datetime.TimestampLoader),
                         ("timestamptz", pg_datetime.TimestamptzLoader),
                         ("date", pg_datetime.DateLoader)):
        con.adapters.register_loader(name, _infinite(loader))


def _lost(con: psycopg.Connection) -> bool:
    """The session is gone (closed, or broken by a lost server connection)."""
    return con.closed or con.broken


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, decimal.Decimal) else value


def _to_arrow(cur: psycopg.Cursor, types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """A result as Arrow: the named columns typed as given, others by their PostgreSQL type."""
    if not cur.description:
        return pa.table({})
    return pa.Table.from_batches([_batch(cur.description, cur.fetchall(), types)])


def _batch(description: Any, rows: list[tuple], types: dict[str, pa.DataType] | None
           ) -> pa.RecordBatch:
    """Rows of a result as one Arrow batch: the named columns typed as ``types`` says (the
    engine's reads), the others by their PostgreSQL type (client SQL: exact, as DuckDB
    would give them, and as decimal text where Arrow has no type for a value)."""
    names = [d.name for d in description]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    arrays = []
    for name, desc, values in zip(names, description, columns, strict=True):
        wanted = (types or {}).get(name)
        if wanted is not None:
            arrays.append(_typed_column(values, wanted))
            continue
        try:
            arrays.append(_client_column(desc, values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arrays.append(pa.array([None if v is None else str(v) for v in values]))
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _typed_column(values: tuple, wanted: pa.DataType) -> pa.Array:
    if any(isinstance(v, decimal.Decimal) for v in values):
        convert = int if pa.types.is_integer(wanted) else float
        values = [None if v is None else convert(v) for v in values]
    return pa.array(values, type=wanted)


def _client_column(desc: Any, values: tuple) -> pa.Array:
    """A client query's column. NUMERIC(p, s) exactly, as DuckDB's DECIMAL(p, s);
    unconstrained NUMERIC as integers (beyond BIGINT as DECIMAL, like DuckDB's HUGEINT) or
    as doubles (like DuckDB's avg); infinite dates and timestamps as DuckDB holds them."""
    wanted = _OID_ARROW.get(desc.type_code)
    if wanted is not None and (pa.types.is_timestamp(wanted) or pa.types.is_date(wanted)) \
            and any(isinstance(v, float) for v in values):
        return _with_infinities(values, wanted)
    if desc.type_code != 1700:
        return pa.array(values, type=wanted)
    if desc.scale is not None:
        precision = desc.precision or 38
        return pa.array(values, (pa.decimal128 if precision <= 38 else pa.decimal256)(
            precision, desc.scale))
    if all(v is None or v == v.to_integral_value() for v in values):
        integers = [None if v is None else int(v) for v in values]
        digits = max((len(str(abs(v))) for v in integers if v is not None), default=0)
        if all(v is None or -2**63 <= v < 2**63 for v in integers):
            return pa.array(integers, pa.int64())
        return pa.array(values, pa.decimal128(38, 0) if digits <= 38 else pa.decimal256(76, 0))
    return pa.array([None if v is None else float(v) for v in values], pa.float64())


def _with_infinities(values: tuple, typ: pa.DataType) -> pa.Array:
    """Dates or timestamps with ±inf among them, as DuckDB holds infinities: the extreme
    values of the storage integer."""
    if pa.types.is_date(typ):
        epoch, unit, top = dt.date(1970, 1, 1), dt.timedelta(days=1), 2**31 - 1
        as_int = pa.int32()
    else:
        epoch, unit, top = dt.datetime(1970, 1, 1), dt.timedelta(microseconds=1), 2**63 - 1
        as_int = pa.int64()
    stored = [None if v is None else (top if v == math.inf else -top) if isinstance(v, float)
              else (v.replace(tzinfo=None) - epoch) // unit for v in values]
    return pa.array(stored, as_int).cast(typ)


def _typed(table: TableInfo, *extra: str) -> dict[str, pa.DataType]:
    types = {f.name: f.type for f in table.schema.arrow}
    times = {"_ralf_updated_at", "_ralf_ingested_at", "_ralf_valid_from"}
    types.update({e: pa.timestamp("us") if e in times else pa.int64() for e in extra})
    return types


SHARD_BITS = 40  # shard i numbers what it writes from i << SHARD_BITS on


class PostgresStorage(Storage):
    """``shard``/``num_shards``: this process owns one hash partition of the keys; its
    sequence numbers, watermarks and checkpoints are kept apart from the other shards'."""

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
        self.migrate()
        self._check_shard_count()
        self._sql_role = self._prepare_sql_role()

    # ---- plumbing ---------------------------------------------------------------------------
    def _connect(self) -> Any:
        raw = self._engine.raw_connection()
        raw.driver_connection.autocommit = True
        return raw

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor]:
        with self._lock:
            if _lost(self._con):  # e.g. its backend was terminated: a new session
                self._writer.invalidate()
                self._writer = self._connect()
                self._con = self._writer.driver_connection
            with self._con.transaction(), self._con.cursor() as cur:
                yield cur

    def _reader(self) -> psycopg.Connection:
        raw = getattr(self._local, "raw", None)
        if raw is not None and _lost(raw.driver_connection):
            raw.invalidate()
            with self._lock:
                self._readers.remove(raw)
            raw = None
        if raw is None:
            raw = self._connect()
            _allow_infinities(raw.driver_connection)
            self._local.raw = raw
            with self._lock:
                self._readers.append(raw)
        return raw.driver_connection

    @staticmethod
    def _stage(cur: psycopg.Cursor, name: str, table: pa.Table) -> None:
        """A temporary table holding ``table`` until the transaction ends."""
        columns = ", ".join(f"{quote(f.name)} {pg_type(_duck_type(f.type))}"
                            for f in table.schema)
        cur.execute(f"CREATE TEMP TABLE {quote(name)} ({columns}) ON COMMIT DROP")
        names = ", ".join(quote(n) for n in table.column_names)
        with cur.copy(f"COPY {quote(name)} ({names}) FROM STDIN") as copy:
            for row in zip(*(c.to_pylist() for c in table.columns), strict=True):
                copy.write_row(row)

    def _prepare_sql_role(self) -> bool:
        """Make sure the ``ralf_sql`` role exists and may read the readable tables; True
        if this session can switch to it. Creating it needs CREATEROLE (docs/serving.md
        gives the commands for an administrator); without it, client SQL runs as the
        engine's role, still parsed, read-only and time-limited."""
        for _ in range(2):  # another database on the server may create it concurrently
            try:
                with self._transaction() as cur:
                    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [SQL_ROLE])
                    if cur.fetchone() is None:
                        cur.execute(f"CREATE ROLE {SQL_ROLE} NOLOGIN NOINHERIT")
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
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK])
            cur.execute("SELECT pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles "
                        "WHERE rolname = %s", [SQL_ROLE])
            row = cur.fetchone()
            if row is None:
                return False
            if not row[0]:
                try:
                    with self._con.transaction():
                        cur.execute(f"GRANT {SQL_ROLE} TO CURRENT_USER")
                except psycopg.errors.InsufficientPrivilege:
                    log.warning("PostgreSQL: this role may not switch to %s; client SQL "
                                "runs as the engine's role (see docs/serving.md)", SQL_ROLE)
                    return False
            cur.execute(f"GRANT USAGE ON SCHEMA public, ralf TO {SQL_ROLE}")
            readable = [quote(name) for name in self.catalog()] + ["ralf.tables"] + [
                log_table(info) for info in self.catalog().values() if info.kind != SOURCE]
            cur.execute(f"GRANT SELECT ON {', '.join(readable)} TO {SQL_ROLE}")
            cur.execute("SELECT table_name FROM information_schema.views "
                        "WHERE table_schema = 'public'")
            views = [quote(v) for (v,) in cur.fetchall()]
            if views:
                cur.execute(f"GRANT SELECT ON {', '.join(views)} TO {SQL_ROLE}")
        return True

    def _grant_reading(self, cur: psycopg.Cursor, *tables: str) -> None:
        """Let client SQL read new tables (by their quoted names)."""
        if getattr(self, "_sql_role", False):
            cur.execute(f"GRANT SELECT ON {', '.join(tables)} TO {SQL_ROLE}")

    def _stage_read(self, cur: psycopg.Cursor, read: LogRead) -> None:
        for name, table in registered(read).items():
            self._stage(cur, name, table)

    def migrate(self) -> list[int]:
        """Apply the migrations this database has not seen yet (one process at a time)."""
        applied = []
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK])
            cur.execute("SELECT count(*) FROM information_schema.tables "
                        "WHERE table_schema = 'ralf' AND table_name = 'schema_migrations'")
            done = set()
            if cur.fetchone()[0]:
                cur.execute("SELECT version FROM ralf.schema_migrations")
                done = {v for (v,) in cur.fetchall()}
            for migration in migrate.available():
                if migration.version in done:
                    continue
                for statement in migrate.statements(migration.sql):
                    cur.execute(re.sub(r"\bBLOB\b", "BYTEA", statement))
                cur.execute("INSERT INTO ralf.schema_migrations VALUES (%s, %s, %s)",
                            [migration.version, migration.name, utcnow()])
                applied.append(migration.version)
        return applied

    def _check_shard_count(self) -> None:
        """Refuse to open the database with another number of shards than the one that
        wrote it (keys would go to shards that do not hold their state: records applied
        twice). A database is stamped with its count when first opened; one from before
        the stamp is judged by what it holds."""
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK])
            cur.execute("SELECT value FROM ralf.settings WHERE name = 'num_shards'")
            row = cur.fetchone()
            if row is not None:
                written = {int(row[0])}
            else:
                cur.execute("SELECT DISTINCT num_shards FROM ralf.shard_floors")
                written = {n for (n,) in cur.fetchall()}
                cur.execute("SELECT count(*) FROM ralf.source_state")
                if not written and cur.fetchone()[0]:
                    written = {1}  # ingested by one unsharded process
                cur.execute("INSERT INTO ralf.settings VALUES ('num_shards', %s)",
                            [str(self.num_shards if not written else min(written))])
        if written - {self.num_shards}:
            raise RalfError(f"this database was written by {sorted(written)[0]} shard(s); "
                            f"reopening it with num_shards={self.num_shards} would give keys "
                            "to other shards than the ones holding their state "
                            f"(use num_shards={sorted(written)[0]}, e.g. --num-shards)")

    def _state(self, table: str) -> str:
        """Where this process's progress on ``table`` is kept (a shard's own name)."""
        return f"{table}#{self.shard}" if self.sharded else table

    def _own(self, column: str = "_ralf_seq") -> str:
        """Rows this shard wrote (all rows when not sharded)."""
        return f"{column} >= {self.seq_base} AND {column} < {self._seq_top}"

    def schema_version(self) -> int:
        with self._transaction() as cur:
            cur.execute("SELECT max(version) FROM ralf.schema_migrations")
            return cur.fetchone()[0]

    # ---- catalog ----------------------------------------------------------------------------
    def catalog(self) -> dict[str, TableInfo]:
        with self._transaction() as cur:
            cur.execute("SELECT t.name, kind, schema_json, parent, lookup, lookup_on, lazy, "
                        "CASE WHEN %s THEN coalesce(f.watermark, %s) ELSE t.watermark END "
                        "FROM ralf.tables t LEFT JOIN ralf.shard_floors f "
                        "ON f.name = t.name || %s", [self.sharded, self.seq_base, f"#{self.shard}"])
            rows = cur.fetchall()
        return {
            name: TableInfo(name, kind, Schema.from_json(sj), parent, lookup, on, bool(lazy), wm)
            for name, kind, sj, parent, lookup, on, lazy, wm in rows
        }

    def create_table(self, info: TableInfo) -> None:
        schema = info.schema
        user_cols = [f"{quote(n)} {pg_type(schema.sql_type(n))}" for n in schema.names]
        key = quote(schema.primary_key)
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK])
            cur.execute("SELECT 1 FROM ralf.tables WHERE name = %s", [info.name])
            if cur.fetchone():  # another process sharing the database created it first
                return
            name = quote(info.name)
            if info.kind == SOURCE:
                cur.execute(f"CREATE TABLE {name} ({', '.join(user_cols)}, "
                            "_ralf_seq BIGINT NOT NULL, _ralf_ingested_at TIMESTAMP NOT NULL)")
                cur.execute(f"CREATE INDEX ON {name} (_ralf_seq)")
                cur.execute(f"CREATE INDEX ON {name} ({key}, _ralf_seq)")
                self._grant_reading(cur, name)
            else:
                hidden = [f"{quote(n)} {pg_type(t)}" for n, t in info.hidden]
                cur.execute(f"CREATE TABLE {name} ({', '.join(user_cols + hidden)}, "
                            f"_ralf_seq BIGINT NOT NULL, _ralf_updated_at TIMESTAMP NOT NULL, "
                            f"PRIMARY KEY ({key}))")
                log = log_table(info)
                cur.execute(f"CREATE TABLE {log} ({', '.join(user_cols)}, "
                            "_ralf_seq BIGINT NOT NULL, _ralf_valid_from TIMESTAMP NOT NULL)")
                cur.execute(f"CREATE INDEX ON {log} (_ralf_seq)")
                cur.execute(f"CREATE INDEX ON {log} ({key}, _ralf_seq)")
                self._grant_reading(cur, name, log)
            cur.execute(
                "INSERT INTO ralf.tables (name, kind, schema_json, parent, created_at, lookup, "
                "lookup_on, lazy, watermark) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0)",
                [info.name, info.kind, schema.to_json(), info.parent, utcnow(),
                 info.lookup, info.lookup_on, info.lazy])

    def update_definition(self, info: TableInfo) -> None:
        with self._transaction() as cur:
            cur.execute("UPDATE ralf.tables SET lazy = %s, lookup = %s, lookup_on = %s "
                        "WHERE name = %s", [info.lazy, info.lookup, info.lookup_on, info.name])

    def create_alias(self, alias: str, table: str) -> None:
        with self._transaction() as cur:
            cur.execute(f"CREATE OR REPLACE VIEW {quote(alias)} AS SELECT * FROM {quote(table)}")
            self._grant_reading(cur, quote(alias))

    @staticmethod
    def unstorable(rows: pa.Table) -> dict[int, tuple[str, str]]:
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

    # ---- writes -------------------------------------------------------------------------------
    def append(self, unit: Append) -> None:
        info, rows = unit.table, unit.rows
        n = rows.num_rows
        names = [*info.schema.names, "_ralf_seq", "_ralf_ingested_at"]
        with self._transaction() as cur:
            if n:
                seqs = range(unit.first_seq, unit.first_seq + n)
                columns = [rows.column(c).to_pylist() for c in info.schema.names]
                with cur.copy(f"COPY {quote(info.name)} ({', '.join(map(quote, names))}) "
                              "FROM STDIN") as copy:
                    for row in zip(*columns, seqs, strict=True):
                        copy.write_row((*row, unit.ingested_at))
            cur.execute(
                "INSERT INTO ralf.source_state VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (table_name) DO UPDATE SET state = excluded.state, "
                "emitted = excluded.emitted, exhausted = excluded.exhausted, "
                "updated_at = excluded.updated_at",
                [self._state(info.name), unit.source_state, unit.emitted, unit.exhausted,
                 unit.ingested_at])
            self._insert_rejected(cur, unit.rejected)
            crashpoint("append.before_commit")

    def refresh(self, unit: Refresh) -> None:
        info, rows = unit.table, unit.rows
        with self._transaction() as cur:
            if rows.num_rows:
                self._stage(cur, "__ralf_rows", rows)
                columns = ", ".join(quote(c) for c in rows.column_names)
                cur.execute(self._upsert(
                    info, rows.column_names,
                    f"SELECT {columns}, %s::BIGINT, %s::TIMESTAMP FROM __ralf_rows"),
                    [unit.version, unit.updated_at])
            self._write_watermarks(cur, unit)
            if unit.write_state:
                cur.execute(
                    "INSERT INTO ralf.operator_state VALUES (%s, %s, %s) "
                    "ON CONFLICT (table_name) DO UPDATE SET state = excluded.state, "
                    "updated_at = excluded.updated_at",
                    [self._state(info.name), unit.state, unit.updated_at])
            crashpoint("refresh.before_commit")

    @staticmethod
    def _upsert(info: TableInfo, columns: list[str], select: str) -> str:
        """Upsert ``select``'s rows (``columns``, then ``_ralf_seq`` and ``_ralf_updated_at``)
        and log each written version in the history, in one statement."""
        names = [*columns, "_ralf_seq", "_ralf_updated_at"]
        key = quote(info.schema.primary_key)
        user = ", ".join(quote(c) for c in info.schema.names)
        sets = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in names
                         if c != info.schema.primary_key)
        return (f"WITH written AS (INSERT INTO {quote(info.name)} "
                f"({', '.join(map(quote, names))}) {select} "
                f"ON CONFLICT ({key}) DO UPDATE SET {sets} "
                f"RETURNING {user}, _ralf_seq, _ralf_updated_at), "
                f"logged AS (INSERT INTO {log_table(info)} ({user}, _ralf_seq, _ralf_valid_from) "
                f"SELECT {user}, _ralf_seq, _ralf_updated_at FROM written) "
                f"SELECT {user}, _ralf_seq FROM written")

    def refresh_view(self, unit: ViewRefresh) -> tuple[pa.Table, list[Any]]:
        try:
            return self._refresh_view(unit)
        except psycopg.DataError as exc:  # e.g. float underflow, which PostgreSQL refuses
            raise RalfError(str(exc).strip()) from None

    def _refresh_view(self, unit: ViewRefresh) -> tuple[pa.Table, list[Any]]:
        info, plan = unit.table, unit.plan
        deleted: list[Any] = []
        with self._transaction() as cur:
            self._stage_read(cur, unit.read)
            # The pending rows as a relation of their own, so the plan's SQL is the same text
            # every time (translated once).
            cur.execute(f"CREATE TEMP TABLE __ralf_pending_rows ON COMMIT DROP AS "
                        f"{pending_rows(unit.read)}")
            pending = "SELECT * FROM __ralf_pending_rows"
            if isinstance(plan, DeltaAggregate):
                types = {n: info.schema.sql_type(n) for n in info.schema.names}
                select = (f"SELECT *, %s::BIGINT, %s::TIMESTAMP FROM "
                          f"({self._translate(plan.new_rows(quote(info.name), pending, types))}) "
                          "AS __ralf_new")
                columns = [plan.key, *(o.name for o in plan.outputs), *plan.helpers]
                cur.execute(self._upsert(info, columns, select), [unit.version, unit.updated_at])
            else:
                deleted = self._recompute(cur, unit, pending)
            rows = _to_arrow(cur, _typed(info, "_ralf_seq")).select([*info.schema.names,
                                                                    "_ralf_seq"])
            self._write_watermarks(cur, unit)
            crashpoint("view.before_commit")
        return rows, deleted

    def _recompute(self, cur: psycopg.Cursor, unit: ViewRefresh, pending: str) -> list[Any]:
        """Upsert the stale keys' recomputed groups and delete the keys that have none now;
        leaves the written rows as the cursor's result."""
        info, plan = unit.table, unit.plan
        key = quote(plan.key)
        parent = unit.read.table
        cols = ", ".join(quote(c) for c in parent.schema.names)
        cur.execute(f"CREATE TEMP TABLE __ralf_stale ON COMMIT DROP AS "
                    f"SELECT DISTINCT {key} AS key FROM ({pending}) AS s")
        parent_rows = (f"SELECT {cols} FROM public.{quote(parent.name)} "
                       f"WHERE {key} IN (SELECT key FROM __ralf_stale)")
        cur.execute(f"CREATE TEMP TABLE __ralf_result ON COMMIT DROP AS "
                    f"{self._translate(plan.recompute(parent_rows))}")
        cur.execute(f"DELETE FROM {quote(info.name)} WHERE {key} IN (SELECT key FROM "
                    f"__ralf_stale) AND {key} NOT IN (SELECT {key} FROM __ralf_result "
                    f"WHERE {key} IS NOT NULL) RETURNING {key}")
        deleted = [k for (k,) in cur.fetchall()]
        user = ", ".join(quote(c) for c in info.schema.names)
        cur.execute(self._upsert(info, info.schema.names, f"SELECT {user}, %s::BIGINT, "
                                 "%s::TIMESTAMP FROM __ralf_result"),
                    [unit.version, unit.updated_at])
        return deleted

    def describe(self, query: str) -> list[tuple[str, str]]:
        """Result columns as DuckDB types, found by DuckDB over an empty copy of the catalog
        (so both backends give a SQL table the same schema)."""
        scratch = duckdb.connect()
        try:
            for table, columns in catalog_columns(self.catalog()).items():
                scratch.execute(f"CREATE TABLE {quote(table)} ("
                                f"{', '.join(f'{quote(c)} {t}' for c, t in columns.items())})")
            return [(r[0], r[1]) for r in scratch.sql(f"DESCRIBE {query}").fetchall()]
        except duckdb.Error as exc:
            raise SchemaError(f"SQL table: {exc}") from None
        finally:
            scratch.close()

    def _write_watermarks(self, cur: psycopg.Cursor, unit: Refresh | ViewRefresh) -> None:
        name = self._state(unit.table.name)
        if self.sharded:
            cur.execute("INSERT INTO ralf.shard_floors VALUES (%s, %s, %s) ON CONFLICT (name) "
                        "DO UPDATE SET watermark = excluded.watermark",
                        [name, self.num_shards, unit.watermark])
        else:
            cur.execute("UPDATE ralf.tables SET watermark = %s WHERE name = %s",
                        [unit.watermark, name])
        if unit.clear_watermarks:
            cur.execute("DELETE FROM ralf.watermarks WHERE table_name = %s", [name])
        if unit.set_watermarks:
            cur.execute(
                "INSERT INTO ralf.watermarks SELECT %s, k, s "
                "FROM unnest(%s::text[], %s::bigint[]) AS u(k, s) "
                "ON CONFLICT (table_name, key) DO UPDATE SET seq = excluded.seq",
                [name, list(unit.set_watermarks), list(unit.set_watermarks.values())])

    def reject(self, rejected: list[Rejection]) -> None:
        if rejected:
            with self._transaction() as cur:
                self._insert_rejected(cur, rejected)

    @staticmethod
    def _insert_rejected(cur: psycopg.Cursor, rejected: list[Rejection]) -> None:
        if not rejected:
            return
        now = utcnow()
        cur.executemany(
            "INSERT INTO ralf.rejected (table_name, reason, column_name, record, rejected_at) "
            "VALUES (%s, %s, %s, %s, %s)",
            [[r.table, r.reason.replace("\x00", "\\x00"), r.column,
              r.raw_json().replace("\x00", "\\u0000"), now] for r in rejected])

    def reset_progress(self, table: str) -> None:
        with self._transaction() as cur:
            cur.execute("UPDATE ralf.tables SET watermark = 0 WHERE name = %s AND NOT %s",
                        [table, self.sharded])
            table = self._state(table)
            cur.execute("DELETE FROM ralf.shard_floors WHERE name = %s", [table])
            cur.execute("DELETE FROM ralf.watermarks WHERE table_name = %s", [table])
            cur.execute("DELETE FROM ralf.operator_state WHERE table_name = %s", [table])

    # ---- engine reads -------------------------------------------------------------------------
    def max_seq(self, table: TableInfo) -> int:
        with self._transaction() as cur:
            cur.execute(f"SELECT coalesce(max(_ralf_seq), {self.seq_base}) "
                        f"FROM {log_table(table)} WHERE {self._own()}")
            return cur.fetchone()[0]

    def _log_query(self, read: LogRead, query: str, types: dict[str, pa.DataType]) -> pa.Table:
        with self._transaction() as cur:
            self._stage_read(cur, read)
            cur.execute(query)
            return _to_arrow(cur, types)

    def read_log(self, read: LogRead) -> pa.Table:
        return self._log_query(read, f"{pending_rows(read)} ORDER BY p._ralf_seq",
                               _typed(read.table, "_ralf_seq"))

    def pending_summary(self, read: LogRead) -> pa.Table:
        key_type = read.table.schema.arrow.field(read.table.schema.primary_key).type
        return self._log_query(read, pending_summary(read), {
            "key": key_type, "n": pa.int64(), "first_seq": pa.int64(),
            "last_seq": pa.int64(), "first_at": pa.timestamp("us")})

    def current_rows(self, table: TableInfo) -> pa.Table:
        with self._transaction() as cur:
            cur.execute(f"SELECT * FROM ({current_query(table, '_ralf_updated_at', '_ralf_seq')}) "
                        f"AS c WHERE {self._own()}")
            return _to_arrow(cur, _typed(table, "_ralf_updated_at"))

    def load_floor(self, table: str) -> int:
        with self._transaction() as cur:
            if self.sharded:
                cur.execute("SELECT watermark FROM ralf.shard_floors WHERE name = %s",
                            [self._state(table)])
                row = cur.fetchone()
                return self.seq_base if row is None else row[0]
            cur.execute("SELECT watermark FROM ralf.tables WHERE name = %s", [table])
            return cur.fetchone()[0]

    def load_watermarks(self, table: str) -> dict[str, int]:
        with self._transaction() as cur:
            cur.execute("SELECT key, seq FROM ralf.watermarks WHERE table_name = %s",
                        [self._state(table)])
            return dict(cur.fetchall())

    def load_operator_state(self, table: str) -> tuple[bool, bytes | None]:
        with self._transaction() as cur:
            cur.execute("SELECT state FROM ralf.operator_state WHERE table_name = %s",
                        [self._state(table)])
            row = cur.fetchone()
        return (False, None) if row is None else (True, row[0])

    def load_source_state(self, table: str) -> tuple[bytes | None, int, bool] | None:
        with self._transaction() as cur:
            cur.execute("SELECT state, emitted, exhausted FROM ralf.source_state "
                        "WHERE table_name = %s", [self._state(table)])
            row = cur.fetchone()
        return None if row is None else (row[0], row[1], row[2])

    # ---- client reads -------------------------------------------------------------------------
    def _one(self, query: str, params: list[Any]) -> dict[str, Any] | None:
        with self._reader().cursor() as cur:
            try:
                cur.execute(query, params)
            except psycopg.DataError:  # a key PostgreSQL cannot hold (text with NUL): absent
                return None
            row = cur.fetchone()
            if row is None:
                return None
            return {d.name: _plain(v) for d, v in zip(cur.description, row, strict=True)}

    def point(self, table: TableInfo, key: Any) -> dict[str, Any] | None:
        return self._one(point_query(table, "%s"), [key])

    def point_as_of(self, table: TableInfo, key: Any, at: dt.datetime) -> dict[str, Any] | None:
        return self._one(point_as_of_query(table, "%s"), [key, at])

    def historical(self, entities: pa.Table, timestamp: str,
                   features: list[tuple[TableInfo, str, str]]) -> pa.Table:
        ts = quote(timestamp)
        kept = [quote(c) for c in entities.column_names if c != "__ralf_row"]
        selects, joins = [f"e.{c}" for c in kept], []
        types = {f.name: f.type for f in entities.schema}
        tables = {t.name: t for t, _, _ in features}
        for i, table in enumerate(tables.values()):
            alias = f"h{i}"
            key = quote(table.schema.primary_key)
            time = time_column(table)
            wanted = [(column, out) for t, column, out in features if t.name == table.name]
            inner = ", ".join(quote(c) for c, _ in wanted)
            joins.append(f"LEFT JOIN LATERAL (SELECT {inner} FROM {log_table(table)} v "
                         f"WHERE v.{key} = e.{key} AND v.{time} <= e.{ts} "
                         f"ORDER BY v.{time} DESC, v._ralf_seq DESC LIMIT 1) {alias} ON true")
            selects += [f"{alias}.{quote(c)} AS {quote(out)}" for c, out in wanted]
            types.update({out: table.schema.arrow.field(c).type for c, out in wanted})
        con = self._reader()
        with con.transaction(), con.cursor() as cur:
            try:
                self._stage(cur, "__ralf_entities", entities)
            except psycopg.DataError as exc:
                raise SchemaError(f"historical_query: entity rows: {exc}") from None
            cur.execute(f"SELECT {', '.join(selects)} FROM __ralf_entities e "
                        f"{' '.join(joins)} ORDER BY e.__ralf_row")
            return _to_arrow(cur, types)

    def compact_history(self, table: TableInfo, cutoff: dt.datetime, keep_from_seq: int
                        ) -> int:
        log, time = log_table(table), time_column(table)
        key = quote(table.schema.primary_key)
        with self._transaction() as cur:
            cur.execute(
                f"DELETE FROM {log} AS h WHERE {self._own()} AND {time} < %s "
                f"AND _ralf_seq < %s AND _ralf_seq < ("
                f"SELECT max(_ralf_seq) FROM {log} AS v WHERE v.{key} = h.{key} "
                f"AND v.{time} < %s)", [cutoff, keep_from_seq, cutoff])
            return cur.rowcount

    def bulk(self, table: TableInfo, with_metadata: bool = False) -> pa.Table:
        meta = ("_ralf_seq", "_ralf_updated_at") if with_metadata else ()
        key = quote(table.schema.primary_key)
        with self._reader().cursor() as cur:
            cur.execute(f"{current_query(table, *meta)} ORDER BY {key}")
            return _to_arrow(cur, _typed(table, *meta))

    def sql(self, query: str, *, max_rows: int | None = None, timeout: float | None = None,
            cancel: threading.Event | None = None) -> pa.Table:
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
                chunks = (_batch(description, rows, None)
                          for rows in itertools.chain([first], batches))
                table = fetch_limited(chunks, None, max_rows)
        return table

    placeholder = "%s"

    def _read(self, query: str, params: list[Any]) -> pa.Table:
        with self._reader().cursor() as cur:
            cur.execute(query, params)
            return _to_arrow(cur)

    def count_rows(self, table: TableInfo) -> int:
        with self._reader().cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {quote(table.name)}")
            return cur.fetchone()[0]

    def snapshot(self, directory: str | None) -> str:
        """The database's URL without its password: PostgreSQL gives every session a
        consistent view itself, so there is nothing to copy."""
        return sqlalchemy.make_url(self.url)._replace(password=None).render_as_string(
            hide_password=False)

    def close(self) -> None:
        with self._lock:
            for raw in self._readers:
                raw.close()
            self._readers.clear()
            self._writer.close()
            self._engine.dispose()
