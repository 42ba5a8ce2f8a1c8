"""Runtime state of one table: its place in the graph, its cache, its progress and counters."""

from __future__ import annotations

import datetime as dt
import logging
import pickle
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ralf.engine.cache import ServingCache
from ralf.engine.failures import WHOLE, Failures
from ralf.engine.histogram import LATENCY_BOUNDS, Histogram
from ralf.engine.progress import PendingIndex, Watermarks
from ralf.engine.routing import KeyPartition
from ralf.errors import OperatorError, RalfError
from ralf.ivm.aggregate import DeltaAggregate
from ralf.ivm.views import KeyRecompute
from ralf.ivm.windows import WindowAggregate
from ralf.policies.base import (
    LoadSheddingPolicy,
    PrioritizationPolicy,
    selects,
    wants_current,
)
from ralf.policies.priority import FIFO
from ralf.schema import Record, Rejection, Schema
from ralf.storage.base import VERSION_ORDER, Storage
from ralf.storage.units import LogRead, TableInfo

log = logging.getLogger("ralf")


@dataclass
class TableMetrics:
    """Counters of one table since this process started (not persisted)."""
    ingested: int = 0
    rejected: int = 0
    processed: int = 0
    shed: int = 0
    refreshes: int = 0
    failures: int = 0
    queries: int = 0
    refresh_seconds: float = 0.0  # wall time spent refreshing (reading, operator, commit)
    errors_reported: int = 0  # client.record_error calls
    squared_error: float = 0.0  # their sum of squares


class Node:
    """A table in the pipeline graph. Its *log* is what children replay: a source's append
    table, a feature table's history."""

    def __init__(self, info: TableInfo, storage: Storage) -> None:
        self.info = info
        self.storage = storage
        self.children: list[FeatureNode] = []
        self.seq = storage.max_seq(info)
        self.metrics = TableMetrics()
        # The serving cache (key -> (values, updated_at)), kept for feature tables and for
        # sources used in lookup joins; a Record is made when one is asked for.
        self.cache: ServingCache | None = None
        # Failures per unit: the whole table or source (WHOLE), and a feature table's keys
        self.failures = Failures()
        # Set when a failure could not be followed by a resume (the database was down):
        # the node is resumed before it is used again.
        self.broken = False
        # the name the pipeline knows a shadow table by (ralf/evolve.py: a changed table's
        # new version, built under another name until it is swapped in); None otherwise
        self.label: str | None = None

    @property
    def name(self) -> str:
        """The table's name (a shadow's: the table it will replace)."""
        return self.label or self.info.name

    @property
    def schema(self):  # noqa: ANN201 - Schema, kept short
        """The table's schema."""
        return self.info.schema

    def load_cache(self) -> None:
        """Fill the serving cache with the table's current rows from the database."""
        """The table's schema."""
        rows = self.storage.current_rows(self.info)
        self.cache = ServingCache(self.schema, self.info.event_column)
        self.put_rows(rows, rows.column("_ralf_updated_at").to_pylist())

    def put_rows(self, rows: pa.Table, at: Any) -> None:
        """Write rows (the schema's columns, maybe more) through to the cache; ``at`` is one
        time for all rows or a list of times."""
        self.cache.put(rows, at)

    def storable(self, rows: pa.Table, rejected: list[Rejection]) -> pa.Table:
        """The rows the database can hold; the others join ``rejected`` (text with NUL
        characters, which PostgreSQL refuses, would fail the whole transaction)."""
        refused = self.storage.unstorable(rows)
        if not refused:
            return rows
        at = sorted(refused)
        for i, raw in zip(at, rows.take(pa.array(at, pa.int64())).to_pylist(), strict=True):
            column, why = refused[i]
            rejected.append(Rejection(self.name, why, column, raw))
        keep = np.ones(rows.num_rows, np.bool_)
        keep[at] = False
        return rows.filter(pa.array(keep))

    def current(self, key: Any) -> Record | None:
        """The key's served row as a Record, or None (from the serving cache)."""
        entry = self.cache.get(key) if self.cache is not None else None
        return None if entry is None else self.record(entry[0])

    def record(self, values: tuple) -> Record:
        """A Record of this table's columns from a row's values, in column order."""
        return Record.from_dict(dict(zip(self.schema.names, values, strict=True)))


