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
from ralf.testing import Changes, as_of, recompute, replay_by_event_time
from tests.pipelines import AVERAGE, COUNT, AverageRating, AverageWithRetraction, CountPerKey

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


# A changelog source (docs/changelog.md): inserts, updates and deletes of (user, id) rows,
# and a key forgotten once the source has emitted FORGET_AT of them (a batch boundary)
CHANGES = Schema("user", {"user": int, "id": int, "rating": float})
FORGOTTEN, FORGET_AT = 5, 150


def _changelog(n: int) -> Changes:
    """``n // 5`` changes of a changelog keyed by (user, id): inserts, and updates and
    deletes of earlier rows, deterministic. After FORGET_AT changes (a batch boundary) the
    FORGOTTEN key's rows are gone (the pipeline forgets it there) and it gets no more."""
    written = Changes("changelog", ["user", "id"])
    for i in range(n // 5):
        if i == FORGET_AT:
            written.live = [r for r in written.live if r["user"] != FORGOTTEN]
        if i % 5 == 3:
            written.update(i * 31, rating=float(i % 4 + 1))
        elif i % 5 == 4:
            written.delete(i * 17)
        else:
            user = (i * 7919) % 11
            if i >= FORGET_AT and user == FORGOTTEN:
                user += 1
            written.insert({"user": user, "id": i, "rating": float(i % 5 + 1)})
    return written


def changes(n: int) -> list[dict]:
    """The changelog's records (:func:`_changelog`)."""
    return _changelog(n).records


def current_changes(n: int) -> pd.DataFrame:
    """The changelog's current rows once FORGOTTEN is forgotten after FORGET_AT changes."""
    return pd.DataFrame(_changelog(n).live, columns=CHANGES.names)


class GeneratorSource(SourceOperator):
    """No checkpoint(): ralf resumes it by replaying and skipping what was ingested."""

    def __init__(self, schema: Schema, n: int) -> None:
        rows = (timed_events(n) if schema.event_time else
                changes(n) if schema is CHANGES else events(n))
        self.rows = iter(rows)

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
        changelog = server.create_source(GeneratorSource, args=(CHANGES, n), name="changes",
                                         mode="changelog", key=["user", "id"])
        changelog.map(AverageRating, args=(AVERAGE,), name="changes_rebuilt")
        changelog.map(AverageWithRetraction, args=(AVERAGE,), name="changes_average")
        changelog.aggregate(by="user", n=("*", "count"), mean=("rating", "avg"),
                            top=("rating", "max"), name="changes_agg", lazy=True)
        changelog.sql("SELECT user, median(rating) AS med FROM changes GROUP BY user",
                      name="changes_median")
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
    assert_changelog(server, client, n)


def assert_changelog(server: Ralf, client: RalfClient, n: int) -> None:
    """The changelog's tables equal their recomputation over its current rows; the
    forgotten key is gone from its records, rows and histories, and forgotten once."""
    live = current_changes(n)
    current = server.sql('SELECT "user", id, rating FROM ralf."changes__current"')
    assert sorted(map(tuple, current.values.tolist())) == sorted(
        map(tuple, live.values.tolist()))
    grouped = live.groupby("user")["rating"]
    for table in ("changes_rebuilt", "changes_average"):
        got = client.bulk_query(table).set_index("user")
        assert got["n"].to_dict() == grouped.count().to_dict(), table
        assert (abs(got["average"] - grouped.mean()) < 1e-9).all(), table
    agg = client.bulk_query("changes_agg").set_index("user")
    assert agg["n"].to_dict() == grouped.count().to_dict()
    assert (abs(agg["mean"] - grouped.mean()) < 1e-9).all()
    assert agg["top"].to_dict() == grouped.max().to_dict()
    medians = client.bulk_query("changes_median").set_index("user")["med"]
    assert (abs(medians - grouped.median()) < 1e-9).all()
    assert len(server.forgotten()) == 1 and server.forgotten()["done_at"].notna().all()
    for table in ("changes", "ralf.changes_rebuilt__history", "ralf.changes_agg__history"):
        name = table if "." not in table else 'ralf."' + table.split(".")[1] + '"'
        assert server.sql(f'SELECT count(*) AS n FROM {name} WHERE "user" = '
                          f'{FORGOTTEN}')["n"][0] == 0, table


def forget_when_due(server: Ralf) -> None:
    """Forget FORGOTTEN once the changelog has emitted FORGET_AT changes, once (a crash
    in the middle is finished by the restart, which then finds it done)."""
    if server.pipeline.node("changes").emitted >= FORGET_AT and server.forgotten().empty:
        server.forget("changes", FORGOTTEN)


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
            forget_when_due(server)
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
