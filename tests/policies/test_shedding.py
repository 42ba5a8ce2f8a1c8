"""Load-shedding policies: sampling fractions, per-key weights, newer-than-current, latest-only."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ralf import RalfClient, Record, Schema
from ralf.policies import KeyWeightedSampling, LatestOnly, NewerThanCurrent, SampleRate
from ralf.testing import ListSource
from tests.pipelines import COUNT, RATINGS, SINK, CountPerKey, Identity, ratings


def _within_binomial(kept: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(kept - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_sample_rate_keeps_the_right_fraction(rate):
    policy = SampleRate(rate, seed=42)
    n = 20_000
    kept = sum(policy.process(Record(user=1)) for _ in range(n))
    assert _within_binomial(kept, n, rate)


def test_sample_rate_is_reproducible_with_a_seed_and_checks_its_rate():
    first = SampleRate(0.5, seed=1)
    second = SampleRate(0.5, seed=1)
    assert [first.process(None) for _ in range(50)] == [second.process(None) for _ in range(50)]
    with pytest.raises(ValueError, match="rate"):
        SampleRate(1.5)


def test_sample_rate_in_a_pipeline_counts_what_it_sheds(make_ralf):
    rows = ratings(4000, users=10)
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 500), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts").add_load_shedding(
            SampleRate, args=(0.25,), kwargs={"seed": 3})
        server.run()
        m = server.metrics()["tables"]["counts"]
        assert m["processed"] + m["shed"] == 4000
        assert _within_binomial(m["processed"], 4000, 0.25)
        total = RalfClient(server).sql("SELECT sum(count) AS n FROM counts")["n"][0]
        assert total == m["processed"]


def test_key_weighted_sampling_uses_per_key_probabilities(tmp_path, make_ralf):
    weights = pd.DataFrame({"user": [1, 2], "keep": [1.0, 0.0]})
    path = tmp_path / "user_active_time.csv"
    weights.to_csv(path, index=False)
    rows = [{"user": u, "movie": 1, "rating": 1.0} for u in [1, 2, 3] * 200]
    for source_of_weights in (weights, str(path), {1: 1.0, 2: 0.0}):
        with make_ralf() as server:
            source = server.create_source(ListSource, args=(RATINGS, rows), name="ratings")
            table = source.map(CountPerKey, args=(COUNT,), name="counts")
            table.add_load_shedding(KeyWeightedSampling(source_of_weights, default=0.5, seed=1))
            server.run()
            counts = RalfClient(server).bulk_query("counts").set_index("user")["count"]
            assert counts[1] == 200 and 2 not in counts.index
            assert _within_binomial(counts[3], 200, 0.5)


def test_key_weighted_sampling_normalizes_raw_activity_on_request():
    policy = KeyWeightedSampling({1: 30.0, 2: 60.0}, normalize=True, key="user")
    assert policy.weights == {1: 0.5, 2: 1.0}
    with pytest.raises(ValueError, match="normalize=True"):
        KeyWeightedSampling({1: 30.0})


def test_newer_than_current_rejects_older_records(make_ralf):
    stamped = Schema("id", {"id": int, "value": int})
    rows = [{"id": 1, "value": v} for v in [5, 3, 8, 8, 2, 9, 1]]
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(stamped, rows, 2), name="events")
        source.map(Identity, args=(SINK,), name="latest").add_load_shedding(
            NewerThanCurrent, args=("value",))
        server.run()
        assert RalfClient(server).point_query("latest", 1).value == 9
        assert server.metrics()["tables"]["latest"]["shed"] == 4  # 3, 8 (equal), 2, 1


def test_latest_only_processes_only_each_keys_newest_pending_append(make_ralf):
    seen = []

    class Recorder(CountPerKey):
        def on_record(self, record):
            seen.append((record.user, record.movie))
            return super().on_record(record)

    rows = [{"user": u, "movie": m, "rating": 1.0} for m in range(1, 6) for u in (1, 2)]
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 10), name="ratings")
        source.map(Recorder, args=(COUNT,), name="counts").add_load_shedding(LatestOnly())
        server.run()
        assert sorted(seen) == [(1, 5), (2, 5)]
        assert server.metrics()["tables"]["counts"]["shed"] == 8


def test_newer_than_current_with_nulls_in_its_field(make_ralf):
    """A NULL in the field never raises: a current row without it is older than any
    record; a record without it cannot be shown newer and is shed."""
    stamped = Schema("id", {"id": int, "value": int})
    rows = [{"id": 1, "value": None}, {"id": 1, "value": 4}, {"id": 1, "value": None},
            {"id": 1, "value": 6}]
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(stamped, rows, 1), name="events")
        source.map(Identity, args=(SINK,), name="latest").add_load_shedding(
            NewerThanCurrent, args=("value",))
        server.run()
        assert RalfClient(server).point_query("latest", 1).value == 6
        assert server.metrics()["tables"]["latest"]["shed"] == 1  # the second NULL


def test_an_on_batch_operator_sees_only_what_a_process_policy_keeps(make_ralf):
    """``process`` policies shed ahead of ``on_batch`` too: the vectorised operator's
    result equals the per-record operator's over the same kept records."""
    from ralf import LoadSheddingPolicy
    from tests.engine.test_refresh import BatchAverage
    from tests.pipelines import AVERAGE, AverageRating

    class HighOnly(LoadSheddingPolicy):
        def process(self, record):
            return record.rating >= 3

    rows = ratings(600, users=8)
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
        source.map(BatchAverage, args=(AVERAGE,), name="batch").add_load_shedding(HighOnly)
        source.map(AverageRating, args=(AVERAGE,), name="per_record").add_load_shedding(
            HighOnly)
        server.run()
        client = RalfClient(server)
        kept = sum(r["rating"] >= 3 for r in rows)
        assert server.metrics()["tables"]["batch"]["shed"] == len(rows) - kept
        pd.testing.assert_frame_equal(client.bulk_query("batch"),
                                      client.bulk_query("per_record"), check_dtype=False)
