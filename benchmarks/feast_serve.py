"""A Feast feature repository holding the latency benchmark's table, for ``feast serve``.

    /tmp/feastenv/bin/python benchmarks/feast_serve.py REPO_DIR --keys 100000

Run with an interpreter that has feast (it imports nothing of ralf). Writes REPO_DIR with
a local provider, a SQLite online store, the entity ``user`` (join key ``user_id``) and
the feature view ``user_stats`` (``average_rating``, ``n_ratings``) holding the same
values as benchmarks/latency_pipeline.py's ``user_stats``, written straight to the online
store (``write_to_online_store``). Then ``feast -c REPO_DIR serve`` serves it.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

YAML = """project: ralf_bench
registry: data/registry.db
provider: local
online_store:
  type: sqlite
  path: data/online.db
entity_key_serialization_version: 3
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo")
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args()
    # this file's folder holds benchmarks/feast.py, which would shadow the feast package
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    os.makedirs(os.path.join(args.repo, "data"), exist_ok=True)
    with open(os.path.join(args.repo, "feature_store.yaml"), "w") as f:
        f.write(YAML)
    # the values of benchmarks/latency_pipeline.py: one rating per user
    rng = np.random.default_rng(1)
    ratings = rng.integers(1, 6, args.keys).astype(float)
    stamp = datetime.now(UTC) - timedelta(minutes=1)
    frame = pd.DataFrame({"user_id": np.arange(1, args.keys + 1), "average_rating": ratings,
                          "n_ratings": np.ones(args.keys, np.int64),
                          "event_timestamp": stamp})
    parquet = os.path.abspath(os.path.join(args.repo, "data", "user_stats.parquet"))
    frame.to_parquet(parquet)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    view = FeatureView(
        name="user_stats", entities=[user], ttl=timedelta(days=3650),
        schema=[Field(name="average_rating", dtype=Float64), Field(name="n_ratings", dtype=Int64)],
        source=FileSource(name="user_stats_source", path=parquet,
                          timestamp_field="event_timestamp"),
        online=True)
    store = FeatureStore(repo_path=args.repo)
    store.apply([user, view])
    store.write_to_online_store("user_stats", df=frame)
    print("feast repo ready", flush=True)


if __name__ == "__main__":
    main()
