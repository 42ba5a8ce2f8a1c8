"""The HTTP codec (ralf/http/codec.py): every value JSON cannot hold travels as text and
comes back typed; Arrow IPC round-trips."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid

import pyarrow as pa

from ralf import Schema
from ralf.http import codec

SCHEMA = Schema("k", {"k": str, "when": dt.datetime, "raw": bytes, "x": float,
                      "v": list[float], "flag": bool})


def test_values_json_cannot_hold_are_encoded():
    assert codec.encode_value(math.nan) == "NaN" and codec.encode_value(-math.inf) == "-Infinity"
    assert codec.encode_value(dt.date(2024, 2, 29)) == "2024-02-29"
    assert codec.encode_value(dt.time(12, 30)) == "12:30:00"
    assert codec.encode_value(b"\x00\xff") == "AP8="
    assert codec.encode_value(decimal.Decimal("12.50")) == "12.50"
    assert codec.encode_value(decimal.Decimal("7")) == 7
    assert codec.encode_value(pa.scalar((1, 2, 3), pa.month_day_nano_interval()).as_py()) == {
        "months": 1, "days": 2, "nanoseconds": 3}
    assert codec.encode_value(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert codec.encode_value({"a": [math.inf, b"x"]}) == {"a": ["Infinity", "eA=="]}


def test_a_record_round_trips_through_json_by_its_schema():
    fields = {"k": "a", "when": dt.datetime(2024, 1, 2, 3, 4, 5, 6), "raw": b"\x01",
              "x": math.inf, "v": [1.5, math.nan], "flag": True, "_ralf_pending": 3}
    back = codec.decode_record(json.loads(codec.dumps(fields)), SCHEMA)
    assert back.k == "a" and back.when == fields["when"] and back.raw == b"\x01"
    assert back.x == math.inf and back.v[0] == 1.5 and math.isnan(back.v[1])
    assert back.flag is True and back._ralf_pending == 3


def test_rows_json_holds_infinite_timestamps_and_arrow_round_trips():
    table = pa.table({"t": pa.array([2**63 - 1, 0, None], pa.timestamp("us"))})
    assert json.loads(codec.rows_json(table)) == [
        {"t": "infinity"}, {"t": "1970-01-01T00:00:00"}, {"t": None}]
    assert codec.arrow_table(codec.arrow_bytes(table)).equals(table)


def test_a_plain_column_passes_through_and_any_other_is_encoded_value_by_value():
    plain = [1, "a", True, 2.5, None]
    assert codec.encode_column(plain) is plain
    odd = [1.0, math.inf, dt.datetime(2024, 1, 2), b"\x00"]
    assert codec.encode_column(odd) == [1.0, "Infinity", "2024-01-02T00:00:00", "AA=="]
    assert codec.dumps_encoded(codec.encode_column(odd)) == codec.dumps(odd)
