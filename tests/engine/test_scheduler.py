"""Scheduler: lazy refresh on query, chains, budgets."""

import pandas as pd
import pytest

from ralf import (
    Operator,
    RalfClient,
    Record,
)
from ralf.testing import ListSource, recompute
from tests.pipelines import (
    AVERAGE,
    COUNT,
    RATINGS,
    AverageRating,
    CountPerKey,
    ratings,
)


def test_lazy_tables_refresh_on_query_and_stay_untouched_otherwise(server):
    source = server.create_source(ListSource, args=(RATINGS, ratings(200, users=10)),
                                  name="ratings")
    source.map(AverageRating, args=(AVERAGE,), name="lazy_avg", lazy=True)
    server.run()
    client = RalfClient(server)
    assert client.sql("SELECT count(*) AS n FROM lazy_avg")["n"][0] == 0
    assert server.metrics()["tables"]["lazy_avg"]["stale_keys"] == 10
    record = client.point_query("lazy_avg", 4, with_metadata=True)
    assert record._ralf_pending == 0 and record._ralf_stale is False
    truth = client.sql("SELECT avg(rating) AS a, count(*) AS n FROM ratings WHERE user = 4")
    assert record.average == pytest.approx(truth["a"][0]) and record.n == truth["n"][0]
    assert client.sql("SELECT count(*) AS n FROM lazy_avg")["n"][0] == 1
    assert server.metrics()["tables"]["lazy_avg"]["stale_keys"] == 9
    df = client.bulk_query("lazy_avg")
    assert len(df) == 10
    assert server.metrics()["tables"]["lazy_avg"]["stale_keys"] == 0


class Doubled(Operator):
    def on_record(self, record):
        return Record(user=record.user, average=record.average * 2, n=record.n)


@pytest.mark.parametrize("middle_lazy, end_lazy", [(False, False), (True, False), (True, True),
                                                   (False, True)])
def test_chains_of_feature_tables(server, middle_lazy, end_lazy):
    source = server.create_source(ListSource, args=(RATINGS, ratings(300, users=8), 30),
                                  name="ratings")
    average = source.map(AverageRating, args=(AVERAGE,), name="average", lazy=middle_lazy)
    average.map(Doubled, args=(AVERAGE,), name="doubled", lazy=end_lazy)
    server.run()
    client = RalfClient(server)
    expected = recompute(server, "ratings", AverageRating(AVERAGE), "user")
    for user in expected["user"]:
        got = client.point_query("doubled", user)
        row = expected[expected["user"] == user].iloc[0]
        assert got.average == pytest.approx(2 * row["average"])
        assert got.n == row["n"]


def test_budget_limits_refreshes_per_tick_and_drains_eventually(server):
    rows = ratings(500, users=40)
    source = server.create_source(ListSource, args=(RATINGS, rows, 500), name="ratings")
    counts = source.map(CountPerKey, args=(COUNT,), name="counts", budget=5)
    server.step()
    assert server.metrics()["tables"]["counts"]["refreshes"] == 5
    assert server.metrics()["tables"]["counts"]["stale_keys"] == 35
    server.run()
    got = RalfClient(server).bulk_query(counts.name).set_index("user")["count"].to_dict()
    assert got == pd.DataFrame(rows)["user"].value_counts().to_dict()

