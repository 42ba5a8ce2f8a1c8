"""Bounded resources: request bodies counted as they arrive, results refused while they are
fetched, queries stopped by a time limit, by their client going away and by the server
stopping, and snapshots that keep the database locked and are cleaned up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import urllib3

from ralf import QueryError, Ralf
from ralf.testing import ListSource
from tests.pipelines import COUNT, RATINGS, CountPerKey, ratings

ROOT = Path(__file__).resolve().parents[2]
# DuckDB and PostgreSQL: seconds of work, whatever the machine
HEAVY = "SELECT count(*) AS n FROM range(200000000) a(i), range(1000) b(j) WHERE i + j < 0"
HEAVY_PG = ("SELECT count(*) AS n FROM generate_series(1, 200000000) a(i), "
            "generate_series(1, 1000) b(j) WHERE i + j < 0")


def _heavy(server: Ralf) -> str:
    return HEAVY_PG if str(server.path or "").startswith("postgresql") else HEAVY


@pytest.fixture(scope="module")
def served(shared_database):
    with Ralf(shared_database, query_timeout=120) as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(200)), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts")
        server.run()
        yield server, server.serve(port=0)


def _chunked_post(url: str, path: str, chunks) -> int:
    """POST a chunked body chunk by chunk; the status the server answered with (it may
    answer, and close, before the whole body is sent)."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                     "application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        try:
            for chunk in chunks:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # refused part way: the answer is waiting
            pass
        return int(sock.recv(65536).split(b" ", 2)[1])


def test_a_chunked_body_over_the_limit_is_refused_by_its_bytes(served):
    _, url = served
    assert _chunked_post(url, "/sql", (b" " * 65536 for _ in range(320))) == 413  # 20 MB
    assert _chunked_post(url, "/sql", [b'{"query": ', b'"SELECT 1 AS x"}']) == 200


def test_a_result_over_the_row_limit_is_refused_while_fetching(served):
    server, url = served
    response = urllib3.request("POST", url + "/sql",
                               body=json.dumps({"query": "SELECT 1 AS x FROM range(1000001)"
                                                if "postgresql" not in str(server.path) else
                                                "SELECT 1 AS x FROM generate_series(0, 1000000)"}),
                               headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status == 400 and b"more than 1,000,000 rows" in response.data


def test_the_row_limit_stops_before_the_result_is_held_in_memory(tmp_path):
    """In a process of its own (a clean high-water mark): 50 million rows asked, refused
    past one million; memory grows by a fraction of what holding them would take."""
    probe = ("import resource, sys\n"
             "from ralf import Ralf, QueryError\n"
             "with Ralf() as s:\n"
             "    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "    try:\n"
             "        s.sql_arrow(sys.argv[1], max_rows=1_000_000)\n"
             "    except QueryError as e:\n"
             "        print('refused', e)\n"
             "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n")
    done = subprocess.run([sys.executable, "-c", probe,
                           "SELECT i, i * 2 AS j FROM range(50000000) t(i)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "refused" in done.stdout, done.stderr
    grown_kb = int(done.stdout.split()[-1])
    assert grown_kb < 200_000  # holding the result would take 800 MB


def test_a_query_past_its_time_limit_is_stopped(make_ralf):
    with make_ralf(query_timeout=0.5) as server:
        start = time.monotonic()
        with pytest.raises(QueryError, match="time limit"):
            server.sql(_heavy(server))
        assert time.monotonic() - start < 60  # stopped, not run to its end
        assert server.sql("SELECT 1 AS x")["x"][0] == 1  # the session still works


def _running(url: str) -> int:
    return json.loads(urllib3.request("GET", url + "/status").data)["sql_running"]


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
    return True


def test_a_query_whose_client_went_away_is_cancelled(served):
    server, url = served
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        urllib3.request("POST", url + "/sql", body=json.dumps({"query": _heavy(server)}),
                        headers={"Content-Type": "application/json"}, retries=False,
                        timeout=urllib3.Timeout(read=0.5))
    # stopped long before its natural end (minutes), and the server answers at once
    assert _wait_until(lambda: _running(url) == 0, 30)


def test_sigterm_stops_ralf_serve_while_a_query_runs(tmp_path):
    db = str(tmp_path / "served.duckdb")
    env = {**os.environ, "RALF_E2E_RECORDS": "200", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ralf.cli", "serve", "tests/e2e/pipeline.py", "--db", db,
         "--port", "0", "--log-every", "3600"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = proc.stdout.readline().split(" on ")[1].split()[0]
    threading.Thread(target=urllib3.request, args=("POST", url + "/sql"), kwargs={
        "body": json.dumps({"query": HEAVY}), "headers": {"Content-Type": "application/json"},
        "retries": False, "timeout": urllib3.Timeout(read=300)}, daemon=True).start()
    assert _wait_until(lambda: _running(url) == 1, 30)  # it runs (for minutes, if let)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()


def test_snapshots_keep_the_lock_and_are_cleaned_up(tmp_path, monkeypatch):
    from ralf.storage import duckdb as duckdb_backend

    db = str(tmp_path / "features.duckdb")
    opener = "import duckdb, sys; duckdb.connect(sys.argv[1])"
    with Ralf(db) as server:
        server.create_source(ListSource, args=(RATINGS, ratings(100)), name="ratings")
        server.run()
        first = server.snapshot()
        second_opener = subprocess.run([sys.executable, "-c", opener, db],
                                       capture_output=True, text=True)
        assert second_opener.returncode != 0 and "lock" in second_opener.stderr.lower()
        copy = subprocess.run([sys.executable, "-c", "import duckdb, sys; print(duckdb."
                               "connect(sys.argv[1], read_only=True).execute('SELECT count(*)"
                               " FROM ratings').fetchall()[0][0])", first],
                              capture_output=True, text=True)
        assert copy.stdout.strip() == "100", copy.stderr
        monkeypatch.setattr(duckdb_backend, "SNAPSHOT_TTL", 0.0)
        second = server.snapshot()
        assert not Path(first).exists() and Path(second).exists()  # the old one expired
        assert server.drop_snapshot(second) and not Path(second).exists()
        assert not server.drop_snapshot(db)  # only its own snapshots
        third = server.snapshot()
    assert not Path(third).exists()  # all gone at close
    assert Path(db).exists()
