"""Soak: sustained ingestion with concurrent queries; throughput, latency, staleness and
memory over time.

    python -m benchmarks.soak [--duration 300] [--report-every 15] [--clients 4]
                              [--fault-every TICKS]

A file-backed Ralf (temporary directory, DuckDB memory limit 256MB, 60 s of feature
history) ingests a synthetic ratings stream as fast as it can through a Python operator,
an aggregate table, a budgeted table (2,000 keys per tick) and a lazy table, while client
threads run point queries. Every interval it prints the ingestion rate, point-query
latency p99 on eager tables (the serving cache) and on the lazy table (which waits for
the engine lock to refresh), the budgeted table's staleness p99 and the process's
resident memory; at the end, resident memory after the first fifth and over the second
half of the run (memory warms up until DuckDB's buffers reach the limit: run it for 20
minutes, `--duration 1200`, to see the plateau).

``--fault-every N``: every N ticks an exception is raised at the next fault point in turn
(ralf.faults; a raise, not a kill). At the end the stream stops, the tables drain, and
every table is compared with the from-scratch oracle over the append table: a failure in a
tick must lose nothing and apply nothing twice. Exits non-zero if any table differs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from examples.tutorial import AVERAGE_SCHEMA as AVERAGE
from examples.tutorial import AverageRating
from ralf import KeyNotFound, Ralf, RalfClient, Schema, SourceOperator, faults
from ralf.faults import POINTS

USERS = 20_000
RATINGS = Schema("user", {"user": int, "rating": float})


class Stream(SourceOperator):
    """An endless stream, 5,000 ratings per batch, until ``ended`` is set."""

    ended = threading.Event()

    def __init__(self, schema: Schema) -> None:
        self.rng = np.random.default_rng(0)
        self.batches = 0

    def checkpoint(self) -> int:
        return self.batches

    def restore(self, batches: int) -> None:  # the same stream again, from that batch on
        self.rng = np.random.default_rng(0)
        self.batches = 0
        while self.batches < batches:
            self._batch()

    def next(self) -> pd.DataFrame | None:
        return None if Stream.ended.is_set() else self._batch()

    def _batch(self) -> pd.DataFrame:
        self.batches += 1
        users = (self.rng.zipf(1.3, 5_000) % USERS) + 1
        return pd.DataFrame({"user": users, "rating": self.rng.integers(1, 6, 5_000) * 1.0})


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--report-every", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--debug-memory", action="store_true")
    parser.add_argument("--fault-every", type=int, default=None, metavar="TICKS",
                        help="raise at the next fault point every TICKS ticks, then check "
                             "every table against the oracle")
    args = parser.parse_args()
    latencies: dict[str, list[float]] = {"eager": [], "lazy": []}
    lock = threading.Lock()
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp, Ralf(
            str(Path(tmp) / "soak.duckdb"), history_retention=60.0,
            memory_limit="256MB") as server:
        ratings = server.create_source(Stream, args=(RATINGS,), name="ratings")
        ratings.map(AverageRating, args=(AVERAGE,), name="average")
        ratings.aggregate(by="user", mean=("rating", "avg"), n=("*", "count"), name="stats")
        ratings.map(AverageRating, args=(AVERAGE,), name="average_lazy", lazy=True)
        ratings.map(AverageRating, args=(AVERAGE,), name="average_budgeted", budget=2_000)

        def query(seed: int) -> None:
            client, rng = RalfClient(server), np.random.default_rng(seed)
            while not stop.is_set():
                table = ("average", "stats", "average_lazy")[int(rng.integers(0, 3))]
                start = time.perf_counter()
                try:
                    client.point_query(table, int(rng.integers(1, 200)))
                except KeyNotFound:
                    pass
                with lock:
                    latencies["lazy" if table == "average_lazy" else "eager"].append(
                        time.perf_counter() - start)

        def inject() -> None:
            armed_at = 0
            while not stop.is_set():
                ticks = server.metrics()["ticks"]
                if ticks >= armed_at + args.fault_every:
                    faults.arm(POINTS[injected[0] % len(POINTS)], 1, "raise")
                    injected[0] += 1
                    armed_at = ticks
                stop.wait(0.02)

        injected = [0]
        threads = [threading.Thread(target=query, args=(i,)) for i in range(args.clients)]
        if args.fault_every:
            threads.append(threading.Thread(target=inject))
        server.start()
        for t in threads:
            t.start()
        print(f"{'t s':>6}{'records/s':>12}{'p99 ms eager':>14}{'p99 ms lazy':>13}"
              f"{'stale p99 s':>13}{'RSS MB':>9}", flush=True)
        began, last_ingested, memory = time.monotonic(), 0, []
        while (elapsed := time.monotonic() - began) < args.duration:
            time.sleep(min(args.report_every, args.duration - elapsed))  # report pacing
            metrics = server.metrics()["tables"]
            ingested = metrics["ratings"]["ingested"]
            with lock:
                p99 = {kind: np.percentile(w, 99) * 1e3 if w else float("nan")
                       for kind, w in latencies.items()}
                for window in latencies.values():
                    window.clear()
            memory.append((time.monotonic() - began, rss_mb()))
            if args.debug_memory:
                with server.storage._lock:
                    duck = server.storage._con.sql(
                        "SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchall()[0][0]
                print(f"    duckdb {duck / 2**20:.0f} MB, python blocks "
                      f"{sys.getallocatedblocks():,}", flush=True)
            print(f"{memory[-1][0]:>6.0f}{(ingested - last_ingested) / args.report_every:>12,.0f}"
                  f"{p99['eager']:>14.3f}{p99['lazy']:>13.1f}"
                  f"{metrics['average_budgeted']['staleness_p99']:>13.2f}"
                  f"{memory[-1][1]:>9.0f}", flush=True)
            last_ingested = ingested
        stop.set()
        for t in threads:
            t.join()
        server.stop()
        if args.fault_every:
            faults.disarm()
            differing = check_against_oracle(server)
            print(f"faults injected: {injected[0]} (every {args.fault_every} ticks); "
                  f"tables differing from the oracle: {differing or 'none'}", flush=True)
            if differing:
                return 1
    # Warm-up, for memory, lasts until DuckDB's buffer pool reaches memory_limit (about
    # 12 minutes at this rate); the second half of a 20-minute run is past it.
    for label, since in (("after the first fifth", args.duration / 5),
                         ("over the second half", args.duration / 2)):
        window = [m for t, m in memory if t >= since] or [m for _, m in memory]
        low, high = min(window), max(window)
        print(f"resident memory {label}: {window[0]:.0f} -> {window[-1]:.0f} MB "
              f"(range {low:.0f}-{high:.0f} MB, {(high - low) / low * 100:.1f}%)")
    return 0


def check_against_oracle(server: Ralf) -> list[str]:
    """End the stream, drain, and compare every table with a GROUP BY over the append
    table; returns the tables that differ."""
    Stream.ended.set()
    server.run()
    server.bulk_query("average_lazy")
    truth = server.sql("SELECT user, avg(rating) AS average, count(*) AS n FROM ratings "
                       "GROUP BY user ORDER BY user")
    differing = []
    for table, average in (("average", "average"), ("average_lazy", "average"),
                           ("average_budgeted", "average"), ("stats", "mean")):
        got = server.bulk_query(table).sort_values("user", ignore_index=True)
        same = (got["user"].tolist() == truth["user"].tolist()
                and ("n" not in got or got["n"].tolist() == truth["n"].tolist())
                and np.allclose(got[average], truth["average"], rtol=1e-9))
        if not same:
            differing.append(table)
    return differing


if __name__ == "__main__":
    sys.exit(main())
