"""Time (docs/time.md): event time on sources, feature history valid by event time,
backfills that are point-in-time correct, lateness, and TTL.

The oracle for training data is pandas' ``merge_asof`` over the same events (through
``ralf.testing.as_of``), as Feast's point-in-time join is defined."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ralf import KeyNotFound, Ralf, RalfClient, Record, Schema
from ralf.errors import SchemaError
from ralf.testing import EventSource, ListSource, ManualClock, as_of, replay_by_event_time
from tests.pipelines import COUNT, CountPerKey

T0 = dt.datetime(1997, 9, 20)  # u.data's first day
RATED = Schema("user", {"user": int, "movie": int, "rating": float, "ts": dt.datetime},
               event_time="ts")
LAST = Schema("user", {"user": int, "count": int, "last": float})


class CountAndLast(CountPerKey):
    """How many ratings a user gave, and the last one (order matters: event time)."""

    def __init__(self, schema: Schema) -> None:
        super().__init__(schema)

    def on_record(self, record: Record) -> Record:
        counted = super().on_record(record)
        return Record(user=record.user, count=counted.count, last=record.rating)


def movielens_like(seed: int, n: int, users: int = 12, days: int = 210) -> pd.DataFrame:
    """Ratings shaped like MovieLens' u.data: users, movies, 1-5 stars and timestamps
    (whole seconds) over ~7 months, several at the same second, in no order."""
    rng = np.random.default_rng(seed)
    seconds = rng.integers(0, days * 86400, n)
    seconds[rng.random(n) < 0.2] = seconds[0]  # ties on one second, across users
    return pd.DataFrame({
        "user": rng.integers(0, users, n), "movie": rng.integers(0, 1682, n),
        "rating": rng.integers(1, 6, n).astype(float),
        "ts": [T0 + dt.timedelta(seconds=int(s)) for s in seconds]})


def running_aggregates(events: pd.DataFrame) -> pd.DataFrame:
    """Per user and event time: count, avg, min, max, stddev of the ratings up to then."""
    ordered = events.sort_values("ts", kind="stable")
    grouped = ordered.groupby("user")["rating"]
    return ordered.assign(n=grouped.cumcount() + 1,
                          average=grouped.transform(lambda s: s.expanding().mean()),
                          low=grouped.cummin(), high=grouped.cummax(),
                          sd=grouped.transform(lambda s: s.expanding().std()))


def entity_rows(seed: int, n: int, users: int = 12, days: int = 215) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 1000)
    return pd.DataFrame({
        "user": rng.integers(0, users + 1, n),  # one user who never rated
        "event_timestamp": [T0 + dt.timedelta(seconds=int(s))
                            for s in rng.integers(-86400, days * 86400, n)]})


def build(server: Ralf, events: pd.DataFrame, batch: int, **source_options):
    source = server.create_source(ListSource, args=(RATED, events, batch), name="ratings",
                                  **source_options)
    kinds = {"eager": {}, "lazy": {"lazy": True}, "budgeted": {"budget": 3}}
    for kind, options in kinds.items():
        source.map(CountAndLast, args=(LAST,), name=f"last_{kind}", **options)
        source.aggregate(by="user", name=f"agg_{kind}", n=("*", "count"),
                         average=("rating", "avg"), low=("rating", "min"),
                         high=("rating", "max"), sd=("rating", "stddev"), **options)
    return kinds


def assert_point_in_time(server: Ralf, events: pd.DataFrame, entities: pd.DataFrame,
                         kinds) -> None:
    versions = replay_by_event_time(events, CountAndLast(LAST), "ts")
    want_last = as_of(versions, entities, "user", "ts")
    want_agg = as_of(running_aggregates(events), entities, "user", "ts")
    for kind in kinds:
        got = RalfClient(server).historical_query(
            entities, [f"last_{kind}.count", f"last_{kind}.last", f"agg_{kind}.n",
                       f"agg_{kind}.average", f"agg_{kind}.low", f"agg_{kind}.high",
                       f"agg_{kind}.sd"])
        for column, want in (("count", want_last["count"]), ("last", want_last["last"]),
                             ("n", want_agg["n"]), ("average", want_agg["average"]),
                             ("low", want_agg["low"]), ("high", want_agg["high"]),
                             ("sd", want_agg["sd"])):
            np.testing.assert_allclose(got[column].to_numpy(float), want.to_numpy(float),
                                       rtol=1e-9, err_msg=f"{kind}: {column}")


@pytest.mark.parametrize("seed", [0, 1])
def test_a_backfill_sorted_by_event_time_answers_every_time_in_between(make_ralf, seed):
    """A year of history arriving in many batches (a backfill read ORDER BY time): every
    table kind answers historical_query at random times exactly as merge_asof over the
    events does, though each refresh applied many records of a key at once."""
    events = movielens_like(seed, 600).sort_values("ts", kind="stable")
    with make_ralf() as server:
        kinds = build(server, events, batch=97)
        for _ in range(3):
            server.step()
        server.run()
        assert_point_in_time(server, events, entity_rows(seed, 300), kinds)


def test_an_unsorted_backfill_applied_at_once_is_exact_too(make_ralf):
    """u.data itself is in no order: appended in one batch, each refresh applies a key's
    records in event-time order, so the history is exact."""
    events = movielens_like(7, 500)
    with make_ralf() as server:
        kinds = build(server, events, batch=len(events))
        server.run()
        assert_point_in_time(server, events, entity_rows(7, 300), kinds)


def test_reopening_in_the_middle_of_a_backfill_changes_nothing(database):
    events = movielens_like(3, 500).sort_values("ts", kind="stable")
    with Ralf(database) as server:
        build(server, events, batch=60)
        for _ in range(4):
            server.step()
    with Ralf(database) as server:
        kinds = build(server, events, batch=60)
        server.run()
        assert_point_in_time(server, events, entity_rows(3, 200), kinds)


def test_late_records_are_folded_into_the_next_version_and_never_leak(make_ralf):
    """A record that arrives after a newer record of its key was applied is applied then,
    in a version valid from the newest event time: no historical answer ever includes a
    record from after its time, and the current rows are exact."""
    events = movielens_like(5, 400)  # in no order, in small batches: many late records
    entities = entity_rows(5, 400)
    with make_ralf() as server:
        kinds = build(server, events, batch=25)
        server.run()
        for kind in kinds:
            got = server.historical_query(entities, [f"agg_{kind}.n"])
            for row, n in zip(entities.itertuples(), got["n"], strict=True):
                happened = ((events.user == row.user) & (events.ts <= row.event_timestamp)).sum()
                assert (0 if pd.isna(n) else n) <= happened  # never more than had happened
            current = server.bulk_query(f"agg_{kind}").set_index("user")["n"]
            assert current.to_dict() == events.groupby("user").size().to_dict()


def test_event_time_is_readable_in_sql_and_with_metadata(server):
    events = movielens_like(2, 50)
    build(server, events, batch=50)
    server.run()
    newest = events.groupby("user")["ts"].max()
    user = int(events.user.iloc[0])
    for table in ("last_eager", "agg_eager"):
        row = server.point_query(table, user, with_metadata=True)
        assert row._ralf_event_time == newest[user]
        by_sql = server.sql(f"SELECT user, _ralf_event_time FROM {table} ORDER BY user")
        assert by_sql.set_index("user")["_ralf_event_time"].to_dict() == newest.to_dict()
        bulk = server.bulk_query(table, with_metadata=True).set_index("user")
        assert bulk["_ralf_event_time"].to_dict() == newest.to_dict()


def test_as_of_answers_by_event_time_or_by_processing_time_on_request(make_ralf):
    clock = ManualClock(dt.datetime(2024, 1, 1))
    with make_ralf(clock=clock) as server:
        events = [{"user": 1, "movie": 1, "rating": float(i), "ts": T0 + dt.timedelta(days=i)}
                  for i in range(1, 4)]
        source = server.create_source(ListSource, args=(RATED, events, 1), name="ratings")
        source.aggregate(by="user", name="agg", n=("*", "count"))
        for _ in range(3):
            clock.advance(60)
            server.step()
        day = dt.timedelta(days=1)
        assert server.point_query("agg", 1, as_of=T0 + 2 * day).n == 2
        assert server.point_query("agg", 1, as_of=T0 + 2.5 * day).n == 2
        with pytest.raises(KeyNotFound):
            server.point_query("agg", 1, as_of=T0)  # before the first rating happened
        written = dt.datetime(2024, 1, 1, 0, 2, 30)  # ralf had written two versions then
        assert server.point_query("agg", 1, as_of=written, by="processing").n == 2
        with pytest.raises(ValueError, match="'event' or 'processing'"):
            server.point_query("agg", 1, as_of=written, by="wall")


def test_lateness_files_records_past_it_as_late_and_applies_the_others(database):
    day = dt.timedelta(days=1)
    rows = [{"user": 1, "movie": 1, "rating": 1.0, "ts": T0 + 10 * day},
            {"user": 2, "movie": 1, "rating": 2.0, "ts": T0 + 9 * day},  # 1 day late: kept
            {"user": 3, "movie": 1, "rating": 3.0, "ts": T0 + 7 * day},  # 3 days: late
            {"user": 1, "movie": 2, "rating": 4.0, "ts": T0 + 12 * day}]
    with Ralf(database) as server:
        source = server.create_source(ListSource, args=(RATED, rows[:3], 3), name="ratings",
                                      allowed_lateness="2d")
        source.aggregate(by="user", name="agg", n=("*", "count"))
        with pytest.raises(SchemaError, match="late"):
            server.run()
        assert sorted(server.bulk_query("agg")["user"]) == [1, 2]
        rejected = server.rejected("ratings")
        assert len(rejected) == 1 and "late" in rejected["reason"][0]
        assert "2024" not in rejected["reason"][0] and "1997-09-27" in rejected["reason"][0]
    late_again = rows[:3] + [{"user": 4, "movie": 1, "rating": 1.0, "ts": T0 + 7 * day},
                             rows[3]]
    with Ralf(database) as server:  # the newest event time is remembered across a reopen
        source = server.create_source(ListSource, args=(RATED, late_again, 3), name="ratings",
                                      allowed_lateness="2d")
        source.aggregate(by="user", name="agg", n=("*", "count"))
        with pytest.raises(SchemaError, match="2 days"):
            server.run()
        assert sorted(server.bulk_query("agg")["user"]) == [1, 2]
        assert len(server.rejected("ratings")) == 2


def test_a_record_without_its_event_time_is_rejected_and_the_others_kept(server):
    rows = [{"user": 1, "movie": 1, "rating": 1.0, "ts": T0},
            {"user": 2, "movie": 1, "rating": 2.0, "ts": None}]
    source = server.create_source(ListSource, args=(RATED, rows, 2), name="ratings")
    source.aggregate(by="user", name="agg", n=("*", "count"))
    with pytest.raises(SchemaError, match="event time is null"):
        server.run()
    assert server.bulk_query("agg")["user"].tolist() == [1]
    assert "event time is null" in server.rejected("ratings")["reason"][0]


def test_ttl_serves_a_row_older_than_it_as_missing_at_the_boundary_exactly(make_ralf):
    clock = ManualClock(T0)
    hour = dt.timedelta(hours=1)
    with make_ralf(clock=clock) as server:
        events = [{"user": 1, "movie": 1, "rating": 5.0, "ts": T0},
                  {"user": 2, "movie": 1, "rating": 4.0, "ts": T0 + hour}]
        source = server.create_source(EventSource, args=(RATED, events, clock),
                                      kwargs={"endless": True}, name="ratings")
        source.aggregate(by="user", name="agg", n=("*", "count"), ttl="2h")
        source.map(CountPerKey, args=(COUNT,), name="counts", ttl=dt.timedelta(hours=2))
        server.step()
        clock.advance("1h")
        server.step()
        clock.advance("1h")  # user 1 is exactly 2 h old: still served
        for table in ("agg", "counts"):
            assert server.point_query(table, 1) is not None
            assert server.bulk_query(table)["user"].tolist() == [1, 2]
        clock.advance(0.001)  # a millisecond past its TTL
        for table in ("agg", "counts"):
            with pytest.raises(KeyNotFound, match="expired"):
                server.point_query(table, 1)
            assert server.bulk_query(table)["user"].tolist() == [2]
            assert server.point_query(table, 2) is not None
        entities = pd.DataFrame({"user": [1, 1, 1, 2],
                                 "event_timestamp": [T0 + 2 * hour, T0 + 2 * hour
                                                     + dt.timedelta(microseconds=1),
                                                     T0 - hour, T0 + 3 * hour]})
        got = server.historical_query(entities, ["agg.n", "counts.count"])
        assert got["n"].tolist()[:2] == [1, None] or (got["n"][0] == 1 and pd.isna(got["n"][1]))
        assert pd.isna(got["n"][2]) and got["n"][3] == 1
        assert got["count"][0] == 1 and pd.isna(got["count"][1])
        with pytest.raises(KeyNotFound, match="expired"):
            server.point_query("agg", 1, as_of=T0 + 3 * hour)
        assert server.point_query("agg", 1, as_of=T0 + 2 * hour).n == 1


def test_ttl_of_a_table_without_event_time_counts_from_when_ralf_wrote_the_row(make_ralf):
    clock = ManualClock(dt.datetime(2024, 1, 1))
    with make_ralf(clock=clock) as server:
        plain = Schema("user", {"user": int, "movie": int, "rating": float})
        rows = [{"user": 1, "movie": 1, "rating": 5.0}]
        source = server.create_source(ListSource, args=(plain, rows), name="ratings")
        source.aggregate(by="user", name="agg", n=("*", "count"), ttl=60)
        server.run()
        clock.advance(60)
        assert server.point_query("agg", 1).n == 1
        clock.advance(1)
        with pytest.raises(KeyNotFound, match="expired"):
            server.point_query("agg", 1)


def test_definitions_ralf_cannot_keep_by_event_time_are_refused(server):
    source = server.create_source(ListSource, args=(RATED, []), name="ratings")
    with pytest.raises(SchemaError, match="one per event time"):
        source.sql("SELECT user, median(rating) AS m FROM ratings GROUP BY user", name="med")

    class Batch(CountPerKey):
        def on_batch(self, frame):
            return frame

    with pytest.raises(SchemaError, match="on_batch"):
        source.map(Batch, args=(COUNT,), name="batch")
    with pytest.raises(SchemaError, match="event_time from its schema"):
        source.map(CountPerKey, args=(Schema("user", {"user": int, "at": dt.datetime},
                                             event_time="at"),), name="timed_output")
    with pytest.raises(ValueError, match="not a duration"):
        source.aggregate(by="user", name="bad_ttl", n=("*", "count"), ttl="soon")
    assert [t["name"] for t in server.tables()] == ["ratings"]  # nothing half-defined
    plain = Schema("user", {"user": int})
    with pytest.raises(SchemaError, match="needs an event time"):
        server.create_source(ListSource, args=(plain, []), name="p", allowed_lateness="1h")


@pytest.mark.parametrize(("event_time", "match"), [
    ("when", "not one of the columns"), ("rating", "not a datetime")])
def test_an_event_time_must_name_a_datetime_column(event_time, match):
    with pytest.raises(SchemaError, match=match):
        Schema("user", {"user": int, "rating": float}, event_time=event_time)


def test_event_time_is_part_of_a_source_definition(database):
    with Ralf(database) as server:
        server.create_source(ListSource, args=(RATED, []), name="ratings")
    untimed = Schema("user", dict(RATED.columns))
    with Ralf(database) as server, pytest.raises(SchemaError, match="another definition"):
        server.create_source(ListSource, args=(untimed, []), name="ratings")
    assert Schema.from_json(RATED.to_json()) == RATED
