import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from ralf import Record, Schema, SchemaError

RATINGS = Schema("user", {"user": int, "movie": int, "rating": float})


def test_positional_and_keyword_forms_are_equal():
    assert Schema(primary_key="user", columns={"user": int, "rating": float}) == Schema(
        "user", {"user": int, "rating": float})


@pytest.mark.parametrize("pk, columns, fragment", [
    ("id", {"user": int}, "primary key 'id'"),
    ("user", {"user": dict}, "unsupported type"),
    ("user", {}, "non-empty"),
    ("user", {"user": int, "_ralf_seq": int}, "reserved"),
    ("v", {"v": list[float]}, "cannot be a list"),
])
def test_bad_schemas_are_refused(pk, columns, fragment):
    with pytest.raises(SchemaError, match=fragment):
        Schema(pk, columns)


def test_all_column_types_round_trip_through_json():
    schema = Schema("k", {"k": str, "i": int, "f": float, "b": bool, "raw": bytes,
                          "t": dt.datetime, "v": list[float]})
    assert Schema.from_json(schema.to_json()) == schema


def test_record_is_attribute_access_and_compares_by_value():
    r = Record(user=1, rating=4.5)
    assert (r.user, r["rating"], r.get("x", 7)) == (1, 4.5, 7)
    assert r == Record(user=1, rating=4.5) and r != Record(user=2, rating=4.5)
    assert r.to_dict() == {"user": 1, "rating": 4.5}


def test_good_rows_convert_to_arrow():
    data, rejected = RATINGS.to_arrow(
        [Record(user=1, movie=2, rating=3.0), {"user": 2, "movie": 3, "rating": 4}], "ratings")
    assert rejected == []
    assert data.schema == RATINGS.arrow
    assert data.column("rating").to_pylist() == [3.0, 4.0]


def test_bad_rows_are_split_off_with_table_and_column_named():
    rows = [
        {"user": 1, "movie": 1, "rating": 1.0},
        {"user": 2, "movie": 1, "rating": "high"},
        {"user": 3, "movie": 1},
        {"user": 4, "movie": 1, "rating": 1.0, "extra": 1},
        {"user": None, "movie": 1, "rating": 1.0},
        {"user": 6, "movie": 1, "rating": 2.0},
    ]
    data, rejected = RATINGS.to_arrow(rows, "ratings")
    assert data.column("user").to_pylist() == [1, 6]
    reasons = sorted(r.reason for r in rejected)
    assert len(reasons) == 4
    assert all("table 'ratings'" in r for r in reasons)
    assert {r.column for r in rejected} == {"rating", "extra", "user"}
    assert any("missing column 'rating'" in r for r in reasons)
    assert any("unexpected column 'extra'" in r for r in reasons)
    assert any("cannot convert 'high'" in r for r in reasons)
    assert any("primary key is null" in r for r in reasons)


def test_dataframes_and_arrow_tables_are_batches():
    df = pd.DataFrame({"user": [1, 2], "movie": [3, 4], "rating": [1.5, 2.5]})
    from_df, _ = RATINGS.to_arrow(df, "ratings")
    from_arrow, _ = RATINGS.to_arrow(pa.Table.from_pandas(df), "ratings")
    assert from_df.equals(from_arrow)
    assert from_df.num_rows == 2


def test_a_dataframe_with_a_bad_value_keeps_the_good_rows():
    df = pd.DataFrame({"user": [1, 2], "movie": [3, 4], "rating": [1.5, "x"]})
    data, rejected = RATINGS.to_arrow(df, "ratings")
    assert data.column("user").to_pylist() == [1]
    assert rejected[0].column == "rating"


def test_a_batch_missing_a_column_is_rejected_whole():
    data, rejected = RATINGS.to_arrow(pd.DataFrame({"user": [1], "movie": [2]}), "ratings")
    assert data.num_rows == 0 and rejected[0].column == "rating"


def test_garbage_is_refused():
    with pytest.raises(SchemaError, match="expected records"):
        RATINGS.to_arrow(42, "ratings")


def test_keys_from_urls_are_converted_to_the_key_type():
    assert RATINGS.parse_key("40") == 40
    with pytest.raises(SchemaError, match="cannot be converted"):
        RATINGS.parse_key("forty")
    when = Schema("t", {"t": dt.datetime})
    assert when.parse_key("2024-01-02T03:04:05") == dt.datetime(2024, 1, 2, 3, 4, 5)


@pytest.mark.parametrize("key", [7, "a'b", b"\x00\xff", dt.datetime(2024, 1, 1), True])
def test_key_text_round_trips(key):
    schema = Schema("k", {"k": type(key)})
    assert schema.key_from_text(schema.key_to_text(key)) == key
