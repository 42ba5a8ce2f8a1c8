"""Pipelines that evolve (ralf/evolve.py, docs/evolve.md): what changed is detected and
shown, refused by default, rebuilt by replay on request (equal to a build from scratch),
and a rebuild a SIGKILL interrupts is finished on reopen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import urllib3

from ralf import Operator, Ralf, Record, Schema, faults
from ralf.cli import load_pipeline, main, pipeline_plan
from ralf.errors import RalfError, SchemaError, TableNotFound
from ralf.testing import ListSource
from tests.pipelines import RATINGS, ratings

ROOT = Path(__file__).resolve().parents[1]

# A pipeline file; the tests edit it the way its author would
PIPELINE = '''
from ralf import Operator, Record
from ralf.testing import ListSource
from tests.pipelines import AVERAGE, RATINGS, ratings


class Average(Operator):
    def __init__(self, schema):
        self.sums = {{}}

    def on_record(self, record):
        s, n = self.sums.get(record.user, (0.0, 0))
        s, n = s + record.rating{edit}, n + 1
        self.sums[record.user] = (s, n)
        return Record(user=record.user, average=s / n, n=n)


def build(server):
    ratings_ = server.create_source(ListSource, (RATINGS, ratings(600), 50), name="ratings")
    average = ratings_.map(Average, (AVERAGE,), name="average"{version})
    average.sql("SELECT user, average * 2 AS twice FROM average", name="twice")
    total = ratings_.sql("SELECT user, {total}(rating) AS total FROM ratings GROUP BY user",
                         name="total")
    total.sql("SELECT user, total + 1 AS more FROM total", name="more")
{extra}
'''
EXTRA = '    ratings_.aggregate(by="user", name="counts", n=("*", "count"))\n'


def write(tmp_path: Path, name: str = "pipeline.py", *, edit: str = "", version: str = "",
          total: str = "sum", extra: str = "") -> str:
    """Write the pipeline file with the given edits; returns its path."""
    path = tmp_path / name
    path.write_text(PIPELINE.format(edit=edit, version=version, total=total, extra=extra))
    return str(path)


def run(pipeline: str, db: str | None, **options) -> Ralf:
    """Build the pipeline file on ``db`` and run it until drained (left open)."""
    server = Ralf(db, **options)
    load_pipeline(pipeline)(server)
    server.run()
    return server


def tables(server: Ralf, names: list[str]) -> dict[str, pd.DataFrame]:
    return {n: server.bulk_query(n).sort_values("user").reset_index(drop=True) for n in names}


def assert_same(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], check_dtype=False, obj=name)


def oracle(pipeline: str, names: list[str]) -> dict[str, pd.DataFrame]:
    """The tables the pipeline gives built from scratch, in memory."""
    with run(pipeline, None) as fresh:
        return tables(fresh, names)


def test_a_changed_table_is_refused_by_default_saying_what_changed(tmp_path, database):
    run(write(tmp_path), database).close()
    with Ralf(database) as server, pytest.raises(SchemaError) as refused:
        load_pipeline(write(tmp_path, "v2.py", total="avg"))(server)
    text = str(refused.value)
    assert "'total'" in text and "sum(rating)" in text and "avg(rating)" in text
    assert "ralf plan" in text and "ralf apply" in text and "evolve='rebuild'" in text
    with Ralf(database) as server:  # refused, nothing was changed
        load_pipeline(write(tmp_path))(server)
        assert server.rebuilt_tables() == []


def test_the_plan_shows_new_changed_removed_and_invalidated_tables(tmp_path, database):
    run(write(tmp_path, extra=EXTRA), database).close()
    plan = pipeline_plan(write(tmp_path, "v2.py", edit=" * 2", total="avg"), database)
    status = {c.name: c.status for c in plan.changes}
    assert status == {"ratings": "unchanged", "average": "changed", "twice": "invalidated",
                      "total": "changed", "more": "invalidated", "counts": "removed"}
    average = next(c for c in plan.changes if c.name == "average")
    assert average.invalidates == ["twice"] and average.identity.startswith("code hash ")
    assert average.reasons[0].startswith("operator code hash ")
    text = plan.render()
    assert "~ average: changed [code hash" in text and "invalidates: twice" in text
    assert "- counts: removed (kept; drop with --drop-removed)" in text
    assert "2 changed, 2 invalidated, 1 removed" in text
    assert json.loads(json.dumps(plan.to_dict()))["tables"][1]["invalidates"] == ["twice"]
    unchanged = pipeline_plan(write(tmp_path, extra=EXTRA), database)
    assert unchanged.empty and "no changes" in unchanged.render()


def test_an_aggregate_function_changed_with_the_same_output_type_is_detected(tmp_path):
    db = str(tmp_path / "f.duckdb")
    run(write(tmp_path), db).close()
    plan = pipeline_plan(write(tmp_path, "v2.py", total="avg"), db)
    (total,) = [c for c in plan.changes if c.status == "changed"]
    assert total.name == "total" and "avg(rating)" in total.reasons[0]


def test_a_version_set_by_the_author_identifies_the_operator(tmp_path):
    db = str(tmp_path / "f.duckdb")
    run(write(tmp_path, version=', version="3"'), db).close()
    # the code is edited, the version is not: the author says it computes the same
    same = pipeline_plan(write(tmp_path, "v2.py", edit=" + 0", version=', version="3"'), db)
    assert same.empty and "average: unchanged [version 3]" in same.render()
    bumped = pipeline_plan(write(tmp_path, "v3.py", edit=" + 0", version=", version=4"), db)
    (average,) = [c for c in bumped.changes if c.name == "average"]
    assert average.reasons == ["operator version 3 -> version 4"]
    assert bumped.by_status("invalidated") == ["twice"]


def test_rebuild_equals_a_build_from_scratch(tmp_path, database):
    names = ["average", "twice", "total", "more"]
    run(write(tmp_path), database).close()
    v2 = write(tmp_path, "v2.py", edit=" * 2", total="avg")
    with run(v2, database, evolve="rebuild") as server:
        assert server.rebuilt_tables() == names
        assert_same(tables(server, names), oracle(v2, names))
    with Ralf(database) as server:  # the new definitions are the stored ones now
        load_pipeline(v2)(server)
        assert server.rebuilt_tables() == []
    assert pipeline_plan(v2, database).empty


def test_a_table_stored_without_a_definition_is_adopted(tmp_path, database):
    run(write(tmp_path), database).close()
    with Ralf(database) as server:  # as a database written before migration 0009
        with server.storage._transaction() as tx:  # noqa: SLF001 - forging an old catalog
            tx.execute("UPDATE ralf.tables SET definition = NULL")
    plan = pipeline_plan(write(tmp_path, "v2.py", edit=" * 2"), database)
    assert plan.by_status("adopted") == ["average", "twice", "total", "more"]
    assert "average: stored without a definition: adopting the current one" in plan.render()
    with Ralf(database) as server:
        load_pipeline(write(tmp_path, "v2.py", edit=" * 2"))(server)
        assert server.rebuilt_tables() == []
    assert pipeline_plan(write(tmp_path, "v2.py", edit=" * 2"), database).empty


def test_removed_tables_are_kept_until_dropped(tmp_path, database):
    run(write(tmp_path, extra=EXTRA), database).close()
    with Ralf(database) as server:
        load_pipeline(write(tmp_path))(server)
        assert server.removed_tables() == ["counts"]
        assert len(server.bulk_query("counts")) > 0  # still answered from the database
        with pytest.raises(ValueError, match="defined by this pipeline"):
            server.drop_table("total")
        server.drop_table("counts")
        assert server.removed_tables() == []
        with pytest.raises(TableNotFound):
            server.bulk_query("counts")
    with run(write(tmp_path, extra=EXTRA), database) as server:  # defined anew, from scratch
        assert_same(tables(server, ["counts"]),
                    oracle(write(tmp_path, extra=EXTRA), ["counts"]))


def test_plan_and_apply_on_the_command_line(tmp_path, database, capsys):
    run(write(tmp_path, extra=EXTRA), database).close()
    v2 = write(tmp_path, "v2.py", total="avg")
    assert main(["plan", v2, "--db", database]) == 0
    out = capsys.readouterr().out
    assert "~ total: changed [query]" in out and "- counts: removed" in out
    assert main(["plan", v2, "--db", database, "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert {t["name"]: t["status"] for t in as_json["tables"]}["total"] == "changed"
    assert main(["apply", v2, "--db", database, "--drop-removed"]) == 0
    out = capsys.readouterr().out
    assert "- counts: dropped" in out and "ralf: applied (total, more rebuilt" in out
    assert main(["plan", v2, "--db", database]) == 0
    assert capsys.readouterr().out.strip().endswith("no changes")
    with Ralf(database) as server:
        load_pipeline(v2)(server)
        assert server.removed_tables() == []
        assert_same(tables(server, ["total"]), oracle(v2, ["total"]))


def average_of(server: Ralf, table: str = "average") -> float:
    """The served average of user 1 (point query) — the old operator's or the new one's."""
    return server.point_query(table, 1)["average" if table == "average" else "twice"]


def test_the_old_version_serves_until_the_new_one_has_caught_up(tmp_path, database):
    """In process: after the changed pipeline is built, and while its shadow tables fill,
    point, bulk and SQL queries answer from the old version; a tick that catches a shadow
    up swaps it in, and a descendant serves its old version until its own swap."""
    run(write(tmp_path), database).close()
    v2 = write(tmp_path, "v2.py", edit=" * 2")
    with run(write(tmp_path, "v1.py"), None) as fresh:
        old = {"average": average_of(fresh), "twice": average_of(fresh, "twice")}
        old_rows = tables(fresh, ["average"])
    new = oracle(v2, ["average", "twice"])
    with Ralf(database, evolve="rebuild") as server:
        load_pipeline(v2)(server)
        assert server.rebuilt_tables() == ["average", "twice"]
        assert average_of(server) == old["average"]
        assert_same(tables(server, ["average"]), old_rows)
        via_sql = server.sql("SELECT average FROM average WHERE user = 1")
        assert via_sql["average"].tolist() == [old["average"]]
        assert server.storage.count_rows(server.pipeline.shadows["average__next"]) == 0
        assert server.step()  # the shadow filled and swapped in; "twice" waited for it
        assert average_of(server) == new["average"].set_index("user").loc[1, "average"]
        assert average_of(server, "twice") == old["twice"]
        assert server.step()  # now "twice"
        assert average_of(server, "twice") == new["twice"].set_index("user").loc[1, "twice"]
        assert not server.step() and server.pipeline.shadows == {}
        assert_same(tables(server, ["average", "twice"]), new)


@pytest.mark.parametrize("crash_at", ["refresh.after_commit@1", "sql.after_commit@1",
                                      "evolve.before_swap@1", "evolve.before_swap@3"])
def test_a_rebuild_killed_part_way_is_finished_on_reopen(tmp_path, database, crash_at):
    """`ralf apply` SIGKILLed at a crash point inside the rebuild (a shadow being filled:
    its first replay committed, an operator's or a SQL table's; right before the first
    swap's commit; right before a descendant's swap, its parents swapped); until the swap
    the old version is what the database serves, and a second `ralf apply` finishes."""
    names = ["average", "twice", "total", "more"]
    run(write(tmp_path), database).close()
    with Ralf(database) as before:
        load_pipeline(write(tmp_path))(before)
        old = tables(before, names)
    v2 = write(tmp_path, "v2.py", edit=" * 2", total="avg")
    command = [sys.executable, "-m", "ralf.cli", "apply", v2, "--db", database]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(command, cwd=ROOT, env={**env, "RALF_CRASH_AT": crash_at},
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert "ralf: applied" not in killed.stdout
    plan = pipeline_plan(v2, database)
    unswapped = sorted(plan.by_status("changed") + plan.by_status("invalidated"))
    assert unswapped == sorted(["twice", "more"] if crash_at.endswith("@3") else names)
    with Ralf(database, evolve="rebuild") as reopened:  # the old versions serve meanwhile
        load_pipeline(v2)(reopened)
        assert_same(tables(reopened, unswapped), {n: old[n] for n in unswapped})
        assert set(reopened.pipeline.shadows) == {f"{n}__next" for n in unswapped}
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    with Ralf(database) as server:
        load_pipeline(v2)(server)
        server.run()
        assert server.rebuilt_tables() == [] and server.pipeline.shadows == {}
        assert_same(tables(server, names), oracle(v2, names))


def test_a_swap_that_fails_changes_nothing(tmp_path, database):
    """An exception inside a swap (its one transaction) leaves the old version stored and
    serving, the shadow caught up beside it, and memory as the database has it: the next
    tick swaps it in."""
    names = ["average", "twice", "total", "more"]
    run(write(tmp_path), database).close()
    v2 = write(tmp_path, "v2.py", total="avg")
    with Ralf(database, evolve="rebuild") as server:
        load_pipeline(v2)(server)
        old_total = tables(server, ["total"])
        faults.arm("evolve.before_swap")
        with pytest.raises(faults.InjectedFault):
            server.step()
        faults.disarm()
        assert set(server.pipeline.shadows) == {"total__next", "more__next"}
        assert_same(tables(server, ["total"]), old_total)
        assert "sum(rating)" in server.storage.catalog()["total"].definition["query"]
        server.run()
        assert server.pipeline.shadows == {}
        assert_same(tables(server, names), oracle(v2, names))
    assert pipeline_plan(v2, database).empty


def test_an_alias_serves_the_old_version_until_the_swap_and_the_new_one_after(
        tmp_path, database):
    run(write(tmp_path), database).close()
    v2 = write(tmp_path, "v2.py", total="avg")
    with run(write(tmp_path, "v1.py"), None) as fresh:
        old = fresh.point_query("total", 1)["total"]
    with Ralf(database, evolve="rebuild") as server:
        load_pipeline(v2)(server)
        server.table("total").as_queryable("spend")
        assert server.point_query("spend", 1)["total"] == old
        assert server.sql("SELECT total FROM spend WHERE user = 1")["total"].tolist() == [old]
        server.run()
        new = oracle(v2, ["total"])["total"].set_index("user").loc[1, "total"]
        assert server.point_query("spend", 1)["total"] == new
        assert server.sql("SELECT total FROM spend WHERE user = 1")["total"].tolist() == [new]


def test_a_shadow_with_a_quarantined_key_is_not_swapped_in(tmp_path, database):
    """The new operator fails on one key: its shadow has not caught up, so the old version
    keeps serving every key (the quarantine is the new version's, to release or fix)."""
    run(write(tmp_path), database).close()
    with run(write(tmp_path, "v1.py"), None) as fresh:
        old = tables(fresh, ["average"])
    failing = write(tmp_path, "v2.py", edit=" + (1 / 0 if record.user == 1 else 0)")
    with Ralf(database, evolve="rebuild", max_failures=1) as server:
        load_pipeline(failing)(server)
        with pytest.raises(RalfError, match="ZeroDivisionError"):
            server.run()
        assert server.quarantined("average") == [1]
        assert set(server.pipeline.shadows) == {"average__next", "twice__next"}
        assert_same(tables(server, ["average"]), old)


def test_a_shadow_of_a_change_given_up_is_dropped(tmp_path, database):
    """A rebuild interrupted before its swap, then the change reverted: the shadow tables
    it left are dropped when the old definitions are given again."""
    run(write(tmp_path), database).close()
    with Ralf(database, evolve="rebuild") as server:
        load_pipeline(write(tmp_path, "v2.py", total="avg"))(server)
        assert set(server.pipeline.shadows) == {"total__next", "more__next"}
    with Ralf(database) as server:
        load_pipeline(write(tmp_path))(server)
        assert server.pipeline.shadows == {}
        assert [n for n in server.storage.catalog() if n.endswith("__next")] == []
        with pytest.raises(ValueError, match="reserved"):
            server.table("ratings").sql("SELECT user, 1 AS one FROM ratings GROUP BY user",
                                        name="x__next")


def test_planning_against_a_database_not_made_yet_creates_none(tmp_path):
    db = tmp_path / "none.duckdb"
    plan = pipeline_plan(write(tmp_path), str(db))
    assert plan.by_status("new") == ["ratings", "average", "twice", "total", "more"]
    assert not db.exists()


def _serve(pipeline: str, database: str, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ralf.cli", "serve", pipeline, "--db", database, "--port", "0",
         "--log-every", "0", *options], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ralf_serve_refuses_a_change_or_rebuilds_it_while_serving(tmp_path, database):
    """`ralf serve` on a changed pipeline stops with one error line pointing to plan/apply;
    with `--evolve rebuild` it serves, the changed table swapped in after the first tick
    and its descendant, which waits for its parent's swap, still the old version."""
    run(write(tmp_path), database).close()
    with run(write(tmp_path, "v1.py"), None) as fresh:
        old_twice = average_of(fresh, "twice")
    v2 = write(tmp_path, "v2.py", edit=" * 2")
    refused = _serve(v2, database)
    out, err = refused.communicate(timeout=120)
    assert refused.returncode == 1 and "ralf: error:" in err and "ralf plan" in err, err
    new = oracle(v2, ["average"])["average"].set_index("user")
    # a tick a day: the first, at start, swaps "average" in; "twice" waits for the next
    served = _serve(v2, database, "--evolve", "rebuild", "--interval", "86400")
    try:
        line = served.stdout.readline()
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        http = urllib3.PoolManager()
        deadline = time.monotonic() + 120
        while True:  # until the first tick has run (/status waits for a tick in progress)
            status = json.loads(http.request("GET", url + "/status", timeout=30).data)
            if status["ticks"] >= 1 or time.monotonic() > deadline:
                break
        assert status["ticks"] >= 1
        row = json.loads(http.request("GET", url + "/table/average/1").data)
        assert row["average"] == new.loc[1, "average"]
        twice = json.loads(http.request("GET", url + "/table/twice/1").data)
        assert twice["twice"] == old_twice
    finally:
        served.terminate()
        served.communicate(timeout=60)


class _Titled(Operator):
    def __init__(self, schema):
        pass

    def on_record(self, record, movie):
        return Record(user=record.user, title=None if movie is None else movie.title)


def test_a_join_given_another_lookup_column_is_a_change(tmp_path):
    """A Python join's rows came from the rows its lookup gave: looking up by another
    column is refused like any change (it was stored silently before definitions)."""
    movies = Schema("movie", {"movie": int, "title": str})
    titled = Schema("user", {"user": int, "title": str})
    db = str(tmp_path / "join.duckdb")

    def build(server: Ralf, on: str) -> None:
        rows = [{"movie": m, "title": f"m{m}"} for m in range(50)]
        looked_up = server.create_source(ListSource, (movies, rows), name="movies")
        source = server.create_source(ListSource, (RATINGS, ratings(100)), name="ratings")
        source.join(looked_up, _Titled, args=(titled,), on=on, name="titled")

    with Ralf(db) as server:
        build(server, "movie")
        server.run()
    with Ralf(db) as server, pytest.raises(SchemaError, match="lookup 'movies' on 'movie'"):
        build(server, "user")
    with Ralf(db, evolve="rebuild") as server:
        build(server, "user")
        server.run()
        assert server.rebuilt_tables() == ["titled"]
        got = server.bulk_query("titled").set_index("user")["title"].to_dict()
    assert got == {u: f"m{u}" for u in got}  # each user's title now looked up by user
