"""The pipeline served by the end-to-end tests: `ralf serve tests/e2e/pipeline.py`."""

from __future__ import annotations

import os

from ralf import Ralf
from ralf.testing import ListSource
from tests.pipelines import AVERAGE, COUNT, RATINGS, AverageRating, CountPerKey, ratings

N = int(os.environ.get("RALF_E2E_RECORDS", "30000"))


def build(server: Ralf) -> None:
    source = server.create_source(ListSource, args=(RATINGS, ratings(N, users=300), 100),
                                  name="ratings")
    source.map(AverageRating, args=(AVERAGE,), name="average")
    source.map(CountPerKey, args=(COUNT,), name="counts_lazy", lazy=True)
    source.map(CountPerKey, args=(COUNT,), name="counts_budgeted", budget=20)
