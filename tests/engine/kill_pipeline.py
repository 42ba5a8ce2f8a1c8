"""A pipeline run in a subprocess by test_durability, to be SIGKILLed and restarted.

Usage: python -m tests.engine.kill_pipeline DB_PATH N_RECORDS
Prints "tick <n>" after every step and "done" at the end.
"""

from __future__ import annotations

import datetime as dt
import sys

import numpy as np
import pandas as pd

from ralf import Ralf, RalfClient, Record, Schema, SourceOperator
from ralf.testing import as_of, recompute, replay_by_event_time
from tests.pipelines import AVERAGE, COUNT, AverageRating, CountPerKey

EVENTS = Schema("user", {"user": int, "id": int, "rating": float})
TIMED = Schema("user", {"user": int, "id": int, "rating": float, "at": dt.datetime},
               event_time="at")
T0 = dt.datetime(2024, 1, 1)


def events(n: int) -> list[dict]:
    return [{"user": (i * 7919) % 37, "id": i, "rating": float(i % 5 + 1)} for i in range(n)]


def timed_events(n: int) -> list[dict]:
    """The same events with event times in arrival order, three to a second (a backfill
    read in time order): each table's history is exact whatever the refreshes' batching."""
    return [{**e, "at": T0 + dt.timedelta(seconds=e["id"] // 3)} for e in events(n)]


class GeneratorSource(SourceOperator):
    """No checkpoint(): ralf resumes it by replaying and skipping what was ingested."""

    def __init__(self, schema: Schema, n: int) -> None:
        self.rows = iter(timed_events(n) if schema.event_time else events(n))

    def next(self) -> list[Record] | None:
        batch = [Record(**r) for _, r in zip(range(50), self.rows, strict=False)]
        return batch or None


def build(server: Ralf, n: int, sharded: bool = False) -> None:
    """The pipeline; ``sharded`` leaves out what shards refuse: the SQL table that looks up
    another, and the windowed aggregate."""
    source = server.create_source(GeneratorSource, args=(EVENTS, n), name="events")
    source.map(CountPerKey, args=(COUNT,), name="counts")
    source.map(AverageRating, args=(AVERAGE,), name="average")
    source.map(CountPerKey, args=(COUNT,), name="budgeted_counts", budget=4)
    source.map(CountPerKey, args=(COUNT,), name="lazy_counts", lazy=True)
    source.aggregate(by="user", n=("*", "count"), mean=("rating", "avg"), name="agg")
    source.sql("SELECT user, median(rating) AS med FROM events GROUP BY user", name="medians",
               budget=5)
    timed = server.create_source(GeneratorSource, args=(TIMED, n), name="timed_events")
    timed.map(CountPerKey, args=(COUNT,), name="timed_counts", budget=5)
    timed.aggregate(by="user", n=("*", "count"), mean=("rating", "avg"), name="timed_agg")
    if not sharded:
        timed.aggregate(by="user", n_1h=("*", "count", "1h"), name="timed_window", tile="10s")
        source.sql("SELECT rating, count(*) AS n FROM events WHERE rating IS NOT NULL "
                   "GROUP BY rating", name="per_rating")
        source.sql("SELECT e.user, sum(p.n) AS s FROM events e JOIN per_rating p "
                   "ON p.rating = e.rating GROUP BY e.user", name="joined", budget=6)


def assert_equals_oracle(server: Ralf, n: int) -> None:
    """Every table of the pipeline equals its from-scratch oracle over ``events(n)``, and
    the append table holds each event once, in order."""
    client = RalfClient(server)
    stored = server.sql("SELECT id FROM events ORDER BY _ralf_seq")
    assert stored["id"].tolist() == list(range(n))  # none lost, none twice, in order
    df = pd.DataFrame(events(n))
    truth = df["user"].value_counts().to_dict()
    for table in ("counts", "budgeted_counts", "lazy_counts"):
        got = client.bulk_query(table).set_index("user")["count"].to_dict()
        assert got == truth, table
    agg = client.bulk_query("agg").set_index("user")
    assert agg["n"].to_dict() == truth
    means = df.groupby("user")["rating"].mean()
    assert (abs(agg["mean"] - means) < 1e-9).all()
    medians = client.bulk_query("medians").set_index("user")["med"]
    assert (abs(medians - df.groupby("user")["rating"].median()) < 1e-9).all()
    per_rating = df["rating"].value_counts()
    joined = client.bulk_query("joined").set_index("user")["s"].to_dict()
    assert joined == df["rating"].map(per_rating).groupby(df["user"]).sum().to_dict()
    expected = recompute(server, "events", AverageRating(AVERAGE), "user")
    got = client.bulk_query("average").sort_values("user").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert_history_by_event_time(client, n)


def assert_history_by_event_time(client: RalfClient, n: int) -> None:
    """The timed tables' history answers every time as merge_asof over the events does."""
    timed = pd.DataFrame(timed_events(n))
    rng = np.random.default_rng(n)
    seconds = rng.integers(-2, n // 3 + 2, 200)
    entities = pd.DataFrame({"user": rng.integers(0, 38, 200),
                             "event_timestamp": [T0 + dt.timedelta(seconds=int(s), milliseconds=500)
                                                 for s in seconds]})
    got = client.historical_query(entities, ["timed_counts.count", "timed_agg.n",
                                             "timed_agg.mean"])
    counts = as_of(replay_by_event_time(timed, CountPerKey(COUNT), "at"), entities, "user", "at")
    ordered = timed.sort_values("at", kind="stable")
    running = ordered.assign(n=ordered.groupby("user").cumcount() + 1, mean=ordered.groupby(
        "user")["rating"].transform(lambda r: r.expanding().mean()))
    aggs = as_of(running, entities, "user", "at")
    for column, want in (("count", counts["count"]), ("n", aggs["n"]), ("mean", aggs["mean"])):
        np.testing.assert_allclose(got[column].to_numpy(float), want.to_numpy(float),
                                   rtol=1e-9, err_msg=column)
    # the windowed table's tiles hold each event once: per user and 10-second tile
    tiles = client.sql('SELECT "user", _ralf_tile AS tile, _ralf_agg0_cnt AS n FROM '
                       'ralf."timed_window__tiles"')
    epoch = (timed["at"] - dt.datetime(1970, 1, 1)) // dt.timedelta(seconds=10)
    want_tiles = timed.assign(tile=epoch).groupby(["user", "tile"]).size()
    assert tiles.set_index(["user", "tile"])["n"].sort_index().to_dict() == (
        want_tiles.sort_index().to_dict())


def main() -> None:
    path, n = sys.argv[1], int(sys.argv[2])
    with Ralf(path) as server:
        build(server, n)
        tick = 0
        while True:
            server.step()
            tick += 1
            try:
                server.point_query("lazy_counts", tick % 37)  # lazy refresh on query
            except KeyError:
                pass
            print(f"tick {tick}", flush=True)
            if server.drained():
                break
        print("done", flush=True)


if __name__ == "__main__":
    main()
