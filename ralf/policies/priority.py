"""Built-in prioritization policies."""

from __future__ import annotations

import heapq
from typing import Any

from ralf.policies.base import PrioritizationPolicy


class FIFO(PrioritizationPolicy):
    """The key whose oldest pending append is oldest goes first (the default under a budget)."""

    def choose(self, keys: list[Any]) -> Any:
        return min(keys, key=self.view.first_seq)

    def choose_many(self, keys: list[Any], k: int) -> list[Any]:
        return heapq.nsmallest(k, keys, key=self.view.first_seq)
