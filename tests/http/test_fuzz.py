"""Hypothesis-generated requests against every route of a live server.

The properties: never a 5xx; a 2xx answer is well-formed for the route it came from; and
no request changes the database (a digest of every table, ralf's bookkeeping included, is
the same after each request as before the first).
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote, unquote, urlsplit

import pyarrow as pa
import pytest
import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ralf import Ralf
from ralf.testing import ListSource
from tests.fuzz import examples
from tests.pipelines import COUNT, RATINGS, CountPerKey, ratings

ROUTES = ["/tables", "/table/{t}", "/table/{t}/{k}", "/sql", "/health", "/metrics",
          "/status", "/historical", "/feedback", "/openapi.json", "/{t}"]
text = st.text(max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=10)
bodies = st.one_of(
    st.none(), st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"query": text}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"table": st.sampled_from(["counts", "ratings"]) | text,
                           "key": text, "error": st.floats() | text}).map(
        lambda v: json.dumps(v).encode()))


@pytest.fixture(scope="module")
def served(shared_database):
    with Ralf(shared_database) as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(200)), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts", lazy=True)
        server.run()
        server.bulk_query("counts")  # the lazy table caught up: reads change nothing now
        yield server, server.serve(port=0), server.storage.digest()


def _columns(server: Ralf, table: str) -> set[str]:
    return set(server.table(table).schema.names)


def check_well_formed(server: Ralf, method: str, path: str, response) -> None:
    """A 2xx answer has the shape its route promises."""
    body = response.data
    if method == "POST" and path == "/feedback":
        assert response.status == 204 and body == b""
        return
    if path == "/metrics":
        assert b"ralf_ticks" in body
        return
    if response.headers.get("content-type", "").startswith("application/vnd.apache.arrow"):
        assert isinstance(pa.ipc.open_stream(body).read_all(), pa.Table)
        return
    data = json.loads(body)
    if path == "/tables":
        assert all({"name", "kind", "rows", "schema"} <= set(t) for t in data)
    elif path == "/health":
        assert data == {"status": "ok"}
    elif path == "/status":
        assert isinstance(data["ticks"], int) and isinstance(data["tables"], dict)
    elif path == "/openapi.json":
        assert "/sql" in data["paths"]
    elif path in ("/sql", "/historical"):
        assert isinstance(data, list) and all(isinstance(row, dict) for row in data)
    elif match := re.fullmatch(r"/table/([^/]+)/(.+)", path):
        table = unquote(match.group(1))
        assert _columns(server, table) <= set(data)
        key = server.table(table).schema.primary_key
        assert str(data[key]) == str(server.table(table).schema.parse_key(
            unquote(match.group(2))))
    elif match := re.fullmatch(r"/table/([^/]+)", path):
        columns = _columns(server, unquote(match.group(1)))
        assert isinstance(data, list) and all(set(row) == columns for row in data)
    else:
        raise AssertionError(f"a 2xx answer from a path no route serves: {method} {path}")


@settings(max_examples=examples(400), deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), route=st.sampled_from(ROUTES),
       table=st.sampled_from(["counts", "ratings", "nope"]) | text,
       key=st.sampled_from(["1", "-1", "1e3", "9" * 30]) | text,
       params=st.dictionaries(st.sampled_from(["metadata", "as_of", "features",
                                               "timestamp_column"]), text, max_size=3),
       body=bodies, content_type=st.sampled_from(["application/json", "text/plain",
                                                  "application/vnd.apache.arrow.stream"]))
def test_requests_get_no_5xx_well_formed_2xx_and_change_nothing(
        served, method, route, table, key, params, body, content_type):
    server, url, before = served
    path = route.format(t=quote(table, safe=""), k=quote(key, safe=""))
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    response = urllib3.request(method, url + path + ("?" + query if query else ""), body=body,
                               headers={"Content-Type": content_type}, retries=False)
    assert response.status < 500, (method, path, query, body, response.data[:300])
    if response.status < 300:
        check_well_formed(server, method, urlsplit(url + path).path, response)
    assert server.storage.digest() == before, (method, path, query, body)


LITERALS = {
    "DATE": st.dates().map(lambda d: f"'{d.isoformat()}'") | st.sampled_from(
        ["'infinity'", "'-infinity'"]),
    "TIMESTAMP": st.datetimes().map(lambda d: f"'{d.isoformat()}'") | st.sampled_from(
        ["'infinity'", "'-infinity'"]),
    "TIME": st.times().map(lambda t: f"'{t.isoformat()}'"),
    "DECIMAL(18, 4)": st.decimals(-10**13, 10**13, places=4, allow_nan=False).map(str),
    "HUGEINT": st.integers(-2**127, 2**127 - 1).map(str),
    "BIGINT": st.integers(-2**63, 2**63 - 1).map(str),
    "DOUBLE": st.floats(allow_nan=False, allow_infinity=False).map(repr),
    "VARCHAR": st.text(max_size=20).map(lambda t: "'" + t.replace("'", "''") + "'"),
    "BOOLEAN": st.sampled_from(["true", "false"]),
    "INTERVAL": st.integers(0, 10**6).map(lambda n: f"'{n} seconds'"),
}
typed_values = st.sampled_from(sorted(LITERALS)).flatmap(
    lambda t: (LITERALS[t] | st.just("NULL")).map(lambda v: f"CAST({v} AS {t})"))


@settings(max_examples=examples(150), deadline=None, suppress_health_check=list(HealthCheck))
@given(values=st.lists(typed_values, min_size=1, max_size=5),
       arrow=st.booleans())
def test_results_of_every_type_are_answered_well_formed(served, values, arrow):
    """Typed results (dates and timestamps to infinity, decimals, HUGEINT, intervals,
    NULLs ...) as JSON and Arrow: never a 5xx, and a 2xx has exactly the asked columns."""
    _, url, _ = served
    query = "SELECT " + ", ".join(f"{v} AS c{i}" for i, v in enumerate(values))
    accept = "application/vnd.apache.arrow.stream" if arrow else "application/json"
    response = urllib3.request("POST", url + "/sql", body=json.dumps({"query": query}),
                               headers={"Content-Type": "application/json", "Accept": accept},
                               retries=False)
    assert response.status < 500, (query, response.data[:300])
    if response.status < 300:
        names = [f"c{i}" for i in range(len(values))]
        if arrow:
            assert pa.ipc.open_stream(response.data).read_all().column_names == names
        else:
            (row,) = json.loads(response.data)
            assert list(row) == names, query
