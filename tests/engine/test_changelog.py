"""Changelog sources (ralf.engine.changelog): upserts, tombstones, inserts / updates /
deletes resolved against the current state into signed rows; what a change that does not
apply does; and the tables derived from them — SQL tables retracting, Python operators
with on_delete / on_update or rebuilt — against recomputations over the current state, on
both backends."""

from __future__ import annotations

import datetime as dt
import random

import pandas as pd
import pytest

from ralf import Delete, Ralf, RalfClient, Record, Schema, SchemaError
from ralf.testing import Changes, ListSource, QueueSource
from tests.pipelines import AVERAGE, RATINGS, AverageRating, AverageWithRetraction

KEY = ["user", "movie"]


def _source(server: Ralf, mode: str = "changelog", key: list[str] | None = KEY):
    queue = QueueSource(RATINGS)
    return queue, server.create_source(queue, name="ratings", mode=mode, key=key)


def _drain(server: Ralf, ticks: int = 3) -> None:
    for _ in range(ticks):
        server.step()


def _current(server: Ralf) -> list[tuple]:
    rows = server.sql('SELECT "user", movie, rating FROM ralf."ratings__current"')
    return sorted(map(tuple, rows.values.tolist()))


def test_upserts_replace_the_row_of_their_key_and_tombstones_remove_it(server):
    queue, _ = _source(server, "upsert")
    queue.queue.append([{"user": 1, "movie": 1, "rating": 4.0},
                        {"user": 1, "movie": 2, "rating": 2.0},
                        {"user": 1, "movie": 1, "rating": 5.0},   # replaces (1, 1)
                        {"user": 1, "movie": 2, "op": "delete"}])  # a tombstone
    _drain(server)
    assert _current(server) == [(1, 1, 5.0)]
    log = server.sql('SELECT movie, rating, _ralf_diff AS d, _ralf_op AS op FROM ratings '
                     'ORDER BY _ralf_seq')
    # every change kept in order, as signed rows: history is never rewritten
    assert log.values.tolist() == [[1, 4.0, 1, "insert"], [2, 2.0, 1, "insert"],
                                   [1, 4.0, -1, "update"], [1, 5.0, 1, "update"],
                                   [2, 2.0, -1, "delete"]]
    assert RalfClient(server).point_query("ratings", 1).rating == 5.0  # the live row


def test_a_change_that_does_not_apply_is_rejected_with_its_reason_and_the_rest_kept(server):
    queue, _ = _source(server)
    queue.queue.append([{"user": 1, "movie": 1, "rating": 4.0}])
    _drain(server, 1)
    queue.queue.append([{"user": 2, "movie": 1, "rating": 1.0},
                        {"user": 1, "movie": 1, "rating": 3.0},            # exists
                        {"user": 9, "movie": 9, "op": "delete"},           # no such row
                        {"user": 9, "movie": 9, "rating": 1.0, "op": "update"},
                        {"user": 3, "movie": 1, "rating": 1.0, "op": "upsert!"},
                        {"user": 1, "movie": 1, "rating": 2.0, "op": "update"}])
    with pytest.raises(SchemaError, match="and 3 more"):
        server.step()
    assert _current(server) == [(1, 1, 2.0), (2, 1, 1.0)]
    reasons = server.rejected("ratings")["reason"].tolist()
    assert any("insert: a row with key (user=1, movie=1) exists already" in r for r in reasons)
    assert any("delete: no current row (user=9, movie=9)" in r for r in reasons)
    assert any("update: no current row" in r for r in reasons)
    assert any("'upsert!' is not insert, update or delete" in r for r in reasons)


def test_without_a_key_rows_are_a_multiset_and_an_update_names_its_old_row(server):
    queue, _ = _source(server, key=None)
    row = {"user": 1, "movie": 1, "rating": 4.0}
    queue.queue.append([row, row, {**row, "rating": 5.0, "op": "update", "before": row},
                        {"user": 1, "movie": 1, "rating": 2.0, "op": "update"}])
    with pytest.raises(SchemaError, match="needs the old row"):
        server.step()
    assert _current(server) == [(1, 1, 4.0), (1, 1, 5.0)]  # one copy updated
    queue.queue.append([{**row, "op": "delete"}])
    _drain(server, 1)
    assert _current(server) == [(1, 1, 5.0)]


