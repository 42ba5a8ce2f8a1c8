"""Table: map, join, aliases and the policy hooks."""

import pandas as pd
import pytest

from ralf import (
    Operator,
    RalfClient,
    Record,
    Schema,
)
from ralf.testing import ListSource
from tests.pipelines import COUNT, RATINGS, SINK, CountPerKey, Identity, ratings


def test_load_shedding_drops_records_and_counts_them(server):
    class EvenMoviesOnly:
        def process(self, record):
            return record.movie % 2 == 0

    rows = ratings(400, users=6)
    source = server.create_source(ListSource, args=(RATINGS, rows), name="ratings")
    counts = source.map(CountPerKey, args=(COUNT,), name="counts")
    counts.add_load_shedding(EvenMoviesOnly())
    server.run()
    df = pd.DataFrame(rows)
    truth = df[df.movie % 2 == 0]["user"].value_counts().to_dict()
    got = RalfClient(server).bulk_query("counts").set_index("user")["count"].to_dict()
    assert got == truth
    m = server.metrics()["tables"]["counts"]
    assert m["shed"] == (df.movie % 2 == 1).sum()
    assert m["processed"] == (df.movie % 2 == 0).sum()


def test_two_argument_load_shedding_sees_the_current_row(server):
    class OnlyIncreasing:
        def process(self, record, current):
            return current is None or record.value > current.value

    rows = [{"id": 1, "value": v} for v in [3, 1, 5, 4, 9, 2]]
    source = server.create_source(ListSource, args=(SINK, rows, 2), name="src")
    source.map(Identity, args=(SINK,), name="max_so_far").add_load_shedding(OnlyIncreasing)
    server.run()
    assert RalfClient(server).point_query("max_so_far", 1).value == 9
    assert server.metrics()["tables"]["max_so_far"]["shed"] == 3


def test_prioritization_policy_written_as_in_the_tutorial_picks_the_keys(server):
    class HighestUserFirst:
        def choose(self, keys):
            return max(keys)

    rows = ratings(300, users=30)
    source = server.create_source(ListSource, args=(RATINGS, rows, 300), name="ratings")
    counts = source.map(CountPerKey, args=(COUNT,), name="counts", budget=3)
    counts.add_prioritization_policy(HighestUserFirst)
    server.step()
    users = sorted(RalfClient(server).bulk_query("counts")["user"])
    assert users == sorted({r["user"] for r in rows})[-3:]


def test_lookup_join_sees_the_current_row_of_the_other_table(server):
    movies = Schema("movie", {"movie": int, "genre": str})
    out = Schema("user", {"user": int, "last_genre": str})

    class LastGenre(Operator):
        def on_record(self, rating, movie):
            return Record(user=rating.user, last_genre=movie.genre if movie else "unknown")

    movie_rows = [{"movie": m, "genre": f"g{m % 3}"} for m in range(1, 40)]
    movie_src = server.create_source(ListSource, args=(movies, movie_rows), name="movies")
    rows = [{"user": 1, "movie": 5, "rating": 1.0}, {"user": 2, "movie": 99, "rating": 1.0}]
    source = server.create_source(ListSource, args=(RATINGS, rows), name="ratings")
    source.join(movie_src, LastGenre, args=(out,), on="movie", name="last_genre")
    server.run()
    client = RalfClient(server)
    assert client.point_query("last_genre", 1).last_genre == "g2"
    assert client.point_query("last_genre", 2).last_genre == "unknown"


def test_as_queryable_makes_an_alias(server):
    source = server.create_source(ListSource, args=(SINK, [{"id": 1, "value": 2}]), name="s")
    table = source.map(Identity, args=(SINK,), name="identity_table")
    assert table.as_queryable("ident") is table
    server.run()
    client = RalfClient(server)
    assert client.point_query("ident", 1).value == 2
    assert client.sql("SELECT value FROM ident")["value"].tolist() == [2]


def test_duplicate_table_names_are_refused(server):
    source = server.create_source(ListSource, args=(SINK, []), name="s")
    source.map(Identity, args=(SINK,), name="t")
    with pytest.raises(ValueError, match="already defined"):
        source.map(Identity, args=(SINK,), name="t")

