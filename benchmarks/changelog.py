"""Changelog sources: what updates and deletes cost against inserts, and a retraction by
deltas against recomputing the aggregate.

    python -m benchmarks.changelog            # 1,000,000 live rows, 10,000-change batches
    python -m benchmarks.changelog --quick    # 100,000 live rows

A changelog source keyed by (user, movie) — 100,000 users (10,000 with --quick) — holds
N live rows, loaded first; it feeds an aggregate (count, sum, avg, stddev, max per user)
and the tutorial's Python average with an ``on_delete`` hook, eager, on a DuckDB file.

(a) one batch of 10,000 changes, appended and refreshed through both tables (one tick),
    median of R batches: inserts of new rows (the baseline), against a mix of updates
    and deletes of live rows (each one a -1 and maybe a +1 row, resolved against the
    current state); and the same inserts through an append-only source (no changelog at
    all: the floor);
(b) the aggregate's refresh of a batch of 10,000 deletes (the SQL table alone: -1 rows
    taken out of the helpers by deltas; max recomputed for the groups that lost a row;
    the changed rows and their history versions written), against recomputing the
    aggregate whole from the same rows (``CREATE OR REPLACE TABLE ... AS SELECT ... GROUP
    BY``, in a DuckDB file of its own: the floor of a store that does not maintain it).

Every figure is printed beside the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ralf import Delete, Ralf, Record, Schema
from ralf.testing import QueueSource

SCHEMA = Schema("user", {"user": int, "movie": int, "rating": float})
AVERAGE = Schema("user", {"user": int, "average": float, "n": int})
BATCH = 10_000


class Average:
    """The tutorial's average, with a retraction hook."""

    def __init__(self, schema: Schema) -> None:
        self.sums: dict[int, tuple[float, int]] = {}

    def on_record(self, record: Record) -> Record:
        s, n = self.sums.get(record.user, (0.0, 0))
        self.sums[record.user] = (s + record.rating, n + 1)
        return Record(user=record.user, average=(s + record.rating) / (n + 1), n=n + 1)

    def on_delete(self, record: Record) -> Record | Delete:
        s, n = self.sums[record.user]
        if n == 1:
            del self.sums[record.user]
            return Delete(record.user)
        self.sums[record.user] = (s - record.rating, n - 1)
        return Record(user=record.user, average=(s - record.rating) / (n - 1), n=n - 1)


def build(server: Ralf, mode: str) -> QueueSource:
    queue = QueueSource(SCHEMA)
    source = server.create_source(queue, name="ratings", mode=mode,
                                  key=["user", "movie"] if mode != "append" else None)
    source.aggregate(by="user", name="stats", n=("*", "count"), total=("rating", "sum"),
                     mean=("rating", "avg"), sd=("rating", "stddev"), top=("rating", "max"))
    source.map(Average, args=(AVERAGE,), name="average")
    return queue


def tick(server: Ralf, queue: QueueSource, batch: list[dict] | pd.DataFrame) -> float:
    queue.queue.append(batch)
    start = time.perf_counter()
    server.step()
    return time.perf_counter() - start


def loaded(path: Path, mode: str, rows: pd.DataFrame) -> tuple[Ralf, QueueSource]:
    server = Ralf(str(path))
    queue = build(server, mode)
    for start in range(0, len(rows), 100_000):
        tick(server, queue, rows.iloc[start:start + 100_000])
    return server, queue


def part_a(directory: Path, rows: pd.DataFrame, repeats: int, rng: np.random.Generator
           ) -> dict[str, float]:
    """Both sources loaded, then batch after batch in turn (so that neither runs on a
    warmer or a busier machine than the other)."""
    users = int(rows["user"].max()) + 1
    times: dict[str, list[float]] = {"append": [], "insert": [], "mixed": []}
    fresh = iter(range(10**6, 10**9))
    servers = {mode: loaded(directory / f"{mode}.duckdb", mode, rows)
               for mode in ("append", "changelog")}
    live = rows[["user", "movie"]].to_numpy().tolist()
    for _ in range(repeats):
        inserts = pd.DataFrame({"user": rng.integers(0, users, BATCH),
                                "movie": [next(fresh) for _ in range(BATCH)],
                                "rating": rng.integers(1, 6, BATCH).astype(float)})
        times["append"].append(tick(*servers["append"], inserts))
        times["insert"].append(tick(*servers["changelog"], inserts))
        live += inserts[["user", "movie"]].to_numpy().tolist()
        chosen = rng.choice(len(live), BATCH, replace=False)
        changes = []
        for i, at in enumerate(chosen):
            user, movie = live[at]
            if i % 2:
                changes.append({"user": user, "movie": movie, "op": "delete"})
            else:
                changes.append({"user": user, "movie": movie, "op": "update",
                                "rating": float(rng.integers(1, 6))})
        for at in sorted(chosen[1::2], reverse=True):  # the deleted ones leave
            live[at] = live[-1]
            live.pop()
        times["mixed"].append(tick(*servers["changelog"], changes))
    for server, _ in servers.values():
        server.close()
    return {k: statistics.median(v) for k, v in times.items()}