def test_a_changelog_is_part_of_the_definition_and_survives_a_reopen(database):
    with Ralf(database) as server:
        queue, _ = _source(server)
        queue.queue.append([{"user": 1, "movie": 1, "rating": 4.0}])
        _drain(server, 1)
    with Ralf(database) as server:
        with pytest.raises(SchemaError, match="another definition"):
            server.create_source(QueueSource(RATINGS), name="ratings")  # now append-only
    with Ralf(database) as server:
        queue, source = _source(server)
        source.aggregate(by="user", n=("*", "count"))
        # a source without checkpoint() is replayed and what was ingested skipped
        queue.queue += [[{"user": 1, "movie": 1, "rating": 4.0}],
                        [{"user": 1, "movie": 1, "op": "delete"}]]
        _drain(server)
        assert _current(server) == []
        assert server.sql("SELECT count(*) AS n FROM ratings_by_user")["n"][0] == 0


@pytest.mark.parametrize("definition, match", [
    (dict(mode="changelog", key=["nope"]), "key 'nope' is not a column"),
    (dict(mode="merge"), "mode must be 'append', 'upsert' or 'changelog'"),
    (dict(mode="append", key="user"), "an append-only source has none"),
    (dict(mode="upsert", event_time="at"), "with event time is not supported yet"),
])
def test_a_changelog_it_cannot_keep_is_refused_with_the_reason(server, definition, match):
    schema = Schema("user", {"user": int, "rating": float, "at": dt.datetime})
    with pytest.raises(SchemaError, match=match):
        server.create_source(QueueSource(schema), name="s", **definition)


def test_a_column_named_like_the_change_fields_is_refused(server):
    with pytest.raises(SchemaError, match="column named 'op'"):
        server.create_source(QueueSource(Schema("user", {"user": int, "op": str})),
                             name="s", mode="upsert")


# ---- SQL tables over a changelog ------------------------------------------------------------
def test_an_aggregate_retracts_and_a_group_without_rows_disappears_with_its_children(server):
    queue, source = _source(server)
    agg = source.aggregate(by="user", n=("*", "count"), s=("rating", "sum"),
                           v=("rating", "var_samp"), lo=("rating", "min"))
    agg.sql("SELECT user, n * 10 AS tens FROM ratings_by_user", name="child")
    queue.queue.append([{"user": 1, "movie": m, "rating": float(m)} for m in range(1, 5)]
                       + [{"user": 2, "movie": 1, "rating": 7.0}])
    _drain(server)
    queue.queue.append([{"user": 1, "movie": 1, "op": "delete"},
                        {"user": 1, "movie": 3, "rating": 9.0, "op": "update"},
                        {"user": 2, "movie": 1, "op": "delete"}])
    _drain(server)
    rows = server.sql("SELECT user, n, s, v, lo FROM ratings_by_user").to_dict("records")
    assert len(rows) == 1  # user 2 lost its last row: its group is gone
    values = [2.0, 9.0, 4.0]
    assert rows[0]["n"] == 3 and rows[0]["s"] == sum(values) and rows[0]["lo"] == 2.0
    assert rows[0]["v"] == pytest.approx(pd.Series(values).var())
    assert server.sql("SELECT user, tens FROM child").values.tolist() == [[1, 30]]
    client = RalfClient(server)
    with pytest.raises(KeyError):
        client.point_query("ratings_by_user", 2)
    history = server.sql('SELECT _ralf_deleted FROM ralf."ratings_by_user__history" WHERE '
                         '"user" = 2 ORDER BY _ralf_seq')["_ralf_deleted"].tolist()
    assert history[-1] is True  # the deletion is a version: as_of and children see it


# ---- Python operators over a changelog ------------------------------------------------------
class WithRetraction(AverageWithRetraction):
    def __init__(self, schema: Schema) -> None:
        super().__init__(schema)
        self.calls: list[str] = []

    def on_delete(self, record: Record) -> Record | Delete:
        self.calls.append("delete")
        return super().on_delete(record)


