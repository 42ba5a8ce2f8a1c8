"""SQL-backed incremental view maintenance: how fast, against recomputing from scratch.

    python -m benchmarks.ivm            # full: 1M, 10M and 50M history rows (a few minutes)
    python -m benchmarks.ivm --quick    # 1M and 3M rows
    python -m benchmarks.ivm --vs-feast /path/to/venv-with-feast/bin/python   # and Feast

(a) refresh of an avg/count-by-user aggregate table after a 10,000-row append (the
    refresh's own time: read the delta, merge, write rows, history and watermarks, commit,
    update the serving cache), against a full ``CREATE OR REPLACE TABLE ... AS SELECT ...
    GROUP BY`` on the same database, at each history size (100,000 users); and the floor:
    DuckDB alone writing the 10,000 changed rows, their history and the commit, which
    bounds the speed-up any durable incremental refresh can reach (full / floor);
(b) end-to-end ingestion of DataFrame batches (1M rows) through that aggregate table;
(c) the tutorial's AverageRating as a per-record Python operator, and as ``on_batch``;
(d) a tick with only 100 new records;
(e) freshness: from appending 10,000 ratings (1M history) until point queries serve the
    new averages; and for the same table made lazy, until a point query (which refreshes
    its own key) serves one; with ``--vs-feast``, beside Feast's time for the same update
    measured in the same run (../shared/bench/feast_baseline.py, part f: 0.31-0.46 s here);
(f) over 1M ratings of 100,000 users and 10,000 movies: a re-keyed aggregate (per-movie
    averages from ratings keyed by user, maintained by deltas) after a 10,000-row append,
    and a maintained join (each user's mean of the per-movie averages of the movies they
    rated) after 10,000 new ratings and after 100 movies or 1 movie change, each beside its full
    recomputation and the floor (DuckDB alone writing as many changed rows, their history
    and the commit).
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

from benchmarks.feast import figure, run_baseline
from examples.tutorial import AVERAGE_SCHEMA as AVERAGE
from examples.tutorial import AverageRating
from ralf import Operator, Ralf, Schema
from ralf.testing import QueueSource

USERS = 100_000
RATINGS = Schema("user", {"user": int, "rating": float})


class BatchAverage(Operator):
    def __init__(self, schema: Schema) -> None:
        self.sums = np.zeros(USERS + 1)
        self.counts = np.zeros(USERS + 1)

    def on_batch(self, df: pd.DataFrame) -> pd.DataFrame:
        # bincount, not np.add.at (~20 ms per 100,000 records, half of this part's tick)
        users = df["user"].to_numpy()
        counts = np.bincount(users, minlength=USERS + 1)
        self.sums += np.bincount(users, weights=df["rating"].to_numpy(), minlength=USERS + 1)
        self.counts += counts
        touched = np.flatnonzero(counts)
        return pd.DataFrame({"user": touched,
                             "average": self.sums[touched] / self.counts[touched]})


def ratings(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({"user": rng.integers(1, USERS + 1, n),
                         "rating": rng.integers(1, 6, n).astype(float)})


def feed(server: Ralf, source: QueueSource, frame: pd.DataFrame) -> float:
    """Seconds for one tick that ingests ``frame`` and refreshes every table."""
    source.queue.append(frame)
    start = time.perf_counter()
    server.step()
    return time.perf_counter() - start


def refresh_only(server: Ralf, source: QueueSource, frame: pd.DataFrame) -> float:
    """Seconds the tick spent refreshing the aggregate table (its ingestion excluded)."""
    before = server.metrics()["tables"]["average"]["refresh_seconds"]
    feed(server, source, frame)
    return server.metrics()["tables"]["average"]["refresh_seconds"] - before


def recompute_seconds(server: Ralf) -> float:
    """A full recomputation into a table of the same file, committed like a refresh (a
    TEMP table, as earlier runs used, skips the write to disk: a kinder baseline)."""
    con = server.storage._con
    with server.storage._lock:
        start = time.perf_counter()
        con.execute("CREATE OR REPLACE TABLE full_recompute AS SELECT user, avg(rating) "
                    "AS average, count(*) AS n FROM ratings GROUP BY user").fetchall()
        seconds = time.perf_counter() - start
        con.execute("DROP TABLE full_recompute")
        return seconds


def write_floor_seconds(tmp: Path, rng: np.random.Generator, keys: int = USERS,
                        changed: int = 10_000) -> float:
    """DuckDB alone persisting what an aggregate refresh of ``changed`` keys must persist:
    an UPDATE of that many of ``keys`` keyed rows (the avg/count table's stored columns:
    three helpers, version and time), their history rows, the commit. No refresh that
    keeps its table and history durable in DuckDB can take less."""
    con = duckdb.connect(str(tmp / f"floor-{keys}-{changed}.duckdb"))
    con.execute("CREATE TABLE t (user BIGINT PRIMARY KEY, s DOUBLE, c BIGINT, n BIGINT, "
                "seq BIGINT, stamp TIMESTAMP)")
    con.execute("CREATE TABLE h (user BIGINT, average DOUBLE, n BIGINT, seq BIGINT, "
                "stamp TIMESTAMP)")
    con.execute(f"INSERT INTO t SELECT i, 1, 1, 1, 1, now() FROM range(1, {keys + 1}) AS r(i)")
    times = []
    for version in range(20):
        chosen = rng.choice(np.arange(1, keys + 1), size=min(changed, keys), replace=False)
        con.register("r", pd.DataFrame({"user": chosen, "average": 1.5, "s": 3.0, "c": 2,
                                        "n": version}))
        start = time.perf_counter()
        con.execute("BEGIN")
        con.execute("UPDATE t SET s = r.s, c = r.c, n = r.n, seq = ?, stamp = ? FROM r "
                    "WHERE t.user = r.user", [version, pd.Timestamp.now()])
        con.execute("INSERT INTO h SELECT user, average, n, ?, ? FROM r",
                    [version, pd.Timestamp.now()])
        con.execute("COMMIT")
        times.append(time.perf_counter() - start)
    con.close()
    return statistics.median(times)


def part_a_b(sizes: list[int], rng: np.random.Generator, tmp: Path) -> None:
    print("(a) 10,000-row append: incremental refresh vs full recomputation", flush=True)
    server = Ralf(str(tmp / "ivm.duckdb"))
    source_table = server.create_source(QueueSource, args=(RATINGS,), name="ratings")
    source = source_table._node.source
    source_table.aggregate(by="user", average=("rating", "avg"), n=("*", "count"),
                           name="average")
    rows, ingest_seconds, ingested = 0, 0.0, 0
    results = []
    for size in sizes:
        while rows < size:
            n = min(1_000_000, size - rows)
            ingest_seconds += feed(server, source, ratings(n, rng))
            ingested += n
            rows += n
            print(f"    history: {rows:,} rows ({ingested / ingest_seconds:,.0f} records/s)",
                  flush=True)
        refreshes = [refresh_only(server, source, ratings(10_000, rng)) for _ in range(12)]
        rows += 120_000
        full = statistics.median(recompute_seconds(server) for _ in range(3))
        results.append((rows, statistics.median(refreshes), statistics.fmean(refreshes), full))
    floor = write_floor_seconds(tmp, rng)
    print(f"\n{'history rows':>14}{'incremental ms':>16}{'(mean)':>8}{'full ms':>10}"
          f"{'speed-up':>10}{'full / floor':>14}")
    for rows_, incremental, mean, full in results:
        print(f"{rows_:>14,}{incremental * 1e3:>16.1f}{mean * 1e3:>8.1f}{full * 1e3:>10.1f}"
              f"{full / incremental:>9.1f}x{full / floor:>13.1f}x")
    print("  incremental: the median of 12 refreshes; the mean includes DuckDB's checkpoints")
    print(f"  floor: DuckDB alone writing 10,000 changed rows, their history and the commit: "
          f"{floor * 1e3:.1f} ms (the best speed-up any durable incremental refresh can "
          f"reach is full / floor)")
    print(f"\n(b) ingestion through the aggregate table, 1M-row DataFrame batches: "
          f"{ingested / ingest_seconds:,.0f} records/s")
    server.close()


def part_c(rng: np.random.Generator) -> None:
    print("\n(c) Python operators, 1,000,000 records in 100,000-record batches", flush=True)
    data = ratings(1_000_000, rng)
    for label, operator in (("AverageRating.on_record", AverageRating),
                            ("AverageRating.on_batch", BatchAverage)):
        with Ralf() as server:
            table = server.create_source(QueueSource, args=(RATINGS,), name="ratings")
            table.map(operator, args=(AVERAGE,), name="average")
            source = table._node.source
            seconds = sum(feed(server, source, data.iloc[i:i + 100_000])
                          for i in range(0, len(data), 100_000))
        print(f"    {label:<26}{len(data) / seconds:>12,.0f} records/s")


def part_d_e(rng: np.random.Generator, feast_python: str | None) -> None:
    with Ralf() as server:
        table = server.create_source(QueueSource, args=(RATINGS,), name="ratings")
        table.aggregate(by="user", average=("rating", "avg"), n=("*", "count"), name="average")
        source = table._node.source
        feed(server, source, ratings(1_000_000, rng))
        ticks = [feed(server, source, ratings(100, rng)) for _ in range(50)]
        print(f"\n(d) a tick with 100 new records: median {statistics.median(ticks) * 1e3:.2f} ms,"
              f" p99 {np.percentile(ticks, 99) * 1e3:.2f} ms")
        fresh = []
        for _ in range(5):
            update = ratings(10_000, rng)
            probe = int(update["user"].iloc[-1])
            before = server.point_query("average", probe).n if probe in \
                server._node("average").cache else 0
            source.queue.append(update)
            start = time.perf_counter()
            server.step()
            served = server.point_query("average", probe)
            fresh.append(time.perf_counter() - start)
            assert served.n == before + int((update["user"] == probe).sum())
        ours = statistics.median(fresh)
        print(f"(e) freshness after appending 10,000 ratings (1M history): median "
              f"{ours * 1e3:.1f} ms", flush=True)
    lazy_fresh, lazy_query = lazy_freshness(rng)
    print(f"    the same table lazy: {lazy_fresh * 1e3:.1f} ms until a point query serves a "
          f"new average (the query refreshes its key: {lazy_query * 1e3:.1f} ms; each other "
          f"stale key pays that on its first query)", flush=True)
    if feast_python:
        output = run_baseline(feast_python, "--n", "1000000", "--lookups", "200",
                              "--batch-reps", "5")
        for path, pattern in (("materialize_incremental", r"\(f-B\) ([\d.]+)s"),
                              ("write_to_online_store", r"\(f-A\) ([\d.]+)s")):
            found = figure(output, pattern)
            if found is not None:
                seconds = float(found[0])
                print(f"    Feast, {path}: {seconds * 1e3:.0f} ms ({seconds / ours:.0f}x ours)")


def lazy_freshness(rng: np.random.Generator) -> tuple[float, float]:
    """Part (e) for a lazy table: seconds from appending 10,000 ratings until a point query
    serves a key's new average, and the seconds of that query (it refreshes the key)."""
    with Ralf() as server:
        table = server.create_source(QueueSource, args=(RATINGS,), name="ratings")
        table.aggregate(by="user", average=("rating", "avg"), n=("*", "count"),
                        name="average", lazy=True)
        source = table._node.source
        feed(server, source, ratings(1_000_000, rng))
        server.bulk_query("average")  # every key fresh
        fresh, queries = [], []
        for _ in range(10):
            update = ratings(10_000, rng)
            probe = int(update["user"].iloc[-1])
            before = server.point_query("average", probe).n
            source.queue.append(update)
            start = time.perf_counter()
            server.step()
            asked = time.perf_counter()
            served = server.point_query("average", probe)
            fresh.append(time.perf_counter() - start)
            queries.append(time.perf_counter() - asked)
            assert served.n == before + int((update["user"] == probe).sum())
            server.bulk_query("average")
        return statistics.median(fresh), statistics.median(queries)