class UserCode:
    """A node that runs an object of the user's (a source, an operator): how to make it
    again for a resume that must start it over, and whether it ran since the last one."""

    def __init__(self) -> None:
        # a fresh copy of the user's object as the pipeline definition made it; None if
        # it cannot be made again in this process
        self.remake: Callable[[], Any] | None = None
        self.touched = False  # the user's object has run since the last resume

    def remade(self) -> Any:
        """A fresh copy of the user's object, as the pipeline definition made it."""
        if self.remake is None:
            raise RalfError(f"table {self.name!r}: its user code must start over but cannot "
                            "be made again in this process (pass a class with args, or give "
                            "it checkpoint()/restore()); reopen the database")
        return self.remake()


class SourceNode(Node, UserCode):
    """A source table: the user's SourceOperator, where it stands, and its append log."""

    def __init__(self, info: TableInfo, storage: Storage, source: Any) -> None:
        Node.__init__(self, info, storage)
        UserCode.__init__(self)
        self.source = source
        self.partition: KeyPartition | None = None  # sharded: keep only this shard's keys
        self.emitted = 0
        self.exhausted = False
        self.skip = 0  # records to drop on replay after a reopen (count-based resume)
        # event time: how late a record may be (seconds; None: any), and the newest
        # event time appended (lateness is measured from it)
        self.allowed_lateness: float | None = None
        self.newest_event: dt.datetime | None = None
        # where a source with checkpoint()/restore() starts, for a resume before its first
        # committed batch (a copy through pickle: the source may mutate what it returned)
        self.initial = self._initial_checkpoint()

    def _initial_checkpoint(self) -> Any:
        if not self.checkpointed:
            return None
        try:
            return pickle.loads(pickle.dumps(self.source.checkpoint()))
        except Exception as exc:  # user code
            raise OperatorError(f"source {self.name!r}: checkpoint() raised "
                                f"{type(exc).__name__}: {exc}", table=self.name) from exc

    @property
    def checkpointed(self) -> bool:
        """The source tells its own position (``checkpoint``/``restore``); otherwise it is
        resumed by replaying it from the start and skipping what was appended."""
        return callable(getattr(self.source, "checkpoint", None)) and callable(
            getattr(self.source, "restore", None))

    def refresh_cache(self, appended: pa.Table, at: dt.datetime) -> None:
        """A lookup source's cache after an append: the appended rows are the keys' current
        rows — or, a changelog source's, the keys' current rows are read back (an update
        or delete may leave a key another live row, or none)."""
        if self.info.changelog is None:
            self.put_rows(appended, at)
            return
        key = self.schema.primary_key
        touched = appended.column(key).unique()
        current = self.storage.current_rows(self.info, keys=touched)
        for gone in set(touched.to_pylist()) - set(current.column(key).to_pylist()):
            self.cache.pop(gone, None)
        if current.num_rows:
            self.put_rows(current, current.column("_ralf_updated_at").to_pylist())

    def resume(self) -> None:
        """Put the source where the database says it stopped: at open, and after any
        failure (a restart in miniature, by the same steps). An exhausted source is polled
        again: a file may have grown, a list may have got more rows."""
        saved = self.storage.load_source_state(self.info.name)
        state, emitted = (saved[0], saved[1]) if saved is not None else (None, 0)
        if self.checkpointed:
            self.source.restore(pickle.loads(state) if state is not None else self.initial)
            self.skip = 0
        else:
            if self.touched:
                self.source = self.remade()
            self.skip = emitted
        self.seq = self.storage.max_seq(self.info)
        if self.info.event_column is not None:
            self.newest_event = self.storage.newest_event_time(self.info)
        self.emitted, self.exhausted, self.touched = emitted, False, False
        if self.cache is not None:
            self.load_cache()
        self.broken = False


@dataclass
class Policies:
    """A feature table's policies: load shedding (per record, or over a refresh's records
    as a whole) and prioritization under a budget."""

    shedding: list[tuple[LoadSheddingPolicy, bool]] = field(default_factory=list)
    selectors: list[LoadSheddingPolicy] = field(default_factory=list)
    priority: PrioritizationPolicy | None = None
    default: PrioritizationPolicy = field(default_factory=FIFO)  # under a budget, if none