class WithUpdate(WithRetraction):
    def on_update(self, old: Record, new: Record) -> Record:
        self.calls.append("update")
        s, n = self.sums[old.user]
        s += new.rating - old.rating
        self.sums[old.user] = (s, n)
        return Record(user=old.user, average=s / n, n=n)


class CountsEverything(AverageRating):
    """Its state mixes keys (a total over all of them): rebuilt whole."""

    def __init__(self, schema: Schema) -> None:
        super().__init__(schema)
        self.total = 0

    def on_record(self, record: Record) -> Record:
        self.total += 1
        return super().on_record(record)


OPERATORS = {"hooked": WithRetraction, "updates": WithUpdate, "rebuilt": AverageRating,
             "whole": CountsEverything}


def _random_changes(seed: int, n: int) -> Changes:
    rng = random.Random(seed)
    written = Changes("changelog", KEY)
    for _ in range(n):
        roll = rng.random()
        if roll < 0.55:
            written.insert({"user": rng.randint(1, 6), "movie": rng.randint(1, 8),
                            "rating": float(rng.randint(1, 5))})
        elif roll < 0.8:
            written.update(rng.randint(0, 99), rating=float(rng.randint(1, 5)))
        else:
            written.delete(rng.randint(0, 99))
    return written


@pytest.mark.parametrize("seed", [1, 2])
def test_every_kind_of_table_equals_a_recomputation_over_the_current_rows_after_every_tick(
        make_ralf, seed):
    """Random changes, and a random key forgotten in the middle, through Python tables
    (hooked, rebuilt per key, rebuilt whole; eager, lazy, budgeted) and SQL tables (by
    deltas, recomputed, chained), each compared after every tick with the current rows."""
    written = _random_changes(seed, 240)
    rng = random.Random(seed)
    forget_at, forgotten = rng.randint(3, 8), rng.randint(1, 6)
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, written.records, 17),
                                      name="ratings", mode="changelog", key=KEY)
        for name, operator in OPERATORS.items():
            source.map(operator, args=(AVERAGE,), name=name)
        source.map(AverageRating, args=(AVERAGE,), name="lazy", lazy=True)
        source.map(WithRetraction, args=(AVERAGE,), name="budgeted", budget=2)
        source.aggregate(by="user", average=("rating", "avg"), n=("rating", "count"),
                         top=("rating", "max"), name="delta")
        source.sql("SELECT user, median(rating) AS med, count(*) AS n FROM ratings "
                   "GROUP BY user", name="recomputed", budget=3).sql(
            "SELECT user, med * 2 AS twice FROM recomputed", name="chained")
        client = RalfClient(server)
        ticks = 0
        while not server.drained():
            try:
                server.step()
            except SchemaError:  # changes of the forgotten key's rows: rejected, no row
                assert ticks >= forget_at
            ticks += 1
            if ticks == forget_at:
                server.forget("ratings", forgotten)
            live = server.sql('SELECT "user", rating FROM ralf."ratings__current"')
            grouped = live.groupby("user")["rating"]
            want = grouped.agg(["mean", "count", "max", "median"])
            for name in [*OPERATORS, "lazy", "delta"]:
                got = client.bulk_query(name).set_index("user").sort_index()
                assert got.index.tolist() == want.index.tolist(), name
                assert (abs(got["average"] - want["mean"]) < 1e-9).all(), name
                assert got["n"].tolist() == want["count"].tolist(), name
            assert client.bulk_query("delta")["top"].tolist() == want["max"].tolist()
        for name, column, values in (("budgeted", "n", want["count"]),
                                     ("recomputed", "med", want["median"]),
                                     ("chained", "twice", want["median"] * 2)):
            got = client.bulk_query(name).set_index("user").sort_index()
            assert got.index.tolist() == want.index.tolist(), name
            assert (abs(got[column] - values) < 1e-9).all(), name
        hooked = server.pipeline.node("updates").operator
        assert "update" in hooked.calls and "delete" in hooked.calls
        assert len(server.forgotten()) == 1


