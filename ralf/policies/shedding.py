"""Built-in load-shedding policies: which records a feature table processes at all."""

from __future__ import annotations

import random
from typing import Any

from ralf.policies.base import LoadSheddingPolicy, key_weights
from ralf.schema import Record


class SampleRate(LoadSheddingPolicy):
    """Keep each record with probability ``rate`` (``SampleRate(0.5)`` is the tutorial's
    SampleHalf): a fixed cut in cost for features that tolerate sampling (averages)."""

    def __init__(self, rate: float, seed: int | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"SampleRate: rate must be within [0, 1], got {rate!r}")
        self.rate = rate
        self._random = random.Random(seed)

    def process(self, record: Record) -> bool:
        """Keep the record with probability ``rate``."""
        return self._random.random() < self.rate


class KeyWeightedSampling(LoadSheddingPolicy):
    """Keep a record with a per-key probability (dict, Series, two-column DataFrame or CSV
    path of key -> probability; ``default`` for unlisted keys). ``normalize=True`` divides
    by the largest weight, so raw activity figures can be given as they are."""

    def __init__(self, weights: Any, default: float = 1.0, seed: int | None = None,
                 normalize: bool = False, key: str | None = None) -> None:
        table = key_weights(weights, "KeyWeightedSampling weights")
        if normalize and table:
            top = max(table.values())
            table = {k: v / top for k, v in table.items()} if top > 0 else table
        bad = {k: v for k, v in table.items() if not 0.0 <= v <= 1.0}
        if bad or not 0.0 <= default <= 1.0:
            sample = next(iter(bad.items()), ("default", default))
            raise ValueError(f"KeyWeightedSampling: probabilities must be within [0, 1] "
                             f"(e.g. {sample[0]!r}: {sample[1]!r}); use normalize=True")
        self.weights = table
        self.default = default
        self.key = key
        self._random = random.Random(seed)

    def process(self, record: Record) -> bool:
        """Keep the record with its key's probability (the key read from the ``key`` column
        if given, else the routing key)."""
        key = getattr(record, self.key or self.routing_key)
        return self._random.random() < self.weights.get(key, self.default)


class NewerThanCurrent(LoadSheddingPolicy):
    """Process a record only if its ``field`` is newer than the key's current feature row's
    (out-of-order or replayed events are dropped). NULLs: a current row without the field
    is older than any record; a record without it cannot be shown newer and is dropped
    (as SQL's ``>`` would)."""

    def __init__(self, field: str) -> None:
        self.field = field

    def process(self, record: Record, current: Record | None) -> bool:
        """Keep the record if its ``field`` is newer than the current row's, or there is no
        current value to compare with."""
        mine = getattr(record, self.field)
        theirs = None if current is None else getattr(current, self.field)
        if theirs is None:
            return True
        return mine is not None and mine > theirs


class LatestOnly(LoadSheddingPolicy):
    """Of a key's pending appends, process only the newest (the original system's LIFO
    behaviour): for features that only depend on the latest value."""

    def process(self, record: Record) -> bool:
        """Keep every record: the newest of each key is chosen in :meth:`select`."""
        return True  # the work is done in select()

    def select(self, records: list[Record], key: str) -> list[Record]:
        """The newest (last) record of each key, in their original order."""
        last: dict[Any, Record] = {}
        for record in records:
            last[getattr(record, key)] = record
        keep = {id(r) for r in last.values()}
        return [r for r in records if id(r) in keep]