class FeatureNode(Node):
    """A feature table: its parent, policies and progress. Its two kinds differ in how
    a refresh applies the parent's appends: :class:`OperatorNode` (Python code) and
    :class:`SqlTableNode` (a SQL plan run inside the database)."""

    def __init__(self, info: TableInfo, storage: Storage, parent: Node, lookup: Node | None,
                 budget: int | None) -> None:
        super().__init__(info, storage)
        self.parent = parent
        self.lookup = lookup
        self.budget = budget
        self.policies = Policies()
        self.marks = Watermarks()
        self.pending: PendingIndex | None = None
        self.tick = 0  # the scheduler's current tick, for backoff
        self.cache = ServingCache(info.schema, info.event_column)
        # a row not updated within this long is served as missing (its age: from its
        # event time, or from when ralf wrote it); None: rows never expire
        self.ttl: dt.timedelta | None = None
        # the scheduler's current time (a windowed table's rows change as it passes)
        self.now: dt.datetime | None = None
        self.lookup_mark = 0  # how far the looked-up table's log is followed (see below)
        # seconds each refresh took (their total: metrics.refresh_seconds)
        self.refresh_latency = Histogram(LATENCY_BOUNDS)

    @property
    def quarantined(self) -> set[Any]:
        """Keys that failed ``max_failures`` times: held until released."""
        return self.failures.quarantined - {WHOLE}

    @property
    def lazy(self) -> bool:
        """Refreshed only when queried (``map(..., lazy=True)``)."""
        return self.info.lazy

    @property
    def aligned(self) -> bool:
        """True when this table's keys are its parent's keys, so a key can be refreshed alone."""
        return self.schema.primary_key == self.parent.schema.primary_key

    @property
    def on_lazy_path(self) -> bool:
        """True if this table or one of its ancestors is lazy: queries must refresh first."""
        node: Node = self
        while isinstance(node, FeatureNode):
            if node.lazy:
                return True
            node = node.parent
        return False

    @property
    def keyed(self) -> bool:
        """Tables refreshed key by key keep an index of stale keys."""
        return self.lazy or self.budget is not None or self.policies.priority is not None

    @property
    def follows_lookup(self) -> bool:
        """Changes of the looked-up table reach this table's rows (a SQL table that looks
        one up; a Python lookup join of a changelog source). A Python join of another
        table takes the other's row as it is when a record is applied."""
        return False

    def lookup_changed(self) -> bool:
        """The looked-up table has changes this table has not followed yet."""
        return self.follows_lookup and self.lookup.seq > self.lookup_mark

    def lookup_read(self) -> LogRead:
        """The read of the looked-up table's changes not followed yet."""
        return LogRead(self.lookup.info, self.lookup_mark, self.lookup.seq, None)

    def expired(self) -> bool:
        """Some row has changed with time alone since it was written (a windowed
        aggregate's: a record left its window), as of the scheduler's time."""
        return False

    def add_shedding(self, policy: LoadSheddingPolicy) -> None:
        """Add a load-shedding policy (a ``select`` one sees a refresh's records as a whole)."""
        policy.routing_key = self.parent.schema.primary_key
        if selects(policy):
            self.policies.selectors.append(policy)
        else:
            self.policies.shedding.append((policy, wants_current(policy)))

    def set_priority(self, policy: PrioritizationPolicy) -> None:
        """Set the prioritization policy; it is told of every key already stale."""
        self.policies.priority = policy
        if self.pending is None:
            self.rebuild_pending()
        else:
            self.tell_policy("on_pending", self.pending.by_newest())

    def add_pending(self, summary: pa.Table) -> None:
        """Merge a ``pending_summary`` of new parent appends into the stale-key index."""
        touched = self.pending.add(summary)
        self.tell_policy("on_pending", touched)

    def tell_policy(self, hook: str, *args: Any) -> None:
        """Call a hook of the prioritization policy (user code: what it raises becomes an
        OperatorError naming the table)."""
        priority = self.policies.priority
        if priority is None:
            return
        try:
            getattr(priority, hook)(*args)
        except Exception as exc:
            raise OperatorError(f"table {self.name!r}: prioritization policy "
                                f"{type(priority).__name__}.{hook} raised "
                                f"{type(exc).__name__}: {exc}", table=self.name) from exc

    # ---- recovery ---------------------------------------------------------------------------
    def resume(self) -> None:
        """Put this table where the database says it stopped: watermarks, operator state,
        serving cache, index of stale keys. Opening does this, and so does every failure
        in a tick (a restart in miniature, by the same steps), so memory never keeps
        anything the database does not hold."""
        self.info.watermark = self.storage.load_floor(self.info.name)
        self.seq = self.storage.max_seq(self.info)
        self._resume_state()
        overrides = {
            self.parent.schema.key_from_text(text): seq
            for text, seq in self.storage.load_watermarks(self.info.name).items()
        }
        self.marks = Watermarks(self.info.watermark, overrides)
        self.load_cache()
        if self.keyed:
            self.rebuild_pending()
        self.broken = False

    def _resume_state(self) -> None:
        """Put back state the table keeps beside its rows (a SQL table keeps none: its state
        is the table itself)."""
        return None

    def rebuild_pending(self) -> None:
        """Rebuild the stale-key index from the database (kept as it was if that fails)."""
        summary = self.storage.pending_summary(self.read_all())  # may fail: index kept
        self.pending = PendingIndex()
        self.add_pending(summary)

    def read_all(self, unread: Collection[Any] = ()) -> LogRead:
        """The read of every pending parent append, whatever its key, but the ``unread``
        keys' (held keys, whose appends must wait)."""
        key_type = self.parent.schema.arrow.field(self.parent.schema.primary_key).type
        marks = (self.marks.arrow(key_type, unread=unread, high=self.parent.seq)
                 if self.marks.overrides or unread else None)
        return LogRead(self.parent.info, self.marks.floor, self.parent.seq, marks)

    def read_keys(self, keys: list[Any]) -> LogRead:
        """The read of the pending parent appends of ``keys``."""
        key_type = self.parent.schema.arrow.field(self.parent.schema.primary_key).type
        return LogRead(self.parent.info, self.marks.floor, self.parent.seq, None,
                       keys=self.marks.arrow(key_type, keys))

    @property
    def held(self) -> set[Any]:
        """Keys not to refresh now: quarantined, or waiting out a retry backoff."""
        return self.failures.held(self.tick)

    def stale_keys(self) -> list[Any]:
        """Keys with pending appends that may be refreshed now (held keys left out)."""
        if self.pending is None:
            return []
        held = self.held
        return [k for k in self.pending.keys if k not in held]

    def has_work(self, now_only: bool = True) -> bool:
        """Whether an eager refresh would find anything to apply (``now_only=False``: also
        keys that are only waiting out a backoff)."""
        whole = self.failures.is_held(WHOLE, self.tick) if now_only else (
            WHOLE in self.failures.quarantined)
        if whole:
            return False
        if self.broken or self.lookup_changed() or self.expired():
            return True  # not resumed yet, not told yet, or time has changed rows
        held = self.held if now_only else self.quarantined
        if self.pending is not None:
            return any(k not in held for k in self.pending.keys)
        if self.parent.seq > self.marks.floor:
            return True
        return any(k not in held and wm < self.parent.seq
                   for k, wm in self.marks.overrides.items())


