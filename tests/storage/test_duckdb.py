"""The DuckDB backend: layout, atomic units of work, read-only SQL, the duckdb shell."""

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from ralf import QueryError, Ralf
from ralf.schema import Schema
from ralf.storage.duckdb import DuckDBStorage
from ralf.storage.units import FEATURE, SOURCE, Append, LogRead, Refresh, TableInfo
from ralf.testing import ListSource
from tests.pipelines import AVERAGE, RATINGS, AverageRating, ratings

NOW = dt.datetime(2024, 1, 1)


@pytest.fixture
def storage():
    s = DuckDBStorage()
    yield s
    s.close()


def query(storage, sql):
    return storage.sql(sql).to_pandas()


def _source(storage):
    info = TableInfo("ratings", SOURCE, RATINGS)
    storage.create_table(info)
    return info


def _append(storage, info, rows, first_seq):
    data, _ = RATINGS.to_arrow(rows, "ratings")
    storage.append(Append(info, data, first_seq, NOW, None, first_seq + len(rows) - 1, False))


def test_layout_user_columns_plus_ralf_bookkeeping(storage):
    _source(storage)
    storage.create_table(TableInfo("average", FEATURE, AVERAGE, parent="ratings"))
    cols = query(storage, "SELECT table_schema, table_name, column_name FROM "
                       "information_schema.columns ORDER BY table_schema, table_name, "
                       "ordinal_position")
    main = cols[cols.table_schema == "main"]
    assert main[main.table_name == "ratings"].column_name.tolist() == [
        "user", "movie", "rating", "_ralf_seq", "_ralf_ingested_at"]
    assert main[main.table_name == "average"].column_name.tolist() == [
        "user", "average", "n", "_ralf_seq", "_ralf_updated_at"]
    ralf_tables = set(cols[cols.table_schema == "ralf"].table_name)
    assert {"tables", "watermarks", "operator_state", "source_state", "rejected",
            "schema_migrations", "average__history"} <= ralf_tables
    pk = query(storage, "SELECT constraint_column_names FROM duckdb_constraints() "
                     "WHERE table_name = 'average' AND constraint_type = 'PRIMARY KEY'")
    assert list(pk.iloc[0, 0]) == ["user"]


def test_read_log_honours_floor_and_per_key_watermarks(storage):
    info = _source(storage)
    _append(storage, info, [{"user": u, "movie": 1, "rating": 1.0} for u in [1, 2, 1, 3, 2]], 1)
    everything = storage.read_log(LogRead(info, 0, 5, None))
    assert everything.column("_ralf_seq").to_pylist() == [1, 2, 3, 4, 5]
    # user 1 is applied up to seq 3, everyone else up to the floor 1
    marks = pa.table({"key": [1], "wm": [3]})
    pending = storage.read_log(LogRead(info, 1, 5, marks))
    assert pending.column("_ralf_seq").to_pylist() == [2, 4, 5]
    keys = pa.table({"key": [2], "wm": [2]})
    only_two = storage.read_log(LogRead(info, 0, 5, None, keys=keys))
    assert only_two.column("_ralf_seq").to_pylist() == [5]
    summary = storage.pending_summary(LogRead(info, 0, 5, None)).sort_by("key").to_pydict()
    assert summary["key"] == [1, 2, 3] and summary["n"] == [2, 2, 1]
    assert summary["first_seq"] == [1, 2, 4] and summary["last_seq"] == [3, 5, 4]


