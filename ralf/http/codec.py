"""How rows cross HTTP: JSON with types restored from the table's schema on the client.

JSON has no datetimes, bytes or non-finite floats; they travel as ISO strings, base64 and
the strings "NaN" / "Infinity" / "-Infinity", and the client turns them back using the
schema, so remote answers equal in-process ones. Bulk results also travel as Arrow IPC.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import uuid
from typing import Any

import pyarrow as pa

from ralf.schema import Record, Schema, python_values

ARROW = "application/vnd.apache.arrow.stream"
# values JSON carries as they are: checked first, by exact type, since they are most values
_PLAIN = frozenset((int, str, bool, type(None)))
_META_TYPES = {"_ralf_updated_at": dt.datetime, "_ralf_pending": int, "_ralf_stale": bool,
               "_ralf_quarantined": bool, "_ralf_seq": int, "_ralf_event_time": dt.datetime}


def encode_value(value: Any) -> Any:
    """One value as JSON can carry it: non-finite floats, times and dates as strings,
    bytes as base64, exact decimals as integers or decimal strings, intervals as their
    parts, containers element by element."""
    kind = type(value)
    if kind in _PLAIN or (kind is float and math.isfinite(value)):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    if isinstance(value, pa.MonthDayNano):
        return {"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode_value(v) for k, v in value.items()}
    return value


def rows_json(table: pa.Table) -> bytes:
    """A result's rows as a JSON list of objects, whatever the column types (DuckDB's
    infinite dates and timestamps as "infinity" and "-infinity")."""
    columns = [python_values(column) for column in table.columns]
    names = table.column_names
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    return dumps(rows)


def dumps(data: Any) -> bytes:
    """Compact JSON bytes of ``data``, each value as :func:`encode_value` makes it."""
    return dumps_encoded(_encode(data))


def dumps_encoded(data: Any) -> bytes:
    """Compact JSON bytes of ``data`` whose values are already as JSON carries them
    (:func:`encode_column`): no walk over the values."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def encode_column(values: list[Any]) -> list[Any]:
    """A column's values as :func:`encode_value` makes them; the list itself when every
    value already is (ints, strings, booleans, finite floats, nulls: one pass, no copy)."""
    for value in values:
        kind = type(value)
        if not (kind in _PLAIN or (kind is float and math.isfinite(value))):
            return [encode_value(v) for v in values]
    return values


def _encode(data: Any) -> Any:
    kind = type(data)
    if kind in _PLAIN or (kind is float and math.isfinite(data)):
        return data
    if isinstance(data, dict):
        return {k: _encode(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_encode(v) for v in data]
    return encode_value(data)


def decode_value(value: Any, typ: Any) -> Any:
    """A JSON value back as a value of column type ``typ``: floats (also "NaN" and
    "Infinity"), ISO datetimes, base64 bytes, lists of floats; anything else as it is."""
    if value is None:
        return None
    if typ is float:
        return float(value)
    if typ is dt.datetime:
        return dt.datetime.fromisoformat(value)
    if typ is bytes:
        return base64.b64decode(value)
    if typ == list[float]:
        return [float(v) if v is not None else None for v in value]
    return value


def decode_record(fields: dict[str, Any], schema: Schema) -> Record:
    """A Record from a row's JSON fields, typed by ``schema`` (and the ``_ralf_*``
    metadata columns)."""
    types = {**_META_TYPES, **schema.columns}
    return Record.from_dict({k: decode_value(v, types.get(k)) for k, v in fields.items()})


def arrow_bytes(table: pa.Table) -> bytes:
    """The table as Arrow IPC stream bytes."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def arrow_table(data: bytes) -> pa.Table:
    """The table in Arrow IPC stream bytes, as :func:`arrow_bytes` writes them."""
    return pa.ipc.open_stream(data).read_all()