MOVIES = 10_000
RATED = Schema("user", {"user": int, "movie": int, "rating": float})
SCORES = Schema("movie", {"movie": int, "score": float})
PER_MOVIE = ("SELECT movie, avg(rating) AS average, count(*) AS n FROM ratings "
             "WHERE movie IS NOT NULL GROUP BY movie")
MOVIE_SCORE = "SELECT movie, avg(score) AS score FROM movies GROUP BY movie"
TASTE = ("SELECT r.user, avg(m.score) AS taste, count(*) AS n FROM ratings r "
         "JOIN movie_score m ON m.movie = r.movie GROUP BY r.user")


def rated(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({"user": rng.integers(1, USERS + 1, n),
                         "movie": rng.integers(1, MOVIES + 1, n),
                         "rating": rng.integers(1, 6, n).astype(float)})


def full_seconds(server: Ralf, query: str) -> float:
    """A full recomputation of ``query`` into a table of the same file, committed."""
    con = server.storage._con
    with server.storage._lock:
        start = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TABLE full_recompute AS {query}").fetchall()
        seconds = time.perf_counter() - start
        con.execute("DROP TABLE full_recompute")
        return seconds


def part_f(rng: np.random.Generator, tmp: Path) -> None:
    print("\n(f) a re-keyed aggregate and a maintained join, 1M ratings of 100,000 users "
          "and 10,000 movies", flush=True)
    server = Ralf(str(tmp / "joins.duckdb"))
    ratings_table = server.create_source(QueueSource, args=(RATED,), name="ratings")
    movies_table = server.create_source(QueueSource, args=(SCORES,), name="movies")
    ratings_source, movies_source = ratings_table._node.source, movies_table._node.source
    ratings_table.sql(PER_MOVIE, name="per_movie")
    movies_table.sql(MOVIE_SCORE, name="movie_score")
    ratings_table.sql(TASTE, name="taste")
    movies_source.queue.append(pd.DataFrame({"movie": np.arange(1, MOVIES + 1),
                                             "score": rng.random(MOVIES)}))
    server.step()
    feed(server, ratings_source, rated(1_000_000, rng))
    lines = []
    per_movie, touched = [], []  # the re-keyed aggregate's refreshes, movies they touch
    taste_left, left_keys = [], []
    for _ in range(8):
        frame = rated(10_000, rng)
        ratings_source.queue.append(frame)
        before = server.metrics()["tables"]
        server.step()
        after = server.metrics()["tables"]
        per_movie.append(after["per_movie"]["refresh_seconds"]
                         - before["per_movie"]["refresh_seconds"])
        touched.append(frame["movie"].nunique())
        taste_left.append(after["taste"]["refresh_seconds"] - before["taste"]["refresh_seconds"])
        left_keys.append(frame["user"].nunique())
    lines.append(("re-keyed aggregate, 10,000 ratings", per_movie, statistics.median(touched),
                  full_seconds(server, PER_MOVIE), MOVIES))
    lines.append(("join, 10,000 new ratings", taste_left, statistics.median(left_keys),
                  full_seconds(server, TASTE),
                  USERS))
    for movies in (100, 1):
        right, reached = [], []
        for _ in range(8):
            changed = rng.choice(np.arange(1, MOVIES + 1), movies, replace=False)
            movies_source.queue.append(pd.DataFrame({"movie": changed,
                                                     "score": rng.random(movies)}))
            before = server.metrics()["tables"]["taste"]
            server.step()
            after = server.metrics()["tables"]["taste"]
            # an eager table follows the lookup inside its refresh: all of it is counted
            right.append(after["refresh_seconds"] - before["refresh_seconds"])
            reached.append(after["refreshes"] - before["refreshes"])
        lines.append((f"join, {movies} movie{'s' * (movies > 1)} change", right,
                      statistics.median(reached), full_seconds(server, TASTE), USERS))
    print(f"\n{'':<40}{'keys':>8}{'incremental ms':>16}{'full ms':>10}{'floor ms':>10}"
          f"{'full/incr':>11}{'incr/floor':>12}")
    for label, times, keys, full, total in lines:
        floor = write_floor_seconds(tmp, rng, total, int(keys))
        incremental = statistics.median(times)
        print(f"{label:<40}{int(keys):>8,}{incremental * 1e3:>16.1f}{full * 1e3:>10.1f}"
              f"{floor * 1e3:>10.1f}{full / incremental:>10.1f}x{incremental / floor:>11.1f}x")
    print("  incremental: the median of 8; keys: the table's rows each refresh rewrites; "
          "floor: DuckDB alone writing that many rows, their history and the commit")
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1M and 3M rows only")
    parser.add_argument("--vs-feast", metavar="PYTHON", default=None,
                        help="interpreter of a virtual environment with feast installed")
    args = parser.parse_args()
    sizes = [1_000_000, 3_000_000] if args.quick else [1_000_000, 10_000_000, 50_000_000]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        part_a_b(sizes, rng, Path(tmp))
        part_f(rng, Path(tmp))
    part_c(rng)
    part_d_e(rng, args.vs_feast)


if __name__ == "__main__":
    main()
