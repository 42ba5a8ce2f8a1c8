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
  DuckDB's ``max(x, n)``, HAVING, a feature table as parent): the stale keys' groups are
  recomputed from the parent's rows.

Exact or refused: a key's row may depend only on that key's rows of the parent, and on
nothing that changes between two refreshes. So a query is refused when it is not grouped
by the parent's key, or reads rows of other keys (LIMIT/OFFSET over the groups, window
functions, QUALIFY, subqueries, joins — a self-join or another table, which would go stale
when only the other side changes), samples its input (TABLESAMPLE, USING SAMPLE), calls a
function whose value changes between refreshes (``random()``, ``now()``, ``uuid()`` ...), or
reads ralf's bookkeeping columns (``_ralf_*``, which the maintenance plans do not carry).
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


@dataclass
class KeyRecompute:
    """Recompute the stale keys' groups: the user's query, with the parent's name bound to
    its rows for those keys only. ``deletes``: a key's row can disappear (a HAVING, or a
    filter over a parent whose rows change, or a parent that deletes rows)."""

    key: str
    parent: str
    query: str
    deletes: bool = False

    def recompute(self, parent_rows: str) -> str:
        """``parent_rows``: a SELECT of the parent's current rows whose key is stale."""
        return (f"WITH {quote(self.parent)} AS ({parent_rows}) "
                f"SELECT * FROM ({self.query}) AS __ralf_result")


def refuse(message: str) -> SchemaError:
    """A SchemaError for an SQL table ralf cannot maintain, for the caller to raise."""
    return SchemaError(f"SQL table: {message}")


def from_aggregate(parent: str, parent_is_source: bool, key: str, columns: set[str],
                   outputs: dict[str, tuple[str, str]], parent_deletes: bool = False
                   ) -> DeltaAggregate | KeyRecompute:
    """``table.aggregate(by=key, name=(column, function), ...)``; ``parent_deletes``: the
    parent's rows can disappear."""
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
    return KeyRecompute(key, parent, delta.query(quote(parent)), parent_deletes)


def from_sql(query: str, parent: str, parent_is_source: bool, key: str,
             parent_deletes: bool = False) -> DeltaAggregate | KeyRecompute:
    """``table.sql("SELECT key, ... FROM parent ... GROUP BY key")``; ``parent_deletes``:
    the parent's rows can disappear."""
    try:
        statements = [s for s in sqlglot.parse(query, read="duckdb") if s is not None]
    except sqlglot.errors.ParseError as exc:
        raise refuse(f"cannot parse the query: {exc}") from None
    if len(statements) != 1 or not isinstance(statements[0], exp.Select):
        raise refuse("expected exactly one SELECT statement")
    tree = statements[0]
    source = tree.args.get("from_") or tree.args.get("from")
    table = source.this if source is not None else None
    if not isinstance(table, exp.Table) or table.name != parent or table.args.get("db"):
        raise refuse(f"the query must read FROM {parent!r}, the table it is defined on")
    _refuse_beyond_the_key(tree)
    for count in tree.find_all(exp.Count):
        if count.this is None:  # count(): DuckDB's spelling of count(*), PostgreSQL's too
            count.set("this", exp.Star())
    group = tree.args.get("group")
    grouped = [e for e in group.expressions] if group is not None else []
    projection = group is None and not any(tree.find_all(exp.AggFunc))
    if projection and parent_is_source:
        raise refuse(f"{parent!r} is a source, holding many rows per key: a query over it "
                     f"must GROUP BY {key!r}; a projection without GROUP BY (one row per "
                     "key) is for feature tables")
    if not projection and (len(grouped) != 1 or not isinstance(grouped[0], exp.Column)):
        raise refuse(
            f"the query must GROUP BY {key!r}, the key of {parent!r} (or, over a source, one "
            "other column): each result row must belong to exactly one key")
    group_key = key if projection else grouped[0].name
    names = []
    has_key = False
    for item in tree.expressions:
        if _is_column(item, group_key) or (
                isinstance(item, exp.Alias) and item.alias == group_key
                and _is_column(item.this, group_key)):
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
    if group_key != key:
        return _regrouped(tree, parent, parent_is_source, key, group_key)
    delta = _decomposable(_unqualified(tree), key) if parent_is_source else None
    if delta is not None:
        return delta
    where = tree.args.get("where") is not None
    deletes = tree.args.get("having") is not None or (
        not parent_is_source and (where or parent_deletes))
    return KeyRecompute(key, parent, tree.sql("duckdb"), deletes)


def _regrouped(tree: exp.Select, parent: str, parent_is_source: bool, key: str,
               group_key: str) -> DeltaAggregate:
    """``GROUP BY`` a column other than the parent's key (per-movie averages from ratings
    keyed by user): maintained by deltas only — each parent append is applied once, into
    the group it names — so only over a source, with decomposable aggregates, and with
    the NULL group excluded (a feature table's key cannot be NULL)."""
    if not parent_is_source:
        raise refuse(f"GROUP BY {group_key!r}: a feature table's rows change, so a group "
                     "over another column than its key cannot be maintained by deltas; "
                     f"GROUP BY {key!r}")
    delta = _decomposable(_unqualified(tree), group_key)
    if delta is None:
        raise refuse(f"GROUP BY {group_key!r} (not the key {key!r}) is maintained by deltas "
                     "only: count, sum, avg, min, max and the variance family, any WHERE, "
                     "no HAVING, DISTINCT, FILTER or other functions of aggregates")
    where = tree.args.get("where")
    condition = where.this if where is not None else None
    conjuncts = (list(condition.flatten()) if isinstance(condition, exp.And)
                 else [condition])
    if not any(isinstance(c, exp.Not) and isinstance(c.this, exp.Is)
               and _is_column(c.this.this, group_key)
               and isinstance(c.this.expression, exp.Null) for c in conjuncts):
        raise refuse(f"GROUP BY {group_key!r}: the group of NULL would need a NULL key, "
                     f"which a feature table cannot have; add WHERE {group_key} IS NOT NULL")
    return delta


def _refuse_beyond_the_key(tree: exp.Select) -> None:
    """Refuse what makes a key's row depend on more than that key's rows of the parent, as
    they are now (module docstring)."""
    reads_others = {"limit": "LIMIT", "offset": "OFFSET", "fetch": "FETCH",
                    "qualify": "QUALIFY", "joins": "a join", "with": "WITH"}
    for arg, what in reads_others.items():
        if tree.args.get(arg):
            raise refuse(f"{what} makes a row depend on the rows of other keys; ralf "
                         "maintains feature tables key by key (refused, not approximated)")
    if any(tree.find_all(exp.TableSample)):
        raise refuse("a sample (TABLESAMPLE / USING SAMPLE) gives different rows at every "
                     "refresh")
    if any(tree.find_all(exp.Window)):
        raise refuse("window functions (OVER ...) read the rows of other keys")
    if any(tree.find_all(exp.Subquery, exp.Exists)) or any(
            isinstance(node, exp.Select) for node in tree.find_all(exp.Select)
            if node is not tree):
        raise refuse("a subquery reads rows beyond the key being refreshed")
    if len(list(tree.find_all(exp.Table))) != 1:
        raise refuse("a join reads rows beyond the key being refreshed")
    for function in tree.find_all(exp.Func):
        name = (function.name if isinstance(function, exp.Anonymous)
                else function.sql_name()).lower()
        if name in NONDETERMINISTIC:
            raise refuse(f"{function.sql('duckdb').lower()} gives a different value at "
                         "every refresh")
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
