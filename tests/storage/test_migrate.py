"""Migrations: versioned files applied in order, once; old files upgrade on open."""

import shutil

import duckdb
import pytest

from ralf import Ralf, RalfClient
from ralf.storage import migrate
from ralf.storage.duckdb import STORAGE_VERSION, DuckDBStorage
from ralf.storage.postgres import PostgresStorage
from ralf.testing import ListSource, drop_postgres_database, new_postgres_database
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
    con.execute(first.sql)
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


# A string and a dollar-quoted body holding ';' (and a comment with one): split at every ';'
# these were four broken statements; the database's own parser sees two.
_TRICKY = {
    "duckdb": "-- a comment; not a statement end\n"
              "INSERT INTO ralf.settings VALUES ('semi', 'a;\nb');\n"
              "INSERT INTO ralf.settings VALUES ('dollar', $$c;\nd$$);\n",
    "postgres": "-- a comment; not a statement end\n"
                "CREATE FUNCTION ralf.semi() RETURNS text LANGUAGE plpgsql AS $$\n"
                "BEGIN\n    RETURN 'c;' || chr(10) || 'd';\nEND;\n$$;\n"
                "INSERT INTO ralf.settings VALUES ('semi', 'a;\nb');\n"
                "INSERT INTO ralf.settings VALUES ('dollar', ralf.semi());\n",
}


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_a_semicolon_in_a_string_or_a_dollar_body_does_not_end_a_statement(
        backend, tmp_path, request):
    if backend == "duckdb":
        storage = DuckDBStorage(str(tmp_path / "db.duckdb"))
    else:
        storage = PostgresStorage(new_postgres_database(request.getfixturevalue("postgres_url")))
    directory = tmp_path / "migrations"
    shutil.copytree(migrate.migrations_dir(), directory)
    latest = len(migrate.available())
    (directory / f"{latest + 1:04d}_tricky.sql").write_text(_TRICKY[backend])
    try:
        assert storage.migrate(directory) == [latest + 1]
        assert storage.schema_version() == latest + 1
        assert storage.setting("semi", "") == "a;\nb"
        assert storage.setting("dollar", "") == "c;\nd"
    finally:
        storage.close()
        if backend == "postgres":
            drop_postgres_database(storage.url)
