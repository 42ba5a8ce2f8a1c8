"""Sliding windows over event time (ralf/ivm/windows.py, docs/time.md): served values
equal a from-scratch aggregate of each key's records in ``(now - W, now]`` after every
tick — as records arrive in and out of order, and as time alone moves records out of
their windows —, for eager and lazy tables, on both backends, through a reopen; and
historical values equal the same aggregate at each entity row's time."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ralf import Ralf, Schema
from ralf.errors import SchemaError
from ralf.testing import EventSource, ListSource, ManualClock
from tests.fuzz import examples

T0 = dt.datetime(2024, 3, 1)
RATED = Schema("user", {"user": int, "rating": float, "ts": dt.datetime}, event_time="ts")
HOUR = dt.timedelta(hours=1)
OUTPUTS = {"n_1h": ("*", "count", "1h"), "sum_1h": ("rating", "sum", "1h"),
           "low_1h": ("rating", "min", "1h"), "avg_6h": ("rating", "avg", "6h"),
           "high_6h": ("rating", "max", "6h"), "sd_6h": ("rating", "stddev", "6h"),
           "var_6h": ("rating", "var_pop", "6h"),
           # tumbling (the last whole hour) and hopping (6 hours, every 30 minutes)
           "n_hour": ("*", "count", "1h", "1h"), "avg_hop": ("rating", "avg", "6h", "30m")}


def stream(seed: int, n: int, users: int = 5, late: float = 0.0
           ) -> tuple[list[dict], list[dt.datetime]]:
    """Events over two days (some ratings null) and their arrival times: on time, or —
    a ``late`` share — up to 3 hours after they happened (also dated up to 30 minutes in
    the future of their arrival, a clock skew)."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 2 * 86400, n))
    events, arrivals = [], []
    for s in seconds:
        at = T0 + dt.timedelta(seconds=int(s))
        rating = None if rng.random() < 0.05 else float(rng.integers(1, 6))
        events.append({"user": int(rng.integers(0, users)), "rating": rating, "ts": at})
        shift = rng.random()
        if shift < late:
            arrivals.append(at + dt.timedelta(seconds=int(rng.integers(1, 3 * 3600))))
        elif shift < late * 1.3:
            arrivals.append(at - dt.timedelta(seconds=int(rng.integers(1, 1800))))
        else:
            arrivals.append(at)
    return events, arrivals


def expected(events: pd.DataFrame, at: dt.datetime) -> pd.DataFrame:
    """The oracle: per key that has a record by ``at``, each output over the records
    with event time in ``(at - W, at]`` (SQL's aggregates: NULLs skipped, a count 0)."""
    rows = []
    for user, group in events.groupby("user"):
        row = {"user": user}
        for name, (_, function, window, *hop) in OUTPUTS.items():
            span = pd.Timedelta(window)
            end = pd.Timestamp(at).floor(pd.Timedelta(hop[0])) if hop else at
            inside = group[(group.ts > end - span) & (group.ts <= end)]
            values = inside["rating"].dropna()
            row[name] = {"count": len(inside), "sum": values.sum() if len(values) else None,
                         "min": values.min() if len(values) else None,
                         "max": values.max() if len(values) else None,
                         "avg": values.mean() if len(values) else None,
                         "stddev": values.std() if len(values) > 1 else None,
                         "var_pop": values.var(ddof=0) if len(values) else None}[function]
        rows.append(row)
    return pd.DataFrame(rows, columns=["user", *OUTPUTS]).set_index("user")


def assert_same(got: pd.DataFrame, want: pd.DataFrame, what: str) -> None:
    assert sorted(got.index) == sorted(want.index), what
    for name in OUTPUTS:
        np.testing.assert_allclose(got.loc[want.index, name].to_numpy(float),
                                   want[name].to_numpy(float), rtol=1e-9, atol=1e-9,
                                   err_msg=f"{what}: {name}")


def build(server: Ralf, events, arrivals, clock, tile=None):
    source = server.create_source(EventSource, args=(RATED, events, clock),
                                  kwargs={"arrivals": arrivals, "endless": True},
                                  name="ratings")
    source.aggregate(by="user", name="eager", tile=tile, **OUTPUTS)
    source.aggregate(by="user", name="lazy", lazy=True, tile=tile, **OUTPUTS)


def arrived(events, arrivals, now) -> pd.DataFrame:
    return pd.DataFrame([e for e, a in zip(events, arrivals, strict=True) if a <= now])


