"""The tick: ingest a batch per source, then refresh eager tables within their budgets.

Everything that mutates tables runs under one lock (ticks and lazy refreshes alike), so
a query-triggered refresh and a background tick never interleave. Point queries on eager
tables read the serving cache without taking it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ralf.clock import Clock, SystemClock
from ralf.engine.failures import WHOLE
from ralf.engine.forget import finish, forget
from ralf.engine.ingest import pull
from ralf.engine.node import FeatureNode, Node, SourceNode
from ralf.engine.progress import StaleKeys
from ralf.engine.refresh import follow_lookup, refresh
from ralf.errors import OperatorError, RalfError, SchemaError, TableError
from ralf.faults import crashpoint

log = logging.getLogger("ralf")


class Scheduler:
    """The engine's driver: the sources and feature tables, run tick by tick under one
    lock, with failing work backed off and lazy tables refreshed on query."""

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
        self._forgets_finished = False  # the forgets a crash left open (first tick)
        # work done at the end of each tick under the lock (the pipeline's swaps of caught
        # up shadow tables); each says whether it did something
        self.after_tick: list[Callable[[], bool]] = []

    # ---- one tick -------------------------------------------------------------------------
    def tick(self) -> tuple[bool, list[RalfError]]:
        """Run one tick; returns (whether anything happened, errors met on the way).

        Each source and each table is one guarded piece of work: whatever it raises is
        reported, counted against it, and the node is resumed from the database before
        the tick goes on (see :meth:`guarded`)."""
        errors: list[RalfError] = []
        worked = False
        with self.lock:
            now = self.clock.now()
            if not self._forgets_finished:
                self._finish_forgets(errors, now)
            for source in self.sources:
                if self._due(source):
                    worked |= bool(self.guarded(source, errors, pull, source, errors, now))
            for node in self.features:
                node.tick, node.now = self.ticks, now
                if not self._due(node):
                    continue
                if not node.lazy:
                    worked |= self.guarded(node, errors, self._refresh_eager, node, errors,
                                           now) > 0
                elif node.lookup_changed():  # a lazy table learns its stale keys each tick
                    self.guarded(node, errors, follow_lookup, node)
            for work in self.after_tick:
                worked |= work()
            self.ticks += 1
            self._compact(now, errors)
            crashpoint("tick.end")
        return worked, errors

    def forget(self, source: SourceNode, key: Any) -> dict[str, int]:
        """Forget a key of a changelog source (ralf.engine.forget); returns what was
        removed. A failure leaves the request open, finished later; every node it touched
        is resumed from the database first (a restart in miniature)."""
        with self.lock:
            try:
                return forget(source, self.features, key, self.max_failures, self.clock.now())
            except Exception as exc:
                self._resume_all()
                self._forgets_finished = False  # the next tick finishes it, as a reopen does
                if isinstance(exc, RalfError):
                    raise
                raise TableError(f"forget of a key of {source.name!r} failed "
                                 f"({type(exc).__name__}: {exc}); once asked, it is finished "
                                 "by the next tick", table=source.name) from exc

    def _finish_forgets(self, errors: list[RalfError], now: dt.datetime) -> None:
        """Finish the forgets a crash interrupted (their request committed: acknowledged),
        before anything else runs."""
        sources = {node.name: node for node in self.sources}
        storage = next(iter(sources.values())).storage if sources else None
        for request, table, text in storage.open_forgets() if storage else []:
            source = sources.get(table)
            if source is None:
                continue  # its pipeline is not defined here: finished where it is
            key = source.schema.key_from_text(text)
            try:
                finish(source, self.features, key, request, self.max_failures, now)
            except Exception as exc:
                errors.append(exc if isinstance(exc, RalfError) else TableError(
                    f"forget of a key of {table!r}: {exc}", table=table))
                self._resume_all()
                return
        self._forgets_finished = True

    def _resume_all(self) -> None:
        for node in [*self.sources, *self.features]:
            node.broken = True
            try:
                self._resume(node)
            except Exception as exc:  # the database is down: resumed before next use
                log.error("%r could not be resumed yet: %s", node.name, exc)

    def _due(self, node: Node) -> bool:
        """Not given up on, and not waiting out a backoff."""
        node.tick = self.ticks
        return not node.failures.is_held(WHOLE, self.ticks)

    def failed(self, node: Node) -> bool:
        """Given up on after ``max_failures`` failures of its user code, until released."""
        return WHOLE in node.failures.quarantined

    def guarded(self, node: Node, errors: list[RalfError], work: Callable[..., Any],
                *args: Any) -> Any:
        """Do one piece of a node's work. If it raises, memory may hold what the database
        does not (a source moved past a batch that was never appended, an operator that
        applied records whose watermarks were not written): report the failure, back the
        node off, and resume it from the database exactly as opening it would — the node,
        and the stale-key index of each child it may not have told. A node that cannot be
        resumed now (the database is down) is resumed before its next use."""
        try:
            if node.broken:
                self._resume(node)
            done = work(*args)
            node.failures.succeeded([WHOLE])
            return done
        except Exception as exc:
            user = isinstance(exc, (OperatorError, SchemaError))  # the user's code or data
            detail = str(exc) if isinstance(exc, RalfError) else f"{type(exc).__name__}: {exc}"
            gave_up = node.failures.record(WHOLE, self.ticks, self.max_failures, detail,
                                           user_code=user)
            node.metrics.failures += 1
            if isinstance(exc, RalfError):  # ralf's own errors keep their class
                error: RalfError = exc
                if getattr(error, "table", None) is None:
                    error.table = node.name
            else:
                error = TableError(f"{node.info.kind} {node.name!r}: {detail}", table=node.name)
                error.__cause__ = exc
            if gave_up:
                error.args = (f"{error.args[0]}; given up after {self.max_failures} "
                              "failures (release() lets it try again)", *error.args[1:])
            errors.append(error)
            log.error("%s", error, extra={"table": node.name},
                      exc_info=exc if log.isEnabledFor(logging.DEBUG) else None)
            node.broken = True
            try:
                self._resume(node)
            except Exception as again:  # still failing: resumed before its next use
                log.error("%s %r could not be resumed yet: %s", node.info.kind, node.name,
                          again)
            return 0

    @staticmethod
    def _resume(node: Node) -> None:
        """Resume a node, then the stale-key index of each child it may not have told of
        its appends. Whatever fails meanwhile stays marked broken: resumed before use."""
        told = [child for child in node.children if child.pending is not None]
        for child in told:
            child.broken = True
        node.resume()
        for child in told:
            child.rebuild_pending()
            child.broken = False

    def _refresh_eager(self, node: FeatureNode, errors: list[RalfError], now: dt.datetime
                       ) -> int:
        if getattr(node, "windowed", False):  # appended keys and keys time has changed
            if node.pending is None:
                return (refresh(node, None, errors, self.max_failures, now)
                        if node.has_work() else 0)
            if node.expired():  # stale like any key, under the budget and the policy
                node.add_pending(node.storage.expired_keys(node.info, now, node.parent.seq))
        if node.pending is not None or node.held:  # else the refresh follows it itself
            follow_lookup(node)
        if node.pending is None:
            if not node.has_work():
                return 0
            return refresh(node, None, errors, self.max_failures, now)
        return refresh(node, self.choose(node, now), errors, self.max_failures, now)

    def choose(self, node: FeatureNode, now: dt.datetime) -> list[Any]:
        """The stale keys to refresh this tick: all of them, or the policy's pick within
        budget. A policy that raises fails the table's tick (it is user code)."""
        stale = StaleKeys(node.pending, node.held, node.cache, now)
        if node.budget is None or len(stale) <= node.budget:
            return list(stale)
        policy = node.policies.priority or node.policies.default
        policy.stale = stale
        try:
            return policy.choose_many(stale, node.budget)
        except Exception as exc:
            raise OperatorError(f"table {node.name!r}: prioritization policy "
                                f"{type(policy).__name__} raised {type(exc).__name__}: {exc}",
                                table=node.name) from exc

    def _compact(self, now: dt.datetime, errors: list[RalfError]) -> None:
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
            try:  # only the database changes: nothing in memory to put back on failure
                node.storage.compact_history(node.info, cutoff, keep_from)
            except Exception as exc:
                errors.append(TableError(f"table {node.name!r}: history retention failed: "
                                         f"{exc}", table=node.name))
                self._compacted_at = None  # try again next tick

    # ---- lazy refresh -----------------------------------------------------------------------
    def ensure_fresh(self, node: Node, key: Any = None, *, keys: list[Any] | None = None
                     ) -> list[RalfError]:
        """Bring a lazy table (and its lazy ancestors) up to date for one key, for ``keys``
        (one refresh for all of them), or for all keys (neither given)."""
        errors: list[RalfError] = []
        if keys is None and key is not None:
            keys = [key]
        with self.turn():
            self._ensure_fresh(node, keys, errors, self.clock.now())
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

    def _ensure_fresh(self, node: Node, keys: list[Any] | None, errors: list[RalfError],
                      now: dt.datetime) -> None:
        if not isinstance(node, FeatureNode) or not node.on_lazy_path:
            return
        if not node.aligned:
            keys = None
        self._ensure_fresh(node.parent, keys, errors, now)
        if not self._due(node):
            return
        self.guarded(node, errors, self._refresh_lazy, node, keys, errors, now)

    def _refresh_lazy(self, node: FeatureNode, wanted: list[Any] | None,
                      errors: list[RalfError], now: dt.datetime) -> int:
        node.now = now
        if getattr(node, "windowed", False):  # the exact window as of now
            if wanted is None:
                return refresh(node, None, errors, self.max_failures, now)
            keys = [k for k in dict.fromkeys(wanted) if k not in node.held]
            return refresh(node, keys, errors, self.max_failures, now)
        follow_lookup(node)
        if node.pending is None:  # an eager table below a lazy one: refreshed in full
            return refresh(node, None, errors, self.max_failures, now) if node.has_work() else 0
        if wanted is None:
            keys = node.stale_keys()
        else:
            keys = [k for k in dict.fromkeys(wanted) if k in node.pending and k not in node.held]
        if not keys:
            return 0
        crashpoint("lazy.before_refresh")
        return refresh(node, keys, errors, self.max_failures, now)

    # ---- whole runs -------------------------------------------------------------------------
    def drained(self) -> bool:
        """Every source exhausted (or given up on), every eager table without pending work."""
        return all(s.exhausted or self.failed(s) for s in self.sources) and not any(
            node.has_work(now_only=False) for node in self.features if not node.lazy
        )

    def run(self, timeout: float | None = None, idle_wait: float = 0.005,
            after_tick: Callable[[], None] | None = None) -> list[RalfError]:
        """Tick until :meth:`drained`, sleeping ``idle_wait`` seconds after a tick with
        nothing to do, calling ``after_tick`` after each (progress); returns the errors met.
        Raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        errors: list[RalfError] = []
        while True:
            worked, tick_errors = self.tick()
            errors.extend(tick_errors)
            if after_tick is not None:
                after_tick()
            if self.drained():
                return errors
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run() did not drain within {timeout} s")
            if not worked:
                self.clock.sleep(idle_wait)  # sources have nothing yet: poll again shortly
