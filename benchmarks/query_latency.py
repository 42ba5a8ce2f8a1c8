"""Point-query and feature-vector latency on a 100,000-key feature table: in process, over
HTTP, and against the floor of an HTTP server here and Feast's feature server.

    python -m benchmarks.query_latency [--keys 100000] [--http-lookups 3000] [--clients 8]
    python -m benchmarks.query_latency --feast none        # without Feast

Baselines, measured in the same run: in process, a raw DuckDB ``SELECT ... WHERE key = ?``
on the same file; over HTTP, the floor: a trivial FastAPI route on the same uvicorn
configuration (benchmarks/http_floor.py). Every server runs in its own process, so client
and server do not share a GIL: ``ralf serve``, the floor, and ``feast serve`` (one worker,
its default) on a repository holding the same keys and values in its SQLite online store
(benchmarks/feast_serve.py, run with ``--feast``'s interpreter; "not run" without it).
Each route is timed for ``--http-lookups`` requests one after another (p50, p99), then
for throughput with ``--clients`` processes sending the same requests.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import urllib3

from ralf import Ralf, RalfClient
from ralf.storage.duckdb import STORAGE_VERSION

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "benchmarks" / "latency_pipeline.py"
FEAST_PYTHON = "/tmp/feastenv/bin/python"
FEATURES = ["user_stats.average_rating", "user_stats.n_ratings"]
FEAST_FEATURES = ["user_stats:average_rating", "user_stats:n_ratings"]
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    arr = np.array(samples_ns) / 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def timed(call, keys) -> list[int]:
    samples = []
    for key in keys:
        start = time.perf_counter_ns()
        call(key)
        samples.append(time.perf_counter_ns() - start)
    return samples


def _http_worker(args: tuple[str, str, list[tuple[str, bytes | None]]]) -> int:
    url, method, requests = args
    pool = urllib3.connection_from_url(url, maxsize=1)
    for path, body in requests:
        response = pool.urlopen(method, path, body=body, headers=HEADERS)
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {response.data[:200]!r}")
    return len(requests)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(url: str, path: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if urllib3.request("GET", url + path, timeout=1, retries=False).status < 500:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens at {url}")


def start_server(db: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ralf.cli", "serve", str(PIPELINE), "--db", db, "--port", "0",
         "--log-every", "3600"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline()
    if "serving" not in line:
        raise RuntimeError(f"server did not start: {line}")
    return proc, line.split(" on ")[1].split()[0]


def start_floor() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.http_floor", str(port)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    wait_listening(url, "/constant", proc)
    return proc, url


def start_feast(python: str, keys: int, repo: str) -> tuple[subprocess.Popen, str]:
    """``feast serve`` (one worker, its default) on a repo with the same keys and values."""
    print("building the Feast repository ...", flush=True)
    subprocess.run([python, str(ROOT / "benchmarks" / "feast_serve.py"), repo, "--keys",
                    str(keys)], check=True, capture_output=True)
    port = free_port()
    feast_cli = str(Path(python).with_name("feast"))
    proc = subprocess.Popen([feast_cli, "-c", repo, "serve", "-h", "127.0.0.1", "-p", str(port),
                             "--no-access-log",
                             # its default recycles the worker every ~1,000 requests,
                             # resetting the clients' connections
                             "--max-requests", "100000000"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_listening(url, "/health", proc)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def feast_body(keys: list[int]) -> bytes:
    return json.dumps({"features": FEAST_FEATURES, "entities": {"user_id": keys}}).encode()


def features_body(keys: list[int]) -> bytes:
    return json.dumps({"features": FEATURES, "entities": {"user_id": keys}}).encode()


def measure(url: str, method: str, requests: list[tuple[str, bytes | None]], clients: int
            ) -> tuple[float, float, float]:
    """p50 and p99 (us) of the requests one after another, then requests/s with
    ``clients`` processes sending them."""
    pool = urllib3.connection_from_url(url, maxsize=1)

    def call(item: tuple[str, bytes | None]) -> None:
        response = pool.urlopen(method, item[0], body=item[1], headers=HEADERS)
        if response.status != 200:
            raise RuntimeError(f"{method} {item[0]}: {response.status} {response.data[:200]!r}")

    timed(call, requests[: max(50, len(requests) // 10)])  # warm-up
    p50, p99 = percentiles(timed(call, requests))
    chunks = [(url, method, requests[i::clients]) for i in range(clients)]
    with multiprocessing.get_context("spawn").Pool(clients) as workers:
        workers.map(_http_worker, [(u, m, c[:20]) for u, m, c in chunks])  # warm-up
        start = time.perf_counter()
        done = sum(workers.map(_http_worker, chunks))
        throughput = done / (time.perf_counter() - start)
    return p50, p99, throughput


def parity(ralf_url: str, feast_url: str, keys: list[int]) -> str:
    """Whether ralf's and Feast's /get-online-features answers agree: per feature name,
    the values and statuses (event timestamps are each store's own; Feast does not keep
    the requested order of the features, so the order is compared apart)."""
    answers, orders = [], []
    for url in (ralf_url, feast_url):
        got = json.loads(urllib3.request("POST", url + "/get-online-features",
                                         body=feast_body(keys), headers=HEADERS).data)
        names = got["metadata"]["feature_names"]
        orders.append(names)
        answers.append({n: (r["values"], r["statuses"])
                        for n, r in zip(names, got["results"], strict=True)})
    if answers[0] != answers[1]:
        return f"DIFFER: {answers}"
    return "same answer" + ("" if orders[0] == orders[1] else
                           f" (Feast ordered the features {orders[1]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--http-lookups", type=int, default=3_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--feast", metavar="PYTHON", default=FEAST_PYTHON,
                        help="interpreter of a virtual environment with feast installed "
                             f"(default {FEAST_PYTHON}; 'none': Feast is not run)")
    args = parser.parse_args()
    os.environ["RALF_BENCH_KEYS"] = str(args.keys)
    rng = np.random.default_rng(0)
    keys = rng.integers(1, args.keys + 1, args.lookups).tolist()
    http_keys = keys[: args.http_lookups]
    batches = [keys[i:i + 100] for i in range(0, args.http_lookups, 10)][: args.http_lookups // 10]

    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "latency.duckdb")
        print(f"building a {args.keys:,}-key feature table ...", flush=True)
        sys.path.insert(0, str(ROOT))
        from benchmarks.latency_pipeline import build

        with Ralf(db) as server:
            build(server)
            server.run()
            client = RalfClient(server)
            timed(lambda k: client.point_query("user_stats", k), keys[:1000])  # warm-up
            in_process = percentiles(timed(lambda k: client.point_query("user_stats", k), keys))
            timed(lambda k: client.get_features({"user_id": [k]}, FEATURES), keys[:200])
            in_process_features = percentiles(
                timed(lambda k: client.get_features({"user_id": [k]}, FEATURES), http_keys))

        con = duckdb.connect(db, read_only=True,
                             config={"storage_compatibility_version": STORAGE_VERSION})
        cur = con.cursor()

        def raw(key: int) -> None:
            cur.execute("SELECT * FROM user_stats WHERE user_id = ?", [key]).fetchall()

        timed(raw, keys[:1000])
        raw_duckdb = percentiles(timed(raw, keys))
        con.close()

        probes = [
            ("floor: trivial FastAPI route", "floor", "GET",
             [("/constant", None)] * len(http_keys)),
            ("ralf GET /table/t/key", "ralf", "GET",
             [(f"/table/user_stats/{k}", None) for k in http_keys]),
            ("ralf POST /features, 1 key x 2", "ralf", "POST",
             [("/features", features_body([k])) for k in http_keys]),
            ("ralf POST /get-online-features, 1x2", "ralf", "POST",
             [("/get-online-features", feast_body([k])) for k in http_keys]),
            ("ralf POST /features, 100 keys x 2", "ralf", "POST",
             [("/features", features_body(b)) for b in batches]),
            ("feast serve /get-online-features, 1x2", "feast", "POST",
             [("/get-online-features", feast_body([k])) for k in http_keys]),
            ("feast serve /get-online-features, 100x2", "feast", "POST",
             [("/get-online-features", feast_body(b)) for b in batches]),
        ]
        servers: dict[str, tuple[subprocess.Popen, str]] = {}
        results: dict[str, tuple[float, float, float] | None] = {}
        shape = "not run"
        try:
            print("starting the floor server and `ralf serve` ...", flush=True)
            servers["floor"] = start_floor()
            servers["ralf"] = start_server(db)
            use_feast = args.feast != "none" and Path(args.feast).exists()
            if use_feast:
                servers["feast"] = start_feast(args.feast, args.keys, str(Path(tmp) / "feast"))
                shape = parity(servers["ralf"][1], servers["feast"][1],
                               [1, 2, args.keys + 1])
            for name, which, method, requests in probes:
                if which not in servers:
                    results[name] = None
                    continue
                print(f"measuring {name} ...", flush=True)
                results[name] = measure(servers[which][1], method, requests, args.clients)
        finally:
            for proc, _ in servers.values():
                stop(proc)

    print(f"\npoint queries on {args.keys:,} keys ({len(keys):,} in-process lookups)\n")
    print(f"{'path':<40}{'p50 us':>10}{'p99 us':>10}{'p50 vs raw':>12}")
    for name, (p50, p99) in [("raw DuckDB SELECT (baseline)", raw_duckdb),
                             ("ralf in-process point_query", in_process),
                             ("ralf in-process get_features, 1x2", in_process_features)]:
        print(f"{name:<40}{p50:>10.1f}{p99:>10.1f}{p50 / raw_duckdb[0]:>12.3f}")
    floor = results["floor: trivial FastAPI route"]
    print(f"\nover HTTP: {len(http_keys):,} requests one after another (latency), then the "
          f"same with {args.clients} client processes (throughput); ratios to the floor\n")
    print(f"{'route':<40}{'p50 us':>9}{'p99 us':>9}{'req/s':>9}{'p50/floor':>11}"
          f"{'req/s/floor':>13}")
    for name, figures in results.items():
        if figures is None:
            print(f"{name:<40}{'not run':>9}")
            continue
        p50, p99, rps = figures
        print(f"{name:<40}{p50:>9.0f}{p99:>9.0f}{rps:>9,.0f}{p50 / floor[0]:>11.2f}"
              f"{rps / floor[2]:>13.2f}")
    print(f"\nralf's /get-online-features vs feast serve's on the same keys: {shape}")


if __name__ == "__main__":
    main()
