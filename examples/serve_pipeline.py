"""A pipeline file for `ralf serve`: the tutorial's ratings stream and average features.

    ralf serve examples/serve_pipeline.py --db features.duckdb --port 8000

`ralf serve` imports this file and calls build(server) on a Ralf opened on --db.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from examples.tutorial import (  # noqa: E402
    AVERAGE_SCHEMA,
    RATINGS_SCHEMA,
    AverageRating,
    RatingsSource,
    generate,
)
from ralf import Ralf  # noqa: E402
from ralf.policies import Lottery  # noqa: E402


def build(server: Ralf) -> None:
    data = generate(int(os.environ.get("RALF_RATINGS", "100000")), 2000, 500, seed=0)
    ratings = server.create_source(RatingsSource, args=(RATINGS_SCHEMA, data.ratings),
                                   name="ratings")
    ratings.map(AverageRating, args=(AVERAGE_SCHEMA,), name="average")
    ratings.map(AverageRating, args=(AVERAGE_SCHEMA,), name="average_lazy", lazy=True)
    ratings.map(AverageRating, args=(AVERAGE_SCHEMA,), name="average_budgeted",
                budget=50).add_prioritization_policy(Lottery(data.active_minutes, seed=0))
