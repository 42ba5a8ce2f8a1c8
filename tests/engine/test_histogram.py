"""Fixed-bucket histograms: a value lands in the first bucket whose bound is at least it,
one at a time or many at once, and export cumulatively as Prometheus wants."""

from __future__ import annotations

import numpy as np
import pytest

from ralf.engine.histogram import LATENCY_BOUNDS, STALENESS_BOUNDS, Histogram


def test_a_value_on_a_bound_lands_in_that_bound_bucket():
    h = Histogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 2.0, 2.5):
        h.observe(value)
    assert h.counts == [2, 2, 1]
    assert h.cumulative() == {"le": [1.0, 2.0, "+Inf"], "buckets": [2, 4, 5], "count": 5,
                              "sum": 7.5}


@pytest.mark.parametrize("bounds", [LATENCY_BOUNDS, STALENESS_BOUNDS])
def test_many_at_once_equals_one_at_a_time(bounds):
    values = np.concatenate([np.random.default_rng(1).exponential(5.0, 500),
                             np.array(bounds[:3]), [0.0, 1e9]])
    one = Histogram(bounds)
    for v in values:
        one.observe(float(v))
    many = Histogram.of(bounds, values)
    assert many.counts == one.counts
    assert many.sum == pytest.approx(one.sum)
    assert many.cumulative()["count"] == len(values)


def test_an_empty_histogram():
    assert Histogram.of(STALENESS_BOUNDS, np.array([])).cumulative()["buckets"] == [0] * (
        len(STALENESS_BOUNDS) + 1)
