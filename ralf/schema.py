"""Schema and Record: what a table's rows look like, and their SQL/Arrow types.

Every batch that enters a table goes through :meth:`Schema.to_arrow`, which is the single
place where user values are checked: bad records are split off with a reason naming the
column, good ones continue as one Arrow table (never row-by-row SQL).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ralf.errors import SchemaError


@dataclass(frozen=True)
class ColumnType:
    """A column type ralf supports: its Python type, SQL type and Arrow type."""

    python: Any
    sql: str
    arrow: pa.DataType


_TYPES = [
    ColumnType(int, "BIGINT", pa.int64()),
    ColumnType(float, "DOUBLE", pa.float64()),
    ColumnType(str, "VARCHAR", pa.string()),
    ColumnType(bool, "BOOLEAN", pa.bool_()),
    ColumnType(bytes, "BLOB", pa.binary()),
    ColumnType(dt.datetime, "TIMESTAMP", pa.timestamp("us")),
    ColumnType(list[float], "DOUBLE[]", pa.list_(pa.float64())),
    ColumnType(list[int], "BIGINT[]", pa.list_(pa.int64())),
    ColumnType(list[str], "VARCHAR[]", pa.list_(pa.string())),
]
_BY_PYTHON = {t.python: t for t in _TYPES}
_BY_SQL = {t.sql: t for t in _TYPES}
_KEY_TYPES = (int, str, float, bool, bytes, dt.datetime)
_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)


_SQL_INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                 "UINTEGER", "UBIGINT", "UHUGEINT"}
_SQL_FLOATS = {"FLOAT", "REAL", "DOUBLE"}


def python_type(sql_type: str) -> Any:
    """The column type ralf uses for a SQL result type (for SQL-defined tables)."""
    base = sql_type.upper()
    if base in _SQL_INTEGERS:
        return int
    if base in _SQL_FLOATS or base.startswith("DECIMAL"):
        return float
    if base.startswith("TIMESTAMP"):
        return dt.datetime
    if base in _BY_SQL:
        return _BY_SQL[base].python
    if base.endswith("[]"):
        inner = python_type(base[:-2])
        if inner in (int, float, str):
            return list[inner]
    raise SchemaError(f"SQL type {sql_type} has no ralf column type")


def quote(identifier: str) -> str:
    """Quote an SQL identifier; every table and column name goes through here."""
    return '"' + identifier.replace('"', '""') + '"'


class Record:
    """One row: fields are attributes (``record.user``), as in the tutorial.

    Kept deliberately thin (a plain ``__dict__``) because operators create and read
    millions of them.
    """

    def __init__(self, **fields: Any) -> None:
        self.__dict__ = fields  # a fresh dict already: no copy

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Record:
        """A Record whose fields are ``fields`` itself (not a copy)."""
        record = cls.__new__(cls)
        record.__dict__ = fields
        return record

    def to_dict(self) -> dict[str, Any]:
        """The fields, as a new dict."""
        return dict(self.__dict__)

    def __getitem__(self, name: str) -> Any:
        return self.__dict__[name]

    def get(self, name: str, default: Any = None) -> Any:
        """The field's value, or ``default`` when there is no such field."""
        return self.__dict__.get(name, default)

    def keys(self) -> list[str]:
        """The field names, in order."""
        return list(self.__dict__)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Record):
            return self.__dict__ == other.__dict__
        return NotImplemented

    __hash__ = None  # mutable, like a dict

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"Record({inner})"


