"""Policy interfaces: load shedding (which records to process) and prioritization (which key).

User policies implement the tutorial's one-call interfaces; the scheduler binds
``self.view`` (a :class:`ralf.engine.progress.KeyView`) before asking, so policies can
read per-key pending information without touching storage.
"""

from __future__ import annotations

import inspect
from typing import Any

from ralf.schema import Record


class LoadSheddingPolicy:
    """``process(record)`` or ``process(record, current)`` -> True to process, False to shed."""

    def process(self, record: Record, *current: Record | None) -> bool:
        return True


class PrioritizationPolicy:
    """``choose(keys)`` -> the stale key to refresh next."""

    view: Any = None  # KeyView of the table, bound by the scheduler

    def choose(self, keys: list[Any]) -> Any:
        return keys[0]

    def choose_many(self, keys: list[Any], k: int) -> list[Any]:
        """Pick up to k keys. The default asks ``choose`` repeatedly; built-ins do better."""
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


def wants_current(policy: LoadSheddingPolicy) -> bool:
    """True for the two-argument form ``process(record, current)``."""
    params = [
        p for p in inspect.signature(policy.process).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(params) >= 2
