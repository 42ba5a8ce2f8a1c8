"""A real `ralf serve` subprocess on a free loopback port, queried while it ingests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import urllib3

from ralf import KeyNotFound, QueryError, Ralf, RalfClient, RalfError, SchemaError, TableNotFound
from ralf.testing import new_postgres_database
from tests.conftest import BACKENDS
from tests.e2e import pipeline

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 6000


def _ralf(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ralf.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, tmp_path_factory):
    if request.param == "duckdb":
        db = str(tmp_path_factory.mktemp("serve") / "served.duckdb")
    else:
        db = new_postgres_database(request.getfixturevalue("postgres_url"))
    gate = tmp_path_factory.mktemp("gate") / "open"
    env = {**os.environ, "RALF_E2E_RECORDS": str(RECORDS), "PYTHONPATH": str(ROOT),
           "RALF_E2E_GATE": str(gate)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ralf.cli", "serve", "tests/e2e/pipeline.py", "--db", db,
         "--port", "0", "--log-every", "0.2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert "serving" in first, first + proc.stderr.read()
    url = first.split(" on ")[1].split()[0]
    yield url, proc, db, gate
    proc.terminate()
    proc.wait(timeout=30)


def _wait_drained(client: RalfClient, gate: Path, deadline: float = 120.0) -> dict:
    gate.touch()  # the source's second half may come
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        m = client.metrics()["tables"]
        if m["ratings"]["ingested"] == RECORDS and m["average"]["stale_keys"] == 0 and \
                m["counts_budgeted"]["stale_keys"] == 0:
            return m
    raise AssertionError(f"server did not drain: {m}")


def _queries(client: RalfClient) -> int:
    """A point, a bulk and a SQL query; returns how many records are ingested."""
    try:
        client.point_query("average", 1)
    except KeyNotFound:
        pass
    client.bulk_query("average")
    return int(client.sql("SELECT count(*) AS n FROM ratings")["n"][0])


def test_queries_while_ingesting_then_equal_to_in_process(served):
    url, _, _, gate = served
    client = RalfClient(url)
    deadline = time.monotonic() + 120
    while _queries(client) < RECORDS // 2:  # the source holds back its second half
        assert time.monotonic() < deadline, "the server did not ingest the first half"
    assert _queries(client) == RECORDS // 2  # queried while part way through
    _wait_drained(client, gate)
    assert _queries(client) == RECORDS
    with Ralf() as local:
        pipeline.build(local)
        local.run()
        ours = RalfClient(local)
        for table in ("average", "counts_lazy", "counts_budgeted"):
            pd.testing.assert_frame_equal(client.bulk_query(table), ours.bulk_query(table))
        for key in (1, 150, 300):
            assert client.point_query("average", key) == ours.point_query("average", key)
        assert client.sql("SELECT sum(rating) AS s FROM ratings").equals(
            ours.sql("SELECT sum(rating) AS s FROM ratings"))


def test_errors_cross_the_wire_as_the_same_exceptions(served):
    client = RalfClient(served[0])
    with pytest.raises(KeyNotFound):
        client.point_query("average", 10**9)
    with pytest.raises(TableNotFound):
        client.point_query("nope", 1)
    with pytest.raises(TableNotFound):
        client.bulk_query("nope")
    with pytest.raises(SchemaError, match="cannot be converted"):
        client.point_query("average", "not-a-number")
    with pytest.raises(QueryError, match="read-only"):
        client.sql("DELETE FROM ratings")


def test_http_statuses_and_json_bodies(served):
    url = served[0]
    http = urllib3.PoolManager()
    assert http.request("GET", url + "/health").status == 200
    r = http.request("GET", url + "/table/average/abc")
    assert r.status == 400 and json.loads(r.data)["error"] == "SchemaError"
    r = http.request("GET", url + "/table/nope/1")
    assert r.status == 404 and json.loads(r.data)["error"] == "TableNotFound"
    r = http.request("GET", url + "/table/average/999999")
    assert r.status == 404 and json.loads(r.data)["error"] == "KeyNotFound"
    r = http.request("POST", url + "/sql", body=json.dumps({"query": "DROP TABLE ratings"}),
                     headers={"Content-Type": "application/json"})
    assert r.status == 400
    r = http.request("GET", url + "/tables")
    names = {t["name"]: t for t in json.loads(r.data)}
    assert names["ratings"]["kind"] == "source" and names["average"]["rows"] > 0
    spec = json.loads(http.request("GET", url + "/openapi.json").data)
    assert {"/tables", "/table/{table}/{key}", "/table/{table}", "/sql", "/health",
            "/metrics"} <= set(spec["paths"])
    metrics = http.request("GET", url + "/metrics").data.decode()
    assert 'ralf_ingested_total{table="ratings"}' in metrics
    assert "ralf_staleness_p99_seconds{" in metrics


def test_the_command_line_against_the_server(served):
    url, _, _, gate = served
    _wait_drained(RalfClient(url), gate)
    out = _ralf("tables", "--url", url)
    assert out.returncode == 0 and "average" in out.stdout and "source" in out.stdout
    out = _ralf("query", "average", "7", "--url", url)
    assert out.returncode == 0 and "average:" in out.stdout
    out = _ralf("bulk", "counts_budgeted", "--csv", "--url", url)
    df = pd.read_csv(pd.io.common.StringIO(out.stdout))
    assert df["count"].sum() == RECORDS and "fetched" in out.stderr
    out = _ralf("sql", "SELECT count(*) AS n FROM ratings", "--url", url)
    assert str(RECORDS) in out.stdout
    out = _ralf("status", "--url", url)
    assert out.returncode == 0 and "counts_budgeted" in out.stdout and "p99" in out.stdout
    out = _ralf("query", "average", "x", "--url", url)
    assert out.returncode == 1 and "cannot be converted" in out.stderr
    csv = "--csv" if served[2].startswith("postgresql") else "-csv"  # psql, or duckdb
    out = _ralf("shell", "--url", url, "--", csv, "-c", "SELECT count(*) AS n FROM ratings")
    assert out.returncode == 0 and str(RECORDS) in out.stdout, out.stderr
    out = _ralf("shell", "--url", url, "--", csv, "-c", "DELETE FROM ratings")
    assert "read-only" in out.stdout + out.stderr  # the shell cannot touch the served data


def test_serve_logs_progress(served):
    proc = served[1]
    for _ in range(100):  # a line every 0.2 s (--log-every), after any other records
        line = proc.stderr.readline()
        if "logger=ralf.progress" in line:
            break
    assert "level=info" in line and "records ingested" in line, line


@pytest.mark.parametrize("command", ["serve", "tables", "status", "query", "bulk", "sql",
                                     "shell"])
def test_every_command_has_help(command):
    out = _ralf(command, "--help")
    assert out.returncode == 0 and "usage: ralf" in out.stdout


def test_a_client_with_no_server_gets_a_clear_error():
    client = RalfClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(RalfError, match="no ralf server answers at http://127.0.0.1:9"):
        client.point_query("average", 1)
