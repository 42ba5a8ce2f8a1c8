"""Ingestion (ralf/engine/ingest.py): batches of every shape, resume by count, and the
user's source failing in each of its calls."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from ralf import OperatorError, Record, SourceOperator
from ralf.engine.ingest import batch_length, drop_head
from tests.pipelines import RATINGS, ratings

ROWS = ratings(5)
SHAPES = [ROWS, [Record(**r) for r in ROWS], pd.DataFrame(ROWS), pa.Table.from_pylist(ROWS),
          pa.RecordBatch.from_pylist(ROWS)]


@pytest.mark.parametrize("batch", SHAPES, ids=["dicts", "records", "frame", "table", "batch"])
def test_every_batch_shape_has_a_length_and_a_tail(batch):
    assert batch_length(batch) == 5
    tail = drop_head(batch, 3)
    assert batch_length(tail) == 2
    assert RATINGS.to_arrow(tail, "t")[0].to_pylist() == ROWS[3:]


def test_a_single_record_is_a_batch_of_one():
    record = Record(**ROWS[0])
    assert batch_length(record) == 1
    assert drop_head(record, 0) == [record] and drop_head(record, 1) == []


class Counting(SourceOperator):
    """No checkpoint: resumed by replaying and skipping; counts its next() calls."""

    calls = 0

    def __init__(self, schema, rows, size):
        self.rows, self.size, self.at = rows, size, 0

    def next(self):
        Counting.calls += 1
        batch = self.rows[self.at:self.at + self.size]
        self.at += len(batch)
        return batch or None


def test_a_source_resumed_by_count_skips_what_was_appended_within_one_pull(database):
    from ralf import Ralf

    rows = ratings(100)
    with Ralf(database) as server:
        server.create_source(Counting, args=(RATINGS, rows, 10), name="ratings")
        for _ in range(6):
            server.step()
    Counting.calls = 0
    with Ralf(database) as server:
        server.create_source(Counting, args=(RATINGS, rows, 10), name="ratings")
        server.step()  # six batches replayed and dropped, the seventh appended
        assert Counting.calls == 7
        assert server.sql("SELECT count(*) AS n FROM ratings")["n"][0] == 70
        server.run()
        assert server.sql("SELECT count(*) AS n FROM ratings")["n"][0] == 100


@pytest.mark.parametrize("failing", ["next", "checkpoint", "take_rejected"])
def test_each_user_call_that_raises_fails_the_source_by_name(make_ralf, failing):
    class Broken(SourceOperator):
        def __init__(self, schema):
            self.done = False

        def next(self):
            if failing == "next":
                raise ValueError("no next")
            self.done, batch = True, (None if self.done else ROWS)
            return batch

        def checkpoint(self):
            if failing == "checkpoint" and self.done:  # once it has read something
                raise ValueError("no checkpoint")
            return self.done

        def restore(self, state):
            self.done = state

        def take_rejected(self):
            if failing == "take_rejected":
                raise ValueError("no rejected")
            return []

    with make_ralf() as server:
        server.create_source(Broken, args=(RATINGS,), name="broken")
        with pytest.raises(OperatorError, match=f"source 'broken': {failing}\\(\\) raised "
                                                f"ValueError"):
            server.step()
        assert server.sql("SELECT count(*) AS n FROM broken")["n"][0] == 0
