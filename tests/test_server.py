"""Ralf end to end in process: sources -> append tables -> operators -> feature tables."""

import pandas as pd
import pytest

from ralf import (
    KeyNotFound,
    OperatorError,
    Ralf,
    RalfClient,
    Record,
    SchemaError,
    SourceOperator,
    TableNotFound,
)
from ralf.testing import ListSource, ManualClock, recompute
from tests.pipelines import (
    AVERAGE,
    COUNT,
    RATINGS,
    SINK,
    AverageRating,
    CountPerKey,
    Identity,
    ratings,
)


def test_every_record_of_a_source_reaches_the_sink(server):
    source = server.create_source(
        ListSource, args=(SINK, [{"id": i, "value": i * i} for i in range(1, 101)], 7))
    sink = source.map(Identity, args=(SINK,), name="sink")
    server.run()
    df = RalfClient(server).bulk_query(sink.name)
    assert df["id"].tolist() == list(range(1, 101))
    assert df["value"].tolist() == [i * i for i in range(1, 101)]


def test_the_tutorial_sketch_runs_with_the_contract_fixes_only(server):
    class RatingsSource(SourceOperator):
        def __init__(self, schema, rows):  # never calls super().__init__
            self.rows = iter(rows)

        def next(self):
            batch = [Record(**r) for r in (next(self.rows, None) for _ in range(10)) if r]
            return batch or None

    source = server.create_source(RatingsSource, args=(RATINGS, ratings(95)))
    assert source.name == "ratings_source"
    average = source.map(AverageRating, args=(AVERAGE,))
    server.run()
    assert average.name == "average_rating"
    expected = recompute(server, source.name, AverageRating(AVERAGE), "user")
    assert_frames_equal(RalfClient(server).bulk_query(average.name), expected)


def test_unknown_key_and_unknown_table(server):
    source = server.create_source(ListSource, args=(SINK, [{"id": 1, "value": 1}]), name="s")
    source.map(Identity, args=(SINK,), name="t")
    server.run()
    client = RalfClient(server)
    with pytest.raises(KeyNotFound, match="no row for key 2"):
        client.point_query("t", 2)
    with pytest.raises(KeyError):  # KeyNotFound is a KeyError too
        client.point_query("t", 2)
    with pytest.raises(TableNotFound, match="nope"):
        client.point_query("nope", 1)
    with pytest.raises(TableNotFound):
        client.bulk_query("nope")


def test_schema_violations_name_table_and_column_and_spare_other_records(server):
    rows = [{"id": 1, "value": 1}, {"id": 2, "value": "two"}, {"id": 3}, {"id": 4, "value": 4}]
    source = server.create_source(ListSource, args=(SINK, rows), name="src")
    source.map(Identity, args=(SINK,), name="t")
    with pytest.raises(SchemaError, match="table 'src'") as info:
        server.run()
    assert info.value.table == "src" and info.value.column in ("value",)
    assert RalfClient(server).bulk_query("t")["id"].tolist() == [1, 4]
    rejected = server.rejected().sort_values("id", ignore_index=True)
    assert rejected["table_name"].tolist() == ["src", "src"]
    assert "missing column 'value'" in " ".join(rejected["reason"])
    assert server.metrics()["tables"]["src"]["rejected"] == 2


def test_source_batches_may_be_dataframes_or_arrow_tables(server):
    import pyarrow as pa

    class FrameSource(SourceOperator):
        def __init__(self, schema):
            self.batches = [
                pd.DataFrame({"id": [1, 2], "value": [1, 2]}),
                pa.table({"id": [3], "value": [3]}),
            ]

        def next(self):
            return self.batches.pop(0) if self.batches else None

    server.create_source(FrameSource, args=(SINK,), name="frames").map(
        Identity, args=(SINK,), name="t")
    server.run()
    assert RalfClient(server).bulk_query("t")["id"].tolist() == [1, 2, 3]


def test_background_processing_and_context_manager(db_path):
    with Ralf(db_path) as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(500), 10),
                                      name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts")
        server.start()
        assert server.wait_drained(timeout=60), "the background thread did not drain"
        # all of it done by the thread: the test itself never called step() or run()
        total = server.sql("SELECT sum(count) AS n FROM counts")["n"][0]
        assert total == 500 and server.metrics()["ticks"] >= 50
        server.stop()
        server.start()  # started again, it finds nothing to do and drains at once
        assert server.wait_drained(timeout=60)
        server.stop()
    with pytest.raises(Exception, match="closed"):
        server.step()


def test_run_times_out_on_a_source_that_never_ends(server):
    class Forever(SourceOperator):
        def next(self):
            return []

    server.create_source(Forever, args=(SINK,), name="forever")
    with pytest.raises(TimeoutError):
        server.run(timeout=0.2)


def test_a_source_that_raises_is_reported_and_given_up_after_max_failures(make_ralf):
    class Broken(SourceOperator):
        def next(self):
            raise OSError("disk on fire")

    with make_ralf(max_failures=2) as server:
        server.create_source(Broken, args=(SINK,), name="broken")
        with pytest.raises(OperatorError, match="disk on fire"):
            server.run(timeout=5)
        assert len(server.errors) == 2


def assert_frames_equal(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    got = got.sort_values(list(got.columns)[0]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected[list(got.columns)], check_dtype=False)


def test_metrics_count_work_and_measure_staleness_on_the_clock(make_ralf):
    clock = ManualClock()
    with make_ralf(clock=clock) as server:
        rows = ratings(300, users=10)
        source = server.create_source(ListSource, args=(RATINGS, rows, 300), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="eager")
        source.map(CountPerKey, args=(COUNT,), name="lazy", lazy=True)
        source.map(CountPerKey, args=(COUNT,), name="budgeted", budget=4)
        server.step()
        clock.advance(10)
        client = RalfClient(server)
        client.point_query("eager", 1)
        m = server.metrics()
        assert m["ticks"] == 1
        assert m["tables"]["ratings"]["ingested"] == 300
        eager, lazy, budgeted = (m["tables"][t] for t in ("eager", "lazy", "budgeted"))
        assert eager["processed"] == 300 and eager["stale_keys"] == 0
        assert eager["refresh_seconds"] > 0  # wall time, not the manual clock
        assert eager["queries"] == 1 and eager["staleness_max"] == 0.0
        assert lazy["stale_keys"] == 10 and lazy["pending_appends"] == 300
        assert lazy["staleness_p50"] == lazy["staleness_max"] == 10.0
        assert budgeted["refreshes"] == 4 and budgeted["stale_keys"] == 6
        assert budgeted["staleness_p99"] == 10.0
