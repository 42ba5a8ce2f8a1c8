"""The storage skeleton's write path (ralf/storage/base.py), on both backends: refreshes
that rewrite some keys and add others leave the table, its history and the serving cache
agreeing, one row per key, for every column type (lists and text included)."""

from __future__ import annotations

import pandas as pd

from ralf import Operator, Record, Schema
from ralf.storage.duckdb import UPDATE_BY_COLUMN
from ralf.testing import ListSource
from tests.pipelines import RATINGS

PROFILE = Schema("user", {"user": int, "seen": list[int], "last": str, "mean": float})


class Profile(Operator):
    def __init__(self, schema: Schema) -> None:
        self.seen: dict[int, list[int]] = {}

    def on_record(self, record: Record) -> Record:
        seen = self.seen.setdefault(record.user, [])
        seen.append(record.movie)
        return Record(user=record.user, seen=list(seen), last=f"movie {record.movie}",
                      mean=sum(seen) / len(seen))


def test_rewritten_and_new_keys_in_one_refresh(server):
    rows = [{"user": u, "movie": m, "rating": 1.0}
            for u, m in [(1, 10), (2, 20), (1, 11), (3, 30), (2, 21), (1, 12)]]
    source = server.create_source(ListSource, args=(RATINGS, rows, 2), name="ratings")
    source.map(Profile, args=(PROFILE,), name="profile")
    server.step()  # users 1 and 2 appear
    server.step()  # user 1 rewritten, user 3 new
    assert server.point_query("profile", 1).seen == [10, 11]
    server.run()
    expected = {1: [10, 11, 12], 2: [20, 21], 3: [30]}
    table = server.bulk_query("profile").set_index("user")
    assert {u: list(v) for u, v in table["seen"].items()} == expected
    assert table.loc[1, "last"] == "movie 12" and table.loc[1, "mean"] == 11.0
    for user, seen in expected.items():
        row = server.point_query("profile", user)
        assert (row.seen, row.last) == (seen, f"movie {seen[-1]}")
    versions = server.sql('SELECT count(*) AS n FROM ralf."profile__history"')["n"][0]
    assert versions == len(rows)  # one version per record: each refresh wrote its keys


def test_a_refresh_wider_than_the_per_column_threshold_rewrites_every_column(server):
    """Over UPDATE_BY_COLUMN keys, DuckDB upserts column by column; both paths must give
    the from-scratch aggregate."""
    n = UPDATE_BY_COLUMN + 5000
    batches = [pd.DataFrame({"user": range(n), "movie": range(n), "rating": float(i + 1)})
               for i in range(3)] + [pd.DataFrame({"user": [0, 1], "movie": [0, 0],
                                                   "rating": [9.0, 9.0]})]
    source = server.create_source(ListSource, args=(RATINGS, pd.concat(batches), n),
                                  name="ratings")
    source.aggregate(by="user", mean=("rating", "avg"), n=("*", "count"),
                     top=("rating", "max"), name="stats")
    for _ in range(len(batches)):
        server.step()  # each batch refreshes every key it touched: 35,000, then 2
    got = server.sql("SELECT user, mean, n, top FROM stats ORDER BY user")
    want = server.sql("SELECT user, avg(rating) AS mean, count(*) AS n, max(rating) AS top "
                      "FROM ratings GROUP BY user ORDER BY user")
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert server.point_query("stats", 0).top == 9.0 and server.point_query("stats", 7).n == 3
