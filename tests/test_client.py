"""RalfClient in process: the same answers as the server's own functions."""

import pytest

from ralf import QueryError, RalfClient
from ralf.testing import ListSource
from tests.pipelines import AVERAGE, RATINGS, AverageRating, ratings


@pytest.fixture
def client(server):
    source = server.create_source(ListSource, args=(RATINGS, ratings(200, users=10)),
                                  name="ratings")
    source.map(AverageRating, args=(AVERAGE,), name="average")
    server.run()
    return RalfClient(server)


def test_point_query_returns_a_record_of_user_columns(client):
    record = client.point_query(table="average", key=3)
    assert set(record.keys()) == {"user", "average", "n"}
    assert client.point_query("average", "3") == record  # keys from text are converted


def test_point_query_metadata(client):
    record = client.point_query("average", 3, with_metadata=True)
    assert record._ralf_pending == 0 and record._ralf_stale is False
    assert record._ralf_updated_at is not None


def test_returned_records_are_copies(client):
    record = client.point_query("average", 3)
    record.average = -1
    assert client.point_query("average", 3).average != -1


def test_bulk_query_is_one_row_per_key(client):
    df = client.bulk_query(table="average")
    assert df["user"].tolist() == sorted(df["user"]) and df["user"].is_unique
    assert list(df.columns) == ["user", "average", "n"]
    meta = client.bulk_query("average", with_metadata=True)
    assert "_ralf_updated_at" in meta.columns


def test_point_and_bulk_on_a_source_give_the_latest_append(client):
    latest = client.sql("SELECT rating FROM ratings WHERE user = 3 ORDER BY _ralf_seq DESC "
                        "LIMIT 1")["rating"][0]
    assert client.point_query("ratings", 3).rating == latest
    assert client.bulk_query("ratings")["user"].is_unique


def test_sql_is_read_only(client):
    with pytest.raises(QueryError, match="read-only"):
        client.sql("DELETE FROM average")
    assert len(client.sql("SELECT * FROM average")) == 10


def test_client_needs_a_server():
    with pytest.raises(TypeError):
        RalfClient(42)
