"""Compiling aggregate() and sql() definitions: which plan, which schema, what is refused."""

from __future__ import annotations

import pytest

from ralf import Ralf, SchemaError
from ralf.ivm.aggregate import DeltaAggregate
from ralf.ivm.views import KeyRecompute
from ralf.testing import ListSource
from tests.pipelines import AVERAGE, RATINGS, AverageRating, ratings


@pytest.fixture
def source(server):
    return server.create_source(ListSource, args=(RATINGS, ratings(10)), name="ratings")


@pytest.mark.parametrize("query, plan", [
    ("SELECT user, avg(rating) AS a, count(*) AS n FROM ratings GROUP BY user", DeltaAggregate),
    ("SELECT user, sum(rating * 2 + movie) AS s FROM ratings WHERE rating > 1 GROUP BY user",
     DeltaAggregate),
    ("SELECT user, var_pop(rating) AS v, stddev(rating) AS sd, min(movie) AS m "
     "FROM ratings GROUP BY user", DeltaAggregate),
    ("SELECT user, median(rating) AS med FROM ratings GROUP BY user", KeyRecompute),
    ("SELECT user, count(DISTINCT movie) AS m FROM ratings GROUP BY user", KeyRecompute),
    ("SELECT user, sum(rating) / count(*) AS a FROM ratings GROUP BY user", KeyRecompute),
    ("SELECT user, count(*) AS n FROM ratings GROUP BY user HAVING count(*) > 1", KeyRecompute),
])
def test_plans(source, query, plan):
    table = source.sql(query, name="t")
    assert isinstance(table.plan, plan)


def test_output_schema_comes_from_the_query(source):
    table = source.sql("SELECT user, avg(rating) AS a, count(*) AS n, max(movie) AS m, "
                       "sum(movie) AS s FROM ratings GROUP BY user", name="t")
    assert table.schema.columns == {"user": int, "a": float, "n": int, "m": int, "s": int}
    agg = source.aggregate(by="user", n=("*", "count"), lo=("rating", "min"))
    assert agg.name == "ratings_by_user"
    assert agg.schema.columns == {"user": int, "n": int, "lo": float}


@pytest.mark.parametrize("query, fragment", [
    ("SELECT movie, count(*) AS n FROM ratings GROUP BY movie", "movie IS NOT NULL"),
    ("SELECT count(*) AS n FROM ratings", "without GROUP BY gives one row"),
    ("SELECT user, count(*) AS n FROM other GROUP BY user", "FROM 'ratings'"),
    ("SELECT user, count(*) FROM ratings GROUP BY user", "name every output column"),
    ("SELECT user, count(*) AS n, sum(rating) AS n FROM ratings GROUP BY user", "duplicate"),
    ("SELECT avg(rating) AS a FROM ratings GROUP BY user", "select the key column"),
    ("DELETE FROM ratings", "exactly one SELECT"),
    ("SELECT user, count(*) AS n FROM ratings GROUP BY user; SELECT 1", "exactly one SELECT"),
    ("SELEC user FROM", "cannot parse"),
])
def test_queries_ralf_cannot_maintain_are_refused_with_the_reason(source, query, fragment):
    with pytest.raises(SchemaError, match=fragment):
        source.sql(query, name="t")


def test_aggregate_arguments_are_checked(source):
    with pytest.raises(SchemaError, match="grouped by the parent's key"):
        source.aggregate(by="movie", n=("*", "count"))
    with pytest.raises(SchemaError, match="no column 'nope'"):
        source.aggregate(by="user", n=("nope", "count"))
    with pytest.raises(SchemaError, match="unsupported aggregate 'median'"):
        source.aggregate(by="user", m=("rating", "median"))
    with pytest.raises(SchemaError, match="only count"):
        source.aggregate(by="user", s=("*", "sum"))
    with pytest.raises(SchemaError, match=r"expected \(column, function\)"):
        source.aggregate(by="user", a=["rating", "avg"])
    with pytest.raises(SchemaError, match="at least one output"):
        source.aggregate(by="user")


def test_a_sql_table_on_a_feature_table_recomputes(server, source):
    average = source.map(AverageRating, args=(AVERAGE,), name="average")
    doubled = average.sql("SELECT user, max(average) * 2 AS twice FROM average GROUP BY user",
                          name="twice")
    assert isinstance(doubled.plan, KeyRecompute)
    server.run()
    for row in server.bulk_query("average").itertuples():
        assert server.point_query("twice", row.user).twice == pytest.approx(2 * row.average)


def test_reopen_keeps_sql_tables(db_path):
    rows = ratings(300, users=6)
    with Ralf(db_path) as server:
        src = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
        src.aggregate(by="user", n=("*", "count"), name="counts")
        server.step()
    with Ralf(db_path) as server:
        src = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
        src.aggregate(by="user", n=("*", "count"), name="counts")
        server.run()
        assert server.sql("SELECT sum(n) AS n FROM counts")["n"][0] == 300
