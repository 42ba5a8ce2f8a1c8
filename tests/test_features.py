"""Feature vectors (docs/features.md): several features of several tables for a batch of
entities, in process and over a real HTTP server, on both backends; Feast's request and
response shape."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import pandas as pd
import pyarrow as pa
import pytest
import urllib3

from ralf import Ralf, RalfClient, Schema, SchemaError, TableNotFound
from ralf.http import codec
from ralf.testing import ListSource, ManualClock
from tests.pipelines import AVERAGE, COUNT, RATINGS, AverageRating, CountPerKey, ratings

ROWS = ratings(300, users=10)
COUNTS = Counter(r["user"] for r in ROWS)
NAMED = Schema("name", {"name": str, "score": float, "when": dt.datetime})
NAMED_ROWS = [{"name": "a", "score": 1.5, "when": dt.datetime(2024, 1, 2, 3, 4, 5, 6000)},
              {"name": "b", "score": None, "when": dt.datetime(2024, 1, 3)}]


def build(server: Ralf) -> None:
    source = server.create_source(ListSource, args=(RATINGS, ROWS, 300), name="ratings")
    source.map(AverageRating, args=(AVERAGE,), name="average")
    source.map(CountPerKey, args=(COUNT,), name="lazy", lazy=True)
    server.create_source(ListSource, args=(NAMED, NAMED_ROWS), name="named")


@pytest.fixture(scope="module")
def served(shared_database):
    with Ralf(shared_database) as server:
        build(server)
        server.run()
        yield server, server.serve(port=0)


def post(url: str, path: str, body: dict, accept: str = "application/json"
         ) -> urllib3.BaseHTTPResponse:
    return urllib3.request("POST", url + path, body=json.dumps(body).encode(),
                           headers={"Content-Type": "application/json", "Accept": accept})


@pytest.mark.parametrize("entities", [
    {"user": [3, 1, 999, 3]},
    [{"user": 3}, {"user": 1}, {"user": 999}, {"user": 3}],
    pd.DataFrame({"user": [3, 1, 999, 3]}),
])
def test_one_row_per_entity_with_each_feature_in_process_and_over_http(served, entities):
    server, url = served
    features = ["average.average", "lazy:count", "average.n"]
    local = RalfClient(server).get_features(entities, features)
    remote = RalfClient(url).get_features(entities, features)
    pd.testing.assert_frame_equal(local, remote)
    assert list(local.columns) == ["user", "average.average", "lazy.count", "average.n"]
    assert local["user"].tolist() == [3, 1, 999, 3]
    for i, user in [(0, 3), (1, 1), (3, 3)]:
        row = server.point_query("average", user)
        assert local["average.average"][i] == row.average and local["average.n"][i] == row.n
        assert local["lazy.count"][i] == COUNTS[user]
    assert local.iloc[2][1:].isna().all()  # a key without rows: nulls


def test_staleness_and_status_on_request(served):
    server, url = served
    got = RalfClient(url).get_features({"user": [1, 999]}, ["average.average"],
                                       with_staleness=True)
    assert got["average._ralf_status"].tolist() == ["PRESENT", "NOT_FOUND"]
    assert got["average._ralf_staleness"].tolist() == [0.0, 0.0]
    written = server.point_query("average", 1, with_metadata=True)._ralf_updated_at
    assert got["average._ralf_updated_at"][0] == pd.Timestamp(written)
    assert pd.isna(got["average._ralf_updated_at"][1])


def test_staleness_is_seconds_of_processing_time_since_the_oldest_unapplied_append(make_ralf):
    clock = ManualClock()
    with make_ralf(clock=clock) as server:
        source = server.create_source(ListSource, args=(RATINGS, ROWS, 300), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="budgeted", budget=4)
        server.step()  # 4 of the 10 keys refreshed
        clock.advance(7)
        stale = set(server.stale_keys("budgeted"))
        users = sorted(COUNTS)
        got = server.get_features({"user": users}, ["budgeted.count"], with_staleness=True)
        assert got["budgeted._ralf_staleness"].tolist() == [
            7.0 if u in stale else 0.0 for u in users]
        assert len(stale) == 6


def test_a_lazy_table_applies_the_asked_keys_only(make_ralf):
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, ROWS, 300), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="lazy", lazy=True)
        server.run()
        assert set(server.stale_keys("lazy")) == set(COUNTS)
        got = server.get_features([{"user": 2}, {"user": 5}, {"user": 2}], ["lazy.count"],
                                  with_staleness=True)
        assert got["lazy.count"].tolist() == [COUNTS[2], COUNTS[5], COUNTS[2]]
        assert got["lazy._ralf_staleness"].tolist() == [0.0, 0.0, 0.0]
        assert set(server.stale_keys("lazy")) == set(COUNTS) - {2, 5}


def test_entity_column_named_like_the_key_or_the_only_one(served):
    server, _ = served
    client = RalfClient(server)
    by_name = client.get_features({"name": ["b", "a"], "user": [1, 2]},
                                  ["named.score", "average.n"])
    assert by_name["named.score"].isna().tolist() == [True, False]  # b's score is null
    assert by_name["average.n"].tolist() == [server.point_query("average", u).n for u in (1, 2)]
    only = client.get_features({"who": ["a"]}, ["named.score"])
    assert only["named.score"].tolist() == [1.5]
    with pytest.raises(SchemaError, match="key column 'user'"):
        client.get_features({"name": ["a"], "who": [1]}, ["average.n"])


@pytest.mark.parametrize("entities, features, error, match", [
    ({"user": [1]}, ["nope.x"], TableNotFound, "nope"),
    ({"user": [1]}, ["average.nope"], SchemaError, "no column 'nope'"),
    ({"user": [1]}, ["average"], SchemaError, "not 'table.column'"),
    ({"user": [1]}, [], SchemaError, "non-empty list"),
    ({"user": ["x"]}, ["average.n"], SchemaError, "x"),
    ({"user": [1, 2], "other": [1]}, ["average.n"], SchemaError, "differ in length"),
    ([{"user": 1}, {"usr": 2}], ["average.n"], SchemaError, "entity row 1"),
    ("user=1", ["average.n"], SchemaError, "entities must be"),
])
def test_bad_requests_are_refused_naming_what_is_wrong(served, entities, features, error,
                                                        match):
    server, url = served
    for client in (RalfClient(server), RalfClient(url)):
        with pytest.raises(error, match=match):
            client.get_features(entities, features)


def test_http_answers_json_rows_or_arrow_and_4xx_for_errors(served):
    server, url = served
    body = {"entities": {"user": [1, 999]}, "features": ["average.n"], "with_staleness": True}
    rows = json.loads(post(url, "/features", body).data)
    assert rows[0] == {"user": 1, "average.n": server.point_query("average", 1).n,
                       "average._ralf_status": "PRESENT", "average._ralf_staleness": 0.0,
                       "average._ralf_updated_at": rows[0]["average._ralf_updated_at"]}
    assert rows[1]["average.n"] is None and rows[1]["average._ralf_status"] == "NOT_FOUND"
    arrow = codec.arrow_table(post(url, "/features", body, accept=codec.ARROW).data)
    assert arrow.schema.field("average.n").type == pa.int64()
    assert arrow.column("average.n").to_pylist() == [r["average.n"] for r in rows]
    assert post(url, "/features", {"entities": {"user": [1]}, "features": ["x.y"]}).status == 404
    for bad in ({"entities": {"user": [1]}}, {"features": ["average.n"]}, []):
        answer = post(url, "/features", bad)
        assert answer.status == 400 and json.loads(answer.data)["error"] == "SchemaError"
    garbage = urllib3.request("POST", url + "/features", body=b"\xff{")
    assert garbage.status == 400


def test_feast_request_gets_feasts_response_shape(served):
    server, url = served
    body = {"features": ["average:average", "named:score", "named:when"],
            "entities": {"user": [1, 999], "name": ["a", "b"]}}
    answer = post(url, "/get-online-features", body)
    assert answer.status == 200
    got = json.loads(answer.data)
    assert got["metadata"] == {"feature_names": ["user", "name", "average", "score", "when"]}
    assert [set(r) for r in got["results"]] == [
        {"values", "statuses", "event_timestamps"}] * 5
    user, name, average, score, when = got["results"]
    assert user == {"values": [1, 999], "statuses": ["PRESENT"] * 2,
                    "event_timestamps": ["1970-01-01T00:00:00Z"] * 2}
    assert name["values"] == ["a", "b"]
    assert average["values"] == [server.point_query("average", 1).average, None]
    assert average["statuses"] == ["PRESENT", "NOT_FOUND"]
    assert average["event_timestamps"][1] == "1970-01-01T00:00:00Z"
    assert dt.datetime.fromisoformat(average["event_timestamps"][0].replace("Z", "")) == \
        server.point_query("average", 1, with_metadata=True)._ralf_updated_at
    assert score == {"values": [1.5, None], "statuses": ["PRESENT", "NULL_VALUE"],
                     "event_timestamps": score["event_timestamps"]}
    assert when["values"] == ["2024-01-02T03:04:05.006000", "2024-01-03T00:00:00"]
    full = json.loads(post(url, "/get-online-features", {**body, "full_feature_names": True})
                      .data)
    assert full["metadata"]["feature_names"][2:] == [
        "average__average", "named__score", "named__when"]
    assert full["results"] == got["results"]


def test_feast_name_clashes_and_bad_bodies_are_4xx(served):
    _, url = served
    clash = post(url, "/get-online-features",
                 {"features": ["average:n", "average:user"], "entities": {"user": [1]}})
    assert clash.status == 400 and "full_feature_names" in json.loads(clash.data)["message"]
    for bad in ({"features": ["average:n"]}, {"features": ["average:n"], "entities": [1]},
                {"feature_service": "svc", "entities": {"user": [1]}},
                {"features": ["average:n"], "entities": {"user": 1}}):
        answer = post(url, "/get-online-features", bad)
        assert answer.status == 400, bad
