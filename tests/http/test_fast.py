"""The serving fast path (ralf/http/fast.py) answers exactly what the app answers, and
hands everything it does not serve itself to the app: tokens, bodies without a length,
query strings, lazy tables."""

from __future__ import annotations

import json

import pytest
import urllib3

from ralf import Ralf, RalfClient
from ralf.testing import ListSource
from tests.pipelines import AVERAGE, COUNT, RATINGS, AverageRating, CountPerKey, ratings

BODY = {"entities": {"user": [1, 2, 999]}, "features": ["average.average", "average.n"]}


@pytest.fixture(scope="module", params=[None, "s3cret"], ids=["open", "token"])
def served(request, shared_database):
    with Ralf(shared_database) as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(200)), name="ratings")
        source.map(AverageRating, args=(AVERAGE,), name="average")
        source.map(CountPerKey, args=(COUNT,), name="lazy", lazy=True)
        server.run()
        yield server, server.serve(port=0, token=request.param), request.param


def call(url: str, method: str, path: str, token: str | None, body: object = None,
         chunked: bool = False) -> urllib3.BaseHTTPResponse:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    if chunked:  # no Content-Length: the fast path leaves the body to the app's limit
        return urllib3.PoolManager().urlopen(method, url + path, body=iter([data]),
                                             headers=headers, chunked=True)
    return urllib3.request(method, url + path, body=data, headers=headers)


def test_fast_and_app_answers_are_the_same(served):
    server, url, token = served
    fast = call(url, "POST", "/features", token, BODY)
    slow = call(url, "POST", "/features", token, BODY, chunked=True)
    assert fast.status == slow.status == 200 and fast.data == slow.data
    feast = {"entities": {"user": [1, 999]}, "features": ["average:n"]}
    fast = call(url, "POST", "/get-online-features", token, feast)
    slow = call(url, "POST", "/get-online-features", token, feast, chunked=True)
    assert fast.status == slow.status == 200 and fast.data == slow.data
    assert json.loads(fast.data)["results"][1]["values"] == [
        server.point_query("average", 1).n, None]
    point = call(url, "GET", "/table/average/1", token)
    with_query = call(url, "GET", "/table/average/1?metadata=false", token)
    assert point.status == with_query.status == 200 and point.data == with_query.data
    for path in ("/table/average/999", "/table/nope/1", "/table/average/x"):
        fast, slow = call(url, "GET", path, token), call(url, "GET", path + "?by=event", token)
        assert fast.status == slow.status >= 400 and fast.data == slow.data


def test_errors_and_lazy_tables_answer_as_the_app_does(served):
    server, url, token = served
    bad = {"entities": {"user": [1]}, "features": ["average.nope"]}
    fast, slow = (call(url, "POST", "/features", token, bad, chunked=c) for c in (False, True))
    assert fast.status == slow.status == 400 and fast.data == slow.data
    lazy = call(url, "POST", "/features", token,
                {"entities": {"user": [3]}, "features": ["lazy.count"]})
    assert json.loads(lazy.data) == [{"user": 3, "lazy.count": RalfClient(server).point_query(
        "lazy", 3).count}]


def test_a_token_guards_the_fast_routes(make_ralf):
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(50)), name="ratings")
        source.map(AverageRating, args=(AVERAGE,), name="average")
        server.run()
        url = server.serve(port=0, token="s3cret")
        for method, path, body in [("GET", "/table/average/1", None),
                                   ("POST", "/features", BODY),
                                   ("POST", "/get-online-features", BODY)]:
            for wrong in (None, "guess"):
                answer = call(url, method, path, wrong, body)
                assert answer.status == 401, (method, path, wrong)
            assert call(url, method, path, "s3cret", body).status == 200
