"""Hostile and odd input: each gets a clear error or correct handling, and nothing that was
accepted is lost."""

from __future__ import annotations

import decimal
import fractions
import math

import numpy as np
import pandas as pd
import pytest

from ralf import (
    KeyNotFound,
    Operator,
    OperatorError,
    RalfClient,
    Record,
    Schema,
    SchemaError,
    SourceOperator,
)
from ralf.testing import ListSource
from tests.pipelines import RATINGS, SINK, Identity

TEXT = Schema("name", {"name": str, "note": str, "score": float, "raw": bytes})


@pytest.fixture
def served(make_ralf):
    with make_ralf() as server:
        yield server, server.serve(port=0)


def _text_table(server, rows, name="texts"):
    source = server.create_source(ListSource, args=(TEXT, rows), name=f"{name}_src")
    source.map(Identity, args=(TEXT,), name=name)
    try:
        server.run()
    except SchemaError:
        pass
    return RalfClient(server)


def test_wrong_types_are_rejected_by_name_and_the_rest_lands(server):
    rows = [{"user": 1, "movie": 1, "rating": "five"}, {"user": "two", "movie": 1, "rating": 1.0},
            {"user": 3, "movie": 1.5, "rating": 1.0}, {"user": 4, "movie": 1, "rating": 4.0}]
    server.create_source(ListSource, args=(RATINGS, rows), name="ratings")
    with pytest.raises(SchemaError, match="table 'ratings'"):
        server.run()
    assert server.sql("SELECT user FROM ratings")["user"].tolist() == [4]
    reasons = server.rejected().sort_values("id", ignore_index=True)["column_name"]
    assert sorted(reasons) == ["movie", "rating", "user"]


def test_missing_and_extra_columns(server):
    rows = [{"user": 1, "movie": 1}, {"user": 2, "movie": 1, "rating": 1.0, "extra": 1}]
    server.create_source(ListSource, args=(RATINGS, rows), name="ratings")
    with pytest.raises(SchemaError, match="missing column 'rating'"):
        server.run()
    reasons = " ".join(server.rejected().sort_values("id", ignore_index=True)["reason"])
    assert "unexpected column 'extra'" in reasons


def test_nan_and_infinities_are_stored_and_served(served):
    server, url = served
    rows = [{"name": n, "note": "", "score": v, "raw": b""}
            for n, v in [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)]]
    _text_table(server, rows)
    for client in (RalfClient(server), RalfClient(url)):
        assert math.isnan(client.point_query("texts", "nan").score)
        assert client.point_query("texts", "inf").score == math.inf
        assert client.point_query("texts", "-inf").score == -math.inf


def test_very_long_strings(served):
    server, url = served
    long = "x" * 1_000_000
    _text_table(server, [{"name": "long" * 1000, "note": long, "score": 1.0, "raw": b"y" * 10**6}])
    assert RalfClient(url).point_query("texts", "long" * 1000).note == long
    assert RalfClient(server).bulk_query("texts")["raw"][0] == b"y" * 10**6


def test_non_utf8_bytes_in_a_text_column_are_rejected_but_fine_in_a_bytes_column(server):
    rows = [{"name": "a", "note": b"\xff\xfe", "score": 1.0, "raw": b"\xff"},
            {"name": "b", "note": "ok", "score": 1.0, "raw": b"\xff\x00\xfe"}]
    client = _text_table(server, rows)
    assert client.bulk_query("texts")["name"].tolist() == ["b"]
    assert client.point_query("texts", "b").raw == b"\xff\x00\xfe"
    assert "column 'note'" in server.rejected().sort_values("id", ignore_index=True)["reason"][0]


def test_unicode_keys(served):
    server, url = served
    keys = ["ユーザー🙂", "naïve", "a/b?c#d", " spaced ", "%2F"]
    _text_table(server, [{"name": k, "note": k, "score": 1.0, "raw": b""} for k in keys])
    for key in keys:
        assert RalfClient(url).point_query("texts", key).note == key
        assert RalfClient(server).point_query("texts", key).note == key


def test_null_keys_are_rejected(server):
    rows = [{"user": None, "movie": 1, "rating": 1.0}, {"user": 1, "movie": 1, "rating": 1.0}]
    server.create_source(ListSource, args=(RATINGS, rows), name="ratings")
    with pytest.raises(SchemaError, match="primary key is null"):
        server.run()
    assert server.sql("SELECT count(*) AS n FROM ratings")["n"][0] == 1


