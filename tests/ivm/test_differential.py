"""A differential oracle in the spirit of Materialize's and Feldera's sqllogictest runs:
random streams x random queries from the accepted grammar of ``sql()``, every table
compared after every tick with the database's own evaluation of its query.

* A table over the source equals its query over the whole append table, for every key
  that is not stale.
* A table over another feature table (a chained projection or aggregate) equals its query
  over that table's current rows, for every key not stale in it.
* A table that looks up another (JOIN, LEFT JOIN, EXISTS or NOT IN on the other's key, the other
  a feature table over a second source that changes in the same ticks) equals its query
  over both tables as they are.
* Eager, lazy (some stale keys point-queried each tick) and budgeted tables; on DuckDB the
  database is closed and reopened in the middle of the stream.

Queries the grammar makes that ralf refuses are fine (the refusal is the answer); a query
accepted and then kept wrongly is the failure this test looks for. Floats are compared
rounded to 6 decimals (deltas merge in another order than a one-pass aggregate). A
failing case is printed by hypothesis and belongs in ``@example`` below once fixed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ralf import Ralf, Schema, SchemaError
from ralf.testing import Changes, ListSource
from tests.fuzz import examples
from tests.pipelines import RATINGS

ARGUMENTS = ["rating", "movie", "rating * 2 + movie", "CASE WHEN rating > 2 THEN rating END",
             "coalesce(movie, 0)", "abs(rating - 3)"]
AGGREGATES = ["count({})", "sum({})", "avg({})", "min({})", "max({})", "var_pop({})",
              "var_samp({})", "stddev_samp({})", "median({})", "count(DISTINCT {})"]
WHERE = [None, "rating > 2", "movie IS NULL", "movie IN (1, 2)", "rating BETWEEN 1 AND 4",
         "rating > 2 OR movie = 3"]
HAVING = [None, "count(*) > 2", "sum(rating) > 6", "min(movie) = 1"]
# A child of the first table (named t0) with its output column c0
CHILDREN = [None, "SELECT user, c0 * 2 AS d FROM t0 WHERE c0 IS NOT NULL",
            "SELECT user, max(c0) AS m, count(*) AS n FROM t0 GROUP BY user",
            "SELECT user, c0 FROM t0"]

outputs = st.lists(st.tuples(st.sampled_from(AGGREGATES), st.sampled_from(ARGUMENTS)),
                   min_size=1, max_size=3)
# how a query may look up mstats (a feature table over the movies source, keyed by mid)
LOOKUPS = [None, "JOIN", "LEFT JOIN", "EXISTS", "NOT IN"]
MOVIES = Schema("mid", {"mid": int, "score": float})
MSTATS = "SELECT mid, count(*) AS mn, avg(score) AS ms FROM movies GROUP BY mid"
queries = st.tuples(outputs, st.sampled_from(WHERE), st.sampled_from(HAVING),
                    st.sampled_from(LOOKUPS))
modes = st.sampled_from(["eager", "lazy", "budget"])
rows = st.lists(st.fixed_dictionaries({
    "user": st.integers(1, 6),
    "movie": st.one_of(st.none(), st.integers(1, 4)),
    "rating": st.one_of(st.none(), st.integers(1, 5).map(float),
                        st.floats(-1e3, 1e3, allow_nan=False).map(
                            lambda x: x if abs(x) > 1e-100 else 0.0)),
}), min_size=2, max_size=80)
movie_rows = st.lists(st.fixed_dictionaries({
    "mid": st.integers(1, 4),
    "score": st.one_of(st.none(), st.floats(-10, 10, allow_nan=False)),
}), min_size=0, max_size=30)


def _query(spec: tuple) -> str:
    chosen, where, having, lookup = (*spec, None)[:4]
    columns = [f"{agg.format(arg)} AS c{i}" for i, (agg, arg) in enumerate(chosen)]
    source = "ratings"
    if lookup in ("JOIN", "LEFT JOIN"):
        columns += ["count(ms) AS cm", "max(ms * rating) AS cx"]
        source += f" {lookup} mstats ON mstats.mid = ratings.movie"
    elif lookup == "EXISTS":
        exists = ("EXISTS (SELECT 1 FROM movies m WHERE m.mid = ratings.movie "
                  "AND m.score > 0)")
        where = f"({where}) AND {exists}" if where else exists
    elif lookup == "NOT IN":  # NULL movies depend on whether the set is empty
        absent = "movie NOT IN (SELECT mid FROM mstats WHERE mn > 1)"
        where = f"({where}) AND {absent}" if where else absent
    return (f"SELECT user, {', '.join(columns)} FROM {source}"
            + (f" WHERE {where}" if where else "")
            + " GROUP BY user" + (f" HAVING {having}" if having else ""))


def _mismatches(server: Ralf, table: str, oracle: str, keys: list[int]) -> int:
    schema = server.table(table).schema
    cols = ", ".join(f"round({c}, 6) AS {c}" if schema.columns[c] is float else c
                     for c in schema.names)
    within = ", ".join(map(str, keys)) or "NULL"
    got = f"SELECT {cols} FROM {table} WHERE user IN ({within})"
    want = f"SELECT {cols} FROM ({oracle}) AS o WHERE user IN ({within})"
    return int(server.sql(f"SELECT count(*) AS n FROM (({got} EXCEPT ALL {want}) UNION ALL "
                          f"({want} EXCEPT ALL {got})) AS diff")["n"][0])


def _define(server: Ralf, data: list[dict], batch: int, specs: list[tuple],
            child: str | None, table_modes: list[str], movies: list[dict] = (),
            mode: str = "append", key: list[str] | None = None) -> dict[str, str]:
    """The pipeline; returns each accepted table's oracle query."""
    source = server.create_source(ListSource, args=(RATINGS, data, batch), name="ratings",
                                  mode=mode, key=key)
    server.create_source(ListSource, args=(MOVIES, list(movies), batch), name="movies").sql(
        MSTATS, name="mstats")
    oracles = {}
    for i, spec in enumerate(specs):
        query = _query(spec)
        try:
            table = source.sql(query, name=f"t{i}", **_mode(table_modes[i]))
        except SchemaError:
            continue
        oracles[f"t{i}"] = query
        if i == 0 and child is not None:
            try:
                table.sql(child, name="child", **_mode(table_modes[-1]))
            except SchemaError:
                continue
            oracles["child"] = child
    return oracles


