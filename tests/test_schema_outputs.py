"""Operator outputs (lists of Records and dicts) are validated column by column; any row that
is not exactly the schema sends the batch through the row-by-row path, which names it."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from ralf import Record, Schema

AVERAGE = Schema("user", {"user": int, "average": float})


def test_records_dicts_and_other_mappings_convert_in_order():
    rows = [Record(user=1, average=1.5), {"user": 2, "average": 2},
            MappingProxyType({"average": None, "user": 3})]
    table, rejected = AVERAGE.to_arrow(rows, "t")
    assert not rejected
    assert table.to_pylist() == [{"user": 1, "average": 1.5}, {"user": 2, "average": 2.0},
                                 {"user": 3, "average": None}]


def test_a_one_column_schema_converts():
    table, rejected = Schema("k", {"k": str}).to_arrow([Record(k="a"), {"k": "b"}], "t")
    assert not rejected and table.column("k").to_pylist() == ["a", "b"]


def test_an_empty_batch_is_an_empty_table():
    table, rejected = AVERAGE.to_arrow([], "t")
    assert table.num_rows == 0 and table.schema == AVERAGE.arrow and not rejected


@pytest.mark.parametrize("bad, reason", [
    ({"user": 9, "average": 1.0, "extra": 1}, "unexpected column 'extra'"),
    ({"user": 9, "avg": 1.0}, "missing column 'average'"),  # same width, another name
    ({"user": None, "average": 1.0}, "primary key is null"),
    ({"user": 9, "average": "high"}, "column 'average': cannot convert"),
    ({"user": 9.5, "average": 1.0}, "column 'user': cannot convert"),
    ("user=9", "expected a Record or dict"),
])
def test_one_bad_output_is_rejected_by_name_and_the_others_kept(bad, reason):
    rows = [Record(user=1, average=1.0), bad, Record(user=2, average=2.0)]
    table, rejected = AVERAGE.to_arrow(rows, "t")
    assert table.column("user").to_pylist() == [1, 2]
    assert len(rejected) == 1 and reason in rejected[0].reason
