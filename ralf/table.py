"""Table: the handle users build pipelines with (``source.map(...)``, ``.join(...)``, policies)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from ralf.durations import timedelta
from ralf.engine.node import FeatureNode, Node, SqlTableNode
from ralf.errors import SchemaError
from ralf.ivm import views
from ralf.ivm.aggregate import DeltaAggregate
from ralf.ivm.views import KeyRecompute
from ralf.ivm.windows import WindowAggregate
from ralf.policies.base import LoadSheddingPolicy, PrioritizationPolicy
from ralf.schema import Schema
from ralf.storage.units import FEATURE, SOURCE

if TYPE_CHECKING:
    from ralf.pipeline import Pipeline


def _duration(ttl: Any) -> dt.timedelta | None:
    return None if ttl is None else timedelta(ttl, "ttl")


def _build(policy: Any, args: tuple, kwargs: dict | None, base: type, what: str) -> Any:
    instance = policy(*args, **(kwargs or {})) if isinstance(policy, type) else policy
    if not isinstance(instance, base) and not hasattr(instance, what):
        raise TypeError(f"{policy!r} is not a {base.__name__} (it has no {what}() method)")
    return instance


class Table:
    """A source or feature table of a :class:`ralf.Ralf` pipeline: what it holds, and the
    methods that derive new tables from it (through the pipeline graph it belongs to)."""

    def __init__(self, pipeline: Pipeline, node: Node) -> None:
        self._pipeline = pipeline
        self._node = node

    @property
    def name(self) -> str:
        """The table's name."""
        return self._node.name

    @property
    def schema(self) -> Schema:
        """The table's columns and primary key."""
        return self._node.schema

    @property
    def kind(self) -> str:
        """``source`` or ``feature``."""
        return self._node.info.kind

    @property
    def lazy(self) -> bool:
        """Refreshed only when queried."""
        return self._node.info.lazy

    def map(self, operator: Any, args: tuple = (), kwargs: dict | None = None, *,
            schema: Schema | None = None, name: str | None = None, lazy: bool = False,
            budget: int | None = None, ttl: Any = None, version: str | None = None) -> Table:
        """A feature table whose rows ``operator.on_record(record)`` derives from this one's.
        ``ttl`` (``"7d"``, seconds, a timedelta): a row not updated within it is served as
        missing by point, bulk and historical queries (its age counts from its event
        time, or, without one, from when ralf wrote it). ``version`` identifies the
        operator's code (without it, a hash of its class's source does): a changed one
        makes the table a changed one (docs/evolve.md)."""
        self._refuse_deletions("map")
        ttl = _duration(ttl)
        return self._with_ttl(self._pipeline.add_operator_table(
            self._node, operator, args, kwargs or {}, schema=schema, name=name, lazy=lazy,
            budget=budget, version=version), ttl)

    def join(self, other: Table, operator: Any, args: tuple = (), kwargs: dict | None = None,
             *, on: str, schema: Schema | None = None, name: str | None = None,
             lazy: bool = False, budget: int | None = None, ttl: Any = None,
             version: str | None = None) -> Table:
        """A lookup join: ``on_record(record, other_row)`` with other's current row for
        ``record.<on>`` (None if absent). New records of this table drive it. ``ttl`` and
        ``version``: as for :meth:`map`."""
        if on not in self.schema.columns:
            raise SchemaError(f"join on {on!r}: table {self.name!r} has no such column",
                              table=self.name, column=on)
        if not isinstance(other, Table):
            raise TypeError(f"join expects a Table to look up into, got {type(other).__name__}")
        self._refuse_deletions("join")
        ttl = _duration(ttl)
        return self._with_ttl(self._pipeline.add_operator_table(
            self._node, operator, args, kwargs or {}, schema=schema, name=name, lazy=lazy,
            budget=budget, lookup=other._node, on=on, version=version), ttl)

    def aggregate(self, by: str, *, name: str | None = None, lazy: bool = False,
                  budget: int | None = None, ttl: Any = None, tile: Any = None,
                  **outputs: tuple) -> Table:
        """A feature table of aggregates per key, maintained by SQL inside the database:
        ``ratings.aggregate(by="user", average=("rating", "avg"), n=("*", "count"))``.

        Functions: count, sum, avg, min, max, var_pop, var_samp (var), stddev_pop,
        stddev_samp (stddev). ``ttl``: as for :meth:`map`. Over a source with event time,
        outputs may be sliding windows: ``n_7d=("*", "count", "7d")`` aggregates the
        records of the last 7 days (event time in ``(now - 7d, now]``), kept with tiles of
        ``tile`` (default: a 60th of the shortest window) and refreshed as records leave
        the window (docs/time.md)."""
        self._check_key(by, "aggregate(by=...)")
        ttl = _duration(ttl)
        plan = views.from_aggregate(self.name, self.kind == SOURCE, by,
                                    set(self.schema.columns), outputs, self.deletes,
                                    self._node.info.event_column, tile)
        if ttl is not None and isinstance(plan, WindowAggregate):
            raise SchemaError("aggregate: a window already forgets old records; ttl applies "
                              "to tables without one")
        return self._with_ttl(self._pipeline.add_sql_table(
            self._node, plan, name=name or f"{self.name}_by_{by}", lazy=lazy, budget=budget),
            ttl)

    def sql(self, query: str, *, name: str, lazy: bool = False, budget: int | None = None,
            ttl: Any = None) -> Table:
        """A feature table defined by one SELECT over this table, grouped by its key:
        ``ratings.sql("SELECT user, avg(rating) AS average FROM ratings GROUP BY user",
        name="average")``. Decomposable aggregates are maintained by deltas, anything else
        by recomputing the stale keys' groups. The query may look up one other table of
        the pipeline by that table's key (``JOIN other o ON o.key = t.column``, LEFT JOIN,
        EXISTS, IN); a change of either table refreshes the keys it reaches. ``ttl``: as
        for :meth:`map`."""
        ttl = _duration(ttl)
        plan = views.from_sql(query, self.name, self.kind == SOURCE, self.schema.primary_key,
                              self.deletes, self._pipeline.readable(),
                              self.schema.columns)
        return self._with_ttl(self._pipeline.add_sql_table(self._node, plan, name=name,
                                                           lazy=lazy, budget=budget), ttl)

    @property
    def deletes(self) -> bool:
        """Rows of this table can disappear (a changelog source; a SQL table whose
        ``HAVING`` or filter drops a key it held, or that derives from a changelog); such a
        table's children see the deletions."""
        plan = self.plan
        if self.kind == SOURCE:
            return self._node.info.changelog is not None
        return self._node.info.retracts or (isinstance(plan, KeyRecompute) and plan.deletes)

    def _refuse_deletions(self, what: str) -> None:
        # A Python operator receives rows, never a feature table's deletion: it would keep
        # state for a key the parent no longer has (exact or refused). A changelog source's
        # retractions it receives (on_delete, or its keys rebuilt: docs/changelog.md).
        if self.deletes and self.kind != SOURCE:
            raise SchemaError(
                f"{what}: {self.name!r} can delete rows (a HAVING or a filter drops keys) and "
                "a Python operator cannot receive a deletion; derive from it with sql() or "
                "aggregate(), or move the condition into the Python operator",
                table=self.name)

    def _check_key(self, by: str, what: str) -> None:
        key = self.schema.primary_key
        if by != key:
            raise SchemaError(
                f"{what}: {self.name!r} is keyed by {key!r}; ralf maintains feature tables "
                f"key by key, so they are grouped by the parent's key ({by!r} given)",
                table=self.name, column=by)

    def as_queryable(self, name: str) -> Table:
        """Make the table queryable under another name too (a view in the database)."""
        self._pipeline.add_alias(name, self._node)
        return self

    def add_load_shedding(self, policy: Any, args: tuple = (), kwargs: dict | None = None
                          ) -> Table:
        """Shed records before the operator sees them: a LoadSheddingPolicy class (with args) or
        instance; ``process(record)`` or ``process(record, current)`` per record, or
        ``select(records, key)`` over a refresh's records."""
        node = self._feature("add_load_shedding")
        node.add_shedding(_build(policy, args, kwargs, LoadSheddingPolicy, "process"))
        return self

    def add_prioritization_policy(self, policy: Any, args: tuple = (),
                                  kwargs: dict | None = None) -> Table:
        """Under a budget, which stale keys to refresh first: a PrioritizationPolicy class (with
        args) or instance, asked ``choose(keys)``."""
        node = self._feature("add_prioritization_policy")
        instance = _build(policy, args, kwargs, PrioritizationPolicy, "choose")
        for hook in ("on_pending", "on_refresh", "on_query", "on_error", "choose_many"):
            if not hasattr(instance, hook):  # a duck-typed user policy: give it the defaults
                setattr(instance, hook, getattr(PrioritizationPolicy, hook).__get__(instance))
        with self._pipeline.lock:
            node.set_priority(instance)
        return self

    @property
    def plan(self) -> DeltaAggregate | KeyRecompute | None:
        """How a SQL table (``aggregate``/``sql``) is maintained: a :class:`DeltaAggregate`
        (deltas merged into helper columns) or a :class:`KeyRecompute` (the stale keys'
        groups recomputed); None for other tables."""
        return self._node.plan if isinstance(self._node, SqlTableNode) else None

    @property
    def refreshes_on_query(self) -> bool:
        """Whether a query of this table may first refresh it (it, or a table it derives
        from, is lazy)."""
        return isinstance(self._node, FeatureNode) and self._node.on_lazy_path

    def _derived(self, node: Node) -> Table:
        return Table(self._pipeline, node)

    def _with_ttl(self, node: FeatureNode, ttl: dt.timedelta | None) -> Table:
        node.ttl = ttl
        return self._derived(node)

    def _feature(self, what: str) -> FeatureNode:
        if self._node.info.kind != FEATURE:
            raise TypeError(f"{what}: {self.name!r} is a source table; policies apply to "
                            "feature tables")
        return self._node

    def __repr__(self) -> str:
        return f"Table({self.name!r}, kind={self.kind!r}, schema={self.schema!r})"
