"""Refresh: upserts, and operators that fail without losing or doubling anything."""

import pandas as pd
import pytest

from ralf import (
    Operator,
    OperatorError,
    RalfClient,
)
from ralf.testing import ListSource, recompute
from tests.pipelines import (
    AVERAGE,
    COUNT,
    RATINGS,
    SINK,
    AverageRating,
    CountPerKey,
    FailsOnUser,
    Identity,
    ratings,
)


def test_upsert_replaces_the_row_of_a_key(server):
    rows = [{"id": 1, "value": 10}, {"id": 1, "value": 20}, {"id": 2, "value": 5}]
    source = server.create_source(ListSource, args=(SINK, rows, 1), name="src")
    source.map(Identity, args=(SINK,), name="latest")
    server.step()
    client = RalfClient(server)
    assert client.point_query("latest", 1).value == 10
    server.run()
    assert client.point_query("latest", 1).value == 20
    assert client.sql("SELECT count(*) AS n FROM latest")["n"][0] == 2


def test_a_failing_operator_is_reported_with_table_and_key_and_loses_nothing(server):
    rows = ratings(300, users=5)
    source = server.create_source(ListSource, args=(RATINGS, rows, 50), name="ratings")
    source.map(FailsOnUser, args=(COUNT, 3), name="counts")
    with pytest.raises(OperatorError):
        server.step()  # ingest first batch, refresh: user 3 fails, the others commit
    errors = list(server.errors)
    assert errors and isinstance(errors[0], OperatorError)
    assert errors[0].table == "counts" and errors[0].key == 3
    assert "boom" in str(errors[0])
    with pytest.raises(OperatorError):
        server.run()
    counts = RalfClient(server).bulk_query("counts").set_index("user")["count"].to_dict()
    truth = pd.DataFrame(rows)["user"].value_counts().to_dict()
    assert 3 not in counts  # quarantined: never applied
    assert counts == {u: n for u, n in truth.items() if u != 3}  # applied exactly once
    meta = RalfClient(server).point_query("counts", 1, with_metadata=True)
    assert meta._ralf_quarantined is False
    assert server.metrics()["tables"]["counts"]["quarantined_keys"] == 1


def test_a_failure_in_one_tick_does_not_apply_a_record_twice(server):
    class FlakyOnce(CountPerKey):
        failed = False

        def on_record(self, record):
            out = super().on_record(record)
            if record.user == 2 and not FlakyOnce.failed:
                FlakyOnce.failed = True
                raise RuntimeError("transient")
            return out

    rows = ratings(200, users=4)
    source = server.create_source(ListSource, args=(RATINGS, rows, 40), name="ratings")
    source.map(FlakyOnce, args=(COUNT,), name="counts")
    with pytest.raises(OperatorError, match="transient"):
        server.run()
    counts = RalfClient(server).bulk_query("counts").set_index("user")["count"].to_dict()
    assert counts == pd.DataFrame(rows)["user"].value_counts().to_dict()



class BatchAverage(Operator):
    """The tutorial's AverageRating, vectorised: one pandas call per refresh."""

    def __init__(self, schema):
        self.sums = pd.DataFrame({"s": [], "n": []})

    def on_batch(self, df):
        if (df["rating"] < 0).any():
            bad = df.loc[df["rating"] < 0, "user"].iloc[0]
            raise ValueError(f"negative rating for user {bad}")
        delta = df.groupby("user")["rating"].agg(s="sum", n="count")
        self.sums = self.sums.add(delta, fill_value=0)
        now = self.sums.loc[delta.index]
        return pd.DataFrame({"user": now.index.astype("int64"), "average": now.s / now.n,
                             "n": now.n.astype("int64")})