class SqlTableNode(FeatureNode):
    """A feature table maintained by SQL inside the database (``aggregate`` / ``sql``);
    ``lookup``: the other table its query reads by key, followed up to ``lookup_mark``."""

    def __init__(self, info: TableInfo, storage: Storage, parent: Node,
                 plan: DeltaAggregate | KeyRecompute, budget: int | None,
                 lookup: Node | None = None) -> None:
        super().__init__(info, storage, parent, lookup, budget)
        self.plan = plan
        self.next_expiry: dt.datetime | None = None  # a windowed table's earliest change

    @property
    def windowed(self) -> bool:
        """A windowed aggregate (ralf.ivm.windows): its rows change as time passes."""
        return isinstance(self.plan, WindowAggregate)

    def expired(self) -> bool:
        """A windowed table: some row's window has lost (or gained) a record with time."""
        return (self.next_expiry is not None and self.now is not None
                and self.next_expiry <= self.now)

    def _resume_state(self) -> None:
        """A SQL table's state is the table itself; one that looks up another keeps how
        far it has followed the other's log, a windowed one when its rows next change."""
        if self.lookup is not None:
            self.lookup_mark = self.storage.load_lookup_floor(self.info.name)
        if self.windowed:
            self.next_expiry = self.storage.next_expiry(self.info)

    @property
    def follows_lookup(self) -> bool:
        """A SQL table's query reads the looked-up table as it is now."""
        return self.lookup is not None