def part_b(directory: Path, rows: pd.DataFrame, repeats: int, rng: np.random.Generator
           ) -> dict[str, float]:
    server = Ralf(str(directory / "retract.duckdb"))
    queue = QueueSource(SCHEMA)
    source = server.create_source(queue, name="ratings", mode="changelog",
                                  key=["user", "movie"])
    source.aggregate(by="user", name="stats", n=("*", "count"), total=("rating", "sum"),
                     mean=("rating", "avg"), sd=("rating", "stddev"), top=("rating", "max"))
    for start in range(0, len(rows), 100_000):
        tick(server, queue, rows.iloc[start:start + 100_000])
    live = rows[["user", "movie"]].to_numpy().tolist()
    rng.shuffle(live)
    deltas, recomputes = [], []
    # the recomputation: the same rows in a DuckDB of its own, the aggregate rebuilt whole
    # (written as a table, as a refresh writes its rows) after each batch of deletes
    other = duckdb.connect(str(directory / "recompute.duckdb"))
    other.register("loaded", rows)
    other.execute("CREATE TABLE ratings AS SELECT * FROM loaded")
    other.unregister("loaded")
    query = ('CREATE OR REPLACE TABLE stats AS SELECT "user", count(*) AS n, sum(rating) AS '
             'total, avg(rating) AS mean, stddev_samp(rating) AS sd, max(rating) AS top '
             'FROM ratings GROUP BY "user"')
    for r in range(repeats):
        gone = live[r * BATCH:(r + 1) * BATCH]
        queue.queue.append([{"user": u, "movie": m, "op": "delete"} for u, m in gone])
        node = server.pipeline.node("stats")
        before = node.metrics.refresh_seconds
        server.step()  # the append, then the aggregate's refresh (timed alone)
        deltas.append(node.metrics.refresh_seconds - before)
        other.register("gone", pd.DataFrame(gone, columns=["user", "movie"]))
        other.execute("DELETE FROM ratings WHERE movie IN (SELECT movie FROM gone)")
        other.unregister("gone")
        start = time.perf_counter()
        other.execute(query)
        recomputes.append(time.perf_counter() - start)
    # the incremental result equals the recomputation
    want = other.execute("SELECT * FROM stats").df().set_index("user").sort_index()
    other.close()
    got = server.bulk_query("stats").set_index("user").sort_index()
    assert got.index.equals(want.index) and (got["n"] == want["n"]).all()
    assert np.allclose(got["mean"], want["mean"]) and (got["top"] == want["top"]).all()
    server.close()
    return {"delta": statistics.median(deltas), "recompute": statistics.median(recomputes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 live rows")
    parser.add_argument("--repeats", type=int, default=5, help="batches per figure")
    parser.add_argument("--parts", default="ab", help="which parts to run (default: ab)")
    args = parser.parse_args()
    n = 100_000 if args.quick else 1_000_000
    users = n // 10
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"user": rng.integers(0, users, n), "movie": np.arange(n),
                         "rating": rng.integers(1, 6, n).astype(float)})
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        print(f"{n:,} live rows, {users:,} users, batches of {BATCH:,} changes "
              f"(median of {args.repeats})", flush=True)
        a = part_a(directory, rows, args.repeats, rng) if "a" in args.parts else None
        b = part_b(directory, rows, args.repeats, rng) if "b" in args.parts else None
    print()
    print(f"{'figure':<62} {'seconds':>9} {'ratio':>8}")
    lines = []
    if a is not None:
        lines += [("(a) 10,000 inserts, append-only source (floor)", a["append"], a["append"]),
                  ("(a) 10,000 inserts, changelog source", a["insert"], a["append"]),
                  ("(a) 10,000 updates and deletes, changelog source", a["mixed"],
                   a["insert"])]
    if b is not None:
        lines += [("(b) recompute the aggregate whole (baseline)", b["recompute"],
                   b["recompute"]),
                  ("(b) retract 10,000 deletes from the aggregate by deltas", b["delta"],
                   b["recompute"])]
    for label, seconds, base in lines:
        print(f"{label:<62} {seconds:>9.3f} {seconds / base:>7.2f}x")
    print("\nratios: (a) changelog inserts / append-only inserts; mixed changes / changelog "
          "inserts;\n        (b) retraction by deltas / recomputation")


if __name__ == "__main__":
    main()
