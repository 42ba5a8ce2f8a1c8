"""Policy interfaces: load shedding (which records to process) and prioritization (which key).

User policies implement the tutorial's one-call interfaces, ``process(record)`` and
``choose(keys)``. Built-in policies also use the optional, faster paths: ``select`` for
a key's pending records as a whole, ``choose_many`` for k keys at once, and the
``on_*`` hooks to maintain their own priority structures incrementally.
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ralf.schema import Record


class LoadSheddingPolicy:
    """``process(record)`` or ``process(record, current)`` -> True to process, False to shed.

    ``self.routing_key`` (the name of the key column of the records) is bound by ralf.
    """

    routing_key: str = ""

    def process(self, record: Record, *current: Record | None) -> bool:
        """True to process ``record``, False to shed it; ``current`` (two-argument form) is
        the key's feature row as it stands, or None. The default keeps every record."""
        return True

    def select(self, records: list[Record], key: str) -> list[Record] | None:
        """Optionally choose among all pending records of a refresh at once (``key`` names
        the routing-key column). None (the default) means: ask ``process`` per record."""
        return None


class PrioritizationPolicy:
    """``choose(keys)`` -> the stale key to refresh next.

    ``keys`` is a :class:`ralf.engine.progress.StaleKeys`: a sequence of the stale keys in
    FIFO order that also answers ``pending_count(key)``, ``first_seq(key)``,
    ``first_at(key)``, ``updated_at(key)``. The same object is bound as ``self.stale``.
    """

    stale: Any = None  # the StaleKeys of the current choice

    def choose(self, keys: Sequence[Any]) -> Any:
        """The stale key to refresh next (one of ``keys``); the default takes the first, the
        oldest pending append."""
        return next(iter(keys))

    def choose_many(self, keys: Sequence[Any], k: int) -> list[Any]:
        """Pick up to k keys. The default asks ``choose`` k times (O(k·n), fine for small
        tables); built-in policies override it with O(n) or better."""
        remaining = list(keys)
        chosen = []
        while remaining and len(chosen) < k:
            key = self.choose(remaining)
            try:
                remaining.remove(key)
            except ValueError:
                raise ValueError(
                    f"{type(self).__name__}.choose returned {key!r}, which is not a stale key"
                ) from None
            chosen.append(key)
        return chosen

    # Hooks for policies that keep their own structures; called under the engine lock.
    def on_pending(self, keys: list[Any]) -> None:
        """Keys that got new pending appends, in the order of their newest append."""

    def on_refresh(self, keys: list[Any], at: dt.datetime) -> None:
        """Keys just refreshed."""

    def on_query(self, key: Any, at: dt.datetime) -> None:
        """A client asked for this key."""

    def on_error(self, key: Any, error: float, at: dt.datetime) -> None:
        """A client reported the prediction error it observed using this key's features."""


def selects(policy: LoadSheddingPolicy) -> bool:
    """True if the policy chooses among a refresh's records as a whole."""
    return getattr(type(policy), "select", LoadSheddingPolicy.select) is not (
        LoadSheddingPolicy.select)


def wants_current(policy: LoadSheddingPolicy) -> bool:
    """True for the two-argument form ``process(record, current)``."""
    params = [
        p for p in inspect.signature(policy.process).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(params) >= 2


def key_weights(source: Any, what: str) -> dict[Any, float]:
    """A key -> number mapping from a dict, a pandas Series/DataFrame or a CSV path."""
    import pandas as pd

    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, str):
        source = pd.read_csv(source)
    if isinstance(source, pd.Series):
        return source.to_dict()
    if isinstance(source, pd.DataFrame):
        if source.shape[1] != 2:
            raise ValueError(f"{what}: a DataFrame needs two columns (key, value), "
                             f"got {list(source.columns)}")
        return dict(zip(source.iloc[:, 0].tolist(), source.iloc[:, 1].tolist(), strict=True))
    raise TypeError(f"{what}: expected a dict, a pandas Series/DataFrame or a CSV path, "
                    f"got {type(source).__name__}")
