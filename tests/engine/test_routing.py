"""Key routing: the stable hash behind Ray replicas and sharded workers, and two worker
processes on two shards of one PostgreSQL database equal one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ralf import Ralf, RalfError, SchemaError
from ralf.engine.routing import KeyPartition, stable_hash
from ralf.schema import Schema
from ralf.storage.postgres import SHARD_BITS
from ralf.testing import ListSource, new_postgres_database
from tests.engine.kill_pipeline import build
from tests.pipelines import COUNT, RATINGS, CountPerKey, Identity

ROOT = Path(__file__).resolve().parents[2]
N = 3000
TABLES = {"counts": "user", "average": "user", "budgeted_counts": "user",
          "lazy_counts": "user", "agg": "user", "medians": "user", "timed_counts": "user",
          "timed_agg": "user"}


def test_the_stable_hash_is_the_same_in_another_process():
    schema = Schema("name", {"name": str})
    keys = ["a", "b", "ünï", ""]
    here = [stable_hash(schema, k) for k in keys]
    code = ("from ralf.engine.routing import stable_hash; from ralf.schema import Schema; "
            f"print([stable_hash(Schema('name', {{'name': str}}), k) for k in {keys!r}])")
    there = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout
    assert str(here) == there.strip()


def test_partitions_split_the_keys_disjointly_and_completely():
    parts = [KeyPartition(i, 3) for i in range(3)]
    owners = [[p.owns(RATINGS, key) for p in parts] for key in range(1000)]
    assert all(sum(o) == 1 for o in owners)
    assert all(200 < sum(o[i] for o in owners) < 466 for i in range(3))  # roughly even


@pytest.mark.parametrize("shard, num_shards", [(2, 2), (-1, 2), (0, 0), ("0", 2)])
def test_impossible_shards_are_refused(shard, num_shards):
    with pytest.raises(ValueError, match="shard"):
        KeyPartition.of(shard, num_shards)


def test_shards_need_postgres_and_refuse_lookup_joins(postgres_url, database):
    if not database.startswith("postgresql"):
        with pytest.raises(ValueError, match="PostgreSQL"):
            Ralf(database, shard=0, num_shards=2)
        return
    with Ralf(database, shard=0, num_shards=2) as server:
        ratings = server.create_source(ListSource, args=(RATINGS, []), name="ratings")
        counts = ratings.map(CountPerKey, args=(COUNT,), name="counts")
        with pytest.raises(ValueError, match="lookup joins"):
            ratings.join(counts, Identity, args=(RATINGS,), on="user", name="joined")
        totals = ratings.aggregate(by="user", n=("*", "count"), name="totals")
        assert totals.name == "totals"
        with pytest.raises(SchemaError, match="shards"):  # a SQL lookup, the same
            ratings.sql("SELECT r.user, max(t.n) AS n FROM ratings r JOIN totals t "
                        "ON t.user = r.user GROUP BY r.user", name="looked_up")


def _workers(url: str, num_shards: int, crash_last_at: str | None = None) -> None:
    """Run every shard's worker to the end; with ``crash_last_at``, the last shard is
    SIGKILLed at that crash point instead."""
    env = {k: v for k, v in os.environ.items() if k != "RALF_CRASH_AT"}
    procs = []
    for shard in range(num_shards):
        crash = {"RALF_CRASH_AT": crash_last_at} if crash_last_at and \
            shard == num_shards - 1 else {}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.engine.shard_worker", url, str(shard),
             str(num_shards), str(N)], cwd=ROOT, env={**env, **crash}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    for shard, proc in enumerate(procs):
        out, err = proc.communicate(timeout=300)
        if crash_last_at and shard == num_shards - 1:
            assert proc.returncode == -signal.SIGKILL, f"{crash_last_at} not reached: {err}"
        else:
            assert proc.returncode == 0 and "done" in out, err[-2000:]


def _tables(server: Ralf) -> dict[str, pd.DataFrame]:
    """Each table's user columns (bookkeeping differs by design: shards number apart)."""
    frames = {}
    for table, key in TABLES.items():
        frame = server.sql(f"SELECT * FROM {table} ORDER BY {key}")
        frames[table] = frame[[c for c in frame.columns if not c.startswith("_ralf")]].round(9)
    return frames


@pytest.fixture(scope="module")
def one_process() -> dict[str, pd.DataFrame]:
    """The tables as one process computes them: what the shards must give together."""
    with Ralf() as alone:
        build(alone, N)
        alone.run()
        alone.bulk_query("lazy_counts")
        return _tables(alone)


def _check_equal_to_one_process(database: str, expected: dict[str, pd.DataFrame]) -> None:
    with Ralf(database, shard=0, num_shards=2) as reader:
        got = _tables(reader)
        ids = reader.sql("SELECT id FROM events ORDER BY id")["id"].tolist()
        assert ids == list(range(N))  # every record once, by the shard owning its key
        split = reader.sql(f"SELECT _ralf_seq >= {1 << SHARD_BITS} AS second, count(*) AS n "
                           "FROM counts GROUP BY 1 ORDER BY 1")
        assert split["n"].tolist()[0] > 0 and len(split) == 2  # both shards wrote rows
    for table, frame in expected.items():
        pd.testing.assert_frame_equal(got[table], frame, check_dtype=False, obj=table)


def test_two_worker_processes_on_two_shards_equal_one_process(postgres_url, one_process):
    database = new_postgres_database(postgres_url)
    _workers(database, 2)
    _workers(database, 2)  # run again: they resume, find nothing new, change nothing
    _check_equal_to_one_process(database, one_process)
    with pytest.raises(RalfError, match="num_shards=3"):
        Ralf(database, shard=0, num_shards=3)
    with pytest.raises(RalfError, match="num_shards=1"):  # the default: one process
        Ralf(database)


def test_a_database_written_by_one_process_is_refused_to_shards(postgres_url):
    database = new_postgres_database(postgres_url)
    with Ralf(database) as alone:
        build(alone, 50)
        alone.run()
    with pytest.raises(RalfError, match="num_shards=2"):
        Ralf(database, shard=0, num_shards=2)
    with Ralf(database) as again:  # the count it was written with still opens it
        assert again.sql("SELECT count(*) AS n FROM events")["n"][0] == 50


@pytest.mark.parametrize("point", ["append.before_commit@4", "refresh.before_commit@5",
                                   "sql.before_commit@3", "refresh.after_commit@7"])
def test_a_shard_killed_mid_run_and_restarted_still_equals_one_process(postgres_url,
                                                                       one_process, point):
    """SIGKILL one shard while the other runs on; restarted, it picks up its own progress
    (not the other shard's) and nothing is lost or applied twice."""
    database = new_postgres_database(postgres_url)
    _workers(database, 2, crash_last_at=point)
    _workers(database, 2)
    _check_equal_to_one_process(database, one_process)