class Delete:
    """An operator's output saying that the row of ``key`` is gone (e.g. from ``on_delete``
    when a key's last record was retracted): the row leaves the feature table, and its
    history records the deletion."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Delete) and other.key == self.key

    __hash__ = None

    def __repr__(self) -> str:
        return f"Delete({self.key!r})"


@dataclass
class Rejection:
    """A record that could not enter a table, and why."""

    table: str
    reason: str
    column: str | None
    raw: Any

    def raw_json(self) -> str:
        """The raw record as JSON text (bytes decoded with backslash escapes, whatever JSON
        cannot hold as its repr)."""
        return json.dumps(_jsonable(self.raw), default=repr)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


class Schema:
    """A table's columns and primary key.

    ``Schema("user", {"user": int, "rating": float})`` or
    ``Schema(primary_key="user", columns={...})``. ``event_time`` names the TIMESTAMP
    column that says when each record happened (event time, as opposed to the processing
    time ralf receives it at); a record without one is rejected.
    """

    def __init__(self, primary_key: str, columns: Mapping[str, Any],
                 event_time: str | None = None) -> None:
        if not isinstance(primary_key, str):
            raise SchemaError(f"primary key must be a column name, got {primary_key!r}")
        if not isinstance(columns, Mapping) or not columns:
            raise SchemaError("columns must be a non-empty mapping of name -> type")
        self.primary_key = primary_key
        self.columns: dict[str, Any] = {}
        for name, typ in columns.items():
            if not isinstance(name, str) or not name:
                raise SchemaError(f"column names must be non-empty strings, got {name!r}")
            if "\x00" in name:
                raise SchemaError(f"column {name!r}: a name cannot contain a NUL character",
                                  column=name)
            if name.lower().startswith("_ralf_"):  # SQL names are case-insensitive
                raise SchemaError(f"column {name!r}: the _ralf_ prefix is reserved (in any "
                                  "letter case)", column=name)
            if typ not in _BY_PYTHON:
                supported = ", ".join(_type_name(t.python) for t in _TYPES)
                raise SchemaError(
                    f"column {name!r}: unsupported type {typ!r} (supported: {supported})",
                    column=name,
                )
            self.columns[name] = typ
        if primary_key not in self.columns:
            raise SchemaError(
                f"primary key {primary_key!r} is not one of the columns {list(self.columns)}",
                column=primary_key,
            )
        if self.columns[primary_key] not in _KEY_TYPES:
            raise SchemaError(f"primary key {primary_key!r} cannot be a list", column=primary_key)
        if event_time is not None and self.columns.get(event_time) is not dt.datetime:
            what = "is not one of the columns" if event_time not in self.columns else (
                f"is a {_type_name(self.columns[event_time])} column, not a datetime")
            raise SchemaError(f"event time {event_time!r} {what} (it must name a datetime "
                              "column)", column=event_time)
        self.event_time = event_time
        self.names = list(self.columns)
        self._name_set = frozenset(self.names)
        self._getter = itemgetter(*self.names)
        self.arrow = pa.schema([(n, _BY_PYTHON[t].arrow) for n, t in self.columns.items()])

    # ---- description -------------------------------------------------------------------
    @property
    def key_type(self) -> Any:
        """The Python type of the primary key column."""
        return self.columns[self.primary_key]

    def sql_type(self, column: str) -> str:
        """The SQL type of ``column`` (e.g. ``BIGINT``)."""
        return _BY_PYTHON[self.columns[column]].sql

    def to_json(self) -> str:
        """The primary key, each column's SQL type and the event-time column, as JSON text."""
        data: dict[str, Any] = {
            "primary_key": self.primary_key,
            "columns": {n: _BY_PYTHON[t].sql for n, t in self.columns.items()},
        }
        if self.event_time is not None:
            data["event_time"] = self.event_time
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Schema:
        """The schema that :meth:`to_json` describes."""
        data = json.loads(text)
        columns = {n: _BY_SQL[sql].python for n, sql in data["columns"].items()}
        return cls(data["primary_key"], columns, data.get("event_time"))

    def with_event_time(self, column: str | None) -> Schema:
        """This schema with ``column`` as its event time (None: without one)."""
        return Schema(self.primary_key, self.columns, column)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schema):
            return NotImplemented
        return (self.primary_key == other.primary_key and self.columns == other.columns
                and self.event_time == other.event_time)

    def __repr__(self) -> str:
        cols = ", ".join(f"{n!r}: {_type_name(t)}" for n, t in self.columns.items())
        timed = f", event_time={self.event_time!r}" if self.event_time is not None else ""
        return f"Schema({self.primary_key!r}, {{{cols}}}{timed})"

    # ---- keys ------------------------------------------------------------------------------
    def parse_key(self, key: Any) -> Any:
        """Convert a key given by a user or a URL to the primary key's type."""
        typ = self.key_type
        if typ is float and isinstance(key, (float, int, str)) and str(key).lower() in (
                "nan", "+nan", "-nan"):
            raise SchemaError(f"key {key!r}: a NaN key equals no key (primary key "
                              f"{self.primary_key!r})", column=self.primary_key)
        if isinstance(key, typ) and not (typ is int and isinstance(key, bool)):
            return key
        try:
            if typ is int:
                if isinstance(key, float) and not key.is_integer():
                    raise ValueError("not an integer")
                return int(key)
            if typ is float:
                return float(key)
            if typ is str:
                return str(key)
            if typ is bool:
                if isinstance(key, str):
                    if key.lower() in ("true", "1"):
                        return True
                    if key.lower() in ("false", "0"):
                        return False
                    raise ValueError("not a boolean")
                return bool(key)
            if typ is bytes:
                return key.encode() if isinstance(key, str) else bytes(key)
            if typ is dt.datetime:
                return dt.datetime.fromisoformat(str(key))
        except (TypeError, ValueError) as exc:
            raise SchemaError(
                f"key {key!r} cannot be converted to {_type_name(typ)} "
                f"(primary key {self.primary_key!r}): {exc}",
                column=self.primary_key,
            ) from None
        raise SchemaError(f"unsupported key type {typ!r}")

    def key_to_text(self, key: Any) -> str:
        """Canonical text of a key, for bookkeeping tables keyed by text."""
        if isinstance(key, bytes):
            return key.hex()
        if isinstance(key, dt.datetime):
            return key.isoformat()
        return json.dumps(key)

    def key_from_text(self, text: str) -> Any:
        """The key whose :meth:`key_to_text` is ``text``."""
        typ = self.key_type
        if typ is bytes:
            return bytes.fromhex(text)
        if typ is dt.datetime:
            return dt.datetime.fromisoformat(text)
        return json.loads(text)

    # ---- conversion --------------------------------------------------------------------------
    def to_arrow(self, batch: Any, table: str) -> tuple[pa.Table, list[Rejection]]:
        """Validate a batch and convert it to one Arrow table of this schema.

        Returns the accepted rows and the rejected ones; a bad record never takes good
        records of the same batch down with it.
        """
        rows, rejected = self._convert(batch, table)
        if self.event_time is None or rows.column(self.event_time).null_count == 0:
            return rows, rejected
        untimed = rows.column(self.event_time).is_null()
        reason = (f"table {table!r}: column {self.event_time!r}: the event time is null "
                  "(a record must say when it happened)")
        rejected += [Rejection(table, reason, self.event_time, row)
                     for row in rows.filter(untimed).to_pylist()]
        return rows.filter(pc.invert(untimed)), rejected

    def _convert(self, batch: Any, table: str) -> tuple[pa.Table, list[Rejection]]:
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        if isinstance(batch, pa.Table):
            return self._columnar(batch, table)
        if _is_dataframe(batch):
            try:
                data = pa.Table.from_pandas(batch, preserve_index=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                # Mixed-type object columns: the row path finds and names the bad values.
                return self._rows(batch.to_dict("records"), table)
            return self._columnar(data, table)
        if isinstance(batch, (Record, Mapping)):
            batch = [batch]
        if not isinstance(batch, Iterable) or isinstance(batch, (str, bytes)):
            raise SchemaError(
                f"table {table!r}: expected records, a list of records, a DataFrame or an "
                f"Arrow table, got {type(batch).__name__}",
                table=table,
            )
        return self._rows(list(batch), table)

    def _columnar(self, data: pa.Table, table: str) -> tuple[pa.Table, list[Rejection]]:
        names = set(data.column_names)
        missing = [n for n in self.names if n not in names]
        extra = [n for n in data.column_names if n not in self._name_set]
        if missing or extra:
            column = (missing or extra)[0]
            what = "missing column" if missing else "unexpected column"
            reason = f"table {table!r}: {what} {column!r}"
            rejected = [Rejection(table, reason, column, row) for row in data.to_pylist()]
            return self.arrow.empty_table(), rejected
        numeric = [n for n in self.names if self.columns[n] in (int, float)]
        if any(pa.types.is_boolean(data.schema.field(n).type) for n in numeric):
            return self._rows(data.to_pylist(), table)  # True is not 1: named row by row
        try:
            columns = [data.column(n).cast(self.arrow.field(n).type) for n in self.names]
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return self._rows(data.to_pylist(), table)
        converted = pa.Table.from_arrays(columns, schema=self.arrow)
        return self._drop_null_keys(converted, table)

    def _drop_null_keys(self, data: pa.Table, table: str) -> tuple[pa.Table, list[Rejection]]:
        key = data.column(self.primary_key)
        nan = self.key_type is float and pc.any(pc.is_nan(key)).as_py()
        if key.null_count == 0 and not nan:
            return data, []
        mask = pc.or_(key.is_null(), pc.is_nan(key)) if self.key_type is float else key.is_null()
        mask = mask.fill_null(True)
        reason = (f"table {table!r}: column {self.primary_key!r}: the primary key is null "
                  "or NaN (it would equal no key, not even itself)")
        bad = data.filter(mask).to_pylist()
        rejected = [Rejection(table, reason, self.primary_key, row) for row in bad]
        return data.filter(pc.invert(mask)), rejected

    def _rows(self, rows: list[Any], table: str) -> tuple[pa.Table, list[Rejection]]:
        fields = [row.__dict__ if row.__class__ is Record else row for row in rows]
        arrays = self._well_formed(fields)
        if arrays is not None:
            return pa.Table.from_arrays(arrays, schema=self.arrow), []
        return self._sort_out(rows, table)

    def _well_formed(self, fields: list[Any]) -> list[pa.Array] | None:
        """The columns, if every row is a mapping of exactly this schema's columns with a
        key and convertible values; else None (the row-by-row path names the culprits).

        Column by column: the batch of operator outputs is checked in a few C loops rather
        than a Python loop per row."""
        try:
            if any(map(len(self.names).__ne__, map(len, fields))):
                return None
            # every name present and the same width: exactly this schema's columns
            values = list(map(self._getter, fields))
        except (KeyError, TypeError, IndexError):  # a missing column, or not a mapping
            return None
        if len(self.names) == 1:  # itemgetter of one name gives the value, not a tuple
            values = [(v,) for v in values]
        transposed = zip(*values, strict=True) if values else ([] for _ in self.names)
        columns = dict(zip(self.names, map(list, transposed), strict=True))
        if None in columns[self.primary_key] or (
                self.key_type is float and any(k != k for k in columns[self.primary_key])):
            return None  # a null or NaN key: the row-by-row path names it
        arrays, bad_column = self._columns_of(columns)
        return None if bad_column is not None else arrays

    def _sort_out(self, rows: list[Any], table: str) -> tuple[pa.Table, list[Rejection]]:
        rejected: list[Rejection] = []
        good: list[dict[str, Any]] = []
        names = self._name_set
        pk = self.primary_key
        for row in rows:
            fields = row.__dict__ if type(row) is Record else _fields_of(row)
            if fields is None:
                reason = f"table {table!r}: expected a Record or dict, got {type(row).__name__}"
                rejected.append(Rejection(table, reason, None, repr(row)))
                continue
            if fields.keys() != names:
                rejected.append(self._shape_rejection(fields, row, table))
                continue
            key = fields[pk]
            if key is None or (isinstance(key, float) and key != key):
                reason = (f"table {table!r}: column {self.primary_key!r}: the primary key is "
                          f"{'null' if key is None else 'NaN'}")
                rejected.append(Rejection(table, reason, self.primary_key, row))
                continue
            good.append(fields)
        while True:
            arrays, bad_column = self._columns(good)
            if bad_column is None:
                return pa.Table.from_arrays(arrays, schema=self.arrow), rejected
            good = self._split_bad_values(good, bad_column, table, rejected)

    def _columns(self, rows: list[Mapping[str, Any]]) -> tuple[list[pa.Array], str | None]:
        return self._columns_of({name: [f[name] for f in rows] for name in self.names})

    def _columns_of(self, columns: dict[str, list[Any]]) -> tuple[list[pa.Array], str | None]:
        arrays = []
        for name, values in columns.items():
            try:
                _exact(self.columns[name], values)
                arrays.append(pa.array(values, type=self.arrow.field(name).type))
            except _CONVERSION_ERRORS:
                return arrays, name
        return arrays, None

    def _split_bad_values(
        self, rows: list[Mapping[str, Any]], name: str, table: str, rejected: list[Rejection]
    ) -> list[Mapping[str, Any]]:
        typ = self.arrow.field(name).type
        keep = []
        for fields in rows:
            try:
                _exact(self.columns[name], [fields[name]])
                pa.array([fields[name]], type=typ)
                keep.append(fields)
            except _CONVERSION_ERRORS as exc:
                reason = (
                    f"table {table!r}: column {name!r}: cannot convert "
                    f"{_short(fields[name])} to {_type_name(self.columns[name])} ({exc})"
                )
                rejected.append(Rejection(table, reason, name, dict(fields)))
        return keep

    def _shape_rejection(self, fields: Mapping[str, Any], row: Any, table: str) -> Rejection:
        missing = [n for n in self.names if n not in fields]
        if missing:
            reason = f"table {table!r}: missing column {missing[0]!r}"
            return Rejection(table, reason, missing[0], row)
        extra = [n for n in fields if n not in self._name_set]
        reason = f"table {table!r}: unexpected column {extra[0]!r}"
        return Rejection(table, reason, str(extra[0]), row)

    def records(self, data: pa.Table) -> list[Record]:
        """Arrow rows of this schema as Records (user columns only); the hot path of every
        Python operator, so no per-row function call beyond the allocation."""
        new = object.__new__
        out = []
        append = out.append
        for fields in data.select(self.names).to_pylist():
            record = new(Record)
            record.__dict__ = fields
            append(record)
        return out


def as_frame(table: pa.Table) -> Any:
    """A result as a pandas DataFrame; values pandas has no column type for (DuckDB's
    infinite timestamps, unions, ...) become Python objects rather than fail the query."""
    try:
        return table.to_pandas()
    except (pa.ArrowException, OverflowError, ValueError):
        import pandas as pd

        return pd.DataFrame({name: pd.Series(python_values(column), dtype=object)
                             for name, column in zip(table.column_names, table.columns,
                                                     strict=True)})


def python_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """A column's values as Python objects; dates and timestamps beyond Python's range
    (DuckDB's infinities) as the strings "infinity" and "-infinity"."""
    try:
        return column.to_pylist()
    except (OverflowError, ValueError):  # out of Python's date range: value by value
        return [_python(v) for v in column]


def _python(scalar: pa.Scalar) -> Any:
    if not scalar.is_valid:
        return None
    kind = scalar.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        try:
            return scalar.as_py()
        except (OverflowError, ValueError):
            return "infinity" if scalar.value > 0 else "-infinity"
    if isinstance(scalar, (pa.ListScalar, pa.LargeListScalar, pa.FixedSizeListScalar)):
        return [_python(v) for v in scalar.values]
    if isinstance(scalar, pa.StructScalar):
        return {k: _python(scalar[k]) for k in scalar.keys()}
    return scalar.as_py()


def _exact(typ: Any, values: list[Any]) -> None:
    """Refuse what Arrow would convert silently into a different number: a fraction in an
    integer column (2.5 -> 2, whether a float, a numpy float, a Decimal or a Fraction)
    and a boolean in a number column (True -> 1). Integral values of any numeric type are
    exact and pass."""
    if typ is int:
        for value in values:
            cls = value.__class__
            if cls is int or value is None:
                continue
            if cls is bool or isinstance(value, np.bool_):
                raise ValueError(f"{value!r} is a boolean, not an integer")
            if isinstance(value, numbers.Integral):
                continue
            if isinstance(value, (numbers.Real, decimal.Decimal)):
                try:
                    integral = value == int(value)
                except (ValueError, OverflowError):  # NaN, infinities
                    integral = False
                if not integral:
                    raise ValueError(f"{value!r} is not an integer")
    elif typ is float:
        kinds = set(map(type, values))
        if bool in kinds or np.bool_ in kinds:
            raise ValueError("a boolean is not a number")


def _fields_of(row: Any) -> Mapping[str, Any] | None:
    if isinstance(row, Record):
        return row.__dict__
    if isinstance(row, Mapping):
        return row
    return None


def _is_dataframe(value: Any) -> bool:
    return type(value).__name__ == "DataFrame" and hasattr(value, "to_dict")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(typ: Any) -> str:
    return getattr(typ, "__name__", None) if not hasattr(typ, "__args__") else str(typ)