def test_sql_metacharacters_in_names_keys_and_values(served):
    server, url = served
    evil_table = 'evil"; DROP TABLE ralf.tables; --'
    evil_column = "o'k\"; DELETE FROM x; --"
    schema = Schema(evil_column, {evil_column: str, "v": str})
    key = "'; DROP TABLE ralf.tables; --"
    rows = [{evil_column: key, "v": "Robert'); DROP TABLE students;--"}]
    source = server.create_source(ListSource, args=(schema, rows), name=evil_table)
    source.map(Identity, args=(schema,), name=evil_table + "_features")
    server.run()
    for client in (RalfClient(server), RalfClient(url)):
        assert client.point_query(evil_table + "_features", key).v.startswith("Robert')")
        assert client.point_query(evil_table, key).v.startswith("Robert')")
        assert len(client.bulk_query(evil_table)) == 1
    assert len(server.sql("SELECT * FROM ralf.tables")) == 2  # nothing was dropped


def test_sql_keywords_as_column_names(server):
    schema = Schema("user", {"user": int, "order": int, "group": str, "select": float})
    rows = [{"user": 1, "order": 2, "group": "g", "select": 0.5}]
    source = server.create_source(ListSource, args=(schema, rows), name="select")
    source.map(Identity, args=(schema,), name="from")
    source.aggregate(by="user", total=("order", "sum"), name="where")
    server.run()
    client = RalfClient(server)
    assert client.point_query("from", 1).group == "g"
    assert client.point_query("where", 1).total == 2
    assert client.sql('SELECT "order" FROM "from"')["order"].tolist() == [2]


def test_duplicate_table_names_are_refused(server):
    source = server.create_source(ListSource, args=(SINK, []), name="s")
    with pytest.raises(ValueError, match="already defined"):
        server.create_source(ListSource, args=(SINK, []), name="s")
    source.as_queryable("alias")
    with pytest.raises(ValueError, match="already defined"):
        source.map(Identity, args=(SINK,), name="alias")


@pytest.mark.parametrize("output, fragment", [
    (lambda r: Record(id=r.id), "missing column 'value'"),
    (lambda r: Record(id=r.id, value="nope"), "column 'value'"),
    (lambda r: Record(id=r.id, value=1, extra=2), "unexpected column 'extra'"),
    (lambda r: Record(value=1), "no column 'id'"),
    (lambda r: Record(id=r.id + 1000, value=1), "while refreshing key"),
    (lambda r: 42, "not Records"),
])
def test_operators_returning_the_wrong_schema_or_key_fail_for_that_key(server, output, fragment):
    class Bad(Operator):
        def on_record(self, record):
            return output(record) if record.id == 2 else Record(id=record.id, value=record.value)

    rows = [{"id": i, "value": i} for i in (1, 2, 3)]
    server.create_source(ListSource, args=(SINK, rows), name="s").map(Bad, args=(SINK,), name="t")
    with pytest.raises(OperatorError, match=fragment) as info:
        server.run()
    assert info.value.table == "t" and info.value.key == 2
    if "column" in fragment:  # the output did not fit the table: a SchemaError too
        assert isinstance(info.value, SchemaError) and info.value.column in ("value", "extra", "id")
    assert server.bulk_query("t")["id"].tolist() == [1, 3]


@pytest.mark.parametrize("garbage", [42, "a string", [1, 2, 3], [{"id": 1}, "x"], object()])
def test_a_source_returning_garbage_is_filed_and_ingestion_goes_on(server, garbage):
    class Garbage(SourceOperator):
        def __init__(self, schema):
            self.batches = [garbage, [{"id": 7, "value": 7}]]

        def next(self):
            return self.batches.pop(0) if self.batches else None

    server.create_source(Garbage, args=(SINK,), name="g")
    with pytest.raises(SchemaError):
        server.run()
    assert server.sql("SELECT id FROM g")["id"].tolist() == [7]
    assert len(server.rejected().sort_values("id", ignore_index=True)) >= 1


class AddNul(Operator):
    """Writes a NUL character into the note of key 'bad' only."""

    def __init__(self, schema: Schema) -> None:
        pass

    def on_record(self, record: Record) -> Record:
        note = "a\x00b" if record.name == "bad" else record.note
        return Record(name=record.name, note=note, score=record.score, raw=record.raw)