class OperatorNode(FeatureNode, UserCode):
    """A feature table a Python operator maintains (``map`` / ``join``): the operator, its
    committed checkpoint, and its Ray replicas when it runs on Ray."""

    def __init__(self, info: TableInfo, storage: Storage, parent: Node, operator: Any,
                 lookup: Node | None, budget: int | None) -> None:
        FeatureNode.__init__(self, info, storage, parent, lookup, budget)
        UserCode.__init__(self)
        self.operator = operator
        self.replicas: Any = None  # a ralf.engine.ray_executor.Replicas when on Ray
        self.committed_state: bytes | None = None  # the operator's last committed checkpoint
        self.initial: bytes | None = None  # the operator's state as created (see resume)
        # a timed table's outputs as checked: its columns and the order they were made in
        self.version_schema = Schema(info.schema.primary_key,
                                     {**info.schema.columns, VERSION_ORDER: int})

    def resume(self) -> None:
        """Resume as a feature table does, with the operator's state put back too."""
        if self.initial is None and not self.touched:  # a new node: the state it starts from
            self.initial = self.checkpoint()
        super().resume()
        self.touched = False

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint(self) -> bytes | None:
        """Pickled operator state, or None if it cannot be pickled (replay on reopen)."""
        if self.replicas is not None:
            return self.replicas.checkpoint()
        op = self.operator
        try:
            state = op.__getstate__()
            return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            if self.committed_state is not None or not getattr(self, "_warned", False):
                log.warning("table %r: operator state cannot be pickled (%s); it will be "
                            "rebuilt by replaying the append log on reopen", self.name, exc)
                self._warned = True
            return None

    def restore(self, state: bytes) -> None:
        """Put the operator back to a checkpoint."""
        if self.replicas is not None:
            self.replicas.restore(state)
            self.committed_state = state
            return
        value = pickle.loads(state)
        if isinstance(value, list):
            raise ValueError("the checkpoint was written by Ray replicas")
        op = self.operator
        if hasattr(type(op), "__setstate__"):
            op.__setstate__(value)
        elif isinstance(value, dict):
            op.__dict__.update(value)
        self.committed_state = state

    @property
    def follows_lookup(self) -> bool:
        """A lookup join of a changelog source: an update or delete there rebuilds the
        keys whose records name the changed key (ralf.engine.rebuild)."""
        return self.lookup is not None and self.lookup.info.changelog is not None

    def _resume_state(self) -> None:
        if self.follows_lookup:
            self.lookup_mark = self.storage.load_lookup_floor(self.info.name)
        found, state = self.storage.load_operator_state(self.info.name)
        if not found:  # nothing committed yet: the state the operator was created with
            self._restart_operator()
            return
        try:
            if state is None:
                raise ValueError("its operator state could not be pickled")
            self.restore(state)
        except ValueError as exc:  # unpicklable, or another number of Ray replicas
            log.warning("table %r: %s; rebuilding it from the append log", self.name, exc)
            self.storage.reset_progress(self.info.name)
            self.info.watermark = self.storage.load_floor(self.info.name)
            self.initial = None  # rebuilt from a fresh operator: nothing to restore
            self._restart_operator()

    def _restart_operator(self) -> None:
        """The operator as created: its initial checkpoint restored, or (unpicklable) a
        fresh instance if this one has run."""
        if self.initial is not None:
            self.restore(self.initial)
            return
        if self.touched:
            if self.replicas is not None:
                raise RalfError(f"table {self.name!r}: Ray replicas whose state cannot be "
                                "pickled cannot be restarted in process; reopen the database")
            self.operator = self.remade()
        self.committed_state = self.initial = self.checkpoint()