def test_a_rebuild_drops_only_the_keys_part_of_a_keyed_state(server):
    queue, source = _source(server)
    table = source.map(AverageRating, args=(AVERAGE,), name="average")
    queue.queue.append([{"user": u, "movie": 1, "rating": float(u)} for u in (1, 2, 3)])
    _drain(server)
    queue.queue.append([{"user": 2, "movie": 1, "op": "delete"}])
    _drain(server)
    state = server.pipeline.node(table.name).operator.sums
    assert state == {1: (1.0, 1), 3: (3.0, 1)}  # key 2's entry gone, the others kept
    assert server.sql("SELECT user FROM average ORDER BY user")["user"].tolist() == [1, 3]


def test_a_deletion_is_a_version_of_the_history(server):
    queue, source = _source(server)
    source.map(AverageRating, args=(AVERAGE,), name="average")
    clock_before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    queue.queue.append([{"user": 1, "movie": 1, "rating": 4.0}])
    _drain(server)
    between = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    queue.queue.append([{"user": 1, "movie": 1, "op": "delete"}])
    _drain(server)
    client = RalfClient(server)
    assert client.point_query("average", 1, as_of=between).average == 4.0
    with pytest.raises(KeyError):
        client.point_query("average", 1)
    with pytest.raises(KeyError):
        client.point_query("average", 1, as_of=dt.datetime.now(dt.UTC).replace(
            tzinfo=None))
    entities = pd.DataFrame({"user": [1, 1, 1], "event_timestamp": [
        clock_before - dt.timedelta(seconds=1), between,
        dt.datetime.now(dt.UTC).replace(tzinfo=None)]})
    got = client.historical_query(entities, ["average.average"])
    assert got["average"].isna().tolist() == [True, False, True]


def test_a_lookup_join_sees_the_other_sides_current_row(server):
    movies = QueueSource(Schema("movie", {"movie": int, "title": str}))
    other = server.create_source(movies, name="movies", mode="upsert")
    queue, source = _source(server, "append", None)

    class Titled:
        def __init__(self, schema: Schema) -> None:
            pass

        def on_record(self, record: Record, movie: Record | None) -> Record:
            return Record(user=record.user, title=None if movie is None else movie.title)

    source.join(other, Titled, args=(Schema("user", {"user": int, "title": str}),),
                on="movie", name="titled")
    movies.queue.append([{"movie": 1, "title": "Alien"}, {"movie": 2, "title": "Brazil"}])
    server.step()
    movies.queue.append([{"movie": 1, "title": "Aliens"}, {"movie": 2, "op": "delete"}])
    server.step()
    queue.queue.append([{"user": 1, "movie": 1, "rating": 1.0},
                        {"user": 2, "movie": 2, "rating": 1.0},
                        {"user": 3, "movie": 3, "rating": 1.0}])
    _drain(server)

    def titles() -> list[str]:
        got = server.sql("SELECT user, coalesce(title, '-') AS t FROM titled ORDER BY user")
        return got["t"].tolist()

    assert titles() == ["Aliens", "-", "-"]
    # a change on the other side reaches the rows whose records name it
    movies.queue.append([{"movie": 1, "title": "Alien 3"}, {"movie": 3, "title": "Cube"}])
    _drain(server)
    assert titles() == ["Alien 3", "-", "Cube"]
    movies.queue.append([{"movie": 1, "op": "delete"}])
    _drain(server)
    assert titles() == ["-", "-", "Cube"]
    with pytest.raises(SchemaError, match="make the join eager"):
        source.join(other, Titled, args=(Schema("user", {"user": int, "title": str}),),
                    on="movie", name="lazy_titled", lazy=True)


@pytest.mark.parametrize("operator", ["batch"])
def test_operators_that_cannot_take_a_retraction_are_refused(server, operator):
    _, source = _source(server)

    class Batch:
        def __init__(self, schema: Schema) -> None:
            pass

        def on_record(self, record: Record) -> Record:
            return record

        def on_batch(self, frame: pd.DataFrame) -> pd.DataFrame:
            return frame

    with pytest.raises(SchemaError, match="on_batch and the Ray executor"):
        source.map(Batch, args=(RATINGS,), name="copy")
