"""SQL feature tables: ``table.aggregate(...)`` and ``table.sql("SELECT ...")`` compiled to
a maintenance plan, parsed with sqlglot.

Two plans:

* :class:`~ralf.ivm.aggregate.DeltaAggregate` — decomposable aggregates (count, sum, avg,
  min, max, variance, stddev) over a source, with any filter and argument expressions:
  the pending appends' aggregate is merged into helper columns.
* :class:`KeyRecompute` — a projection of a feature table (``SELECT key, expressions
  FROM parent WHERE ...``, no GROUP BY: one row per key at most), and anything else
  that is grouped by the parent's key (median,
  count distinct, expressions over aggregates, aggregates with extra arguments such as
  DuckDB's ``max(x, n)``, HAVING, a feature table as parent, a join): the stale keys'
  groups are recomputed from the parent's rows.

Exact or refused: a key's row may depend only on that key's rows of the parent, on the
rows of one other ralf table the query looks up by that table's key (a *lookup*: an inner
or LEFT JOIN ``ON parent.col = other.key``, ``EXISTS`` / ``IN`` correlated the same way),
and on nothing that changes between two refreshes. A change of the other table makes
stale exactly the parent keys whose rows name a changed key (the engine's
``invalidate_lookups``). So a query is refused when it is not grouped by the parent's key,
or reads rows of other keys (LIMIT/OFFSET over the groups, window functions, QUALIFY,
uncorrelated subqueries, self-joins, joins on anything but the other table's key, a second
join), samples its input (TABLESAMPLE, USING SAMPLE), calls a function whose value changes
between refreshes (``random()``, ``now()``, ``uuid()`` ...), or reads ralf's bookkeeping
columns (``_ralf_*``, which the maintenance plans do not carry).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlglot
from sqlglot import exp
from sqlglot.optimizer import merge_subqueries, qualify

import ralf.durations as durations
from ralf.errors import SchemaError
from ralf.ivm.aggregate import DeltaAggregate, Output, canonical
from ralf.ivm.windows import WindowAggregate, WindowOutput
from ralf.schema import Schema, quote

_AGGREGATES = {
    exp.Count: "count", exp.Sum: "sum", exp.Avg: "avg", exp.Min: "min", exp.Max: "max",
    exp.Variance: "var_samp", exp.VariancePop: "var_pop", exp.Stddev: "stddev_samp",
    exp.StddevSamp: "stddev_samp", exp.StddevPop: "stddev_pop",
}


# Functions whose value changes between two refreshes of the same rows (DuckDB's VOLATILE
# functions and the ones reading the clock, the session or the transaction), by the name
# sqlglot gives them.
NONDETERMINISTIC = frozenset({
    "random", "rand", "setseed", "uuid", "uuidv4", "uuidv7", "gen_random_uuid", "nextval",
    "currval", "setval", "now", "current_date", "current_time", "current_timestamp",
    "get_current_time", "get_current_timestamp", "today", "transaction_timestamp",
    "statement_timestamp", "clock_timestamp", "timeofday", "localtime", "localtimestamp",
    "current_localtime", "current_localtimestamp", "current_setting", "getvariable",
    "current_query", "current_query_id", "current_transaction_id", "current_connection_id",
    "txid_current", "current_database", "current_schema", "current_schemas", "error",
    "write_log", "sleep_ms", "stats", "vector_type",
})


# Aggregates sqlglot does not model whose value depends on the order rows are read in (or
# on a random sample of them); first/last/any_value/list/string_agg are matched by type.
ORDER_DEPENDENT = frozenset({"arbitrary", "reservoir_quantile"})


@dataclass
class KeyRecompute:
    """Recompute the stale keys' groups: the user's query, with the parent's name bound to
    its rows for those keys only. ``deletes``: a key's row can disappear (a HAVING, or a
    filter over a parent whose rows change, or a parent that deletes rows, or an inner
    join). ``lookup``: the other table the query reads by its key, if any."""

    key: str
    parent: str
    query: str
    deletes: bool = False
    lookup: Lookup | None = None
    whole: bool = False  # one group of every parent row (a constant key): recomputed whole
    # where the looked-up table's rows as they are now live, when not under its name (a
    # changelog source's current state: its own table is the log of its changes)
    lookup_rows: str | None = None

    def recompute(self, parent_rows: str) -> str:
        """``parent_rows``: a SELECT of the parent's current rows whose key is stale."""
        other = ""
        if self.lookup is not None and self.lookup_rows is not None:
            other = f", {quote(self.lookup.table)} AS (SELECT * FROM {self.lookup_rows})"
        return (f"WITH {quote(self.parent)} AS ({parent_rows}){other} "
                f"SELECT * FROM ({self.query}) AS __ralf_result")


