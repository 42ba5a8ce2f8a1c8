"""Close or SIGKILL a file-backed pipeline, reopen it, and nothing is lost or applied twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ralf import Operator, Ralf, RalfClient, Record
from ralf.testing import ListSource, recompute
from tests.engine.kill_pipeline import build, events
from tests.pipelines import AVERAGE, COUNT, RATINGS, AverageRating, CountPerKey, ratings

ROOT = Path(__file__).resolve().parents[2]


def test_reopen_after_close_continues_where_it_stopped(database):
    rows = ratings(1000, users=15)
    with Ralf(database) as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts")
        for _ in range(4):
            server.step()
    with Ralf(database) as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts")
        server.run()
        # Operator state came back from the checkpoint: this process ran only the 600
        # records not applied before the close (a rebuild by replay would have run 1,000).
        assert server.metrics()["tables"]["counts"]["processed"] == 600
        got = RalfClient(server).bulk_query("counts").set_index("user")["count"].to_dict()
        assert got == pd.DataFrame(rows)["user"].value_counts().to_dict()
        assert server.sql("SELECT count(*) AS n FROM ratings")["n"][0] == 1000


def test_tutorial_style_state_survives_a_restart(database):
    class UserRatings(Operator):
        def __init__(self, schema):
            self.user_ratings = {}

        def on_record(self, record):
            self.user_ratings.setdefault(record.user, []).append(record.rating)
            ratings_ = self.user_ratings[record.user]
            return Record(user=record.user, average=sum(ratings_) / len(ratings_),
                          n=len(ratings_))

    rows = ratings(600, users=9)
    with Ralf(database) as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 60), name="ratings")
        source.map(UserRatings, args=(AVERAGE,), name="average")
        server.step()
        server.step()
    with Ralf(database) as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 60), name="ratings")
        source.map(UserRatings, args=(AVERAGE,), name="average")
        server.run()
        expected = recompute(server, "ratings", AverageRating(AVERAGE), "user")
        got = RalfClient(server).bulk_query("average").sort_values("user").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_unpicklable_state_is_rebuilt_by_replay(database):
    class WithLambda(CountPerKey):
        def __init__(self, schema):
            super().__init__(schema)
            self.fn = lambda x: x  # cannot be pickled

    rows = ratings(300, users=5)
    with Ralf(database) as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
        source.map(WithLambda, args=(COUNT,), name="counts")
        server.step()
        assert server.metrics()["tables"]["counts"]["processed"] == 100
    with Ralf(database) as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
        source.map(WithLambda, args=(COUNT,), name="counts")
        server.run()
        got = RalfClient(server).bulk_query("counts").set_index("user")["count"].to_dict()
        assert got == pd.DataFrame(rows)["user"].value_counts().to_dict()
        # rebuilt by replay: the reopened operator ran over all 300 records, the 100 it
        # had applied before too (a restored checkpoint would have run only 200)
        assert server.metrics()["tables"]["counts"]["processed"] == 300


def test_reopening_with_a_different_schema_is_refused(database):
    from ralf import Schema, SchemaError

    with Ralf(database) as server:
        server.create_source(ListSource, args=(RATINGS, []), name="ratings")
    with Ralf(database) as server, pytest.raises(SchemaError, match="another definition"):
        server.create_source(ListSource, args=(Schema("user", {"user": int}), []),
                             name="ratings")


def _start(db: str, n: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.engine.kill_pipeline", db, str(n)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_after(db: str, n: int, ticks: int) -> bool:
    """Run the pipeline and SIGKILL it after it reports `ticks` ticks; True if it finished
    first, False if it was killed."""
    proc = _start(db, n)
    seen = 0
    for line in proc.stdout:
        if line.startswith("done"):
            proc.wait()
            return True
        seen += 1
        if seen >= ticks:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return False
    proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    return True


@pytest.mark.parametrize("kill_points", [(1, 3, 2, 5), (2, 2, 2, 2, 2, 2, 2), (7, 1, 9)])
def test_sigkilled_pipeline_restarted_to_completion_equals_the_oracle(database, kill_points):
    db = database
    n = 2000
    for ticks in kill_points:  # each run is killed: none may finish before its kill
        assert not _kill_after(db, n, ticks), f"the run finished before its kill at {ticks}"
    assert _kill_after(db, n, 10**9)
    with Ralf(db) as server:
        build(server, n)
        server.run()
        client = RalfClient(server)
        stored = server.sql("SELECT id, user, rating FROM events ORDER BY _ralf_seq")
        assert stored["id"].tolist() == list(range(n))  # nothing duplicated, lost or reordered
        truth = pd.DataFrame(events(n))["user"].value_counts().to_dict()
        for table in ("counts", "budgeted_counts", "lazy_counts"):
            got = client.bulk_query(table).set_index("user")["count"].to_dict()
            assert got == truth, table
        expected = recompute(server, "events", AverageRating(AVERAGE), "user")
        got = client.bulk_query("average").sort_values("user").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
