"""The pipeline served by the end-to-end tests: `ralf serve tests/e2e/pipeline.py`.

With ``RALF_E2E_GATE`` set to a path, the source emits the first half of its records and
then waits ("nothing yet") until that file exists: the test queries a server that is
certainly part way through ingesting, then opens the gate.
"""

from __future__ import annotations

import os
from pathlib import Path

from ralf import Ralf
from ralf.testing import ListSource
from tests.pipelines import AVERAGE, COUNT, RATINGS, AverageRating, CountPerKey, ratings

N = int(os.environ.get("RALF_E2E_RECORDS", "6000"))


class GatedSource(ListSource):
    """A ListSource that holds back its second half until the gate file exists."""

    def __init__(self, *args, gate: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate

    def next(self):
        if (self.gate and self.position >= len(self.rows) // 2
                and not Path(self.gate).exists()):
            return []
        return super().next()


def build(server: Ralf) -> None:
    source = server.create_source(GatedSource, args=(RATINGS, ratings(N, users=300), 100),
                                  kwargs={"gate": os.environ.get("RALF_E2E_GATE")},
                                  name="ratings")
    source.map(AverageRating, args=(AVERAGE,), name="average")
    source.map(CountPerKey, args=(COUNT,), name="counts_lazy", lazy=True)
    source.map(CountPerKey, args=(COUNT,), name="counts_budgeted", budget=20)