@dataclass(frozen=True)
class Lookup:
    """How a query reads one other table: the rows of ``table`` whose key equals the
    parent's column ``on`` (a JOIN, EXISTS or IN). When ``table`` changes, the parent keys
    whose rows hold a changed key in ``on`` are stale; with ``nulls`` (an IN), those whose
    ``on`` is NULL too (``NULL IN (set)`` is FALSE over an empty set and NULL over any
    other, so it can change with any change of the set)."""

    table: str
    on: str
    nulls: bool = False


class Other(NamedTuple):
    """Another table of the pipeline, as a query may look it up."""

    schema: Schema
    is_source: bool


def refuse(message: str) -> SchemaError:
    """A SchemaError for an SQL table ralf cannot maintain, for the caller to raise."""
    return SchemaError(f"SQL table: {message}")


def from_aggregate(parent: str, parent_is_source: bool, key: str, columns: set[str],
                   outputs: dict[str, tuple], parent_deletes: bool = False,
                   event_time: str | None = None, tile: Any = None
                   ) -> DeltaAggregate | KeyRecompute | WindowAggregate:
    """``table.aggregate(by=key, name=(column, function), ...)``, or with windows over
    event time, ``name=(column, function, "7d")``; ``parent_deletes``: the parent's rows
    can disappear (a source: it is a changelog); ``event_time``: the parent's event-time
    column; ``tile``: the windows' tile size (default: a 60th of the shortest window)."""
    return over_changelog(_aggregate(parent, parent_is_source, key, columns, outputs,
                                     parent_deletes, event_time, tile),
                          parent_is_source and parent_deletes)


def over_changelog(plan: Any, changelog: bool) -> Any:
    """A plan over a changelog source: deltas that retract, or recomputed groups that may
    disappear (unchanged over any other parent)."""
    if not changelog:
        return plan
    if isinstance(plan, DeltaAggregate):
        return plan.retracting_copy()
    if isinstance(plan, KeyRecompute):
        plan.deletes = True
    return plan


def _aggregate(parent: str, parent_is_source: bool, key: str, columns: set[str],
               outputs: dict[str, tuple], parent_deletes: bool, event_time: str | None,
               tile: Any) -> DeltaAggregate | KeyRecompute | WindowAggregate:
    if not outputs:
        raise refuse("aggregate() needs at least one output, e.g. n=('rating', 'count')")
    windowed = {n: s for n, s in outputs.items() if isinstance(s, tuple) and len(s) in (3, 4)}
    if windowed:
        return _windowed(key, columns, outputs, windowed, parent_is_source, event_time, tile)
    if tile is not None:
        raise refuse("tile= sizes the tiles of windowed outputs; these outputs have no window")
    plan = []
    for name, spec in outputs.items():
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise refuse(f"output {name!r}: expected (column, function), (column, function, "
                     f"window) or (column, function, window, hop), got {spec!r}")
        column, function = spec
        if column != "*" and column not in columns:
            raise refuse(f"output {name!r}: the parent has no column {column!r}")
        try:
            function = canonical(function)
        except ValueError as exc:
            raise refuse(f"output {name!r}: {exc}") from None
        if column == "*" and function != "count":
            raise refuse(f"output {name!r}: only count accepts '*'")
        plan.append(Output(name, function, "*" if column == "*" else quote(column)))
    delta = DeltaAggregate(key, plan, None)
    if parent_is_source:
        return delta
    return KeyRecompute(key, parent, delta.query(quote(parent)), parent_deletes)


