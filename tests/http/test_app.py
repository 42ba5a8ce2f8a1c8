"""The HTTP app served in process (Ralf.serve): typed round trips, SQL refusals, auth, limits."""

from __future__ import annotations

import datetime as dt
import json
import math

import pyarrow as pa
import pytest
import urllib3

from ralf import Operator, QueryError, Ralf, RalfClient, RalfError, Record, Schema
from ralf.testing import ListSource
from tests.pipelines import RATINGS, ratings

ODD = Schema("name", {"name": str, "when": dt.datetime, "raw": bytes, "score": float,
                      "vector": list[float], "flag": bool})


class Identity(Operator):
    def on_record(self, record):
        return record


ODD_ROWS = [
    {"name": "a/b c", "when": dt.datetime(2024, 5, 6, 7, 8, 9, 123456), "raw": b"\x00\xff",
     "score": math.inf, "vector": [1.5, -2.0], "flag": True},
    {"name": "ünï'cødé; --", "when": dt.datetime(2020, 1, 1), "raw": b"", "score": math.nan,
     "vector": [], "flag": False},
]


@pytest.fixture(scope="module")
def served(shared_database):
    with Ralf(shared_database) as server:
        server.create_source(ListSource, args=(ODD, ODD_ROWS), name="odd").map(
            Identity, args=(ODD,), name="odd_features")
        server.create_source(ListSource, args=(RATINGS, ratings(100)), name="ratings")
        server.run()
        url = server.serve(port=0)
        yield server, url


def test_typed_values_survive_the_round_trip(served):
    server, url = served
    remote, local = RalfClient(url), RalfClient(server)
    for row in ODD_ROWS:
        got = remote.point_query("odd_features", row["name"])
        want = local.point_query("odd_features", row["name"])
        assert got.when == want.when and got.raw == want.raw and got.vector == want.vector
        assert got.flag is want.flag
        assert (math.isnan(got.score) and math.isnan(want.score)) or got.score == want.score
    assert remote.bulk_query("odd_features").equals(local.bulk_query("odd_features"))
    meta = remote.point_query("odd_features", "a/b c", with_metadata=True)
    assert isinstance(meta._ralf_updated_at, dt.datetime) and meta._ralf_stale is False


@pytest.mark.parametrize("query", [
    "INSERT INTO ratings VALUES (1, 1, 1.0, 999, now())", "UPDATE ratings SET rating = 0",
    "DELETE FROM ratings", "DROP TABLE ratings", "CREATE TABLE x (a INT)",
    "COPY ratings TO '/tmp/ralf_http_copy.csv'", "ATTACH ':memory:' AS other",
    "INSTALL httpfs", "LOAD httpfs", "PRAGMA enable_profiling", "SET threads = 1",
    "SELECT 1; DROP TABLE ratings", "/* SELECT */ DELETE FROM ratings",
    "SELECT 1 -- ;\n; DELETE FROM ratings", "SELECT * FROM read_csv('/etc/passwd')",
])
def test_sql_that_could_write_or_escape_is_refused_with_400(served, query):
    server, url = served
    before = server.sql("SELECT count(*) AS n, sum(rating) AS s FROM ratings")
    r = urllib3.request("POST", url + "/sql", body=json.dumps({"query": query}),
                        headers={"Content-Type": "application/json"})
    assert r.status == 400, r.data
    with pytest.raises(QueryError):
        RalfClient(url).sql(query)
    assert server.sql("SELECT count(*) AS n, sum(rating) AS s FROM ratings").equals(before)


def test_malformed_requests_get_4xx_not_500(served):
    url = served[1]
    for body in (b"not json", b"[]", json.dumps({"query": 5}).encode(), b"{}"):
        r = urllib3.request("POST", url + "/sql", body=body,
                            headers={"Content-Type": "application/json"})
        assert 400 <= r.status < 500, (body, r.status)
    big = json.dumps({"query": "SELECT " + "1+" * 40_000 + "1"})
    r = urllib3.request("POST", url + "/sql", body=big,
                        headers={"Content-Type": "application/json"})
    assert r.status == 413


