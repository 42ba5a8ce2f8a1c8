"""Read-only SQL is read-only for real: whatever hides a write in a SELECT is refused by
the parse tree, internal bookkeeping stays unreadable, and nothing changes — also while
the engine commits underneath (ralf/storage/readonly.py)."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from ralf import QueryError, Ralf
from ralf.testing import ListSource
from tests.pipelines import COUNT, RATINGS, CountPerKey, ratings

HOSTILE = [
    "WITH x AS (DELETE FROM ralf.source_state RETURNING 1) SELECT * FROM x",
    "WITH x AS (DELETE FROM counts RETURNING 1) SELECT count(*) FROM x",
    "WITH x AS (UPDATE counts SET count = 0 RETURNING 1) SELECT * FROM x",
    "WITH x AS (INSERT INTO ratings SELECT * FROM ratings RETURNING 1) SELECT * FROM x",
    "SELECT * FROM (WITH y AS (DELETE FROM counts RETURNING 1) SELECT * FROM y) AS z",
    "SELECT nextval('ralf.rejected_id')",
    "SELECT setval('ralf.rejected_id', 1)",
    "SELECT * FROM query('DELETE FROM counts')",
    "SELECT * FROM query_table('counts')",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM ralf.operator_state",
    "SELECT * FROM ralf.source_state",
    "SELECT * FROM ralf.rejected",
    "SELECT * FROM ralf.watermarks",
    'SELECT * FROM "ralf"."Operator_State"',
    "SELECT count(*) FROM counts WHERE count IN (SELECT length(state) FROM ralf.operator_state)",
    "SELECT pg_terminate_backend(1)",
    "SELECT pg_advisory_lock(1919707494)",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT lo_import('/etc/passwd')",
    "SELECT * INTO stolen FROM counts",
    "SELECT * FROM counts FOR UPDATE",
    "SELECT 1; DELETE FROM counts",
    "DELETE FROM counts",
    "CREATE TABLE t AS SELECT 1",
    "PRAGMA enable_profiling",
]
ALLOWED = {
    "SELECT count(*) AS n FROM counts": lambda df: df["n"][0] > 0,
    "SELECT name FROM ralf.tables ORDER BY name": lambda df: "counts" in df["name"].tolist(),
    'SELECT count(*) AS n FROM ralf."counts__history"': lambda df: df["n"][0] > 0,
    "WITH c AS (SELECT * FROM counts) SELECT max(count) AS m FROM c": lambda df: df["m"][0] > 0,
    "SELECT count(*) AS n FROM information_schema.tables": lambda df: df["n"][0] > 0,
    "SELECT sum(x) AS s FROM (SELECT 1 AS x UNION ALL SELECT 2) AS u": lambda df: df["s"][0] == 3,
}


@pytest.fixture
def counted(server):
    source = server.create_source(ListSource, args=(RATINGS, ratings(300)), name="ratings")
    source.map(CountPerKey, args=(COUNT,), name="counts")
    server.run()
    return server


@pytest.mark.parametrize("query", HOSTILE)
def test_writes_hidden_in_a_select_and_internal_tables_are_refused(counted, query):
    before = counted.storage.digest()
    with pytest.raises(QueryError):
        counted.sql(query)
    assert counted.storage.digest() == before


@pytest.mark.parametrize("query", list(ALLOWED))
def test_reads_of_user_tables_histories_and_the_catalog_are_allowed(counted, query):
    assert ALLOWED[query](counted.sql(query))


def test_hostile_queries_while_the_engine_commits_lose_and_double_nothing(make_ralf):
    """The CTE that deletes ralf.source_state once made the engine's commits conflict and
    lost or doubled records; refused before it runs, it now changes nothing."""
    rows = ratings(3000, users=25)
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 50), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts")
        refused = []

        def attack() -> None:
            while not server.drained():
                for query in HOSTILE[:6]:
                    try:
                        server.sql(query)
                    except QueryError:
                        refused.append(query)

        attacker = threading.Thread(target=attack)
        server.start()
        attacker.start()
        assert server.wait_drained(timeout=120)
        attacker.join()
        server.stop()
        assert refused
        got = server.bulk_query("counts").set_index("user")["count"].to_dict()
        assert got == pd.DataFrame(rows)["user"].value_counts().to_dict()
        assert server.sql("SELECT count(*) AS n FROM ratings")["n"][0] == len(rows)


def test_postgres_client_sql_runs_as_a_role_that_reads_only_ralfs_tables(postgres_url):
    """Behind the parser, the session itself: the ralf_sql role, which holds SELECT on
    ralf's readable tables and nothing more (not a table made outside ralf)."""
    import psycopg

    from ralf.testing import drop_postgres_database, new_postgres_database

    database = new_postgres_database(postgres_url)
    try:
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute("CREATE TABLE secret (x int)")
        with Ralf(database) as server:
            server.create_source(ListSource, args=(RATINGS, ratings(5)), name="ratings")
            server.run()
            assert server.sql("SELECT current_user AS u")["u"][0] == "ralf_sql"
            assert len(server.sql("SELECT * FROM ratings")) == 5
            with pytest.raises(QueryError, match="permission denied"):
                server.sql("SELECT * FROM secret")
    finally:
        drop_postgres_database(database)
