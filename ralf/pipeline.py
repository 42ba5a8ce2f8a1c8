"""The pipeline graph: a Ralf instance's tables by name, how each is defined, and the lock
that guards the graph.

It is the narrow collaborator :class:`ralf.table.Table` adds tables through (``map``,
``join``, ``aggregate``, ``sql``, ``as_queryable``), the way quix-streams hands a
``StreamingDataFrame`` a registry rather than the whole ``Application``: a Table never
sees the scheduler, the HTTP server or the queries.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from typing import Any

from ralf.durations import seconds
from ralf.engine.changelog import changelog_of
from ralf.engine.node import FeatureNode, Node, OperatorNode, SourceNode, SqlTableNode
from ralf.engine.routing import KeyPartition
from ralf.engine.scheduler import Scheduler
from ralf.errors import SchemaError, TableNotFound
from ralf.evolve import (
    MODES,
    REBUILD,
    SHADOW,
    SOURCE_CHANGE,
    differences,
    digest,
    is_shadow,
    operator_identity,
    shadow_name,
)
from ralf.ivm.aggregate import DeltaAggregate
from ralf.ivm.views import Other
from ralf.ivm.windows import EXPIRES, FIRST, LAST, TILE, WindowAggregate
from ralf.operators import instantiate
from ralf.schema import Schema, python_type, quote
from ralf.storage.base import Storage
from ralf.storage.units import EVENT_TIME, FEATURE, SOURCE, TableInfo, rows_relation


class Pipeline:
    """The tables of one Ralf instance (sources, feature tables, aliases, and tables an
    earlier run stored but this one did not define), created against the catalog."""

    def __init__(self, storage: Storage, scheduler: Scheduler, *, path: str | None,
                 partition: KeyPartition | None, executor: str, num_replicas: int,
                 evolve: str = "refuse") -> None:
        if evolve not in MODES:
            raise ValueError(f"evolve must be one of {MODES}, got {evolve!r}")
        if evolve == REBUILD and partition is not None:
            raise ValueError("evolve='rebuild' is not supported with shards yet")
        self.storage, self.scheduler = storage, scheduler
        self.evolve = evolve
        self.rebuilt: list[str] = []  # tables this run found changed and rebuilt
        self.lock = scheduler.lock  # the engine lock: the graph changes under it
        self.path, self.partition = path, partition
        self.executor, self.num_replicas = executor, num_replicas
        stored = storage.catalog()
        # shadow tables: changed tables' new versions being built (ralf/evolve.py)
        self.shadows = {n: info for n, info in stored.items() if is_shadow(n)}
        self.catalog = {n: info for n, info in stored.items() if not is_shadow(n)}
        # the old versions serving, read-only, until their shadow is swapped in
        self.frozen: dict[str, Node] = {}
        # shadows reading a shadow: refreshed once what they read is swapped in
        self.waiting: list[FeatureNode] = []
        scheduler.after_tick.append(self.swap_caught_up)
        self.nodes: dict[str, Node] = {}
        self.aliases: dict[str, Node] = {}
        self.stored: dict[str, Node] = {}  # catalog tables this run did not define

    # ---- adding tables ----------------------------------------------------------------------
    def add_source(self, source: Any, args: tuple, kwargs: dict, *, schema: Schema | None,
                   name: str | None, event_time: str | None = None,
                   allowed_lateness: float | None = None, mode: str = "append",
                   key: Any = None) -> SourceNode:
        """A source table fed by a SourceOperator (a class with args, or an instance);
        ``event_time``/``allowed_lateness``/``mode``/``key``: see
        :meth:`ralf.Ralf.create_source`."""
        what = f"create_source({default_name(source)})"
        instance, schema = instantiate(source, args, kwargs, schema, what)
        if event_time is not None:
            schema = instance.schema = schema.with_event_time(event_time)
        lateness = None if allowed_lateness is None else seconds(allowed_lateness,
                                                                 "allowed_lateness")
        if lateness is not None and schema.event_time is None:
            raise SchemaError(f"{what}: allowed_lateness needs an event time (name its "
                              "column: event_time=...)")
        if lateness is not None and self.partition is not None:
            raise ValueError(f"{what}: allowed_lateness is measured from the newest event "
                             "time of the whole stream, which no shard holds alone; it is not "
                             "supported with shards")
        changelog = changelog_of(mode, key, schema, what)
        if changelog is not None and self.partition is not None:
            raise ValueError(f"{what}: a changelog source with shards is not supported yet "
                             "(an update may move a row to another shard's key)")
        name = self._new_name(name, source)
        info = self._define(TableInfo(name, SOURCE, schema, changelog=changelog))
        node = SourceNode(info, self.storage, instance)
        node.allowed_lateness = lateness
        node.remake = _remaker(source, instance, args, kwargs, schema, what)
        node.partition = self.partition
        node.resume()
        with self.lock:
            self.scheduler.sources.append(node)
            self.nodes[name] = node
        return node

    def add_operator_table(self, parent: Node, operator: Any, args: tuple, kwargs: dict, *,
                           schema: Schema | None, name: str | None, lazy: bool,
                           budget: int | None, lookup: Node | None = None,
                           on: str | None = None, version: str | None = None) -> OperatorNode:
        """A feature table a Python operator derives from ``parent`` (a lookup join with
        ``lookup`` when given); ``version``: the operator's, else a hash of its code
        identifies it (ralf/evolve.py)."""
        check_budget(budget)
        _refuse_windowed_parent(parent)
        if lookup is not None and self.partition is not None:
            raise ValueError("lookup joins are not supported with shards: a shard holds only "
                             "its own keys of the other table")
        what = f"map({default_name(operator)})"
        instance, schema = instantiate(operator, args, kwargs, schema, what)
        if schema.event_time is not None:
            raise SchemaError(f"{what}: a feature table's event time is not a column of its "
                              f"own (it is {EVENT_TIME}, kept by ralf); drop event_time from "
                              "its schema")
        name = self._new_name(name, operator)
        timed = parent.info.event_column is not None
        if timed and callable(getattr(instance, "on_batch", None)):
            raise SchemaError(f"{what}: {parent.name!r} has event time, and an on_batch "
                              "operator gives one row per key per refresh where the history "
                              "needs a version per event time; use on_record", table=name)
        if lookup is not None and lookup.info.changelog is not None and (
                lazy or budget is not None):
            raise SchemaError(f"{what}: {lookup.name!r} is a changelog, whose updates and "
                              "deletes rebuild the keys naming them in whole refreshes; "
                              "make the join eager, without a budget", table=name)
        if parent.info.changelog is not None and (
                callable(getattr(instance, "on_batch", None)) or self.executor == "ray"):
            raise SchemaError(f"{what}: {parent.name!r} is a changelog, whose retractions go "
                              "to on_record/on_delete in the local executor; on_batch and the "
                              "Ray executor are not supported over it yet", table=name)
        if timed and self.executor == "ray":
            raise SchemaError(f"{what}: {parent.name!r} has event time; its versions per "
                              "event time are kept by the local executor only", table=name)
        info = self._define(TableInfo(
            name, FEATURE, schema, parent=parent.name,
            lookup=lookup.name if lookup else None, lookup_on=on, lazy=lazy, timed=timed,
            retracts=_retracts(parent),
            definition=self._reads(operator_identity(operator, version), parent, lookup)))
        node = OperatorNode(info, self.storage, parent, instance, lookup, budget)
        node.remake = _remaker(operator, instance, args, kwargs, schema, what)
        if self.executor == "ray" and not callable(getattr(instance, "on_batch", None)):
            from ralf.engine.ray_executor import Replicas

            node.replicas = Replicas(instance, schema, parent.schema, self.num_replicas)
        if lookup is not None and lookup.cache is None:
            lookup.load_cache()
        self._register(node)
        return node

    def add_sql_table(self, parent: Node, plan: Any, *, name: str, lazy: bool,
                      budget: int | None) -> SqlTableNode:
        """A feature table maintained by SQL (``aggregate`` / ``sql``)."""
        check_budget(budget)
        _refuse_windowed_parent(parent)
        regrouped = plan.key != parent.schema.primary_key
        if regrouped and (lazy or budget is not None):
            raise SchemaError(f"SQL table: GROUP BY {plan.key!r}, not the key of "
                              f"{parent.name!r}: its stale keys are {parent.name!r}'s, so it "
                              "is refreshed whole, never lazily or under a budget")
        lookup = self._lookup_node(plan)
        if lookup is not None and lookup.info.changelog is not None:
            plan.lookup_rows = rows_relation(lookup.info)  # not its log of changes
        if isinstance(plan, WindowAggregate):
            return self._add_windowed(parent, plan, name=name, lazy=lazy, budget=budget)
        timed = parent.info.event_column is not None
        if timed and not isinstance(plan, DeltaAggregate):
            raise SchemaError(
                f"SQL table: {parent.name!r} has event time, and this query is maintained by "
                "recomputing its keys' groups, which keeps one version per refresh where the "
                "history needs one per event time; only aggregates ralf maintains by deltas "
                "(count, sum, avg, min, max, the variance family; no HAVING, DISTINCT or "
                "lookup) are supported over event time")
        name = self._new_name(name, plan)
        source = f"main.{quote(parent.name)}"
        delta = isinstance(plan, DeltaAggregate)
        query = plan.query(source) if delta else plan.query
        described = self.storage.describe(query)
        helpers = (self.storage.describe(plan.delta_select(f"SELECT * FROM {source}"))[1:]
                   if delta else [])
        columns = {column: python_type(sql) for column, sql in described}
        schema = Schema(plan.key, columns)
        derived = plan.derived({n: schema.sql_type(n) for n in schema.names}) if delta else {}
        info = self._define(TableInfo(
            name, FEATURE, schema, parent=parent.name, lazy=lazy, hidden=helpers,
            derived=derived, lookup=lookup.name if lookup else None,
            lookup_on=plan.lookup.on if lookup else None, timed=timed,
            retracts=_retracts(parent), definition=self._reads({"query": query}, parent, lookup)))
        node = SqlTableNode(info, self.storage, parent, plan, budget, lookup)
        self._register(node)
        return node

    def _add_windowed(self, parent: Node, plan: WindowAggregate, *, name: str, lazy: bool,
                      budget: int | None) -> SqlTableNode:
        """A windowed aggregate (ralf.ivm.windows): outputs stored, its tiles beside it."""
        if self.partition is not None:
            raise SchemaError("windowed aggregate: not supported with shards yet")
        name = self._new_name(name, plan)
        source = f"main.{quote(parent.name)}"
        columns = {column: python_type(sql)
                   for column, sql in self.storage.describe(plan.query(source))}
        schema = Schema(plan.key, columns)
        helpers = self.storage.describe(plan.delta_select(f"SELECT * FROM {source}"))[1:]
        key_type = parent.schema.sql_type(plan.key)
        tiles = [(plan.key, key_type), (TILE, "BIGINT"), *helpers, (FIRST, "TIMESTAMP"),
                 (LAST, "TIMESTAMP")]
        # its tiles serve any window length exactly: their layout is what computes its rows
        definition = self._reads({"tiles": plan.layout()}, parent, None)
        info = self._define(TableInfo(name, FEATURE, schema, parent=parent.name, lazy=lazy,
                                      hidden=[(EXPIRES, "TIMESTAMP")], tiles=tiles,
                                      definition=definition))
        stored = self.storage.setting(f"tiles:{info.name}", plan.layout())
        if stored != plan.layout():
            raise SchemaError(f"table {name!r} already exists in {self.path!r} with tiles of "
                              f"another layout ({stored}); a changed tile size or function "
                              "cannot reuse them: choose another name", table=name)
        node = SqlTableNode(info, self.storage, parent, plan, budget)
        self._register(node)
        return node

    def _lookup_node(self, plan: Any) -> Node | None:
        """The table a SQL table's query looks up, if any (refused where its changes could
        not reach the right keys)."""
        lookup = getattr(plan, "lookup", None)
        if lookup is None:
            return None
        if self.partition is not None:
            raise SchemaError("SQL table: a lookup of another table is not supported with "
                              "shards: a shard holds only its own keys of the other table")
        node = self.nodes[lookup.table]
        _refuse_windowed_parent(node)
        if isinstance(node, FeatureNode) and node.on_lazy_path:
            raise SchemaError(f"SQL table: {lookup.table!r} is refreshed only when queried "
                              "(lazy), so its changes would not reach this table; look up "
                              "an eager table")
        return node

    def readable(self) -> dict[str, Other]:
        """The tables a SQL table's query may look up, by name."""
        return {name: Other(node.schema, node.info.kind == SOURCE)
                for name, node in self.nodes.items()}

    def add_alias(self, alias: str, node: Node) -> None:
        """Make ``node``'s table queryable as ``alias`` too (a view in the database)."""
        if alias == node.name:
            return
        if alias in self.nodes or (alias in self.aliases and self.aliases[alias] is not node):
            raise ValueError(f"a table named {alias!r} is already defined")
        if alias in self.catalog:
            raise ValueError(f"{alias!r} is a stored table; cannot reuse it as an alias")
        self.storage.create_alias(alias, node.name)
        self.aliases[alias] = node

    def _register(self, node: OperatorNode | SqlTableNode) -> None:
        """Resume a new feature table's progress and put it into the graph (a table reading
        a shadow waits for its swap: a SQL query names the table it reads)."""
        with self.lock:
            if is_shadow(node.info.name):
                node.label = node.info.name[:-len(SHADOW)]
            node.resume()
            node.parent.children.append(node)  # told of appends meanwhile, if it waits
            if _reads_shadow(node):
                self.waiting.append(node)
            else:
                self.scheduler.features.append(node)
            self.nodes[node.name] = node

    def served(self, name: str) -> Node:
        """The table queries of ``name`` (or an alias) read: the old version while a new
        one is built."""
        node = self.node(name)
        return self.frozen[node.label] if node.label is not None else node

    def swap_caught_up(self) -> bool:
        """Swap in each shadow table whose refresh has caught up with what it reads (a
        lazy one at once: it refreshes on query); then let the tables waiting for it in.
        Called at the end of a tick, under the engine lock; returns whether it swapped."""
        swapped = False
        for node in list(self.scheduler.features):
            # a quarantined key is not caught up: the old version serves until it is released
            if node.label is None or self.scheduler.failed(node) or node.quarantined or (
                    not node.lazy and node.has_work(now_only=False)):
                continue
            name, shadow = node.label, node.info.name
            self.storage.swap_table(shadow, name)  # one transaction; nothing moved before
            node.info.name, node.label = name, None
            self.catalog[name] = node.info
            del self.shadows[shadow]
            del self.frozen[name]
            node.load_cache()  # served from now on: as the database has it after the swap
            for alias in [a for a, n in self.aliases.items() if n is node]:
                self.storage.create_alias(alias, name)  # PostgreSQL dropped it with the old
            swapped = True
        for node in [n for n in self.waiting if not _reads_shadow(n)]:
            self.waiting.remove(node)
            self.scheduler.features.append(node)
        return swapped

    def _reads(self, definition: dict[str, Any], parent: Node, lookup: Node | None
               ) -> dict[str, Any]:
        """A feature table's definition: what computes it, and the digests of the tables it
        reads as this run defines them (a rebuilt one invalidates it)."""
        read = [parent] + ([lookup] if lookup is not None else [])
        return {**definition, "reads": {n.name: digest(self.catalog[n.name]) for n in read}}

    def _define(self, info: TableInfo) -> TableInfo:
        """Create the table, or check that the stored one has the same definition (rebuild
        it if it has not and this run evolves the pipeline)."""
        existing = self.catalog.get(info.name)
        if existing is None:
            info.watermark = self.storage.seq_base
            self.storage.create_table(info)
            self.catalog[info.name] = info
            return info
        reasons = differences(existing, info)
        changed = (f"table {info.name!r} already exists in {self.path!r} with another "
                   f"definition ({'; '.join(reasons)})")
        if reasons and (info.kind == SOURCE or existing.kind == SOURCE):
            raise SchemaError(f"{changed}; {SOURCE_CHANGE}", table=info.name)
        if reasons and self.evolve != REBUILD:
            raise SchemaError(
                f"{changed}; see what changed with `ralf plan PIPELINE.py`, rebuild it and "
                "the tables reading it with `ralf apply` (or Ralf(..., evolve='rebuild')), or "
                "choose another name", table=info.name)
        if reasons:
            return self._shadow(existing, info)
        info.watermark = existing.watermark
        self._drop_shadow(info.name)  # one a crash left, of a definition given up since
        if (existing.lazy, existing.lookup, existing.lookup_on, existing.definition) != (
                info.lazy, info.lookup, info.lookup_on, info.definition):
            self.storage.update_definition(info)
        self.catalog[info.name] = info
        return info

    def _shadow(self, existing: TableInfo, info: TableInfo) -> TableInfo:
        """A changed table's new version: a shadow table (resumed where a crash left it)
        filled by replay from its parent's log while the old version serves, frozen."""
        shadow = dataclasses.replace(info, name=shadow_name(info.name))
        stored = self.shadows.get(shadow.name)
        if stored is not None and not differences(stored, shadow):
            shadow.watermark = stored.watermark  # its progress is in the catalog
        else:  # none yet, or one a crash left of another definition
            shadow.watermark = self.storage.seq_base
            self.storage.replace_table(shadow)
        self.shadows[shadow.name] = shadow
        self.catalog[info.name] = info  # what the tables reading it name (its digest)
        self.frozen[info.name] = Node(existing, self.storage)
        self.rebuilt.append(info.name)
        return shadow

    def removed(self) -> list[str]:
        """Stored tables this run has not defined (so far)."""
        return [name for name in self.catalog if name not in self.nodes]

    def drop(self, name: str) -> None:
        """Drop a stored table this run has not defined, with everything kept about it."""
        if name in self.nodes or name in self.aliases:
            raise ValueError(f"{name!r} is defined by this pipeline; only a removed table "
                             "can be dropped")
        if name not in self.catalog:
            raise TableNotFound(f"no table named {name!r}")
        with self.lock:
            self.storage.drop_table(name)
            del self.catalog[name]
            self.stored.pop(name, None)
            self._drop_shadow(name)

    def _drop_shadow(self, name: str) -> None:
        """Drop the shadow table of ``name`` a rebuild left, if any."""
        if shadow_name(name) in self.shadows:
            self.storage.drop_table(shadow_name(name))
            del self.shadows[shadow_name(name)]

    def _new_name(self, name: str | None, obj: Any) -> str:
        if name is None:
            base = default_name(obj)
            name, n = base, 1
            while name in self.nodes or name in self.aliases:
                n += 1
                name = f"{base}_{n}"
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(f"a table name must be a non-empty string, got {name!r}")
        if name in self.nodes or name in self.aliases:
            raise ValueError(f"a table named {name!r} is already defined")
        if name.lower().startswith("_ralf") or name.lower() == "ralf" or is_shadow(name):
            raise ValueError(f"table name {name!r} is reserved")
        return name

    # ---- looking tables up -----------------------------------------------------------------
    def node(self, name: str) -> Node:
        """The table named ``name`` (an alias, or one stored by an earlier run too)."""
        node = self.nodes.get(name) or self.aliases.get(name) or self.stored.get(name)
        if node is not None:
            return node
        info = self.catalog.get(name) if isinstance(name, str) else None
        if info is None:
            raise TableNotFound(f"no table named {name!r}")
        # Stored by an earlier run but not defined by this one: answer from the database.
        node = self.stored[name] = Node(info, self.storage)
        return node


