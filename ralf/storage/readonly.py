"""What read-only SQL (``Ralf.sql``, ``POST /sql``) may do, checked on the statement's whole
tree as a real parser gives it — DuckDB's own (``json_serialize_sql``) on DuckDB, sqlglot's
on PostgreSQL (where the query runs as sqlglot translates it) — never by matching text.

A query may only *read*: one SELECT (set operations, CTEs, subqueries included) with no
data-changing node anywhere in it (``WITH x AS (DELETE ...)`` is a SELECT to DuckDB's
statement type), no function that writes or has effects beyond the query (``nextval``,
``setval``, ``query()``, ``checkpoint()``, PostgreSQL's ``pg_*`` administration and file
functions ...), and only table functions known to read nothing but their arguments or
the catalog.

What it may read: the user tables (sources, feature tables, aliases), the feature
tables' histories (``ralf."<table>__history"``), windowed aggregates' tiles
(``ralf."<table>__tiles"``), changelog sources' current state (``ralf."<source>__current"``)
and ralf's catalog (``ralf.tables``).
The rest of the ``ralf`` schema is internal: pickled operator state (code could be
smuggled into a pickle, and it exposes an operator's internals), source positions (Kafka
offsets, file positions), per-key watermarks and rejected records (raw input that failed
validation, unbounded and possibly sensitive; ``Ralf.rejected()`` shows them on purpose).
"""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from ralf.errors import QueryError

BOOKKEEPING_SCHEMA = "ralf"
READABLE_BOOKKEEPING = frozenset({"tables"})
HISTORY_SUFFIX = "__history"
TILES_SUFFIX = "__tiles"  # a windowed aggregate's tiles (ralf.ivm.windows)
CURRENT_SUFFIX = "__current"  # a changelog source's current state (docs/changelog.md)

# Table functions that read only their arguments or the catalog.
TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree",
    "test_all_types", "duckdb_tables", "duckdb_columns", "duckdb_views", "duckdb_schemas",
    "duckdb_types", "duckdb_functions", "duckdb_constraints", "duckdb_indexes",
    "duckdb_keywords", "duckdb_databases", "duckdb_sequences", "duckdb_settings",
    "pragma_table_info", "pragma_version", "pragma_platform", "pragma_database_size",
})
# Scalar functions that write, change the session, or run SQL of their own.
WRITING_FUNCTIONS = frozenset({
    "nextval", "setval", "setseed", "write_log", "json_execute_serialized_sql",
    "set_config", "query_to_xml", "query_to_xml_and_xmlschema", "table_to_xml",
    "cursor_to_xml", "schema_to_xml", "database_to_xml", "txid_current",
})
# PostgreSQL function families that administer the server or reach its files:
# pg_terminate_backend, pg_advisory_lock, pg_read_file, lo_import, dblink ...
WRITING_PREFIXES = ("pg_", "lo_", "dblink")
# DuckDB's query nodes that only read.
READING_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE",
                           "CTE_NODE", "BOUND_SUBQUERY_NODE"})


def check_table(schema: str | None, name: str) -> None:
    """Refuse a table reference that reaches ralf's internal bookkeeping."""
    if (schema or "").lower() != BOOKKEEPING_SCHEMA:
        return
    name = name.lower()
    if name in READABLE_BOOKKEEPING or name.endswith((HISTORY_SUFFIX, TILES_SUFFIX,
                                                       CURRENT_SUFFIX)):
        return
    raise QueryError(f"table ralf.{name} is internal to ralf and cannot be queried "
                     f"(readable in the ralf schema: tables, the *{HISTORY_SUFFIX}, the "
                     f"*{TILES_SUFFIX} and the *{CURRENT_SUFFIX} tables)")


def check_function(name: str, table_function: bool = False) -> None:
    """Refuse a function that could write or reach beyond the query."""
    lowered = name.lower()
    if table_function:
        if lowered not in TABLE_FUNCTIONS:
            raise QueryError(f"table function {name}() is not allowed in read-only SQL "
                             f"(allowed: {', '.join(sorted(TABLE_FUNCTIONS))})")
        return
    if lowered in WRITING_FUNCTIONS or lowered.startswith(WRITING_PREFIXES):
        raise QueryError(f"function {name}() is not allowed in read-only SQL: it can write "
                         "or act beyond the query")


def check_duckdb(serialized: dict[str, Any]) -> None:
    """Check DuckDB's parse tree of one query (``json_serialize_sql``'s output)."""
    if serialized.get("error"):
        message = serialized.get("error_message", "")
        if serialized.get("error_type") == "parser":
            raise QueryError(f"invalid SQL: {message}")
        raise QueryError("only read-only SELECT queries are allowed "
                         f"(DuckDB: {message})")
    statements = serialized["statements"]
    if len(statements) != 1:
        raise QueryError(f"expected exactly one SQL statement, got {len(statements)}")
    _walk_duckdb(statements[0]["node"])


def _walk_duckdb(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _walk_duckdb(item)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if isinstance(kind, str) and kind.endswith("_NODE") and kind not in READING_NODES:
        raise QueryError(f"only read-only SELECT queries are allowed: the query contains "
                         f"{kind.removesuffix('_QUERY_NODE').removesuffix('_NODE')}")
    if kind == "BASE_TABLE":
        check_table(node.get("schema_name"), node.get("table_name", ""))
    elif kind == "TABLE_FUNCTION":
        check_function(node["function"]["function_name"], table_function=True)
        for argument in node["function"].get("arguments", ()):
            _walk_duckdb(argument)
        return
    elif node.get("class") == "FUNCTION":
        check_function(node.get("function_name", ""))
    for value in node.values():
        if isinstance(value, (dict, list)):
            _walk_duckdb(value)


_WRITING_NODES = (exp.DML, exp.DDL, exp.Into, exp.Lock, exp.Command, exp.Set,
                  exp.TruncateTable, exp.Transaction, exp.Commit, exp.Rollback)


def check_sqlglot(statements: list[exp.Expression]) -> exp.Query:
    """Check sqlglot's parse of one query; returns it."""
    if len(statements) != 1:
        raise QueryError(f"expected exactly one SQL statement, got {len(statements)}")
    (tree,) = statements
    if not isinstance(tree, exp.Query):
        raise QueryError(f"only read-only SELECT queries are allowed, not {tree.key.upper()}")
    for node in tree.walk():
        if isinstance(node, _WRITING_NODES):
            raise QueryError("only read-only SELECT queries are allowed: the query contains "
                             f"{node.key.upper()}")
        if isinstance(node, exp.Table):
            if isinstance(node.this, exp.Func):
                check_function(_function_name(node.this), table_function=True)
            else:
                check_table(node.db or None, node.name)
        elif isinstance(node, exp.Func) and not isinstance(node.parent, exp.Table):
            check_function(_function_name(node))
    return tree


def _function_name(node: exp.Func) -> str:
    return node.name if isinstance(node, exp.Anonymous) else node.sql_name()
