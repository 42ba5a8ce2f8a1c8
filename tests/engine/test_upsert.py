"""Refreshes that rewrite some keys and add others: the table, its history and the serving
cache agree, one row per key, for every column type (lists and text included)."""

from __future__ import annotations

from ralf import Operator, Record, Schema
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
