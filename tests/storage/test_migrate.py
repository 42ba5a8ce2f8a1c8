"""Migrations: versioned files applied in order, once; old files upgrade on open."""

import duckdb

from ralf import Ralf, RalfClient
from ralf.storage import migrate
from ralf.storage.duckdb import STORAGE_VERSION, DuckDBStorage
from ralf.testing import ListSource
from tests.pipelines import COUNT, RATINGS, CountPerKey, ratings


def test_migrations_are_numbered_without_gaps():
    found = migrate.available()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert len(found) >= 2


def test_a_new_database_is_at_the_latest_version(tmp_path):
    storage = DuckDBStorage(str(tmp_path / "new.duckdb"))
    assert storage.schema_version() == len(migrate.available())
    assert storage.migrate() == []  # nothing left to apply
    storage.close()


def test_a_database_created_at_the_first_migration_opens_with_todays_code(tmp_path):
    path = str(tmp_path / "old.duckdb")
    first = migrate.available()[0]
    con = duckdb.connect(path, config={"storage_compatibility_version": STORAGE_VERSION})
    for statement in migrate.statements(first.sql):
        con.execute(statement)
    con.execute("INSERT INTO ralf.schema_migrations VALUES (1, ?, now())", [first.name])
    con.close()

    with Ralf(path) as server:
        assert server.storage.schema_version() == len(migrate.available())
        rows = ratings(100, users=4)
        source = server.create_source(ListSource, args=(RATINGS, rows), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts")
        server.run()
        assert RalfClient(server).sql("SELECT sum(count) AS n FROM counts")["n"][0] == 100


def test_histories_from_before_deletions_gain_the_marker_on_open(tmp_path):
    """Migration 6 adds ``_ralf_deleted`` to every history that exists (a SQL file cannot
    name them): a database from before it records a HAVING's deletion after reopening."""
    path = str(tmp_path / "v5.duckdb")
    query = "SELECT user, sum(rating) AS total FROM ratings GROUP BY user HAVING sum(rating) > 3"
    first, later = ratings(20, users=4), [{"user": 1, "movie": 1, "rating": -100.0}]
    with Ralf(path) as server:
        server.create_source(ListSource, args=(RATINGS, first), name="ratings").sql(
            query, name="big")
        server.run()
        assert server.point_query("big", 1).total > 3
    con = duckdb.connect(path)
    con.execute('ALTER TABLE ralf."big__history" DROP COLUMN _ralf_deleted')
    con.execute("DELETE FROM ralf.schema_migrations WHERE version = 6")
    con.close()

    with Ralf(path) as server:
        assert server.storage.schema_version() == len(migrate.available())
        server.create_source(ListSource, args=(RATINGS, first + later), name="ratings").sql(
            query, name="big")
        server.run()
        assert 1 not in set(server.bulk_query("big")["user"])
        deleted = RalfClient(server).sql(
            'SELECT count(*) AS n FROM ralf."big__history" WHERE _ralf_deleted')["n"][0]
        assert deleted == 1
