"""Feature history: point_query(as_of=...), historical_query (point in time), retention."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from ralf import KeyNotFound, Ralf, RalfClient
from ralf.testing import ListSource, ManualClock
from tests.pipelines import COUNT, RATINGS, CountPerKey

T0 = dt.datetime(2024, 1, 1)


def _counting(server: Ralf, rows: list[dict], batch: int = 1, **kw):
    source = server.create_source(ListSource, args=(RATINGS, rows, batch), name="ratings")
    return source.map(CountPerKey, args=(COUNT,), name="counts", **kw)


def _one_update_per_second(make_ralf, n: int, **kw) -> tuple[Ralf, ManualClock]:
    """User 1 gets count=i at T0 + i seconds (i = 1..n)."""
    clock = ManualClock(T0)
    server = make_ralf(clock=clock, **kw)
    _counting(server, [{"user": 1, "movie": 1, "rating": 1.0}] * n)
    for _ in range(n):
        clock.advance(1)
        server.step()
    return server, clock


def test_as_of_at_before_and_between_updates(make_ralf):
    server, _ = _one_update_per_second(make_ralf, 5)
    with server:
        client = RalfClient(server)
        assert client.point_query("counts", 1).count == 5
        assert client.point_query("counts", 1, as_of=T0 + dt.timedelta(seconds=3)).count == 3
        between = T0 + dt.timedelta(seconds=3, milliseconds=500)
        assert client.point_query("counts", 1, as_of=between).count == 3
        assert client.point_query("counts", 1, as_of=T0 + dt.timedelta(days=1)).count == 5
        with pytest.raises(KeyNotFound, match="as of"):
            client.point_query("counts", 1, as_of=T0 + dt.timedelta(milliseconds=999))
        aware = dt.datetime(2024, 1, 1, 2, 0, 2, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        assert client.point_query("counts", 1, as_of=aware).count == 2  # 00:00:02 UTC


def test_historical_query_is_point_in_time_correct(make_ralf):
    server, _ = _one_update_per_second(make_ralf, 6)
    with server:
        server.create_source(ListSource, args=(RATINGS, []), name="other")
        entities = pd.DataFrame({
            "user": [1, 1, 1, 1, 2],
            "event_timestamp": [T0 + dt.timedelta(seconds=s) for s in (0.5, 2, 4.9, 60, 3)],
        })
        out = RalfClient(server).historical_query(entities, features=["counts.count"])
        assert out["user"].tolist() == [1, 1, 1, 1, 2]
        assert out["count"].tolist()[1:4] == [2, 4, 6]
        assert pd.isna(out["count"][0]) and pd.isna(out["count"][4])
        # never a value from after the row's timestamp
        history = server.sql("SELECT count, _ralf_valid_from FROM ralf.counts__history")
        for row, got in zip(entities.itertuples(), out["count"], strict=True):
            allowed = history[history._ralf_valid_from <= row.event_timestamp]["count"]
            assert pd.isna(got) or got in set(allowed)


def test_historical_query_checks_its_arguments(make_ralf):
    server, _ = _one_update_per_second(make_ralf, 1)
    with server:
        client = RalfClient(server)
        entities = pd.DataFrame({"user": [1], "event_timestamp": [T0]})
        with pytest.raises(Exception, match="'counts.nope'"):
            client.historical_query(entities, ["counts.nope"])
        with pytest.raises(Exception, match="no column 'ts'"):
            client.historical_query(entities, ["counts.count"], timestamp_column="ts")
        with pytest.raises(Exception, match="key column 'user'"):
            client.historical_query(entities.rename(columns={"user": "u"}), ["counts.count"])


def test_retention_drops_old_versions_but_keeps_what_queries_can_see(make_ralf):
    server, clock = _one_update_per_second(make_ralf, 10, history_retention=3.0)
    with server:
        clock.advance(100)
        server.step()  # compaction runs on the tick
        versions = server.sql("SELECT count FROM ralf.counts__history ORDER BY _ralf_seq")
        assert versions["count"].tolist() == [10]  # the newest version survives
        assert server.point_query("counts", 1).count == 10
        assert server.point_query("counts", 1, as_of=clock.now()).count == 10


def test_retention_keeps_every_version_inside_the_window(make_ralf):
    """Versions newer than now - retention stay, and the newest one before that (an
    as_of at the window's edge still answers); only older ones go."""
    server, clock = _one_update_per_second(make_ralf, 10, history_retention=60.0)
    with server:
        clock.advance(55)  # now T0+65: the window starts at T0+5
        server.step()
        versions = server.sql("SELECT count FROM ralf.counts__history ORDER BY _ralf_seq")
        assert versions["count"].tolist() == [4, 5, 6, 7, 8, 9, 10]
        edge = T0 + dt.timedelta(seconds=5, milliseconds=500)
        assert server.point_query("counts", 1, as_of=edge).count == 5


def test_as_of_and_historical_over_http(make_ralf):
    server, _ = _one_update_per_second(make_ralf, 4)
    with server:
        url = server.serve(port=0)
        remote, local = RalfClient(url), RalfClient(server)
        at = T0 + dt.timedelta(seconds=2, milliseconds=100)
        assert remote.point_query("counts", 1, as_of=at) == local.point_query("counts", 1,
                                                                              as_of=at)
        entities = pd.DataFrame({"user": [1, 1], "event_timestamp": [at, T0]})
        pd.testing.assert_frame_equal(remote.historical_query(entities, ["counts.count"]),
                                      local.historical_query(entities, ["counts.count"]))


def test_history_lists_a_keys_versions_newest_first(make_ralf):
    server, _ = _one_update_per_second(make_ralf, 5)
    with server:
        versions = server.history("counts", 1)
        assert versions["count"].tolist() == [5, 4, 3, 2, 1]
        assert versions["_ralf_updated_at"].tolist() == [
            T0 + dt.timedelta(seconds=s) for s in (5, 4, 3, 2, 1)]
        assert versions["_ralf_seq"].is_monotonic_decreasing
        assert versions["_ralf_deleted"].isna().all()
        assert server.history("counts", 1, limit=2)["count"].tolist() == [5, 4]
        assert server.history("counts", "1")["count"].tolist() == [5, 4, 3, 2, 1]  # as text
        assert server.history("counts", 2).empty
        records = server.history("ratings", 1)  # a source: its appended records
        assert len(records) == 5 and "_ralf_deleted" not in records
        with pytest.raises(ValueError, match="limit"):
            server.history("counts", 1, limit=-1)
