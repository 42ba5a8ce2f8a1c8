"""The API's description (ralf/http/docs.py, ralf/http/models.py): every route's answers and
the bearer scheme in /openapi.json; Swagger UI served from this server's own assets, so
it works without internet access."""

from __future__ import annotations

import json
import re

import pytest
import urllib3

from ralf import Ralf, RalfError
from ralf.http.docs import ASSETS, BEARER
from ralf.http.models import (
    ErrorBody,
    Health,
    Readiness,
    Row,
    SnapshotPath,
    Status,
    TableEntry,
)
from ralf.testing import ListSource
from tests.pipelines import COUNT, RATINGS, FailsOnUser, ratings
from tests.services import chromium

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def url():
    with Ralf() as server:
        yield server.serve(port=0, token=TOKEN)


def _get(url: str, path: str) -> urllib3.BaseHTTPResponse:
    return urllib3.request("GET", url + path)  # no token: what a browser sends


@pytest.fixture(scope="module")
def spec(url):
    response = _get(url, "/openapi.json")
    assert response.status == 200
    return json.loads(response.data)


def _operations(spec):
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_every_route_declares_its_answer_and_its_errors(spec):
    seen = set()
    for path, method, operation in _operations(spec):
        seen.add((method.upper(), path))
        responses = operation["responses"]
        success = [s for s in responses if s.startswith("2")]
        assert len(success) == 1, (path, responses)
        for media, content in responses[success[0]].get("content", {}).items():
            assert content.get("schema"), f"{method} {path}: no schema for {media}"
        for status, answer in responses.items():
            if status.startswith("4") or (status == "503" and path != "/ready"):
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (path, status)
        if path not in ("/health", "/ready"):
            assert "401" in responses, f"{method} {path}: the token's 401 is not declared"
    assert {("GET", "/table/{table}/{key}"), ("GET", "/table/{table}"), ("POST", "/sql"),
            ("GET", "/tables"), ("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"),
            ("POST", "/historical"), ("POST", "/forget/{table}/{key}"),
            ("GET", "/status")} <= seen
    error = spec["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"error", "message"}


def test_the_shapes_name_the_fields_the_routes_write(spec):
    schemas = spec["components"]["schemas"]
    ready = spec["paths"]["/ready"]["get"]["responses"]
    assert ready["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/Readiness")
    assert {"table", "kind", "problem", "reason"} <= set(schemas["Problem"]["properties"])
    tables = spec["paths"]["/tables"]["get"]["responses"]["200"]["content"]
    assert tables["application/json"]["schema"]["items"]["$ref"].endswith("/TableEntry")
    assert "schema" in schemas["TableEntry"]["properties"]  # the alias, as written
    bulk = spec["paths"]["/table/{table}"]["get"]["responses"]["200"]["content"]
    assert set(bulk) == {"application/json", "application/vnd.apache.arrow.stream"}
    historical = spec["paths"]["/historical"]["post"]
    assert "application/vnd.apache.arrow.stream" in historical["requestBody"]["content"]
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


def test_the_bearer_scheme_is_declared_and_required_but_on_the_public_routes(spec):
    assert spec["components"]["securitySchemes"][BEARER] == {
        "type": "http", "scheme": "bearer",
        "description": spec["components"]["securitySchemes"][BEARER]["description"]}
    assert spec["security"] == [{BEARER: []}]
    for path, _, operation in _operations(spec):
        if path in ("/health", "/ready"):
            assert operation["security"] == [], path
        else:
            assert "security" not in operation, path  # the document's: the token


def test_without_a_token_the_scheme_is_optional():
    with Ralf() as server:
        spec = json.loads(_get(server.serve(port=0), "/openapi.json").data)
    assert spec["security"] == [{}, {BEARER: []}]


def test_the_docs_page_loads_only_assets_of_this_server(url):
    response = _get(url, "/docs")
    assert response.status == 200 and response.headers["content-type"].startswith("text/html")
    html = response.data.decode()
    assert not re.search(r"(https?:)?//[\w.-]+", html), "a URL of another host"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    kinds = {}
    for asset in assets:
        assert asset.startswith(ASSETS + "/"), asset
        got = _get(url, asset)
        assert got.status == 200 and len(got.data) > 1000, asset
        kinds[asset.rsplit(".", 1)[-1]] = got.headers["content-type"]
    assert "javascript" in kinds["js"] and kinds["css"].startswith("text/css")
    assert re.search(r"url: '/openapi.json'", html)
    bundle = _get(url, ASSETS + "/swagger-ui-bundle.js").data
    # FastAPI describes its API as OpenAPI 3.1, which Swagger UI renders from 5.0 on
    assert re.search(rb'"5\.\d+\.\d+"', bundle)
    redoc = urllib3.request("GET", url + "/redoc", headers={"Authorization": f"Bearer {TOKEN}"})
    assert redoc.status == 404  # no ReDoc page (its bundle loads a logo from afar)


def test_swagger_ui_renders_every_route_in_a_browser_from_this_server_alone(url, spec):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as browser:
        browser.get(url + "/docs")
        paths = WebDriverWait(browser, 30).until(lambda d: [
            e.text.replace("\u200b", "") for e in
            d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")] or None)
        assert set(paths) == set(spec["paths"])
        assert browser.find_elements(By.CSS_SELECTOR, "button.authorize")  # the bearer scheme
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert any(f.endswith("/openapi.json") for f in fetched)
        assert [f for f in fetched if not f.startswith(url + "/")] == []


def test_real_answers_fit_the_declared_shapes(database):
    """The description tells the truth: what the routes write validates against it."""
    from pydantic import TypeAdapter

    with Ralf(database, max_failures=1) as server:  # a file or PostgreSQL: snapshots
        source = server.create_source(ListSource, args=(RATINGS, ratings(40)), name="ratings")
        source.map(FailsOnUser, args=(COUNT, 3), name="counts")
        with pytest.raises(RalfError, match="boom"):
            server.run()
        url = server.serve(port=0, token=TOKEN)
        auth = {"Authorization": f"Bearer {TOKEN}"}

        def answer(method: str, path: str, status: int = 200, **kwargs) -> object:
            response = urllib3.request(method, url + path, headers=auth, **kwargs)
            assert response.status == status, (path, response.data)
            return json.loads(response.data)

        key = answer("GET", "/table/counts")[0]["user"]
        for path, shape, status in [
                ("/health", Health, 200), ("/ready", Readiness, 503),
                ("/tables", list[TableEntry], 200), ("/status", Status, 200),
                (f"/table/counts/{key}", Row, 200), ("/table/counts", list[Row], 200),
                ("/rejected", list[Row], 200), ("/table/counts/999", ErrorBody, 404),
                ("/table/nope", ErrorBody, 404), ("/rejected?limit=-1", ErrorBody, 400)]:
            TypeAdapter(shape).validate_python(answer("GET", path, status))
        (problem,) = Readiness.model_validate(answer("GET", "/ready", 503)).problems
        assert problem.problem == "quarantined keys" and problem.keys == 1
        TypeAdapter(list[Row]).validate_python(answer(
            "POST", "/sql", json={"query": "SELECT * FROM counts"}))
        snapshot = SnapshotPath.model_validate(answer("POST", "/snapshot"))
        dropped = urllib3.request("DELETE", url + "/snapshot", fields={"path": snapshot.path},
                                  headers=auth)
        if database.startswith("postgresql"):  # the "snapshot" is the database itself
            assert dropped.status == 404 and ErrorBody.model_validate_json(dropped.data)
        else:
            assert dropped.status == 204
        forget = urllib3.request("POST", url + f"/forget/ratings/{key}", headers=auth)
        ErrorBody.model_validate_json(forget.data)  # not a changelog source: 400
        assert forget.status == 400
        unauthorized = urllib3.request("GET", url + "/tables")
        assert ErrorBody.model_validate_json(unauthorized.data).error == "Unauthorized"
