"""SQL-maintained tables against the from-scratch oracle, on random streams (hypothesis).

After every tick, every key that is not stale in an aggregate / SQL table must equal a
from-scratch GROUP BY over the append table. Lazy tables are drained by point queries of
some of their stale keys each tick, so keys the engine reported stale are compared as soon
as they are refreshed, not only at the end. The comparison is EXCEPT ALL both ways in
DuckDB, with floats rounded to 6 decimals (the documented tolerance: deltas merge in a
different order than a one-pass aggregate). Every nullable column is NULL in some rows:
a NULL in a later tick is where a wrong merge of helpers shows.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ralf import KeyNotFound, Ralf
from ralf.testing import ListSource
from tests.fuzz import examples
from tests.pipelines import RATINGS

AGG = {"n": ("*", "count"), "s": ("rating", "sum"), "a": ("rating", "avg"),
       "lo": ("rating", "min"), "hi": ("rating", "max"), "vp": ("rating", "var_pop"),
       "vs": ("rating", "var_samp"), "sp": ("rating", "stddev_pop"),
       "ss": ("rating", "stddev_samp"), "m": ("movie", "sum")}
ORACLES = {
    "agg": "SELECT user, count(*) AS n, sum(rating) AS s, avg(rating) AS a, min(rating) AS lo, "
           "max(rating) AS hi, var_pop(rating) AS vp, var_samp(rating) AS vs, "
           "stddev_pop(rating) AS sp, stddev_samp(rating) AS ss, sum(movie) AS m "
           "FROM ratings GROUP BY user",
    "delta_sql": "SELECT user, avg(rating * 2 + movie) AS a, count(*) AS n, sum(movie) AS sm, "
                 "var_samp(rating - movie) AS v FROM ratings WHERE rating > 2 GROUP BY user",
    "recompute_sql": "SELECT user, median(rating) AS med, count(DISTINCT movie) AS movies "
                     "FROM ratings GROUP BY user",
}

rows = st.lists(st.fixed_dictionaries({
    "user": st.integers(1, 8),  # the key: never NULL
    "movie": st.one_of(st.none(), st.integers(1, 6)),
    # Magnitudes under 1e-100 are flushed to 0: squaring them underflows, which PostgreSQL
    # refuses as an error (DuckDB gives 0); docs/storage.md says so.
    "rating": st.one_of(st.none(), st.integers(1, 5).map(float),
                        st.floats(-1e3, 1e3, allow_nan=False).map(
                            lambda x: x if abs(x) > 1e-100 else 0.0)),
}), min_size=2, max_size=120)

# A key's ratings: numbers in the first tick, only NULLs in the next (a helper merged
# with a NULL delta), and a key that only ever has NULL ratings (aggregates of nothing).
NULL_LATER = [{"user": 1, "movie": 1, "rating": 4.0}, {"user": 1, "movie": 2, "rating": 2.0},
              {"user": 1, "movie": None, "rating": None}, {"user": 2, "movie": None,
                                                             "rating": None}]


def _rounded(table: str, columns: list[str], types: dict) -> str:
    return ", ".join(f"round({c}, 6) AS {c}" if types[c] is float else c for c in columns)


def _mismatches(server: Ralf, table: str, oracle: str, fresh: list[int]) -> int:
    schema = server.table(table).schema
    cols = _rounded(table, schema.names, schema.columns)
    keys = ", ".join(map(str, fresh)) or "NULL"
    got = f"SELECT {cols} FROM {table} WHERE user IN ({keys})"
    want = f"SELECT {cols} FROM ({oracle}) AS o WHERE user IN ({keys})"
    query = (f"SELECT count(*) AS n FROM (({got} EXCEPT ALL {want}) "
             f"UNION ALL ({want} EXCEPT ALL {got})) AS diff")
    return int(server.sql(query)["n"][0])


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.function_scoped_fixture])
@given(data=rows, batch=st.integers(1, 12), budgets=st.lists(
    st.one_of(st.none(), st.integers(1, 4)), min_size=3, max_size=3),
    lazy=st.lists(st.booleans(), min_size=3, max_size=3), probes=st.sets(st.integers(1, 8)))
@example(data=NULL_LATER, batch=2, budgets=[None] * 3, lazy=[False] * 3, probes=set())
@example(data=NULL_LATER, batch=1, budgets=[1] * 3, lazy=[True] * 3, probes={1})
def test_sql_tables_equal_the_oracle_after_every_tick(data, batch, budgets, lazy, probes,
                                                       make_ralf):
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, data, batch), name="ratings")
        source.aggregate(by="user", name="agg", budget=budgets[0], lazy=lazy[0], **AGG)
        source.sql(ORACLES["delta_sql"], name="delta_sql", budget=budgets[1], lazy=lazy[1])
        source.sql(ORACLES["recompute_sql"], name="recompute_sql", budget=budgets[2],
                   lazy=lazy[2])
        while True:
            server.step()
            ingested = server.sql("SELECT DISTINCT user FROM ratings")["user"].tolist()
            for table, oracle in ORACLES.items():
                if server.table(table).lazy:
                    for key in set(server.stale_keys(table)) & probes:
                        try:
                            server.point_query(table, key)  # refreshes that key
                        except KeyError:
                            pass
                stale = set(server.stale_keys(table))
                fresh = [k for k in ingested if k not in stale]
                assert _mismatches(server, table, oracle, fresh) == 0, (table, fresh)
            if server.drained():
                break
        for table, oracle in ORACLES.items():
            server.bulk_query(table)  # lazy tables catch up in full
            everyone = server.sql("SELECT DISTINCT user FROM ratings")["user"].tolist()
            assert _mismatches(server, table, oracle, everyone) == 0, table


def test_keys_filtered_out_entirely_have_no_row(make_ralf):
    with make_ralf() as server:
        rows_ = [{"user": 1, "movie": 1, "rating": 1.0}, {"user": 2, "movie": 1, "rating": 5.0}]
        source = server.create_source(ListSource, args=(RATINGS, rows_), name="ratings")
        source.sql(ORACLES["delta_sql"], name="delta_sql")
        server.run()
        assert server.bulk_query("delta_sql")["user"].tolist() == [2]


def test_having_drops_keys_that_no_longer_qualify(make_ralf):
    with make_ralf() as server:
        rows_ = [{"user": 1, "movie": m, "rating": 5.0} for m in range(3)] + [
            {"user": 1, "movie": 9, "rating": 0.0}] * 10
        source = server.create_source(ListSource, args=(RATINGS, rows_, 3), name="ratings")
        source.sql("SELECT user, avg(rating) AS a FROM ratings GROUP BY user "
                   "HAVING avg(rating) > 2", name="good")
        server.step()
        assert server.point_query("good", 1).a == 5.0
        server.run()
        assert server.bulk_query("good").empty
        with pytest.raises(KeyNotFound):  # not served from the cache either
            server.point_query("good", 1)