@pytest.mark.parametrize("marks", [{"1": 10}, {"1": 10, "2": 7}])  # one key: its own path
def test_a_refresh_is_one_transaction(storage, marks):
    _source(storage)
    info = TableInfo("average", FEATURE, AVERAGE, parent="ratings")
    storage.create_table(info)
    rows, _ = AVERAGE.to_arrow([{"user": 1, "average": 2.0, "n": 1}], "average")
    bad = Refresh(info, rows, 1, NOW, 10, {**marks, "1": "not a number"}, False, b"state", True)
    with pytest.raises((pa.ArrowInvalid, duckdb.ConversionException)):  # inside the transaction
        storage.refresh(bad)
    assert query(storage, "SELECT count(*) AS n FROM average")["n"][0] == 0
    assert query(storage, "SELECT count(*) AS n FROM ralf.average__history")["n"][0] == 0
    assert storage.load_operator_state("average") == (False, None)
    assert storage.load_watermarks("average") == {}
    assert storage.catalog()["average"].watermark == 0
    storage.refresh(Refresh(info, rows, 1, NOW, 10, marks, False, b"state", True))
    assert storage.load_operator_state("average") == (True, b"state")
    assert storage.load_watermarks("average") == marks
    assert storage.catalog()["average"].watermark == 10
    moved = {k: v + 5 for k, v in marks.items()}  # keys that have a mark already
    storage.refresh(Refresh(info, rows, 2, NOW, 10, moved, False, b"state", True))
    assert storage.load_watermarks("average") == moved


@pytest.mark.parametrize("sql", [
    "INSERT INTO ratings VALUES (1, 1, 1.0, 1, now())",
    "UPDATE ratings SET rating = 0",
    "DELETE FROM ratings",
    "DROP TABLE ratings",
    "CREATE TABLE x (a INT)",
    "COPY ratings TO '/tmp/ralf_copy_test.csv'",
    "ATTACH ':memory:' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA enable_profiling",
    "SET threads = 1",
    "SELECT 1; DROP TABLE ratings",
    "/* hidden */ DELETE FROM ratings -- SELECT",
    "SELECT 1 -- ; DROP TABLE ratings\n; DELETE FROM ratings",
])
def test_sql_refuses_anything_that_writes(storage, sql):
    info = _source(storage)
    _append(storage, info, [{"user": 1, "movie": 1, "rating": 4.0}], 1)
    with pytest.raises(QueryError):
        query(storage, sql)
    assert query(storage, "SELECT count(*) AS n, sum(rating) AS r FROM ratings").iloc[0].tolist() \
        == [1, 4.0]


def test_sql_answers_selects(storage):
    info = _source(storage)
    _append(storage, info, [{"user": u, "movie": 1, "rating": 4.0} for u in (1, 2)], 1)
    assert query(storage, "SELECT user FROM ratings ORDER BY user")["user"].tolist() == [1, 2]
    with pytest.raises(QueryError, match="nope"):
        query(storage, "SELECT * FROM nope")


def test_identifiers_with_quotes_and_keywords_are_safe(storage):
    schema = Schema('we"ird', {'we"ird': str, "order": int, "group": float})
    info = TableInfo('tab"le; DROP TABLE x --', SOURCE, schema)
    storage.create_table(info)
    data, _ = schema.to_arrow([{'we"ird': "a'b", "order": 1, "group": 2.0}], info.name)
    storage.append(Append(info, data, 1, NOW, None, 1, False))
    assert storage.max_seq(info) == 1
    assert storage.point(info, "a'b")["order"] == 1


def test_the_duckdb_shell_opens_our_files(tmp_path):
    beside_python = Path(sys.executable).parent / "duckdb"
    shell = str(beside_python) if beside_python.exists() else shutil.which("duckdb")
    if shell is None:
        pytest.fail("the duckdb shell (PyPI package duckdb-cli) is not installed")
    path = str(tmp_path / "shell.duckdb")
    with Ralf(path) as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(50)), name="ratings")
        source.map(AverageRating, args=(AVERAGE,), name="average")
        source.aggregate(by="user", n=("*", "count"), total=("rating", "sum"), name="agg")
        server.run()
        total = server.bulk_query("agg")["total"].sum()
    out = subprocess.run([shell, path, "-csv", "-c",
                          "SELECT count(*) FROM average; SELECT count(*) FROM ratings; "
                          "SELECT name, kind FROM ralf.tables ORDER BY name; "
                          "SELECT 'agg', sum(n), sum(total) FROM agg"],
                         capture_output=True, text=True, check=True).stdout
    assert "average,feature" in out and "ratings,source" in out
    assert "50" in out.split()
    # an aggregate's outputs are columns DuckDB computes from its helpers: the shell too
    assert f"agg,50,{total}" in out.split()
    assert Path(path).exists()


