"""The per-record loop: which input key each output row came from, and the cyclic garbage
collector paused while Python operators run."""

from __future__ import annotations

import gc

import pytest

from ralf import Operator, OperatorError, Record, Schema
from ralf.engine.apply import apply_records
from ralf.testing import ListSource
from tests.pipelines import SINK, Identity

RATED = Schema("user", {"user": int, "movie": int})


def _records(*pairs: tuple[int, int]) -> list[Record]:
    return [Record(user=u, movie=m) for u, m in pairs]


def test_a_table_keyed_otherwise_knows_which_input_key_wrote_each_row():
    def by_movie(record: Record) -> Record:
        return Record(movie=record.movie, user=record.user)

    run = apply_records(by_movie, _records((1, 10), (2, 10), (3, 30), (10, 20)), "user",
                        "movie", aligned=False)
    assert list(run.outputs) == [10, 30, 20] and run.processed == 4
    assert [run.source_of(m) for m in (10, 30, 20)] == [2, 3, 10]
    # a row now written by the key of the same value: its own source again
    run = apply_records(by_movie, _records((1, 10), (10, 10)), "user", "movie", aligned=False)
    assert run.source_of(10) == 10


@pytest.mark.parametrize("output, error", [
    (lambda r: Record(user=r.user + 1, movie=0), "a row for key 2"),
    (lambda r: Record(movie=0), "no column 'user'"),
    (lambda r: 42, "not Records"),
])
def test_a_bad_output_fails_its_key_which_is_then_skipped(output, error):
    def on_record(record: Record) -> Record:
        return output(record) if record.user == 1 else record

    run = apply_records(on_record, _records((1, 1), (2, 2), (1, 3)), "user", "user",
                        aligned=True)
    assert list(run.outputs) == [2] and list(run.failed) == [1] and run.processed == 2
    assert error in str(run.failed[1])


def test_operators_run_with_the_cyclic_collector_paused_and_it_resumes_after(server):
    seen = []

    class Watches(Identity):
        def on_record(self, record: Record) -> Record:
            seen.append(gc.isenabled())
            if record.id == 2:
                raise ValueError("boom")
            return record

    class Batch(Operator):
        def on_batch(self, frame):  # noqa: ANN001, ANN201 - a DataFrame in, out
            seen.append(gc.isenabled())
            raise ValueError("boom")

    rows = [{"id": i, "value": i} for i in range(3)]
    source = server.create_source(ListSource, args=(SINK, rows, 3), name="src")
    source.map(Watches, args=(SINK,), name="per_record")
    source.map(Batch, args=(SINK,), name="batched")
    with pytest.raises(OperatorError, match="boom"):
        server.step()
    assert len(seen) > 3 and not any(seen)
    assert gc.isenabled()
