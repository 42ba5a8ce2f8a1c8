"""Refresh: upserts, and operators that fail without losing or doubling anything."""

import pandas as pd
import pytest

from ralf import (
    Operator,
    OperatorError,
    RalfClient,
    Record,
)
from ralf.testing import ListSource
from tests.pipelines import COUNT, RATINGS, SINK, CountPerKey, Identity, ratings


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


class FailsOnUser(Operator):
    def __init__(self, schema, bad_user):
        self.bad_user = bad_user
        self.counts = {}

    def on_record(self, record):
        self.counts[record.user] = self.counts.get(record.user, 0) + 1  # mutate, then fail
        if record.user == self.bad_user:
            raise ValueError("boom")
        return Record(user=record.user, count=self.counts[record.user])


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

