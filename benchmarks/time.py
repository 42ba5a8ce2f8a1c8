"""Event time: what a history kept by event time costs, and how fast it answers.

    python -m benchmarks.time            # a 10M-event backfill, 1M entity rows
    python -m benchmarks.time --quick    # 1M events, 100,000 entity rows
    python -m benchmarks.time --vs-feast /path/to/venv-with-feast/bin/python   # and Feast

(a) a backfill of N MovieLens-shaped events (100,000 users, whole-second timestamps over
    seven months, sorted by time) appended in 100,000-row batches through an
    avg/count/stddev aggregate, with event time (a history version per key and distinct
    event time) against the same events without it (a version per key and refresh), on
    a DuckDB file; wall time, history rows and the ratio;
(b) the same for a per-record Python operator (the tutorial's AverageRating), on a tenth
    of the events;
(c) ``historical_query`` of M entity rows (random users and times) over the timed
    aggregate's history, against its floor: DuckDB's own ASOF join of the same entity rows
    with the same history (no deduplication, no ordering, no conversion), and against
    pandas ``merge_asof`` over the history read into memory, and (``--vs-feast``) Feast's
    ``get_historical_features`` over the same versions and entity rows
    (benchmarks/feast_historical.py, file offline store);
(d) ingestion of the (a) events through a windowed aggregate (count over 1 hour, average
    over 7 days) against the same outputs without windows;
(e) time-driven expiry: K keys (1,000,000; 100,000 with --quick), one record each, whose
    1-hour window empties as the clock passes: the tick that refreshes all K keys, against
    its floor — DuckDB alone updating K rows and logging K history versions in one
    transaction.

Every figure is printed beside the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from examples.tutorial import AVERAGE_SCHEMA as AVERAGE
from examples.tutorial import AverageRating
from ralf import Ralf, Schema
from ralf.testing import ListSource, ManualClock

USERS = 100_000
T0 = dt.datetime(1997, 9, 20)
BATCH = 100_000


def events(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 210 * 86400, n))
    return pd.DataFrame({"user": rng.integers(0, USERS, n),
                         "rating": rng.integers(1, 6, n).astype(float),
                         "ts": pd.to_datetime(T0) + pd.to_timedelta(seconds, unit="s")})


def backfill(data: pd.DataFrame, timed: bool, python: bool, directory: Path) -> tuple[float, int]:
    """Seconds to apply the whole backfill, and the history rows it left."""
    columns = {"user": int, "rating": float, "ts": dt.datetime}
    schema = Schema("user", columns, event_time="ts" if timed else None)
    path = directory / f"{'timed' if timed else 'plain'}_{'py' if python else 'sql'}.duckdb"
    with Ralf(str(path)) as server:
        source = server.create_source(ListSource, args=(schema, data, BATCH), name="ratings")
        if python:
            source.map(AverageRating, args=(AVERAGE,), name="features")
        else:
            source.aggregate(by="user", name="features", average=("rating", "avg"),
                             n=("*", "count"), sd=("rating", "stddev"))
        start = time.perf_counter()
        done, ticks = 0, 0
        while not server.drained():
            server.step()
            ticks += 1
            done = min(len(data), ticks * BATCH)
            if ticks % 10 == 0:
                print(f"    {done:,} of {len(data):,} events", flush=True)
        seconds = time.perf_counter() - start
        history = int(server.sql('SELECT count(*) AS n FROM ralf."features__history"')["n"][0])
    return seconds, history


def historical(data: pd.DataFrame, m: int, directory: Path, feast: str | None
               ) -> dict[str, float]:
    columns = {"user": int, "rating": float, "ts": dt.datetime}
    rng = np.random.default_rng(1)
    entities = pd.DataFrame({
        "user": rng.integers(0, USERS, m),
        "event_timestamp": pd.to_datetime(T0) + pd.to_timedelta(
            rng.integers(0, 215 * 86400, m), unit="s")})
    with Ralf(str(directory / "historical.duckdb")) as server:
        source = server.create_source(ListSource, args=(
            Schema("user", columns, event_time="ts"), data, BATCH), name="ratings")
        source.aggregate(by="user", name="features", average=("rating", "avg"))
        server.run()
        start = time.perf_counter()
        got = server.historical_query(entities, ["features.average"])
        ralf = time.perf_counter() - start
        con = server.storage._con  # noqa: SLF001 - the floor runs on the same database
        con.register("entities", entities)
        start = time.perf_counter()
        con.sql('SELECT e.user, e.event_timestamp, h.average FROM entities e ASOF LEFT JOIN '
                'ralf."features__history" h ON e.user = h.user AND e.event_timestamp >= '
                'h._ralf_event_time').to_arrow_table()
        floor = time.perf_counter() - start
        start = time.perf_counter()
        versions = server.sql('SELECT user, average, _ralf_event_time FROM '
                              'ralf."features__history"')
        joined = pd.merge_asof(entities.sort_values("event_timestamp"),
                               versions.sort_values("_ralf_event_time"),
                               left_on="event_timestamp", right_on="_ralf_event_time",
                               by="user")
        pandas = time.perf_counter() - start
        assert len(got) == len(joined) == m
    figures = {"ralf": ralf, "floor": floor, "pandas": pandas}
    if feast is not None:
        versions.rename(columns={"_ralf_event_time": "event_timestamp"}).assign(
            event_timestamp=lambda f: pd.to_datetime(f["event_timestamp"], utc=True)
        ).to_parquet(directory / "versions.parquet")
        entities.to_parquet(directory / "entities.parquet")
        print(f"    Feast's get_historical_features, with {feast} ...", flush=True)
        # -P: not this folder first on the path, where benchmarks/feast.py would shadow feast
        out = subprocess.run([feast, "-P", str(Path(__file__).with_name("feast_historical.py")),
                              str(directory / "versions.parquet"),
                              str(directory / "entities.parquet")],
                             capture_output=True, text=True)
        found = re.search(r"feast historical: ([\d.]+) s", out.stdout)
        if found is None:
            print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
        else:
            figures["feast"] = float(found.group(1))
    return figures


def windowed_ingestion(data: pd.DataFrame, windowed: bool, directory: Path) -> float:
    columns = {"user": int, "rating": float, "ts": dt.datetime}
    clock = ManualClock(T0)
    kind = "windowed" if windowed else "plain"
    with Ralf(str(directory / f"ingest_{kind}.duckdb"), clock=clock) as server:
        source = server.create_source(ListSource, args=(
            Schema("user", columns, event_time="ts"), data, BATCH), name="ratings")
        outputs = ({"n_1h": ("*", "count", "1h"), "avg_7d": ("rating", "avg", "7d")}
                   if windowed else {"n": ("*", "count"), "average": ("rating", "avg")})
        source.aggregate(by="user", name="features", **outputs)
        start = time.perf_counter()
        ticks = 0
        while not server.drained():
            # the clock follows the data, as it would live: each batch is "now"
            clock.current = data["ts"].iloc[min(len(data), (ticks + 1) * BATCH) - 1]
            server.step()
            ticks += 1
        return time.perf_counter() - start


def expiry(keys: int, directory: Path) -> tuple[float, float]:
    """Seconds of the tick that refreshes ``keys`` expired windows, and of the floor."""
    columns = {"user": int, "rating": float, "ts": dt.datetime}
    clock = ManualClock(T0 + dt.timedelta(minutes=30))
    data = pd.DataFrame({"user": np.arange(keys), "rating": 1.0, "ts": T0})
    with Ralf(str(directory / "expiry.duckdb"), clock=clock) as server:
        source = server.create_source(ListSource, args=(
            Schema("user", columns, event_time="ts"), data, keys), name="ratings")
        source.aggregate(by="user", name="features", n_1h=("*", "count", "1h"),
                         avg_1h=("rating", "avg", "1h"))
        server.step()
        server.step()
        clock.advance("1h")  # every window has emptied
        start = time.perf_counter()
        server.step()
        tick = time.perf_counter() - start
        assert server.point_query("features", keys - 1).n_1h == 0
    con = duckdb.connect(str(directory / "floor.duckdb"))
    con.execute("CREATE TABLE f (user BIGINT PRIMARY KEY, n BIGINT, a DOUBLE, e TIMESTAMP, "
                "s BIGINT, u TIMESTAMP)")
    con.execute("CREATE TABLE h (user BIGINT, n BIGINT, a DOUBLE, s BIGINT, v TIMESTAMP)")
    con.execute(f"INSERT INTO f SELECT range, 1, 1.0, TIMESTAMP '2000-01-01', 1, now() "
                f"FROM range({keys})")
    changed = pa.table({"user": np.arange(keys), "n": np.zeros(keys, np.int64),
                        "a": np.full(keys, np.nan)})
    con.register("changed", changed)
    start = time.perf_counter()
    con.begin()
    con.execute("UPDATE f SET n = c.n, a = c.a, e = NULL, s = 2, u = now() FROM changed c "
                "WHERE f.user = c.user")
    con.execute("INSERT INTO h SELECT user, n, a, 2, now() FROM changed")
    con.commit()
    floor = time.perf_counter() - start
    con.close()
    return tick, floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1M events, 100,000 entity rows")
    parser.add_argument("--parts", default="abcde", help="which parts to run (default: all)")
    parser.add_argument("--vs-feast", metavar="PYTHON",
                        help="an interpreter with feast installed, to time Feast too")
    args = parser.parse_args()
    n, m = (1_000_000, 100_000) if args.quick else (10_000_000, 1_000_000)
    data = events(n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for python, part, size in ((False, "(a) aggregate", n), (True, "(b) Python map", n // 10)):
            if part[1] not in args.parts:
                continue
            subset = data.iloc[:size]
            print(f"{part}: {size:,} events ...", flush=True)
            plain, plain_rows = backfill(subset, False, python, directory)
            timed, timed_rows = backfill(subset, True, python, directory)
            rows.append((f"{part}, {size:,} events", f"{timed:.2f} s", f"{plain:.2f} s",
                         f"{timed / plain:.2f}x", f"{timed_rows:,} / {plain_rows:,}"))
        h = windowed = plain = tick = floor = None
        if "c" in args.parts:
            print(f"(c) historical_query of {m:,} entity rows ...", flush=True)
            h = historical(data, m, directory, args.vs_feast)
        if "d" in args.parts:
            print("(d) ingestion through a windowed aggregate ...", flush=True)
            windowed = windowed_ingestion(data, True, directory)
            plain = windowed_ingestion(data, False, directory)
        keys = 100_000 if args.quick else 1_000_000
        if "e" in args.parts:
            print(f"(e) expiry of {keys:,} keys ...", flush=True)
            tick, floor = expiry(keys, directory)
    print()
    print(f"{'backfill':<34} {'by event time':>14} {'without':>10} {'ratio':>7}  history rows")
    for row in rows:
        print(f"{row[0]:<34} {row[1]:>14} {row[2]:>10} {row[3]:>7}  {row[4]}")
    print()
    if h is not None:
        print(f"(c) historical_query, {m:,} rows: ralf {h['ralf']:.2f} s | floor (DuckDB "
              f"ASOF join alone) {h['floor']:.2f} s -> {h['ralf'] / h['floor']:.1f}x the floor "
              f"| pandas merge_asof {h['pandas']:.2f} s"
              + (f" | Feast get_historical_features {h['feast']:.2f} s -> ralf is "
                 f"{h['feast'] / h['ralf']:.1f}x faster" if "feast" in h else ""))
    if windowed is not None:
        print(f"(d) ingestion of {n:,} events: windowed {windowed:.2f} s | without windows "
              f"{plain:.2f} s -> {windowed / plain:.2f}x")
    if tick is not None:
        print(f"(e) a tick expiring {keys:,} keys: {tick:.2f} s | floor (DuckDB alone "
              f"writing the rows and their history) {floor:.2f} s -> {tick / floor:.1f}x "
              "the floor")


if __name__ == "__main__":
    main()
