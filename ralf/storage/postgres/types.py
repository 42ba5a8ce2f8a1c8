"""PostgreSQL types: DuckDB's type names (ralf's lingua franca) as PostgreSQL column types,
Arrow types for staging, and query results as Arrow — exact where DuckDB is (NUMERIC(p, s)
as DECIMAL, 128-bit integers, infinite dates and timestamps)."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from typing import Any

import psycopg
import psycopg.types.datetime as pg_datetime
import pyarrow as pa

from ralf.errors import SchemaError

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


def pg_type(type_name: str) -> str:
    """The PostgreSQL column type for a DuckDB type name."""
    base = type_name.upper()
    if base.endswith("[]"):
        return pg_type(base[:-2]) + "[]"
    if base.startswith("DECIMAL"):
        return base.replace("DECIMAL", "NUMERIC")
    if base.startswith("TIMESTAMP"):
        return "TIMESTAMP"
    try:
        return _PG_TYPES[base]
    except KeyError:
        raise SchemaError(f"SQL type {type_name} has no PostgreSQL column type") from None


def duck_type(arrow_type: pa.DataType) -> str:
    """The DuckDB type name for an Arrow type (for staging Arrow tables)."""
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return duck_type(arrow_type.value_type) + "[]"
    for test, name in _ARROW_TO_DUCK:
        if test(arrow_type):
            return name
    return "VARCHAR"


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


def allow_infinities(con: psycopg.Connection) -> None:
    """Let ``con`` read infinite dates and timestamps (as ±inf, made DuckDB's by
    :func:`record_batch`)."""
    for name, loader in (("timestamp", pg_datetime.TimestampLoader),
                         ("timestamptz", pg_datetime.TimestamptzLoader),
                         ("date", pg_datetime.DateLoader)):
        con.adapters.register_loader(name, _infinite(loader))


def to_arrow(cur: psycopg.Cursor, types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """A result as Arrow: the named columns typed as given, others by their PostgreSQL type."""
    if not cur.description:
        return pa.table({})
    return pa.Table.from_batches([record_batch(cur.description, cur.fetchall(), types)])


def record_batch(description: Any, rows: list[tuple],
                 types: dict[str, pa.DataType] | None) -> pa.RecordBatch:
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