def _mode(mode: str) -> dict:
    return {"eager": {}, "lazy": {"lazy": True}, "budget": {"budget": 2}}[mode]


def _check(server: Ralf, oracles: dict[str, str], probes: set[int]) -> None:
    ingested = server.sql("SELECT DISTINCT user FROM ratings")["user"].tolist()
    for table, oracle in oracles.items():
        if server.table(table).lazy:
            for key in set(server.stale_keys(table)) & probes:
                try:
                    server.point_query(table, key)
                except KeyError:
                    pass
        stale = set(server.stale_keys(table))
        fresh = [k for k in ingested if k not in stale]
        assert _mismatches(server, table, oracle, fresh) == 0, (table, oracle, fresh)


@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=rows, batch=st.integers(1, 10), specs=st.lists(queries, min_size=1, max_size=2),
       child=st.sampled_from(CHILDREN), table_modes=st.lists(modes, min_size=3, max_size=3),
       probes=st.sets(st.integers(1, 6)), reopen_after=st.integers(1, 6),
       movies=movie_rows)
@example(data=[{"user": 1, "movie": 1, "rating": 5.0}, {"user": 1, "movie": 2, "rating": 2.0},
               {"user": 1, "movie": 1, "rating": -9.0}, {"user": 2, "movie": None,
                                                         "rating": None}],
         batch=1, specs=[([("sum({})", "rating")], None, "sum(rating) > 6")],
         child=CHILDREN[1], table_modes=["eager"] * 3, probes=set(), reopen_after=2,
         movies=[])
@example(data=[{"user": u, "movie": u % 3 + 1, "rating": 1.0} for u in range(1, 7)] * 2,
         batch=2, specs=[([("sum({})", "rating")], None, None, "LEFT JOIN"),
                         ([("count({})", "movie")], "rating > 2", None, "EXISTS")],
         child=None, table_modes=["lazy", "budget", "eager"], probes={1, 2},
         reopen_after=3, movies=[{"mid": m % 4 + 1, "score": m - 3.0} for m in range(12)])