@pytest.mark.parametrize("sql", ["SELECT * FROM read_csv('/etc/passwd')",
                                   "SELECT * FROM read_text('/etc/hostname')",
                                   "SELECT * FROM glob('/*')"])
def test_sql_cannot_read_the_servers_files(storage, sql):
    with pytest.raises(QueryError, match="not allowed"):  # refused by the parse tree
        query(storage, sql)
    # and behind that check, the database itself would refuse: no external access,
    # and the setting cannot be changed
    settings = query(storage, "SELECT name, value FROM duckdb_settings() WHERE name IN "
                              "('enable_external_access', 'lock_configuration')")
    assert dict(zip(settings["name"], settings["value"], strict=True)) == {
        "enable_external_access": "false", "lock_configuration": "true"}


def _aggregate_run(path: str, rows: list[dict], ticks: int | None = None) -> dict:
    """The avg/count table over ``rows`` (100 per tick): after ``ticks`` ticks, or all."""
    with Ralf(path) as server:
        source = server.create_source(ListSource, args=(RATINGS, rows), name="ratings")
        source.aggregate(by="user", average=("rating", "avg"), n=("*", "count"), name="agg")
        if ticks is None:
            server.run()
        for _ in range(ticks or 0):
            server.step()
        oracle = server.sql("SELECT user, avg(rating) AS average, count(*) AS n FROM ratings "
                            "GROUP BY user ORDER BY user")
        return {"table": server.sql("SELECT user, average, n FROM agg ORDER BY user"),
                "oracle": oracle, "ingested": server.sql("SELECT count(*) AS n FROM ratings"),
                "generated": server.sql(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = "
                    "'agg' AND is_generated = 'ALWAYS' ORDER BY column_name")}


def test_aggregate_outputs_are_computed_and_files_that_store_them_still_refresh(
        tmp_path, monkeypatch):
    """New aggregate tables compute their outputs from their helpers (VIRTUAL columns);
    a table created before that stores them, and refreshes keep writing them."""
    from ralf.ivm.aggregate import DeltaAggregate

    rows = ratings(300)
    now = _aggregate_run(str(tmp_path / "new.duckdb"), rows)
    assert list(now["generated"]["column_name"]) == ["average", "n"]
    assert now["table"].round(9).equals(now["oracle"].round(9))

    older = str(tmp_path / "older.duckdb")
    with monkeypatch.context() as patch:  # the layout before computed outputs
        patch.setattr(DeltaAggregate, "derived", lambda self, types: {})
        first = _aggregate_run(older, rows, ticks=2)
    assert first["generated"].empty and first["ingested"]["n"][0] == 200
    resumed = _aggregate_run(older, rows)  # the last 100 records, in the old layout
    assert resumed["generated"].empty and resumed["ingested"]["n"][0] == 300
    assert resumed["table"].round(9).equals(resumed["oracle"].round(9))
    assert resumed["table"].round(9).equals(now["table"].round(9))


def test_a_file_duckdb_would_name_like_ralfs_schema_is_refused_with_the_reason(tmp_path):
    """DuckDB names a database after its file; one named "ralf" would make ralf's schema
    ``ralf`` ambiguous in every statement (a BinderException at open before)."""
    for name in ("ralf.duckdb", "RALF.db", "ralf.v2.duckdb"):
        with pytest.raises(ValueError, match="choose another file name"):
            Ralf(str(tmp_path / name))
    with Ralf(str(tmp_path / "ralf_features.duckdb")) as server:
        assert server.storage.schema_version() >= 1
