"""The tick: ingest a batch per source, then refresh eager tables within their budgets.

Everything that mutates tables runs under one lock (ticks and lazy refreshes alike), so
a query-triggered refresh and a background tick never interleave. Point queries on eager
tables read the serving cache without taking it.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ralf.clock import Clock, SystemClock
from ralf.engine.ingest import pull
from ralf.engine.node import FeatureNode, Node, SourceNode
from ralf.engine.progress import StaleKeys
from ralf.engine.refresh import refresh
from ralf.errors import RalfError
from ralf.faults import crashpoint


class Scheduler:
    def __init__(self, max_failures: int = 3, clock: Clock | None = None,
                 history_retention: float | None = None) -> None:
        self.sources: list[SourceNode] = []
        self.features: list[FeatureNode] = []  # in creation order, hence topological
        self.max_failures = max_failures
        self.clock = clock or SystemClock()
        self.lock = threading.RLock()
        self._waiting = 0  # queries waiting for the lock (lazy refreshes, metrics)
        self.ticks = 0
        self.history_retention = history_retention
        self._compacted_at: dt.datetime | None = None

    # ---- one tick -------------------------------------------------------------------------
    def tick(self) -> tuple[bool, list[RalfError]]:
        """Run one tick; returns (whether anything happened, errors met on the way)."""
        errors: list[RalfError] = []
        worked = False
        with self.lock:
            now = self.clock.now()
            for source in self.sources:
                if not self._failed(source) and source.retry_tick <= self.ticks:
                    worked |= pull(source, errors, now, self.ticks)
            for node in self.features:
                node.tick = self.ticks
                if not node.lazy:
                    worked |= self._refresh_eager(node, errors, now) > 0
            self.ticks += 1
            self._compact(now)
            crashpoint("tick.end")
        return worked, errors

    def _failed(self, source: SourceNode) -> bool:
        return source.failures >= self.max_failures

    def _refresh_eager(self, node: FeatureNode, errors: list[RalfError], now: dt.datetime
                       ) -> int:
        if node.pending is None:
            if not node.has_work():
                return 0
            return refresh(node, None, errors, self.max_failures, now)
        return refresh(node, self.choose(node, now), errors, self.max_failures, now)

    def choose(self, node: FeatureNode, now: dt.datetime) -> list[Any]:
        """The stale keys to refresh this tick: all of them, or the policy's pick within budget."""
        stale = StaleKeys(node.pending, node.held, node.cache, now)
        if node.budget is None or len(stale) <= node.budget:
            return list(stale)
        policy = node.priority or node.default_priority
        policy.view = stale
        return policy.choose_many(stale, node.budget)

    def _compact(self, now: dt.datetime) -> None:
        """Apply the history retention, at most once a minute (or once per retention)."""
        if self.history_retention is None:
            return
        period = dt.timedelta(seconds=min(60.0, self.history_retention))
        if self._compacted_at is not None and now - self._compacted_at < period:
            return
        self._compacted_at = now
        cutoff = now - dt.timedelta(seconds=self.history_retention)
        for node in self.features:
            marks = [min([c.marks.floor, *c.marks.overrides.values()]) for c in node.children]
            keep_from = min(marks) + 1 if marks else node.seq + 1
            node.storage.compact_history(node.info, cutoff, keep_from)

    # ---- lazy refresh -----------------------------------------------------------------------
    def ensure_fresh(self, node: Node, key: Any = None) -> list[RalfError]:
        """Bring a lazy table (and its lazy ancestors) up to date for one key, or all keys."""
        errors: list[RalfError] = []
        with self.turn():
            self._ensure_fresh(node, key, errors, self.clock.now())
        return errors

    @contextmanager
    def turn(self) -> Iterator[None]:
        """The engine lock, for a query: announced, so back-to-back ticks make way for it.
        (Python's locks are not fair; a busy tick loop would otherwise starve queries.)"""
        self._waiting += 1
        with self.lock:
            self._waiting -= 1
            yield

    def make_way(self, limit: float = 0.05) -> None:
        """Between ticks: let announced queries take the lock first (bounded wait)."""
        deadline = time.monotonic() + limit
        while self._waiting > 0 and time.monotonic() < deadline:
            time.sleep(0.0005)

    def _ensure_fresh(self, node: Node, key: Any, errors: list[RalfError], now: dt.datetime
                      ) -> None:
        if not isinstance(node, FeatureNode) or not node.on_lazy_path:
            return
        if not node.aligned:
            key = None
        self._ensure_fresh(node.parent, key, errors, now)
        if node.pending is None:  # an eager table below a lazy one: refreshed in full
            if node.has_work():
                refresh(node, None, errors, self.max_failures, now)
            return
        if key is None:
            keys = node.stale_keys()
        else:
            keys = [key] if key in node.pending and key not in node.held else []
        if keys:
            crashpoint("lazy.before_refresh")
            refresh(node, keys, errors, self.max_failures, now)

    # ---- whole runs -------------------------------------------------------------------------
    def drained(self) -> bool:
        """Every source exhausted (or given up on), every eager table without pending work."""
        return all(s.exhausted or self._failed(s) for s in self.sources) and not any(
            node.has_work(now_only=False) for node in self.features if not node.lazy
        )

    def run(self, timeout: float | None = None, idle_wait: float = 0.005) -> list[RalfError]:
        deadline = None if timeout is None else time.monotonic() + timeout
        errors: list[RalfError] = []
        while True:
            worked, tick_errors = self.tick()
            errors.extend(tick_errors)
            if self.drained():
                return errors
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run() did not drain within {timeout} s")
            if not worked:
                self.clock.sleep(idle_wait)  # sources have nothing yet: poll again shortly