def test_random_queries_equal_the_database_after_every_tick(data, batch, specs, child,
                                                           table_modes, probes, reopen_after,
                                                           movies, make_ralf, request):
    _run_against_oracles(lambda server: _define(server, data, batch, specs, child,
                                                table_modes, movies),
                         probes, reopen_after, make_ralf, request)


def _run_against_oracles(define, probes: set[int], reopen_after: int, make_ralf, request
                         ) -> None:
    """Tick the pipeline ``define(server)`` builds (returning its oracles) to the end,
    checking every table after every tick; on DuckDB, close and reopen after
    ``reopen_after`` ticks; at the end, every key of every table (lazy ones caught up)."""
    on_duckdb = request.node.callspec.params["make_ralf"] == "duckdb"
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "features.duckdb")
        server = Ralf(path) if on_duckdb else make_ralf()
        try:
            oracles = define(server)
            ticks = 0
            while not server.drained():
                server.step()
                ticks += 1
                _check(server, oracles, probes)
                if on_duckdb and ticks == reopen_after:  # a restart in the middle
                    server.close()
                    server = Ralf(path)
                    assert define(server) == oracles
                    _check(server, oracles, probes)
            for table, oracle in oracles.items():
                server.bulk_query(table)  # lazy tables catch up in full
                everyone = server.sql("SELECT DISTINCT user FROM ratings")["user"].tolist()
                assert _mismatches(server, table, oracle, everyone) == 0, (table, oracle)
        finally:
            server.close()


# ---- over a changelog: random inserts, updates and deletes (docs/changelog.md) -----------
changes = st.lists(st.tuples(st.sampled_from(["insert", "insert", "update", "delete"]),
                             st.integers(0, 50), rows.map(lambda r: r[0])),
                   min_size=2, max_size=60)
changelog_modes = st.sampled_from([("changelog", None), ("upsert", ["user", "movie"]),
                                   ("changelog", ["user", "movie"])])


def _changelog(intents: list, mode: str, key: list[str] | None) -> Changes:
    written = Changes(mode, key)
    for kind, position, row in intents:
        if kind == "insert":
            written.insert(row)
        elif kind == "update":
            written.update(position, rating=row["rating"],
                           **({} if key else {"user": row["user"]}))
        else:
            written.delete(position)
    return written


def _over_current(query: str) -> str:
    """An oracle over the changelog source's current state instead of its log."""
    return (f'WITH ratings AS (SELECT "user", movie, rating FROM ralf."ratings__current") '
            f"{query}")


@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(intents=changes, changelog=changelog_modes, batch=st.integers(1, 10),
       specs=st.lists(queries, min_size=1, max_size=2), child=st.sampled_from(CHILDREN),
       table_modes=st.lists(modes, min_size=3, max_size=3), probes=st.sets(st.integers(1, 6)),
       reopen_after=st.integers(1, 6), movies=movie_rows)
@example(intents=[("insert", 0, {"user": 1, "movie": 1, "rating": 5.0}),
                  ("insert", 0, {"user": 1, "movie": 2, "rating": 2.0}),
                  ("update", 0, {"user": 2, "movie": 1, "rating": -9.0}),
                  ("delete", 0, {"user": 1, "movie": 1, "rating": 1.0})],
         changelog=("changelog", None), batch=1,
         specs=[([("min({})", "rating"), ("var_samp({})", "rating")], None, None)],
         child=CHILDREN[2], table_modes=["eager", "lazy", "budget"], probes={1, 2},
         reopen_after=2, movies=[])
def test_random_queries_over_a_changelog_equal_the_database_after_every_tick(
        intents, changelog, batch, specs, child, table_modes, probes, reopen_after, movies,
        make_ralf, request):
    mode, key = changelog
    data = _changelog(intents, mode, key).records

    def define(server: Ralf) -> dict[str, str]:
        oracles = _define(server, data, batch, specs, child, table_modes, movies,
                          mode=mode, key=key)
        return {t: q if t == "child" else _over_current(q) for t, q in oracles.items()}

    _run_against_oracles(define, probes, reopen_after, make_ralf, request)