def check(server: Ralf, events, arrivals, now, what) -> None:
    seen = arrived(events, arrivals, now)
    if seen.empty:
        return
    want = expected(seen, now)
    assert_same(server.bulk_query("eager").set_index("user"), want, f"eager {what}")
    user = int(want.index[len(want) // 2])
    lazy = pd.DataFrame([server.point_query("lazy", user).to_dict()]).set_index("user")
    assert_same(lazy, want.loc[[user]], f"lazy point {what}")
    assert_same(server.bulk_query("lazy").set_index("user"), want, f"lazy bulk {what}")


@pytest.mark.parametrize(("seed", "late", "tile"), [(0, 0.0, None), (1, 0.3, "7m"),
                                                     (2, 0.3, "1s"), (3, 0.1, "5h")])
def test_served_windows_equal_the_oracle_after_every_tick(make_ralf, seed, late, tile):
    """RALF_FUZZ_SCALE=8 runs 8 times the ticks over 8 times the events."""
    events, arrivals = stream(seed, examples(300), late=late)
    clock = ManualClock(T0)
    with make_ralf(clock=clock) as server:
        build(server, events, arrivals, clock, tile)
        rng = np.random.default_rng(seed)
        ticks = examples(24)
        for tick in range(ticks):
            clock.advance(float(rng.integers(60, 4 * 3600)) * 24 / ticks)
            server.step()
            check(server, events, arrivals, clock.now(), f"tick {tick} at {clock.now()}")


def test_time_alone_moves_records_out_of_the_window(make_ralf):
    """No record arrives; as the clock passes each record's event time + W the next tick
    changes its key's row (and only then: no refresh while nothing expires)."""
    events = [{"user": 1, "rating": 4.0, "ts": T0}, {"user": 1, "rating": 2.0, "ts": T0 + HOUR / 2},
              {"user": 2, "rating": 5.0, "ts": T0 + HOUR / 4}]
    clock = ManualClock(T0 + HOUR / 2)
    with make_ralf(clock=clock) as server:
        build(server, events, [clock.now()] * 3, clock)
        server.step()
        assert server.point_query("eager", 1).n_1h == 2
        versions = "SELECT count(*) AS n FROM ralf.\"eager__history\""
        written = server.sql(versions)["n"][0]
        clock.advance(HOUR / 4)  # T0 + 45 min: nothing has left a window
        server.step()
        assert server.sql(versions)["n"][0] == written
        clock.advance(HOUR / 4)  # T0 + 1 h: the first record is exactly 1 h old: gone
        server.step()
        assert server.point_query("eager", 1).n_1h == 1
        assert server.point_query("eager", 2).n_1h == 1
        assert server.point_query("lazy", 1).sum_1h == 2.0
        clock.advance(HOUR)
        server.step()
        assert [server.point_query("eager", u).n_1h for u in (1, 2)] == [0, 0]
        assert server.point_query("eager", 1).avg_6h == 3.0  # still in the 6 h window


def test_a_budget_refreshes_expired_keys_like_any_stale_key(make_ralf):
    """Under a budget of 2 keys per tick, every served row is exactly its window as of
    when it was refreshed; keys whose window time has changed wait as stale keys (their
    staleness counted from that change), and once the budget catches up all are exact."""
    events, arrivals = stream(11, 300, late=0.2)
    clock = ManualClock(T0)
    with make_ralf(clock=clock) as server:
        source = server.create_source(EventSource, args=(RATED, events, clock),
                                      kwargs={"arrivals": arrivals, "endless": True},
                                      name="ratings")
        source.aggregate(by="user", name="budgeted", budget=2, **OUTPUTS)
        rng = np.random.default_rng(11)
        waited = False
        for _ in range(20):
            clock.advance(float(rng.integers(600, 3 * 3600)))
            server.step()
            rows = server.bulk_query("budgeted", with_metadata=True).set_index("user")
            for user, row in rows.iterrows():
                at = row["_ralf_updated_at"]
                want = expected(arrived(events, arrivals, at), at).loc[[user]]
                assert_same(rows.loc[[user]], want, f"user {user} as of {at}")
            stale = server.staleness("budgeted")
            waited |= len(stale) > 0
        assert waited  # the budget did hold keys back
        for _ in range(5):  # no time passes: the budget catches up
            server.step()
        check_budgeted = server.bulk_query("budgeted").set_index("user")
        assert_same(check_budgeted, expected(arrived(events, arrivals, clock.now()),
                                             clock.now()), "caught up")


def test_a_reopen_in_the_middle_changes_nothing(database):
    events, arrivals = stream(5, 200, late=0.2)
    clock = ManualClock(T0)
    rng = np.random.default_rng(5)
    with Ralf(database, clock=clock) as server:
        build(server, events, arrivals, clock, "13m")
        for _ in range(15):
            clock.advance(float(rng.integers(600, 3 * 3600)))
            server.step()
    with Ralf(database, clock=clock) as server:
        build(server, events, arrivals, clock, "13m")
        check(server, events, arrivals, clock.now(), "after the reopen")
        for tick in range(20):
            clock.advance(float(rng.integers(600, 3 * 3600)))
            server.step()
            check(server, events, arrivals, clock.now(), f"tick {tick} after the reopen")


def test_historical_values_are_the_windows_at_each_rows_time(make_ralf):
    events, arrivals = stream(8, 300, late=0.2)
    clock = ManualClock(T0 + dt.timedelta(days=3))  # everything has arrived
    with make_ralf(clock=clock) as server:
        build(server, events, arrivals, clock)
        server.step()
        rng = np.random.default_rng(8)
        entities = pd.DataFrame({"user": rng.integers(0, 5, 80), "event_timestamp": [
            T0 + dt.timedelta(seconds=int(s)) for s in rng.integers(-3600, 2 * 86400, 80)]})
        got = server.historical_query(entities, [f"eager.{n}" for n in OUTPUTS])
        frame = pd.DataFrame(events)
        for i, row in enumerate(entities.itertuples()):
            want = expected(frame[frame.ts <= row.event_timestamp], row.event_timestamp)
            if row.user not in want.index:
                assert got.loc[i, "n_1h"] == 0 and pd.isna(got.loc[i, "avg_6h"])
                continue
            assert_same(got.loc[[i]].assign(user=row.user).set_index("user"),
                        want.loc[[row.user]], f"row {i}")
        one = entities.iloc[0]
        point = server.point_query("eager", int(one.user), as_of=one.event_timestamp)
        assert point.n_1h == got.loc[0, "n_1h"]


def test_windows_are_refused_where_they_cannot_be_kept_exactly(server):
    source = server.create_source(ListSource, args=(RATED, []), name="ratings")
    with pytest.raises(SchemaError, match="two aggregate"):
        source.aggregate(by="user", name="mixed", n=("*", "count"), n_1h=("*", "count", "1h"))
    with pytest.raises(SchemaError, match="not a duration"):
        source.aggregate(by="user", name="bad", n=("*", "count", "soon"))
    with pytest.raises(SchemaError, match="forgets old records"):
        source.aggregate(by="user", name="ttl", ttl="1d", n_1h=("*", "count", "1h"))
    windowed = source.aggregate(by="user", name="windowed", n_1h=("*", "count", "1h"))
    with pytest.raises(SchemaError, match="windowed aggregate"):
        windowed.sql("SELECT user, n_1h FROM windowed", name="child")
    plain = server.create_source(ListSource, args=(Schema("user", {"user": int}), []),
                                 name="plain")
    with pytest.raises(SchemaError, match="over event time"):
        plain.aggregate(by="user", name="untimed", n_1h=("*", "count", "1h"))


def test_historical_windows_at_the_events_own_times_equal_pandas_rolling(server):
    """At each record's own event time, the 1-hour count and the 6-hour mean equal
    pandas' ``rolling("1h")`` / ``rolling("6h")`` (closed right) over the user's records."""
    events, _ = stream(13, 300)
    clock_free = pd.DataFrame(events)
    source = server.create_source(ListSource, args=(RATED, events, 300), name="ratings")
    source.aggregate(by="user", name="win", n_1h=("*", "count", "1h"),
                     avg_6h=("rating", "avg", "6h"))
    server.run()
    ordered = clock_free.sort_values("ts", kind="stable").drop_duplicates(["user", "ts"],
                                                                          keep="last")
    rolled = []
    for _, group in clock_free.sort_values("ts", kind="stable").groupby("user"):
        indexed = group.set_index("ts")
        rolled.append(pd.DataFrame({
            "user": group["user"].to_numpy(), "ts": group["ts"].to_numpy(),
            "n_1h": indexed["rating"].fillna(0).rolling("1h").count().to_numpy(),
            "avg_6h": indexed["rating"].rolling("6h", min_periods=1).mean().to_numpy()}))
    want = pd.concat(rolled).drop_duplicates(["user", "ts"], keep="last")
    entities = ordered[["user", "ts"]].rename(columns={"ts": "event_timestamp"})
    got = server.historical_query(entities.reset_index(drop=True), ["win.n_1h", "win.avg_6h"])
    merged = entities.reset_index(drop=True).merge(
        want.rename(columns={"ts": "event_timestamp"}), on=["user", "event_timestamp"])
    np.testing.assert_allclose(got["n_1h"].to_numpy(float), merged["n_1h"].to_numpy(float))
    np.testing.assert_allclose(got["avg_6h"].to_numpy(float), merged["avg_6h"].to_numpy(float),
                               rtol=1e-9)


def test_reopening_with_other_tiles_is_refused_and_other_window_lengths_are_not(database):
    with Ralf(database) as server:
        source = server.create_source(ListSource, args=(RATED, []), name="ratings")
        source.aggregate(by="user", name="win", tile="1m", low=("rating", "min", "1h"))
    with Ralf(database) as server:  # a longer window: the same tiles serve it exactly
        source = server.create_source(ListSource, args=(RATED, []), name="ratings")
        source.aggregate(by="user", name="win", tile="1m", low=("rating", "min", "2h"))
    for changed in ({"tile": "2m", "low": ("rating", "min", "1h")},
                    {"tile": "1m", "low": ("rating", "max", "1h")}):
        with Ralf(database) as server, pytest.raises(SchemaError, match="another layout"):
            source = server.create_source(ListSource, args=(RATED, []), name="ratings")
            source.aggregate(by="user", name="win", **changed)
