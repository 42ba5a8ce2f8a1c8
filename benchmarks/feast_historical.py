"""Feast's ``get_historical_features`` on the data of benchmarks/time.py part (c), run by an
interpreter that has feast installed (``--vs-feast PYTHON``): the same feature versions
(a parquet file of user, average, event_timestamp — ralf's history) and the same entity
rows (a parquet file of user, event_timestamp). Prints ``feast historical: <seconds> s
for <rows> rows``. Only feast, pandas and pyarrow are imported: ralf need not be
installed there.

    PYTHON benchmarks/feast_historical.py VERSIONS.parquet ENTITIES.parquet
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd

CONFIG = """\
project: ralf_bench
provider: local
registry: data/registry.db
online_store:
  type: sqlite
  path: data/online_store.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""


def main() -> None:
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    versions, entities_path = sys.argv[1], sys.argv[2]
    entities = pd.read_parquet(entities_path)
    entities["event_timestamp"] = pd.to_datetime(entities["event_timestamp"], utc=True)
    with tempfile.TemporaryDirectory() as repo:
        (Path(repo) / "data").mkdir()
        (Path(repo) / "feature_store.yaml").write_text(CONFIG)
        store = FeatureStore(repo_path=repo)
        user = Entity(name="user", join_keys=["user"], value_type=ValueType.INT64)
        view = FeatureView(name="features", entities=[user], ttl=timedelta(days=3650),
                           schema=[Field(name="average", dtype=Float64)],
                           source=FileSource(path=versions, timestamp_field="event_timestamp"))
        store.apply([user, view])
        start = time.perf_counter()
        result = store.get_historical_features(entity_df=entities,
                                               features=["features:average"]).to_df()
        seconds = time.perf_counter() - start
    print(f"feast historical: {seconds:.3f} s for {len(result)} rows "
          f"({len(entities)} entity rows asked)")


if __name__ == "__main__":
    main()