def test_a_token_is_required_on_every_route_but_the_probes_and_docs_when_set(make_ralf):
    with make_ralf() as server:
        server.create_source(ListSource, args=(RATINGS, ratings(10)), name="ratings")
        server.run()
        url = server.serve(port=0, token="s3cret")
        for path in ("/tables", "/table/ratings", "/table/ratings/1", "/metrics", "/status",
                     "/rejected"):
            assert urllib3.request("GET", url + path).status == 401, path
            assert urllib3.request("GET", url + path,
                                   headers={"Authorization": "Bearer wrong"}).status == 401
        # probes (Kubernetes sends no token) and the API description (nor does a browser)
        for path in ("/health", "/ready", "/docs", "/openapi.json"):
            assert urllib3.request("GET", url + path).status == 200, path
        with pytest.raises(RalfError, match="token"):
            RalfClient(url).bulk_query("ratings")
        assert len(RalfClient(url, token="s3cret").bulk_query("ratings")) > 0


def test_serve_twice_is_refused_and_close_stops_serving(make_ralf):
    server = make_ralf()
    url = server.serve(port=0)
    with pytest.raises(RalfError, match="already serving"):
        server.serve(port=0)
    assert urllib3.request("GET", url + "/health").status == 200
    server.close()
    with pytest.raises(RalfError, match="no ralf server answers"):
        RalfClient(url, timeout=2).tables()


def test_a_record_from_the_wire_is_a_record(served):
    record = RalfClient(served[1]).point_query("ratings", 3)
    assert isinstance(record, Record) and set(record.keys()) == {"user", "movie", "rating"}


ALL_TYPES = "SELECT * FROM test_all_types()"


def test_every_duckdb_result_type_crosses_as_json_and_arrow():
    """DuckDB's test_all_types(): DATE, TIME(TZ), DECIMAL, HUGEINT, UHUGEINT, infinite
    dates and timestamps, intervals, UUIDs, unions, maps ...: 200 with a well-formed
    answer, never a 500, and no value changed on the way."""
    with Ralf() as server:
        url = server.serve(port=0)
        as_json = urllib3.request("POST", url + "/sql", body=json.dumps({"query": ALL_TYPES}),
                                  headers={"Content-Type": "application/json"})
        assert as_json.status == 200, as_json.data[:300]
        rows = json.loads(as_json.data)
        assert len(rows) == 3 and rows[0]["timestamp"] == "-infinity"
        assert rows[1]["hugeint"] == 2**127 - 1  # exact, as a JSON integer
        assert rows[1]["uhugeint"] == str(2**128 - 1)  # Arrow has no type for it: as text
        assert rows[0]["dec_4_1"] == "-999.9" and rows[1]["date"] == "infinity"
        frame = RalfClient(url).sql(ALL_TYPES)  # Arrow over the wire, then pandas
        assert frame.shape == (3, len(rows[0])) and frame["timestamp"].tolist()[:2] == [
            "-infinity", "infinity"]


TYPED = ("SELECT DATE '2024-02-29' AS d, TIME '12:34:56' AS t, CAST(12.5 AS DECIMAL(10, 2)) "
         "AS dec, CAST('infinity' AS TIMESTAMP) AS forever, sum(movie) AS total FROM ratings")


def test_typed_results_cross_on_both_backends(served):
    server, url = served
    response = urllib3.request("POST", url + "/sql", body=json.dumps({"query": TYPED}),
                               headers={"Content-Type": "application/json"})
    assert response.status == 200, response.data[:300]
    (row,) = json.loads(response.data)
    total = int(server.sql("SELECT sum(movie) AS s FROM ratings")["s"][0])
    assert row == {"d": "2024-02-29", "t": "12:34:56", "dec": "12.50", "forever": "infinity",
                   "total": total}


@pytest.mark.parametrize("entities, fragment", [
    ({"user": ["one", "two"], "event_timestamp": ["2024-01-01", "2024-01-02"]}, "user"),
    ({"user": [1.5, 2.0], "event_timestamp": ["2024-01-01", "2024-01-02"]}, "user"),
    ({"user": [1, 2], "event_timestamp": [1.5, 2.5]}, "event_timestamp"),
    ({"user": [1, 2], "event_timestamp": ["yesterday", "today"]}, "event_timestamp"),
])
def test_historical_with_wrongly_typed_entity_columns_is_400(served, entities, fragment):
    import pandas as pd

    from ralf.http import codec

    server, url = served
    body = codec.arrow_bytes(pa.Table.from_pandas(pd.DataFrame(entities)))
    response = urllib3.request("POST", url + "/historical?features=ratings.rating",
                               body=body, headers={"Content-Type": codec.ARROW})
    assert response.status == 400, response.data[:300]
    assert fragment in json.loads(response.data)["message"]
