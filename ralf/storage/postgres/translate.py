"""ralf's SQL — DuckDB's dialect, everywhere — as PostgreSQL, translated with sqlglot."""

from __future__ import annotations

from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.qualify import qualify

from ralf.errors import QueryError
from ralf.storage.units import SOURCE, TableInfo


class Translator:
    """ralf's SQL (DuckDB's dialect) as PostgreSQL: identifiers quoted and spelled as in the
    catalog (DuckDB matches them case-insensitively, and ``user`` is a keyword in
    PostgreSQL), ``* EXCLUDE (...)`` expanded from the catalog, ``round(x, places)`` on
    any number, DuckDB's schema ``main`` as ``public``. Cached by query text."""

    def __init__(self, catalog: Any) -> None:
        self._catalog = catalog  # () -> dict[str, TableInfo], read on a cache miss
        self._done: dict[str, str] = {}

    def parse(self, query: str) -> list[exp.Expression]:
        """The statements of a query as sqlglot parses DuckDB's dialect; QueryError if it cannot."""
        try:
            return [s for s in sqlglot.parse(query, read="duckdb") if s is not None]
        except sqlglot.errors.ParseError as exc:
            raise QueryError(f"invalid SQL: {exc}") from None

    def __call__(self, query: str, tree: exp.Expression | None = None) -> str:
        done = self._done.get(query)
        if done is not None:
            return done
        if tree is None:
            (tree,) = self.parse(query)
        columns = catalog_columns(self._catalog())
        spelling = {name.lower(): name for table, names in columns.items()
                    for name in (table, *names)}
        if any(star.args.get("except_") for star in tree.find_all(exp.Star)):
            tree = qualify(tree, dialect="duckdb", schema=columns,
                           validate_qualify_columns=False, identify=False)
        for count in tree.find_all(exp.Count):  # count(): DuckDB's count(*)
            if count.this is None:
                count.set("this", exp.Star())
        for call in tree.find_all(exp.Round):  # PostgreSQL rounds only NUMERIC to places
            if call.args.get("decimals") is not None:
                call.set("this", exp.cast(call.this, "DECIMAL"))
        for kind in tree.find_all(exp.DataType):  # 128-bit integers: PostgreSQL's NUMERIC
            if kind.this in (exp.DataType.Type.INT128, exp.DataType.Type.UINT128):
                kind.set("this", exp.DataType.Type.DECIMAL)
        for table in tree.find_all(exp.Table):  # DuckDB's default schema is PostgreSQL's public
            if table.db.lower() == "main" and not table.catalog:
                table.set("db", exp.to_identifier("public"))
        for identifier in tree.find_all(exp.Identifier):
            if not identifier.quoted:
                identifier.set("this", spelling.get(identifier.name.lower(), identifier.name))
        done = tree.sql("postgres", identify=True)
        if len(self._done) > 1000:
            self._done.clear()
        self._done[query] = done
        return done


def catalog_columns(catalog: dict[str, TableInfo]) -> dict[str, dict[str, str]]:
    """Each table's columns and their DuckDB types, bookkeeping included."""
    schema = {}
    for info in catalog.values():
        columns = {n: info.schema.sql_type(n) for n in info.schema.names}
        columns.update(dict(info.hidden))
        columns["_ralf_seq"] = "BIGINT"
        time = "_ralf_ingested_at" if info.kind == SOURCE else "_ralf_updated_at"
        columns[time] = "TIMESTAMP"
        schema[info.name] = columns
    return schema