def _reads_shadow(node: FeatureNode) -> bool:
    """Whether a table reads a table not swapped in yet."""
    return any(n is not None and n.label is not None for n in (node.parent, node.lookup))


def _retracts(parent: Node) -> bool:
    """A table derived from ``parent`` reads retractions: its root is a changelog source."""
    return parent.info.changelog is not None or parent.info.retracts


def _refuse_windowed_parent(parent: Node) -> None:
    # its rows change as time passes, not only through its log: a child replaying the
    # log would miss those changes
    if isinstance(parent, SqlTableNode) and isinstance(parent.plan, WindowAggregate):
        raise SchemaError(f"{parent.name!r} is a windowed aggregate, whose rows change as "
                          "time passes; tables derived from it are not supported yet",
                          table=parent.name)


def default_name(obj: Any) -> str:
    """A table's name when none is given: its class's name in snake case."""
    cls = obj if isinstance(obj, type) else type(obj)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


def check_budget(budget: int | None) -> None:
    """Refuse a budget that is not a positive number of keys per tick."""
    if budget is not None and (not isinstance(budget, int) or budget < 1):
        raise ValueError(f"budget must be a positive number of keys per tick, got {budget!r}")


def _remaker(given: Any, instance: Any, args: tuple, kwargs: dict, schema: Schema,
             what: str) -> Callable[[], Any] | None:
    """How to make the user's source or operator again as the definition made it (for a
    resume that must start it over): from its class, or from a copy of the instance taken
    before it ran; None if neither is possible."""
    if isinstance(given, type):
        return lambda: instantiate(given, args, kwargs, schema, what)[0]
    try:
        pristine = copy.deepcopy(instance)
    except Exception:  # e.g. it holds a generator or a connection
        return None
    return lambda: copy.deepcopy(pristine)
