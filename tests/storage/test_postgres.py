"""The PostgreSQL backend's own parts: type mapping, the SQL translation, what it cannot
store, and what `ralf shell` is given instead of a snapshot."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ralf import Ralf, Schema, SchemaError
from ralf.storage.postgres import PostgresStorage, Translator, pg_type
from ralf.storage.units import FEATURE, SOURCE, TableInfo
from ralf.testing import ListSource, drop_postgres_database, new_postgres_database
from tests.pipelines import RATINGS, ratings

CATALOG = {
    "ratings": TableInfo("ratings", SOURCE, RATINGS),
    "Scores": TableInfo("Scores", FEATURE, Schema("user", {"user": int, "Total": float})),
}


def test_duckdb_types_map_to_postgresql_types():
    assert pg_type("DOUBLE") == "DOUBLE PRECISION"
    assert pg_type("VARCHAR[]") == "TEXT[]"
    assert pg_type("HUGEINT") == "NUMERIC"
    assert pg_type("DECIMAL(18,3)") == "NUMERIC(18,3)"
    with pytest.raises(SchemaError, match="INTERVAL"):
        pg_type("INTERVAL")


def test_translation_quotes_keywords_and_spells_names_as_the_catalog():
    translate = Translator(lambda: CATALOG)
    sql = translate("SELECT user, total FROM scores WHERE user > 1")
    assert sql == 'SELECT "user", "Total" FROM "Scores" WHERE "user" > 1'


def test_translation_expands_exclude_and_casts_round():
    translate = Translator(lambda: CATALOG)
    sql = translate("SELECT * EXCLUDE (_ralf_seq, _ralf_ingested_at, movie) FROM ratings")
    assert '"user"' in sql and '"rating"' in sql
    assert "movie" not in sql and "_ralf_seq" not in sql
    assert "CAST" in translate("SELECT round(rating, 2) AS r FROM ratings")


def test_text_with_nul_cannot_be_stored_and_is_named():
    rows = pa.table({"a": ["ok", "x\x00y", None], "b": [["p"], [], ["q", "\x00"]],
                     "c": [b"\x00", b"", b""]})
    refused = PostgresStorage.unstorable(rows)
    assert sorted(refused) == [1, 2]
    assert refused[1][0] == "a" and refused[2][0] == "b" and "NUL" in refused[1][1]


def test_the_shell_gets_the_database_address_without_its_password(postgres_url):
    url = new_postgres_database(postgres_url)
    with_password = url.replace("postgres@", "postgres:s3cret@")
    try:
        with Ralf(with_password) as server:
            target = server.snapshot()
        assert target == url and "s3cret" not in target
    finally:
        drop_postgres_database(url)


def test_a_sql_table_has_the_same_schema_on_both_backends(postgres_url):
    query = ("SELECT user, avg(rating) AS mean, count(*) AS n, sum(movie) AS movies, "
             "median(rating) AS med FROM ratings GROUP BY user")
    url = new_postgres_database(postgres_url)
    schemas = []
    try:
        for database in (None, url):
            with Ralf(database) as server:
                source = server.create_source(ListSource, args=(RATINGS, ratings(50)),
                                              name="ratings")
                schemas.append(source.sql(query, name="stats").schema)
    finally:
        drop_postgres_database(url)
    assert schemas[0] == schemas[1]


def test_a_role_named_like_ralfs_schema_keeps_user_tables_in_public(postgres_url):
    """Its default search_path ("$user", public) would put user tables into ralf's
    bookkeeping schema; ralf pins public, and SQL tables recompute from there."""
    import psycopg

    database = new_postgres_database(postgres_url)
    name = database.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'ralf'").fetchone() is None:
            admin.execute("CREATE ROLE ralf LOGIN")
        admin.execute(f"ALTER DATABASE {name} OWNER TO ralf")
    as_ralf = database.replace("://postgres@", "://ralf@")
    try:
        with Ralf(as_ralf) as server:
            source = server.create_source(ListSource, args=(RATINGS, ratings(60)),
                                          name="ratings")
            source.sql("SELECT user, median(rating) AS med FROM ratings GROUP BY user",
                       name="medians")
            server.run()
            assert len(server.bulk_query("medians")) > 0
            where = server.sql("SELECT table_schema AS s FROM information_schema.tables "
                               "WHERE table_name IN ('ratings', 'medians')")["s"].tolist()
            assert where == ["public", "public"]
    finally:
        drop_postgres_database(database)

