"""GET /metrics by Prometheus conventions, read from a real server on 127.0.0.1, and the
Grafana dashboard in deploy/grafana queries only what the server exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from ralf import Ralf
from ralf.testing import ListSource
from tests.pipelines import AVERAGE, COUNT, RATINGS, AverageRating, CountPerKey, ratings

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "ralf-dashboard.json"


@pytest.fixture(scope="module")
def scraped():
    with Ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(200, users=10)),
                                      kwargs={"batch_size": 50}, name="ratings")
        source.map(AverageRating, args=(AVERAGE,), name="average")
        source.map(CountPerKey, args=(COUNT,), name="counts", lazy=True)
        server.run()
        url = server.serve(port=0)
        assert urllib3.request("GET", f"{url}/table/average/1").status == 200
        assert urllib3.request("GET", f"{url}/table/nowhere/1").status == 404
        text = urllib3.request("GET", f"{url}/metrics").data.decode()
        yield server, {f.name: f for f in text_string_to_metric_families(text)}


def _samples(families, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value
            for f in families.values() for s in f.samples if s.name == name}


def test_names_and_types_follow_prometheus_conventions(scraped):
    _, families = scraped
    types = {name: f.type for name, f in families.items()}
    for name, kind in types.items():
        assert name.startswith("ralf_"), name
        if kind == "counter":
            assert not name.endswith("_total")  # the parser strips it: exposed with it
        if "seconds" in name or "duration" in name:  # (a gauge histogram's count and sum
            assert re.sub("_g(count|sum)$", "", name).endswith("_seconds"), name  # are gauges)
    assert types["ralf_ingested"] == types["ralf_refreshes"] == "counter"
    assert types["ralf_stale_keys"] == types["ralf_staleness_p99_seconds"] == "gauge"
    assert types["ralf_refresh_duration_seconds"] == "histogram"
    assert types["ralf_query_duration_seconds"] == "histogram"
    assert types["ralf_http_request_duration_seconds"] == "histogram"
    assert types["ralf_staleness_seconds"] == "histogram"  # a gauge histogram in 0.0.4 text


def test_values_are_the_servers(scraped):
    server, families = scraped
    metrics = server.metrics()["tables"]
    assert _samples(families, "ralf_ingested_total")[(("table", "ratings"),)] == 200
    assert _samples(families, "ralf_stale_keys")[(("table", "counts"),)] == \
        metrics["counts"]["stale_keys"] == 10
    refreshes = _samples(families, "ralf_refresh_duration_seconds_count")
    assert refreshes[(("table", "average"),)] == metrics["average"]["refresh_latency"]["count"] > 0
    assert refreshes[(("table", "counts"),)] == 0  # lazy, never queried
    # the lazy table's 10 stale keys are all in the staleness histogram's +Inf bucket
    buckets = _samples(families, "ralf_staleness_seconds_bucket")
    assert buckets[(("le", "+Inf"), ("table", "counts"))] == 10
    # one point query on a table of the pipeline; the unknown table makes no label
    queries = _samples(families, "ralf_query_duration_seconds_count")
    assert queries == {(("table", "average"),): 1.0}
    routes = _samples(families, "ralf_http_request_duration_seconds_count")
    assert routes[(("route", "/table/{table}/{key:path}"),)] == 2


def test_every_metric_the_grafana_dashboard_queries_is_exposed(scraped):
    _, families = scraped
    exposed = {s.name for f in families.values() for s in f.samples}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    queried = {name for e in exprs for name in re.findall(r"\bralf_[a-z0-9_]+", e)}
    assert len(queried) >= 12
    assert queried - exposed == set()
    # and every family the server exposes is on the dashboard
    families_queried = {n if "_g" in n else re.sub(r"_(total|bucket|count|sum)$", "", n)
                        for n in queried}  # (a gauge histogram's _gcount, _gsum are gauges)
    assert set(families) - families_queried == set()
