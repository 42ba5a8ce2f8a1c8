"""The log SQL both backends share (ralf/storage/sql.py), run on DuckDB: which appends are
pending for a floor, per-key watermarks, and a read of some keys."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from ralf.storage.sql import pending_rows, pending_summary, registered
from ralf.storage.units import SOURCE, LogRead, TableInfo
from tests.pipelines import RATINGS

LOG = TableInfo("ratings", SOURCE, RATINGS)


def _run(read: LogRead, query: str) -> list[tuple]:
    con = duckdb.connect()
    con.execute("CREATE TABLE ratings (user BIGINT, movie BIGINT, rating DOUBLE, "
                "_ralf_seq BIGINT, _ralf_ingested_at TIMESTAMP)")
    con.execute("INSERT INTO ratings SELECT i % 3, i, 1.0, i, TIMESTAMP '2024-01-01' + "
                "INTERVAL (i) SECOND FROM range(1, 11) t(i)")  # seqs 1..10, users 1,2,0,...
    for name, table in registered(read).items():
        con.register(name, table)
    return con.sql(query).fetchall()


def _marks(**wm: int) -> pa.Table:
    return pa.table({"key": pa.array([int(k[1:]) for k in wm], pa.int64()),
                     "wm": pa.array(list(wm.values()), pa.int64())})


def test_pending_rows_are_above_the_floor_and_up_to_high():
    read = LogRead(LOG, floor=4, high=8, watermarks=None)
    seqs = [r[-1] for r in _run(read, pending_rows(read) + " ORDER BY p._ralf_seq")]
    assert seqs == [5, 6, 7, 8]


def test_a_keys_own_watermark_replaces_the_floor():
    read = LogRead(LOG, floor=4, high=10, watermarks=_marks(k1=7, k0=2))
    seqs = sorted(r[-1] for r in _run(read, pending_rows(read)))
    # user 1: seqs 1,4,7,10 -> above 7: 10; user 0: 3,6,9 -> above 2: 3,6,9; user 2: 5,8
    assert seqs == [3, 5, 6, 8, 9, 10]


def test_a_read_of_some_keys_reads_only_theirs_and_summarises_per_key():
    read = LogRead(LOG, floor=0, high=10, watermarks=None, keys=_marks(k1=4, k2=0))
    rows = _run(read, pending_summary(read) + " ORDER BY key")
    assert [(k, n, first, last) for k, n, first, last, _ in rows] == [
        (1, 2, 7, 10), (2, 3, 2, 8)]