def _windowed(key: str, columns: set[str], outputs: dict[str, tuple],
              windowed: dict[str, tuple], parent_is_source: bool, event_time: str | None,
              tile: Any) -> WindowAggregate:
    if len(windowed) != len(outputs):
        lifetime = next(n for n in outputs if n not in windowed)
        raise refuse(f"output {lifetime!r} has no window while others have: define "
                     "lifetime and windowed outputs in two aggregate() tables")
    if not parent_is_source or event_time is None:
        raise refuse("a window is over event time: aggregate a source that names its "
                     "event_time")
    plan = []
    micro = dt.timedelta(microseconds=1)
    for name, (column, function, window, *hop) in windowed.items():
        if column != "*" and column not in columns:
            raise refuse(f"output {name!r}: the parent has no column {column!r}")
        try:
            function = canonical(function)
            length = durations.timedelta(window, f"output {name!r}: window") // micro
            step = durations.timedelta(hop[0], f"output {name!r}: hop") // micro if hop else 0
        except ValueError as exc:
            raise refuse(str(exc)) from None
        if column == "*" and function != "count":
            raise refuse(f"output {name!r}: only count accepts '*'")
        if hop and step < 1:
            raise refuse(f"output {name!r}: hop {hop[0]!r} is shorter than a microsecond")
        plan.append(WindowOutput(name, function, "*" if column == "*" else quote(column),
                                 length, step))
    shortest = min(o.window for o in plan)
    try:
        size = (max(1, shortest // 60) if tile is None else
                durations.timedelta(tile, "tile") // dt.timedelta(microseconds=1))
    except ValueError as exc:
        raise refuse(str(exc)) from None
    if size < 1:
        raise refuse(f"tile {tile!r} is shorter than a microsecond")
    return WindowAggregate(key, plan, event_time, size)


def from_sql(query: str, parent: str, parent_is_source: bool, key: str,
             parent_deletes: bool = False, others: Mapping[str, Other] | None = None,
             columns: Collection[str] = ()) -> DeltaAggregate | KeyRecompute:
    """``table.sql("SELECT key, ... FROM parent ... GROUP BY key")``; ``parent_deletes``:
    the parent's rows can disappear (a source: it is a changelog); ``others``: the
    pipeline's other tables a query may look up (name -> schema); ``columns``: the parent's
    columns."""
    return over_changelog(_sql(query, parent, parent_is_source, key, parent_deletes, others,
                               columns), parent_is_source and parent_deletes)


def _sql(query: str, parent: str, parent_is_source: bool, key: str, parent_deletes: bool,
         others: Mapping[str, Other] | None, columns: Collection[str]
         ) -> DeltaAggregate | KeyRecompute:
    try:
        statements = [s for s in sqlglot.parse(query, read="duckdb") if s is not None]
    except sqlglot.errors.ParseError as exc:
        raise refuse(f"cannot parse the query: {exc}") from None
    while len(statements) == 1 and isinstance(statements[0], exp.Subquery) and not any(
            v for k, v in statements[0].args.items() if k != "this"):  # (SELECT ...) alone
        statements = [statements[0].this]
    if len(statements) != 1 or not isinstance(statements[0], exp.Select):
        raise refuse("expected exactly one SELECT statement (UNION, INTERSECT, EXCEPT and "
                     "VALUES are not maintained)")
    tree = statements[0]
    others = others or {}
    if tree.args.get("with_") or any(isinstance(node, exp.Subquery) and isinstance(
            node.parent, (exp.From, exp.Join)) for node in tree.find_all(exp.Subquery)):
        tree = _merged(tree, parent, columns, others)
    source = tree.args.get("from_")
    table = source.this if source is not None else None
    outer, inner = tree, None
    if isinstance(table, exp.Subquery) and isinstance(table.this, exp.Select):
        inner, table = _per_key_subquery(table, parent, key)
        outer = tree.copy()
        outer.set("from_", exp.From(this=table))
    if not isinstance(table, exp.Table) or table.name != parent or table.args.get("db"):
        raise refuse(f"the query must read FROM {parent!r}, the table it is defined on")
    lookup, checked = _lookup(outer, table, others, columns)
    if inner is not None and lookup is not None:
        raise refuse("a lookup over a FROM-subquery: look up in the subquery's table "
                     "instead, or define the subquery as a table of its own")
    _refuse_beyond_the_key(checked)
    for count in tree.find_all(exp.Count):
        if count.this is None:  # count(): DuckDB's spelling of count(*), PostgreSQL's too
            count.set("this", exp.Star())
    group = tree.args.get("group")
    if inner is not None and group is None:
        raise refuse(f"a query over a FROM-subquery must GROUP BY {key!r}")
    grouped = [e for e in group.expressions] if group is not None else []
    projection = group is None and not any(tree.find_all(exp.AggFunc))
    if projection and parent_is_source:
        raise refuse(f"{parent!r} is a source, holding many rows per key: a query over it "
                     f"must GROUP BY {key!r}; a projection without GROUP BY (one row per "
                     "key) is for feature tables")
    if projection:
        group_key, key_expression = key, None
    else:
        group_key, key_expression = _group_key(tree, grouped, key, parent, columns)
    names = []
    has_key = False
    for item in tree.expressions:
        if _is_column(item, group_key) or (
                isinstance(item, exp.Alias) and item.alias == group_key
                and (key_expression is not None or _is_column(item.this, group_key))):
            has_key = True
            names.append(group_key)
        elif isinstance(item, exp.Alias):
            names.append(item.alias)
        elif isinstance(item, exp.Column) and not isinstance(item.this, exp.Star):
            names.append(item.name)
        else:
            raise refuse(f"name every output column with AS: {item.sql('duckdb')}")
    if not has_key:
        raise refuse(f"the query must select the key column {group_key!r}")
    if len(set(names)) != len(names):
        raise refuse(f"duplicate output column names: {names}")
    if inner is not None:  # a FROM-subquery per key: recomputed per key
        if group_key != key:
            raise refuse(f"a query over a FROM-subquery must GROUP BY {key!r}")
        return KeyRecompute(key, parent, tree.sql("duckdb"), True)
    if lookup is not None:
        if group_key != key:
            raise refuse(f"a query reading {lookup.table!r} is recomputed per key of "
                         f"{parent!r}: GROUP BY {key!r}")
        if projection and tree.args.get("joins") and others[lookup.table].is_source:
            raise refuse(f"{lookup.table!r} is a source, holding many rows per key: joined "
                         f"without GROUP BY {key!r} a key would get many rows")
    elif group_key != key:
        return _regrouped(tree, parent, parent_is_source, key, group_key, key_expression)
    delta = (_decomposable(_unqualified(tree), key)
             if parent_is_source and lookup is None else None)
    if delta is not None:
        return delta
    where = tree.args.get("where") is not None
    joins = tree.args.get("joins") or []
    # an inner join or a semi-join drops the keys it no longer matches; a LEFT JOIN whose
    # WHERE may read the other table's columns, too
    drops = lookup is not None and not (joins and joins[0].args.get("side") == "LEFT"
                                        and tree.args.get("where") is None)
    deletes = tree.args.get("having") is not None or drops or (
        not parent_is_source and (where or parent_deletes))
    return KeyRecompute(key, parent, tree.sql("duckdb"), deletes, lookup)


def _per_key_subquery(subquery: exp.Subquery, parent: str, key: str
                      ) -> tuple[exp.Select, exp.Table]:
    """A FROM-subquery whose rows each belong to one key of the parent (it groups by the
    key, among other columns, or does not aggregate): the outer query recomputed per key
    reads it over that key's rows only. Returns it, and the parent's table standing in
    for it (under the subquery's alias) for the checks of the outer query."""
    inner = subquery.this
    source = inner.args.get("from_")
    table = source.this if source is not None else None
    if not isinstance(table, exp.Table) or table.name != parent or table.args.get("db"):
        raise refuse(f"a FROM-subquery must read {parent!r}, the table the query is "
                     "defined on")
    _refuse_beyond_the_key(inner)
    if not any(_is_column(item, key) or (isinstance(item, exp.Alias) and item.alias == key
                                         and _is_column(item.this, key))
               for item in inner.expressions):
        raise refuse(f"a FROM-subquery must select the key {key!r} unchanged")
    names = [item.alias_or_name.lower() for item in inner.expressions]
    if len(set(names)) != len(names) or any(
            isinstance(item, exp.Star) or isinstance(item.this, exp.Star)
            for item in inner.expressions if isinstance(item, (exp.Star, exp.Column))):
        raise refuse("a FROM-subquery's outputs must have one name each (no *, no name "
                     "twice): the outer query reads them by name")
    group = inner.args.get("group")
    if group is None and any(inner.find_all(exp.AggFunc)):
        raise refuse("a FROM-subquery aggregating without GROUP BY reads every key's rows")
    if group is not None and not any(_is_column(g, key) for g in group.expressions):
        raise refuse(f"a FROM-subquery must GROUP BY {key!r} (among other columns): a group "
                     "of several keys reads rows beyond the key being refreshed")
    alias = subquery.args.get("alias")
    return inner, exp.Table(this=exp.to_identifier(parent), alias=alias)


def _merged(tree: exp.Select, parent: str, columns: Collection[str],
            others: Mapping[str, Other]) -> exp.Select:
    """The query with its CTEs put in place as FROM-subqueries, and those merged into one
    SELECT where they are plain projections and filters (sqlglot's optimizer rule
    ``merge_subqueries``); what does not merge stays a subquery, for the checks after."""
    schema = {parent: dict.fromkeys(columns, "INT")}
    schema.update({name: dict.fromkeys(other.schema.names, "INT")
                   for name, other in others.items()})
    tree = tree.copy()
    with_ = tree.args.get("with_")
    if with_ is not None:  # each CTE in place of its references: FROM-subqueries to merge
        if with_.args.get("recursive"):
            raise refuse("WITH RECURSIVE reads its own rows over and over")
        for cte in with_.expressions:
            for ref in list(tree.find_all(exp.Table)):
                if ref.name == cte.alias and not ref.args.get("db"):
                    ref.replace(exp.Subquery(this=cte.this.copy(),
                                             alias=exp.TableAlias(this=exp.to_identifier(
                                                 ref.alias_or_name))))
        tree.set("with_", None)
    try:
        qualified = qualify.qualify(tree, schema=schema, dialect="duckdb",
                                    quote_identifiers=False)
    except sqlglot.errors.OptimizeError as exc:
        raise refuse(f"cannot resolve the query's columns: {exc}") from None
    return merge_subqueries.merge_subqueries(qualified)


def _group_key(tree: exp.Select, grouped: list[exp.Expression], key: str, parent: str,
               columns: Collection[str]) -> tuple[str, exp.Expression | None]:
    """The result's key column, and the expression it is computed by when it is not a
    column of the parent: ``GROUP BY user``, or ``SELECT 'all' AS scope ... GROUP BY
    scope`` (one row), ``SELECT a || '/' || b AS ab ... GROUP BY ab`` (a composite key)."""
    if not grouped:
        raise refuse("an aggregate without GROUP BY gives one row even over no rows, which a "
                     "keyed table cannot hold before its first row; name the row and group "
                     "by it: SELECT 'all' AS scope, count(*) AS n ... GROUP BY scope")
    if len(grouped) != 1:
        raise refuse(
            f"the query must GROUP BY {key!r}, the key of {parent!r} (or, over a source, one "
            "other column or expression): a feature table has one key column; for a "
            "composite key group by one expression, e.g. SELECT a || '/' || b AS ab ... "
            "GROUP BY ab")
    group = grouped[0]
    if isinstance(group, exp.Literal) and not group.is_string:
        raise refuse(f"GROUP BY {group.sql('duckdb')}: a position; group by the column's name")
    expressions = {item.alias: item.this for item in tree.expressions
                   if isinstance(item, exp.Alias) and not isinstance(item.this, exp.Column)}
    if isinstance(group, exp.Column) and not group.table and group.name in expressions:
        alias, expression = group.name, expressions[group.name]
    elif isinstance(group, exp.Column):
        return group.name, None
    else:
        matched = [a for a, e in expressions.items() if e == group]
        if not matched:
            raise refuse(f"GROUP BY {group.sql('duckdb')}: select the grouped expression "
                         "with a name (SELECT <expression> AS k ... GROUP BY k); it is the "
                         "table's key")
        alias, expression = matched[0], group
    if alias.lower() in {c.lower() for c in columns}:  # SQL would read the column instead
        raise refuse(f"GROUP BY {alias!r}: the key expression's alias is a column of "
                     f"{parent!r} too; give it another name")
    return alias, expression


def _regrouped(tree: exp.Select, parent: str, parent_is_source: bool, key: str,
               group_key: str, key_expression: exp.Expression | None
               ) -> DeltaAggregate | KeyRecompute:
    """``GROUP BY`` a column or expression other than the parent's key (per-movie
    averages from ratings keyed by user; a constant: one row): maintained by deltas only —
    each parent append is applied once, into the group it names — so only over a source,
    with decomposable aggregates, and with the NULL group excluded (a feature table's key
    cannot be NULL). Over a feature table, a constant group (one row of every row) is
    recomputed whole whenever the parent changes."""
    if not parent_is_source:
        if isinstance(key_expression, exp.Literal):  # one group of every row: its own
            return KeyRecompute(group_key, parent, tree.sql("duckdb"), True, whole=True)
        raise refuse(f"GROUP BY {group_key!r}: a feature table's rows change, so a group "
                     "over another column than its key cannot be maintained by deltas; "
                     f"GROUP BY {key!r} (or a constant: one row, recomputed whole)")
    plain = _unqualified(tree)
    delta = _decomposable(plain, group_key)
    if delta is None:
        raise refuse(f"GROUP BY {group_key!r} (not the key {key!r}) is maintained by deltas "
                     "only: count, sum, avg, min, max and the variance family, any WHERE, "
                     "no HAVING, DISTINCT, FILTER or other functions of aggregates")
    where = tree.args.get("where")
    condition = where.this if where is not None else None
    conjuncts = (list(condition.flatten()) if isinstance(condition, exp.And)
                 else [condition])
    if key_expression is None:
        grouped: exp.Expression = exp.column(group_key)
    else:
        grouped = _unqualified(exp.select(key_expression)).expressions[0]
        delta.key_expression = grouped.sql("duckdb")
    never_null = isinstance(grouped, exp.Literal)
    if not never_null and not any(
            isinstance(c, exp.Not) and isinstance(c.this, exp.Is)
            and _unqualified(exp.select(c.this.this.unnest())).expressions[0] == grouped
            and isinstance(c.this.expression, exp.Null) for c in conjuncts):
        shown = grouped.sql("duckdb")
        raise refuse(f"GROUP BY {group_key!r}: the group of NULL would need a NULL key, "
                     f"which a feature table cannot have; add WHERE {shown} IS NOT NULL")
    return delta


def _lookup(tree: exp.Select, parent: exp.Table, others: Mapping[str, Other],
            columns: Collection[str]) -> tuple[Lookup | None, exp.Select]:
    """The one other table the query reads by its key (a JOIN, EXISTS or IN), if any, and
    the query without that read, for the checks every query passes."""
    joins = tree.args.get("joins") or []
    semi = [node for node in tree.find_all(exp.Exists, exp.In)
            if isinstance(node, exp.Exists) or node.args.get("query") is not None]
    if not joins and not semi:
        return None, tree
    if len(joins) + len(semi) > 1:
        raise refuse("one lookup of one other table (a JOIN, EXISTS or IN) per query: more "
                     "would make a key's row depend on rows no single key change names")
    mine = {parent.alias_or_name}  # an aliased table is in scope by its alias only
    checked = tree.copy()
    if joins:
        join = joins[0]
        if join.args.get("side") not in (None, "LEFT") or join.args.get("kind") not in (
                None, "INNER", "OUTER") or join.args.get("using") or join.args.get("method"):
            raise refuse(f"{join.sql('duckdb')}: ralf maintains [INNER] JOIN and LEFT JOIN "
                         "... ON parent.column = other.key")
        other = _other_table(join.this, parent, others)
        on = _key_equality(join.args.get("on"), other, others[other.name], mine, columns)
        checked.set("joins", None)
    else:
        node = semi[0]
        query = node.this if isinstance(node, exp.Exists) else node.args["query"].this
        if not isinstance(query, exp.Select):
            raise refuse(f"{node.sql('duckdb')}: EXISTS / IN over one SELECT of one table")
        for arg in ("joins", "group", "having", "limit", "offset", "with_", "qualify",
                    "distinct", "order"):
            if query.args.get(arg):
                raise refuse(f"{node.sql('duckdb')}: the subquery must be a plain SELECT "
                             "... FROM other WHERE other.key = parent.column")
        if any(inner is not query for inner in query.find_all(exp.Select)):
            raise refuse(f"{node.sql('duckdb')}: a subquery inside the lookup reads rows of "
                         "the other table beyond the key looked up")
        source = query.args.get("from_")
        other = _other_table(source.this if source is not None else None, parent, others)
        theirs = {other.alias_or_name}
        other_columns = set(others[other.name].schema.names)
        if isinstance(node, exp.Exists):
            where = query.args.get("where")
            conjuncts = _conjuncts(where.this) if where is not None else []
            links = [c for c in conjuncts if _outer_columns(c, theirs, other_columns)]
            if len(links) != 1:
                raise refuse(f"{node.sql('duckdb')}: EXISTS must be correlated by exactly "
                             "one condition other.key = parent.column")
            on = _key_equality(links[0], other, others[other.name], mine, columns)
        else:
            selected = query.expressions
            key = others[other.name].schema.primary_key
            if len(selected) != 1 or not _is_column(selected[0], key):
                raise refuse(f"{node.sql('duckdb')}: IN must select the key {key!r} of "
                             f"{other.name!r}")
            if _outer_columns(query.args.get("where") or exp.true(), theirs, other_columns):
                raise refuse(f"{node.sql('duckdb')}: a correlated IN subquery; use EXISTS")
            on = _parent_column(node.this, mine, columns, tree)
        _refuse_unstable(query)
        next(n for n in checked.find_all(type(node)) if n == node).replace(exp.true())
    return Lookup(other.name, on, nulls=not joins and isinstance(semi[0], exp.In)), checked


def _other_table(table: exp.Expression | None, parent: exp.Table,
                 others: Mapping[str, Other]) -> exp.Table:
    if not isinstance(table, exp.Table) or table.args.get("db"):
        raise refuse("a lookup reads one ralf table by name")
    if table.name == parent.name:
        raise refuse(f"reading {parent.name!r} again (a self-join, or a subquery over it) "
                     "makes a row depend on the rows of other keys")
    if table.name not in others:
        raise refuse(f"{table.name!r} is not a table of this pipeline")
    return table


def _conjuncts(condition: exp.Expression) -> list[exp.Expression]:
    return list(condition.flatten()) if isinstance(condition, exp.And) else [condition]


def _outer_columns(node: exp.Expression, theirs: set[str], columns: set[str]) -> bool:
    """Whether ``node``, inside a subquery over the other table (named ``theirs``, with
    ``columns``), refers to a column of the outer query: qualified by another name, or
    unqualified and not the other table's (SQL resolves a name in the innermost scope
    first)."""
    return any(column.table not in theirs if column.table else column.name not in columns
               for column in node.find_all(exp.Column))


def _parent_column(node: exp.Expression, mine: set[str], columns: Collection[str],
                   tree: exp.Select) -> str:
    """The parent's column an IN looks up: a column of the parent by its name (qualified by
    the parent's alias, or unqualified and not the name of an output, which SQL would
    read in its place)."""
    renamed = {item.alias.lower() for item in tree.expressions if isinstance(item, exp.Alias)
               and not _is_column(item.this, item.alias)}  # outputs that are not the column
    if not isinstance(node, exp.Column) or node.name not in columns or (
            node.table not in mine and (node.table or node.name.lower() in renamed)):
        raise refuse(f"{node.sql('duckdb')}: a lookup is by one column of the parent, "
                     "qualified by its alias")
    return node.name


def _key_equality(condition: exp.Expression | None, other: exp.Table, facts: Other,
                  mine: set[str], columns: Collection[str]) -> str:
    """The parent's column in ``other.key = parent.column`` (either way round)."""
    theirs = {other.alias_or_name}
    key = facts.schema.primary_key
    if isinstance(condition, exp.EQ):
        for a, b in ((condition.this, condition.expression),
                     (condition.expression, condition.this)):
            if isinstance(a, exp.Column) and a.table in theirs and a.name == key and (
                    isinstance(b, exp.Column) and b.table in mine and b.name in columns):
                return b.name
    shown = condition.sql("duckdb") if condition is not None else "no condition"
    raise refuse(f"{shown}: a lookup of {other.name!r} must be ON {other.alias_or_name}.{key} "
                 f"= <parent alias>.<column>, both qualified, on {other.name!r}'s key "
                 f"{key!r}: then a change of one of its keys names the parent keys it reaches")


def _refuse_beyond_the_key(tree: exp.Select) -> None:
    """Refuse what makes a key's row depend on more than that key's rows of the parent, as
    they are now (module docstring)."""
    reads_others = {"limit": "LIMIT", "offset": "OFFSET", "fetch": "FETCH",
                    "qualify": "QUALIFY", "joins": "a join", "with_": "WITH"}
    for arg, what in reads_others.items():
        if tree.args.get(arg):
            raise refuse(f"{what} makes a row depend on the rows of other keys; ralf "
                         "maintains feature tables key by key (refused, not approximated)")
    distinct = tree.args.get("distinct")
    if distinct is not None and distinct.args.get("on"):
        raise refuse("DISTINCT ON keeps one row of several keys' rows")
    if any(tree.find_all(exp.Subquery, exp.Exists)) or any(
            isinstance(node, exp.Select) for node in tree.find_all(exp.Select)
            if node is not tree):
        raise refuse("a subquery reads rows beyond the key being refreshed (EXISTS or IN "
                     "correlated on another table's key excepted)")
    if len(list(tree.find_all(exp.Table))) != 1:
        raise refuse("a join reads rows beyond the key being refreshed (one JOIN on another "
                     "table's key excepted)")
    _refuse_unstable(tree)


def _refuse_unstable(tree: exp.Select) -> None:
    """Refuse what gives another value at each refresh of the same rows, or reads what the
    maintenance plans do not carry (module docstring)."""
    if any(tree.find_all(exp.TableSample)):
        raise refuse("a sample (TABLESAMPLE / USING SAMPLE) gives different rows at every "
                     "refresh")
    if any(tree.find_all(exp.Window)):
        raise refuse("window functions (OVER ...) read the rows of other keys")
    for function in tree.find_all(exp.Func):
        name = (function.name if isinstance(function, exp.Anonymous)
                else function.sql_name()).lower()
        if name in NONDETERMINISTIC:
            raise refuse(f"{function.sql('duckdb').lower()} gives a different value at "
                         "every refresh (a window over the last hours or days is "
                         "aggregate(name=(column, function, '7d')) over a source with "
                         "event time; see docs/time.md)")
    for call in tree.find_all(exp.First, exp.Last, exp.AnyValue, exp.ArrayAgg,
                              exp.GroupConcat, exp.Anonymous):
        ordered = isinstance(call, (exp.ArrayAgg, exp.GroupConcat)) and any(
            call.find_all(exp.Order))
        if not ordered and (not isinstance(call, exp.Anonymous)
                            or call.name.lower() in ORDER_DEPENDENT):
            raise refuse(f"{call.sql('duckdb').lower()} depends on the order rows are read "
                         "in, which no refresh fixes (give list/string_agg an ORDER BY; for "
                         "the latest value use arg_max over an ordering column)")
    for column in tree.find_all(exp.Column):
        if column.name.lower().startswith("_ralf_"):
            raise refuse(f"{column.name} is ralf's bookkeeping column, not part of the "
                         "parent's rows the query is maintained over")


def _unqualified(tree: exp.Select) -> exp.Select:
    """The query with table qualifiers dropped from its columns (``src.i``, ``s.i`` →
    ``i``): the delta plan reads the pending rows under a name of its own, and the query
    reads one table only."""
    tree = tree.copy()
    for column in tree.find_all(exp.Column):
        column.set("table", None)
    return tree


def _is_column(node: exp.Expression, name: str) -> bool:
    return isinstance(node, exp.Column) and node.name == name


def _decomposable(tree: exp.Select, key: str) -> DeltaAggregate | None:
    """The delta plan, if every output is a plain supported aggregate and nothing else
    (joins, HAVING, DISTINCT, windows, subqueries, LIMIT) is involved."""
    for arg in ("joins", "having", "distinct", "order", "limit", "offset", "with_", "qualify"):
        if tree.args.get(arg):
            return None
    if any(tree.find_all(exp.Window, exp.Subquery)):
        return None
    outputs = []
    for item in tree.expressions:
        if not isinstance(item, exp.Alias) or item.alias == key:
            continue
        call = item.this
        function = _AGGREGATES.get(type(call))
        extra = [a for a, v in call.args.items() if v and a not in ("this", "big_int")]
        if function is None or extra:  # DISTINCT, max(x, n), ... : recomputed per key
            return None
        argument = call.this
        if (argument is None or isinstance(argument, exp.Distinct)
                or any(argument.find_all(exp.AggFunc))):
            return None
        outputs.append(Output(item.alias, function,
                              "*" if isinstance(argument, exp.Star) else argument.sql("duckdb")))
    where = tree.args.get("where")
    return DeltaAggregate(key, outputs, where.this.sql("duckdb") if where else None)
