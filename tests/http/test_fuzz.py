"""Hypothesis-generated requests against every route of a live server: never a 5xx."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ralf import Ralf
from ralf.testing import ListSource
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
def url(shared_database):
    with Ralf(shared_database) as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(200)), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts", lazy=True)
        server.run()
        yield server.serve(port=0)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), route=st.sampled_from(ROUTES),
       table=st.sampled_from(["counts", "ratings", "nope"]) | text,
       key=st.sampled_from(["1", "-1", "1e3", "9" * 30]) | text,
       params=st.dictionaries(st.sampled_from(["metadata", "as_of", "features",
                                               "timestamp_column"]), text, max_size=3),
       body=bodies, content_type=st.sampled_from(["application/json", "text/plain",
                                                  "application/vnd.apache.arrow.stream"]))
def test_no_request_gets_a_server_error(url, method, route, table, key, params, body,
                                        content_type):
    path = route.format(t=quote(table, safe=""), k=quote(key, safe=""))
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    response = urllib3.request(method, url + path + ("?" + query if query else ""), body=body,
                               headers={"Content-Type": content_type}, retries=False)
    assert response.status < 500, (method, path, query, body, response.data[:300])
