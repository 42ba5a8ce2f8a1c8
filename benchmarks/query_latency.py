"""Point-query latency on a 100,000-key feature table: in process, over HTTP, and raw DuckDB.

    python -m benchmarks.query_latency [--keys 100000] [--lookups 20000]
    python -m benchmarks.query_latency --vs-feast /path/to/venv-with-feast/bin/python

Baseline, measured in the same run: a raw DuckDB ``SELECT ... WHERE key = ?`` on the same
file. The HTTP server runs in its own process (``ralf serve``) so client and server do not
share a GIL; throughput uses 8 client processes. ``--vs-feast`` also runs
../shared/bench/feast_baseline.py (Feast, SQLite online store, 100,000 users) with the
given interpreter and prints its single-key lookup figures beside ours.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from benchmarks.feast import figure, run_baseline
from ralf import Ralf, RalfClient
from ralf.storage.duckdb import STORAGE_VERSION

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "benchmarks" / "latency_pipeline.py"


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


def _http_worker(args: tuple[str, list[int]]) -> int:
    url, keys = args
    client = RalfClient(url)
    for key in keys:
        client.point_query("user_stats", key)
    return len(keys)


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


def feast(python: str, lookups: int) -> tuple[float, float] | None:
    output = run_baseline(python, "--n", "200000", "--lookups", str(lookups))
    found = figure(output, r"\(d\) single key: p50 (\d+)us p99 (\d+)us")
    return None if found is None else (float(found[0]), float(found[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--http-lookups", type=int, default=5_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--vs-feast", metavar="PYTHON", default=None,
                        help="interpreter of a virtual environment with feast installed")
    args = parser.parse_args()
    os.environ["RALF_BENCH_KEYS"] = str(args.keys)
    rng = np.random.default_rng(0)
    keys = rng.integers(1, args.keys + 1, args.lookups).tolist()
    http_keys = keys[: args.http_lookups]

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

        con = duckdb.connect(db, read_only=True,
                             config={"storage_compatibility_version": STORAGE_VERSION})
        cur = con.cursor()

        def raw(key: int) -> None:
            cur.execute("SELECT * FROM user_stats WHERE user_id = ?", [key]).fetchall()

        timed(raw, keys[:1000])
        raw_duckdb = percentiles(timed(raw, keys))
        con.close()

        print("starting `ralf serve` ...", flush=True)
        proc, url = start_server(db)
        try:
            remote = RalfClient(url)
            timed(lambda k: remote.point_query("user_stats", k), http_keys[:500])
            http = percentiles(timed(lambda k: remote.point_query("user_stats", k), http_keys))
            chunks = [(url, http_keys[i::args.clients]) for i in range(args.clients)]
            with multiprocessing.get_context("spawn").Pool(args.clients) as pool:
                pool.map(_http_worker, [(url, c[1][:50]) for c in chunks])  # warm-up
                start = time.perf_counter()
                done = sum(pool.map(_http_worker, chunks))
                throughput = done / (time.perf_counter() - start)
        finally:
            proc.terminate()
            proc.wait()

    feast_figures = feast(args.vs_feast, 2000) if args.vs_feast else None
    rows = [
        ("raw DuckDB SELECT (baseline)", *raw_duckdb),
        ("ralf in-process point_query", *in_process),
        ("ralf HTTP point_query (sequential)", *http),
    ]
    if feast_figures:
        rows.append(("Feast get_online_features (SQLite)", *feast_figures))
    print(f"\npoint queries on {args.keys:,} keys ({len(keys):,} in-process lookups, "
          f"{len(http_keys):,} over HTTP)\n")
    print(f"{'path':<38}{'p50 us':>10}{'p99 us':>10}{'p50 vs raw':>12}")
    for name, p50, p99 in rows:
        print(f"{name:<38}{p50:>10.1f}{p99:>10.1f}{p50 / raw_duckdb[0]:>12.3f}")
    print(f"\nHTTP throughput, {args.clients} client processes: {throughput:,.0f} requests/s")


if __name__ == "__main__":
    main()
