"""Fixed-bucket histograms of durations, cheap to observe on the hot path (a bisect and two
additions) and exported in Prometheus' cumulative form (``le`` bounds, counts, sum)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

import numpy as np

# Seconds a refresh takes: from a cached key (sub-millisecond) to a whole-table rebuild.
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                  2.5, 5.0, 10.0, 30.0)
# Seconds a stale key has waited: from one tick to an hour of backlog.
STALENESS_BOUNDS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                    3600.0)


class Histogram:
    """Counts of observed values per bucket (a value ``v`` lands in the first bucket whose
    bound is ``>= v``; past the last bound, in ``+Inf``) and their sum."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @classmethod
    def of(cls, bounds: Sequence[float], values: np.ndarray) -> Histogram:
        """The histogram of many values at once."""
        histogram = cls(bounds)
        slots = np.searchsorted(np.asarray(histogram.bounds), values, side="left")
        histogram.counts = np.bincount(slots, minlength=len(histogram.counts)).tolist()
        histogram.sum = float(values.sum())
        return histogram

    def cumulative(self) -> dict[str, Any]:
        """Prometheus' form: ``le`` (the bounds, then ``"+Inf"``), ``buckets`` (values at or
        under each bound), ``count`` and ``sum``."""
        running, buckets = 0, []
        for n in self.counts:
            running += n
            buckets.append(running)
        return {"le": [*self.bounds, "+Inf"], "buckets": buckets, "count": running,
                "sum": self.sum}
