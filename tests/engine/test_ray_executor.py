"""Operators on Ray replicas (a local Ray instance): same results as in process, per-key
state on one replica, checkpointed and restored, failures isolated per key."""

from __future__ import annotations

import importlib.util
import pickle

import pandas as pd
import pytest

from ralf import OperatorError, Ralf, RalfClient
from ralf.testing import ListSource, recompute
from tests.pipelines import (
    AVERAGE,
    COUNT,
    RATINGS,
    AverageRating,
    CountPerKey,
    FailsOnUser,
    ratings,
)
from tests.services import unavailable


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    if importlib.util.find_spec("ray") is None:
        unavailable("Ray is not installed: pip install 'ralf[ray]'")
    from ralf.engine.ray_executor import ensure_ray

    ray = ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_two_replicas_equal_the_oracle_and_split_the_keys(make_ralf):
    rows = ratings(1500, users=30)
    with make_ralf(executor="ray", num_replicas=2) as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 250), name="ratings")
        source.map(AverageRating, args=(AVERAGE,), name="average")
        source.map(CountPerKey, args=(COUNT,), name="counts", budget=7)
        server.run()
        expected = recompute(server, "ratings", AverageRating(AVERAGE), "user")
        pd.testing.assert_frame_equal(RalfClient(server).bulk_query("average"), expected,
                                      check_dtype=False)
        counts = RalfClient(server).bulk_query("counts").set_index("user")["count"].to_dict()
        assert counts == pd.DataFrame(rows)["user"].value_counts().to_dict()


def test_each_key_lives_on_one_replica():
    from ralf.engine.ray_executor import Replicas

    rows = ratings(600, users=30)
    replicas = Replicas(AverageRating(AVERAGE), AVERAGE, RATINGS, 2)
    try:
        replicas.apply(RATINGS.records(RATINGS.to_arrow(rows, "ratings")[0]), "user", "user",
                       True, others=None, skip=set())
        keys = [set(pickle.loads(s)["sums"]) for s in pickle.loads(replicas.checkpoint())]
    finally:
        replicas.close()
    assert len(keys) == 2 and keys[0] and keys[1] and not keys[0] & keys[1]
    assert keys[0] | keys[1] == {r["user"] for r in rows}


def test_replica_state_is_checkpointed_and_restored(database):
    db = database
    rows = ratings(800, users=12)
    with Ralf(db, executor="ray", num_replicas=2) as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts")
        for _ in range(3):
            server.step()
    with Ralf(db, executor="ray", num_replicas=2) as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts")
        server.run()
        counts = RalfClient(server).bulk_query("counts").set_index("user")["count"].to_dict()
        assert counts == pd.DataFrame(rows)["user"].value_counts().to_dict()
        # the replicas were restored, not rebuilt by replay: they ran only the 500 records
        # applied after the reopen (a replay would have run all 800)
        assert server.metrics()["tables"]["counts"]["processed"] == 500


def test_a_failing_key_on_a_replica_is_isolated():
    rows = ratings(300, users=5)
    with Ralf(executor="ray", num_replicas=2) as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
        source.map(FailsOnUser, args=(COUNT, 3), name="counts")
        with pytest.raises(OperatorError, match="boom"):
            server.run()
        counts = RalfClient(server).bulk_query("counts").set_index("user")["count"].to_dict()
        truth = pd.DataFrame(rows)["user"].value_counts().to_dict()
        assert counts == {u: n for u, n in truth.items() if u != 3}