def test_on_batch_is_used_instead_of_on_record_and_matches_the_oracle(server):
    rows = ratings(3000, users=25)
    source = server.create_source(ListSource, args=(RATINGS, rows, 300), name="ratings")
    source.map(BatchAverage, args=(AVERAGE,), name="batch")
    source.map(BatchAverage, args=(AVERAGE,), name="batch_budgeted", budget=3)
    server.run()
    expected = recompute(server, "ratings", AverageRating(AVERAGE), "user")
    for table in ("batch", "batch_budgeted"):
        got = RalfClient(server).bulk_query(table)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)


class BatchAverageFailingLate(BatchAverage):
    """Raises after it has changed its state: the state must be rolled back."""

    def on_batch(self, df):
        delta = df.groupby("user")["rating"].agg(s="sum", n="count")
        self.sums = self.sums.add(delta, fill_value=0)
        if (df["rating"] < 0).any():
            raise ValueError("negative rating, noticed after the state moved")
        now = self.sums.loc[delta.index]
        return pd.DataFrame({"user": now.index.astype("int64"), "average": now.s / now.n,
                             "n": now.n.astype("int64")})


@pytest.mark.parametrize("operator", [BatchAverage, BatchAverageFailingLate])
def test_on_batch_failures_are_isolated_to_their_key(server, operator):
    rows = ratings(400, users=6)
    rows[50] = {**rows[50], "rating": -1.0}
    bad_user = rows[50]["user"]
    source = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
    source.map(operator, args=(AVERAGE,), name="batch")
    with pytest.raises(OperatorError, match="negative rating"):
        server.run()
    got = RalfClient(server).bulk_query("batch").set_index("user")
    assert bad_user not in got.index
    truth = pd.DataFrame(rows)
    truth = truth[truth.user != bad_user].groupby("user")["rating"].agg(["mean", "count"])
    assert (got["n"] == truth["count"]).all()  # nobody else lost or doubled anything
    assert ((got["average"] - truth["mean"]).abs() < 1e-9).all()


def test_failing_keys_back_off_then_quarantine_and_can_be_released(make_ralf):
    class FailsWhileBroken(CountPerKey):
        broken = True

        def on_record(self, record):
            if record.user == 3 and FailsWhileBroken.broken:
                raise RuntimeError("dependency down")
            return super().on_record(record)

    rows = ratings(200, users=5)
    with make_ralf(max_failures=3) as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 200), name="ratings")
        source.map(FailsWhileBroken, args=(COUNT,), name="counts")
        attempts = []
        for tick in range(8):
            before = server.metrics()["tables"]["counts"]["failures"]
            try:
                server.step()
            except OperatorError:
                pass
            if server.metrics()["tables"]["counts"]["failures"] > before:
                attempts.append(tick)
        assert attempts == [0, 1, 3]  # retried after 1, then 2 ticks; then quarantined
        assert server.quarantined("counts") == [3]
        assert server.metrics()["tables"]["counts"]["quarantined_keys"] == 1
        assert RalfClient(server).point_query("counts", 1, with_metadata=True)._ralf_stale \
            is False
        FailsWhileBroken.broken = False
        assert server.release("counts", 3) == 1
        server.run()
        counts = RalfClient(server).bulk_query("counts").set_index("user")["count"].to_dict()
        assert counts == pd.DataFrame(rows)["user"].value_counts().to_dict()
        assert server.quarantined("counts") == []


def test_a_source_that_fails_is_retried_with_backoff_and_reported(make_ralf):
    class Flaky(ListSource):
        failures_left = 2

        def next(self):
            if Flaky.failures_left:
                Flaky.failures_left -= 1
                raise ConnectionError("broker unreachable")
            return super().next()

    rows = ratings(50, users=3)
    with make_ralf(max_failures=3) as server:
        server.create_source(Flaky, args=(RATINGS, rows, 10), name="ratings").map(
            CountPerKey, args=(COUNT,), name="counts")
        with pytest.raises(OperatorError, match="broker unreachable"):
            server.run()
        assert len([e for e in server.errors if "broker" in str(e)]) == 2
        assert server.metrics()["tables"]["ratings"]["source_failed"] is False
        assert server.sql("SELECT count(*) AS n FROM ratings")["n"][0] == 50
