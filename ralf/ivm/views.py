"""SQL feature tables: ``table.aggregate(...)`` and ``table.sql("SELECT ...")`` compiled to
a maintenance plan, parsed with sqlglot.

Two plans:

* :class:`~ralf.ivm.aggregate.DeltaAggregate` — decomposable aggregates (count, sum, avg,
  min, max, variance, stddev) over a source, with any filter and argument expressions:
  the pending appends' aggregate is merged into helper columns.
* :class:`KeyRecompute` — anything else that is grouped by the parent's key (median,
  count distinct, expressions over aggregates, HAVING, joins to other tables, a feature
  table as parent): the stale keys' groups are recomputed from the parent's rows.

A query that is not grouped by the parent's key is refused: ralf maintains tables key by
key, and such a query's rows do not belong to one key of the parent.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from ralf.errors import SchemaError
from ralf.ivm.aggregate import DeltaAggregate, Output, canonical
from ralf.schema import quote

_AGGREGATES = {
    exp.Count: "count", exp.Sum: "sum", exp.Avg: "avg", exp.Min: "min", exp.Max: "max",
    exp.Variance: "var_samp", exp.VariancePop: "var_pop", exp.Stddev: "stddev_samp",
    exp.StddevSamp: "stddev_samp", exp.StddevPop: "stddev_pop",
}


@dataclass
class KeyRecompute:
    """Recompute the stale keys' groups: the user's query, with the parent's name bound to
    its rows for those keys only."""

    key: str
    parent: str
    query: str

    def recompute(self, parent_rows: str) -> str:
        """``parent_rows``: a SELECT of the parent's current rows whose key is stale."""
        return (f"WITH {quote(self.parent)} AS ({parent_rows}) "
                f"SELECT * FROM ({self.query}) AS __ralf_result")


def refuse(message: str) -> SchemaError:
    """A SchemaError for an SQL table ralf cannot maintain, for the caller to raise."""
    return SchemaError(f"SQL table: {message}")


def from_aggregate(parent: str, parent_is_source: bool, key: str, columns: set[str],
                   outputs: dict[str, tuple[str, str]]) -> DeltaAggregate | KeyRecompute:
    """``table.aggregate(by=key, name=(column, function), ...)``."""
    if not outputs:
        raise refuse("aggregate() needs at least one output, e.g. n=('rating', 'count')")
    plan = []
    for name, spec in outputs.items():
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise refuse(f"output {name!r}: expected (column, function), got {spec!r}")
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
    return KeyRecompute(key, parent, delta.query(quote(parent)))


def from_sql(query: str, parent: str, parent_is_source: bool, key: str
             ) -> DeltaAggregate | KeyRecompute:
    """``table.sql("SELECT key, ... FROM parent ... GROUP BY key")``."""
    try:
        statements = [s for s in sqlglot.parse(query, read="duckdb") if s is not None]
    except sqlglot.errors.ParseError as exc:
        raise refuse(f"cannot parse the query: {exc}") from None
    if len(statements) != 1 or not isinstance(statements[0], exp.Select):
        raise refuse("expected exactly one SELECT statement")
    tree = statements[0]
    source = tree.args.get("from_") or tree.args.get("from")
    table = source.this if source is not None else None
    if not isinstance(table, exp.Table) or table.name != parent:
        raise refuse(f"the query must read FROM {parent!r}, the table it is defined on")
    group = tree.args.get("group")
    grouped = [e for e in group.expressions] if group is not None else []
    if len(grouped) != 1 or not _is_column(grouped[0], key):
        raise refuse(
            f"the query must GROUP BY {key!r}, the key of {parent!r}: ralf maintains feature "
            f"tables key by key, so each result row must belong to exactly one {key!r}")
    names = []
    has_key = False
    for item in tree.expressions:
        if _is_column(item, key) or (isinstance(item, exp.Alias) and item.alias == key
                                     and _is_column(item.this, key)):
            has_key = True
            names.append(key)
        elif isinstance(item, exp.Alias):
            names.append(item.alias)
        else:
            raise refuse(f"name every output column with AS: {item.sql('duckdb')}")
    if not has_key:
        raise refuse(f"the query must select the key column {key!r}")
    if len(set(names)) != len(names):
        raise refuse(f"duplicate output column names: {names}")
    delta = _decomposable(tree, key) if parent_is_source else None
    return delta or KeyRecompute(key, parent, tree.sql("duckdb"))


def _is_column(node: exp.Expression, name: str) -> bool:
    return isinstance(node, exp.Column) and node.name == name


def _decomposable(tree: exp.Select, key: str) -> DeltaAggregate | None:
    """The delta plan, if every output is a plain supported aggregate and nothing else
    (joins, HAVING, DISTINCT, windows, subqueries, LIMIT) is involved."""
    for arg in ("joins", "having", "distinct", "order", "limit", "offset", "with", "qualify"):
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
        if function is None or call.args.get("distinct"):
            return None
        argument = call.this
        if isinstance(argument, exp.Distinct) or any(argument.find_all(exp.AggFunc)):
            return None
        outputs.append(Output(item.alias, function,
                              "*" if isinstance(argument, exp.Star) else argument.sql("duckdb")))
    where = tree.args.get("where")
    return DeltaAggregate(key, outputs, where.this.sql("duckdb") if where else None)