def test_nul_characters_in_text_where_the_backend_cannot_hold_them(served):
    """DuckDB holds NUL in text; PostgreSQL refuses it, so the record (or the operator key)
    is refused by name and everything else lands."""
    server, url = served
    rows = [{"name": n, "note": note, "score": 1.0, "raw": b"\x00"}
            for n, note in [("ok", "fine"), ("nul", "a\x00b"), ("bad", "x"), ("k\x00", "y")]]
    source = server.create_source(ListSource, args=(TEXT, rows), name="nul_src")
    source.map(AddNul, args=(TEXT,), name="nul_features")
    postgres = server.path is not None and server.path.startswith("postgresql")
    if postgres:
        with pytest.raises(SchemaError, match="NUL"):
            server.run()
        server.run()
    else:
        server.run()
    stored = set(server.sql("SELECT name FROM nul_src")["name"])
    features = set(server.sql("SELECT name FROM nul_features")["name"])
    client = RalfClient(url)
    if postgres:
        assert stored == {"ok", "bad"} and features == {"ok"}
        refused = server.rejected().sort_values("id", ignore_index=True)["column_name"].tolist()
        assert sorted(refused) == ["name", "note"]
        assert server.errors and "NUL" in str(server.errors[-1])  # key 'bad' failed
        with pytest.raises(KeyNotFound):
            client.point_query("nul_src", "k\x00")
    else:
        assert stored == features == {"ok", "nul", "bad", "k\x00"}
        assert client.point_query("nul_features", "bad").note == "a\x00b"
    assert client.point_query("nul_features", "ok").raw == b"\x00"


INEXACT = [np.float64(2.5), np.float32(0.5), decimal.Decimal("2.5"), fractions.Fraction(5, 2),
           np.bool_(True), True, float("nan"), float("inf")]
EXACT = [np.float64(3.0), decimal.Decimal("4"), fractions.Fraction(10, 2), np.int32(6), 7]


@pytest.mark.parametrize("as_frame", [False, True])
def test_numbers_that_an_integer_column_would_truncate_are_refused(server, as_frame):
    """2.5 as a numpy float, a Decimal or a Fraction is not the integer 2, and True is not
    1: refused by name, like a Python float; integral values of any type land exactly."""
    rows = [{"id": i, "value": v} for i, v in enumerate(INEXACT + EXACT)]
    batch = pd.DataFrame(rows) if as_frame else rows
    server.create_source(ListSource, args=(SINK, batch, 100), name="numbers")
    with pytest.raises(SchemaError, match="column 'value'"):
        server.step()
    landed = server.sql("SELECT id, value FROM numbers ORDER BY id")
    expected = {len(INEXACT) + i: int(v) for i, v in enumerate(EXACT)}
    assert dict(zip(landed["id"], landed["value"], strict=True)) == expected
    assert len(server.rejected("numbers")) == len(INEXACT)


def test_operator_outputs_that_would_truncate_fail_their_key(server):
    class Halves(Operator):
        def on_record(self, record):
            value = np.float64(record.value / 2) if record.id == 1 else record.value
            return Record(id=record.id, value=value)

    rows = [{"id": 1, "value": 5}, {"id": 2, "value": 4}]
    source = server.create_source(ListSource, args=(SINK, rows), name="src")
    source.map(Halves, args=(SINK,), name="halves")
    with pytest.raises(OperatorError, match="not an integer"):
        server.run()
    assert server.bulk_query("halves").to_dict("records") == [{"id": 2, "value": 4}]


def test_a_nan_key_is_refused_at_the_door_and_in_queries(server):
    keyed = Schema("k", {"k": float, "v": int})
    rows = [{"k": float("nan"), "v": 1}, {"k": 1.5, "v": 2}]
    source = server.create_source(ListSource, args=(keyed, rows), name="src")
    source.map(Identity, args=(keyed,), name="same")
    with pytest.raises(SchemaError, match="NaN"):
        server.run()
    assert server.bulk_query("same")["k"].tolist() == [1.5]
    with pytest.raises(SchemaError, match="NaN"):
        server.point_query("same", "nan")


@pytest.mark.parametrize("columns, fragment", [
    ({"id": int, "_RALF_SEQ": int}, "reserved"),
    ({"id": int, "_Ralf_x": int}, "reserved"),
    ({"id": int, "a\x00b": int}, "NUL"),
])
def test_reserved_and_nul_column_names_are_refused_at_definition(columns, fragment):
    with pytest.raises(SchemaError, match=fragment):
        Schema("id", columns)


def test_reserved_table_names_in_any_case_are_refused(server):
    for name in ("_RALF_tables", "RALF", "_Ralf"):
        with pytest.raises(ValueError, match="reserved"):
            server.create_source(ListSource, args=(SINK, []), name=name)
