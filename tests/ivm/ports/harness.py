"""How a ported regression case runs: the harness of tests/ivm/test_port_pg_ivm.py and
tests/ivm/test_port_openivm.py, whose cases are data (``pg_ivm.json``, ``openivm.json`` in
this folder).

A peer is an incremental view maintenance system whose regression tests are ported: pg_ivm
(PostgreSQL) and OpenIVM (DuckDB). A data file holds ``source``, the peer's repository, commit
and files, and ``cases``: one case per view the peer defines (``CREATE MATERIALIZED VIEW``,
``pgivm.create_immv``), with ``id`` ``<file>:<line>:<view>`` (the line of the definition in the
peer's file; every statement of a case carries its line in that file). A case holds, copied
from the peer's file:

* ``setup``: ``[line, statement]``, the statements before the definition that build the view's
  base tables (their ``CREATE TABLE`` and the ``INSERT``/``DELETE``/``UPDATE``/``ALTER`` before
  the view exists), run by DuckDB (PostgreSQL's ``INSERT ... VALUES`` and ``ALTER TABLE ... DROP
  COLUMN`` run there as they are). A base table becomes a ralf source of the same name, keyed
  on ``keys[table]``, whose first batch is the rows the table holds when the peer defines the
  view. When the steps DELETE, UPDATE or TRUNCATE, the sources are changelogs
  (``mode="changelog"``, no ``key=``: a source's rows are a multiset, a row is its values);
  otherwise append-only sources, as before;
* ``views``: the view (after the views it reads, for a view over views) as ``[name, the peer's
  SELECT, ralf's SELECT or null when it is the same]``; a name with a column list (``mv(a,
  b)``) gives the view's column names (a peer query reads ralf's key column, which keeps its
  own name, under the peer's);
* ``steps``: the peer's statements after the definition, in order, up to the first one ralf
  cannot run yet (``stop``: ``[kind, line]``, or null when the case runs to its end: see
  below). A step is ``["insert", line, statement]``: one batch of its table's source and one
  ``server.step()``, after which each view must equal its SELECT recomputed by DuckDB over
  ralf's tables; ``["delete" | "update" | "truncate", line, statement]``: a plain DELETE,
  UPDATE or TRUNCATE of one base table, run on the peer's DuckDB database to learn the rows it
  changes (``_changes``: a DELETE's ``RETURNING *``; an UPDATE's matching rows and their new
  values read by one SELECT before it runs; a TRUNCATE deletes every row), which become one
  batch of changelog records (``op`` delete, or update with the old row in ``before``) and one
  ``server.step()``, checked as an INSERT is; ``["check", line, query, rows]``: the peer's own
  query of the view, which must return the peer's expected rows (each a line of tab-separated
  values as the peer prints them: compared as multisets, a number to the decimals printed, a
  DATE to the day); ``["peer", line, statement]``: a statement on a table the view does not
  read, that a later INSERT reads. A peer query whose expected rows are not the view's current
  contents (a query of the peer's metadata, or of a view deliberately left stale before a
  refresh) is left out, as are the peer's refreshes (ralf refreshes at every step) and
  settings. A recomputation, and a peer query, read a changelog source's current state,
  ``ralf."<name>__current"`` (its user columns), not its table (the log of its changes).
  ``stop``'s kinds: an ALTER/DROP TABLE of a base table, an upsert, a data-modifying WITH, a
  DELETE ... USING (an UPDATE ... FROM), a concurrent loop, the view replaced, a ROLLBACK of
  changes made before the view's transaction (pg_ivm), a statement DuckDB cannot run as
  written, ``aggregate of no rows`` (the peer's aggregate without GROUP BY has one row over no
  rows; ralf's, grouped by a constant, has none). The steps past a DELETE/UPDATE/TRUNCATE
  were added from the peer's files by ``extend.py``;
* ``refused``: null, or a word of the reason ralf refuses the view with (a regular
  expression): the case is a test that defining the view raises SchemaError. The cases whose
  view may become maintainable (a join, EXISTS, a one-expression group) keep their data and
  steps, so that dropping ``refused`` runs them in full;
* ``note``: ralf's adaptations of the view (the test modules list them);
* ``wrong`` (optional): ralf accepts the view and maintains it wrongly (the reason): an
  expected failure.

Cases share a server (``Servers``), so each ralf table is the peer's name with ``_<n>``
appended: the SELECT ralf is given, and the peer's queries, read it under an alias of the
peer's name. ralf has no DECIMAL or DATE column type: a DECIMAL column is DOUBLE and a DATE
TIMESTAMP (midnight). Counts and reasons: docs/ports.md.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import json
import math
import re
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest
import sqlglot
from sqlglot import exp

from ralf import Ralf, Schema, SchemaError
from ralf.testing import QueueSource

# The peer's column types as ralf column types. ralf has no DECIMAL or DATE column type: a
# DECIMAL column is kept as DOUBLE and a DATE as TIMESTAMP (midnight), an adaptation.
_TYPES = {"INTEGER": int, "INT": int, "BIGINT": int, "SMALLINT": int, "TINYINT": int,
          "HUGEINT": int, "UINTEGER": int, "UBIGINT": int, "VARCHAR": str, "TEXT": str,
          "BOOLEAN": bool, "DOUBLE": float, "FLOAT": float, "REAL": float,
          "TIMESTAMP": dt.datetime, "DATE": dt.datetime, "INTEGER[]": list[int],
          "BIGINT[]": list[int], "FLOAT[]": list[float], "DOUBLE[]": list[float],
          "VARCHAR[]": list[str]}



def _ralf_type(sql_type):
    if sql_type.startswith(("DECIMAL", "NUMERIC")):
        return float
    return _TYPES[sql_type]


def _python(value):
    """A value DuckDB returned, as the ralf column type holds it."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, list):
        return [_python(v) for v in value]
    return value


def _plain(table):
    """A peer's table as ralf names it: without a catalog prefix (``dl.sales`` -> ``sales``)
    or a column list (``mv(a, b)`` -> ``mv``), in lower case."""
    return table.split("(")[0].strip().split(".")[-1].strip('"').lower()


def _rewrite(query, names, columns=None, current=None):
    """``query`` reading ralf's tables: each peer table under its ralf name (``names``) and, when
    ``columns`` are given, as those columns only (ralf's tables carry ``_ralf_*`` bookkeeping
    columns besides), so that the peer's own statements (``SELECT * FROM mv``, ``... EXCEPT
    ALL ...``) run unchanged. Aliased to the peer's name, so qualified columns still bind.
    ``current``: the changelog sources' current state (``ralf."<name>__current"``), read
    instead of their tables (a changelog source's table is the log of its changes)."""
    tree = sqlglot.parse_one(query, read="duckdb")
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    for table in list(tree.find_all(exp.Table)):
        name = _plain(table.name)
        if not table.name or name in ctes or name not in names:
            continue
        alias = table.alias or table.name
        if not isinstance(tree, exp.Query):  # not a SELECT: its tables renamed only
            table.set("this", exp.to_identifier(names[name]))
            continue
        if columns is None:
            table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
            table.set("this", exp.to_identifier(names[name]))
            table.set("db", None)
            table.set("catalog", None)
            continue
        select = ", ".join(f'"{c}"' if isinstance(c, str) else f'"{c[0]}" AS "{c[1]}"'
                           for c in columns[name])
        relation = (current or {}).get(name) or f'"{names[name]}"'
        table.replace(sqlglot.parse_one(
            f'(SELECT {select} FROM {relation}) AS "{alias}"', read="duckdb"))
    if columns is not None and not (tree.args.get("limit") or tree.args.get("offset")):
        tree.set("order", None)  # rows are compared as multisets
    return tree.sql("duckdb")


def _rows(server, query):
    result = server.sql_arrow(query)
    columns = [result.column(i).to_pylist() for i in range(result.num_columns)]
    return [tuple(_python(v) for v in row) for row in zip(*columns, strict=True)]


def _text(value):
    """A value as DuckDB's sqllogictest prints it."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if value == "":
        return "(empty)"
    return str(value)


def _same(expected, got):
    """One value as the peer's expected output prints it, and as ralf returned it."""
    if isinstance(got, float) and math.isnan(got):
        return expected in ("NULL", "nan", "NaN")
    if isinstance(got, int) and not isinstance(got, bool) and re.fullmatch(r"-?\d+", expected):
        return got == int(expected)
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        try:
            want = float(expected)
        except ValueError:
            return False
        decimals = len(expected.split(".")[1]) if "." in expected and "e" not in expected else 0
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=0.5 * 10 ** -decimals + 1e-9)
    if isinstance(got, dt.datetime) and len(expected) == 10:  # a DATE kept as a TIMESTAMP
        return got.time() == dt.time() and str(got.date()) == expected
    if isinstance(got, list) and expected.startswith("["):
        parts = expected[1:-1].split(", ") if expected != "[]" else []
        return len(parts) == len(got) and all(_same(e, g) for e, g in zip(parts, got, strict=True))
    return _text(got) == expected


def _sort_key(row):
    """Numbers by value (rounded: the two sides may differ in the last bits), the rest as
    text."""
    def key(v):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            return (0, round(float(v), 6), "")
        return (1, 0.0, _text(v))
    return tuple(key(v) for v in row)


def _assert_rows(expected, got, what):
    """The peer's expected rows (tab-separated lines) and ralf's rows, compared as
    multisets."""
    want = sorted(line.split("\t") for line in expected)
    have = sorted(got, key=lambda row: [_text(v) for v in row])
    assert len(want) == len(have), (what, expected, got)
    unmatched = list(have)
    for line in want:
        match = next((row for row in unmatched if len(row) == len(line)
                      and all(_same(e, g) for e, g in zip(line, row, strict=True))), None)
        assert match is not None, (what, line, expected, got)
        unmatched.remove(match)


def _assert_equal(want, got, what):
    """Two row lists equal as multisets (floats to 1e-9 relative)."""
    assert len(want) == len(got), (what, want, got)
    for a, b in zip(sorted(want, key=_sort_key), sorted(got, key=_sort_key), strict=True):
        for x, y in zip(a, b, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                assert (math.isnan(x) and math.isnan(y)) or math.isclose(
                    x, y, rel_tol=1e-9, abs_tol=1e-9), (what, want, got)
            elif isinstance(x, float) and isinstance(y, int) and not isinstance(y, bool):
                # DuckDB's SUM of a BIGINT is a HUGEINT, which Arrow carries as a DOUBLE
                assert math.isclose(x, y, rel_tol=1e-15), (what, want, got)
            else:
                assert x == y, (what, want, got)


def _record(columns, row):
    return {c: _python(v) for c, v in zip(columns, row, strict=True)}


def _change(columns, op, row, before):
    """A changelog record: a delete carries the deleted row's values, an update the new
    values and the old row's in ``before`` (the source has no key: a row is its values)."""
    record = {**_record(columns, row), "op": op}
    if before is not None:
        record["before"] = _record(columns, before)
    return record


def _from_table(query, known):
    """The ralf table a view's SQL is defined on: the first of its tables that ralf has (the
    case's first table when it reads none)."""
    tree = sqlglot.parse_one(query, read="duckdb")
    names = [_plain(t.name) for t in tree.find_all(exp.Table)]
    return next((n for n in names if n in known), next(iter(known), None))


def _target(statement):
    """The table an INSERT writes."""
    return _plain(re.match(r"\s*insert\s+into\s+([\w.\"-]+)", statement, re.I).group(1))


# The changes of a base table a step makes (besides INSERT): the statement's table as written.
_CHANGES = {
    "delete": r"\s*delete\s+from\s+([\w.\"-]+)",
    "update": r"\s*update\s+([\w.\"-]+)",
    "truncate": r"\s*truncate\s+(?:table\s+)?([\w.\"-]+)",
}


def _multiset(rows):
    counts = {}
    for row in rows:
        counts[repr(row)] = counts.get(repr(row), 0) + 1
    return counts


def _duckdb(statement):
    """A peer statement as DuckDB runs it: PostgreSQL's default schema ``public.`` is DuckDB's
    ``main.``."""
    return re.sub(r'(?i)(?<![\w."])public\.(?=[\w"])', "main.", statement)


def _changes(peer, kind, statement):
    """Run a DELETE, UPDATE or TRUNCATE of one table on the peer's database: (the table as
    the statement writes it, the changed rows as ``(op, row, before)``). A DELETE's rows are
    its ``RETURNING *``; a TRUNCATE deletes every row the table holds; an UPDATE's old rows and
    their new values are read first by one SELECT of the rows its WHERE matches (each SET
    expression cast to its column's type), before the UPDATE runs. The table's rows after the
    statement must be its rows before with the changes applied."""
    statement = _duckdb(statement).rstrip().rstrip(";")
    table = re.match(_CHANGES[kind], statement, re.I).group(1)
    before = peer.execute(f"SELECT * FROM {table}").fetchall()
    if kind == "delete":
        changes = [("delete", row, None)
                   for row in peer.execute(f"{statement} RETURNING *").fetchall()]
    elif kind == "truncate":
        peer.execute(statement)
        changes = [("delete", row, None) for row in before]
    else:
        tree = sqlglot.parse_one(statement, read="duckdb")
        target = tree.this
        described = peer.execute(f"DESCRIBE {target.sql('duckdb')}").fetchall()
        sets = {eq.this.name.lower(): eq.expression for eq in tree.expressions}
        assert all(isinstance(eq, exp.EQ) for eq in tree.expressions), statement
        old = [f'"{target.alias_or_name}"."{c}"' for c, *_ in described]
        new = [f"CAST(({sets[c.lower()].sql('duckdb')}) AS {t})" if c.lower() in sets else o
               for (c, t, *_), o in zip(described, old, strict=True)]
        where = tree.args.get("where")
        rows = peer.execute(f"SELECT {', '.join(old + new)} FROM {target.sql('duckdb')} "
                            + (where.sql("duckdb") if where else "")).fetchall()
        peer.execute(statement)
        n = len(described)
        changes = [("update", row[n:], row[:n]) for row in rows]
    after = dict(_multiset(before))
    for op, row, old_row in changes:
        for gone in [old_row if op == "update" else row]:
            after[repr(gone)] -= 1
        if op == "update":
            after[repr(row)] = after.get(repr(row), 0) + 1
    want = {k: v for k, v in after.items() if v}
    got = _multiset(peer.execute(f"SELECT * FROM {table}").fetchall())
    assert want == got, (statement, "the rows changed are not the ones captured")
    return table, changes


def _as_peer(peer_columns, ralf_columns):
    """A view's columns as the peer names them: ralf's column of that name, else ``(ralf's
    column, the peer's name)`` with the next of ralf's columns no peer column names (a key
    column keeps ralf's name where the peer renames it: pg_ivm's ``mv_ivm_agg(a)``)."""
    spare = [c for c in ralf_columns if c not in peer_columns]
    return [c if c in ralf_columns or not spare else (spare.pop(0), c) for c in peer_columns]


def _define(case, server, peer, suffix, empty=None):
    """The peer's base tables as ralf sources, each holding as its first batch the rows the
    peer's table holds when the peer creates the view, and the view(s) defined on them. Each
    ralf table is the peer's name with ``_<suffix>`` (cases share a server). ``peer``: an
    empty DuckDB database that runs the peer's statements (to give the rows each INSERT
    adds). ``empty``: sources without rows, shared by the cases whose tables are the same
    (name, columns, key): a definition needs no data."""
    for _, statement in case["setup"]:
        peer.execute(statement)
    built = {"names": {}, "columns": {}, "ralf_columns": {}, "queues": {}, "tables": {},
             "current": {}}
    names, tables = built["names"], built["tables"]
    # a DELETE/UPDATE/TRUNCATE among the steps: the base tables are changelog sources
    changelog = any(step[0] in _CHANGES for step in case["steps"])
    mode = {"mode": "changelog"} if changelog else {}
    for table, key in case["keys"].items():
        described = peer.execute(f"DESCRIBE {table}").fetchall()
        name = _plain(table)
        columns = {c: _ralf_type(t) for c, t, *_ in described}
        built["columns"][name] = built["ralf_columns"][name] = list(columns)
        shape = (name, tuple(columns.items()), key, changelog)
        if empty is not None and shape in empty:
            names[name], tables[name] = empty[shape]
            continue
        names[name] = f"{name}_{suffix}"
        built["queues"][name] = QueueSource(Schema(key, columns))
        tables[name] = server.create_source(built["queues"][name], name=names[name], **mode)
        if changelog:
            built["current"][name] = f'ralf."{names[name]}__current"'
        if empty is not None:
            empty[shape] = names[name], tables[name]
            continue
        rows = peer.execute(f"SELECT * FROM {table}").fetchall()
        built["queues"][name].queue.append([_record(built["columns"][name], r) for r in rows])
    for peer_name, query, adapted in case["views"]:
        name = _plain(peer_name)
        names[name] = f"{name}_{suffix}"
        sql = adapted or query
        tables[name] = tables[_from_table(sql, tables)].sql(_rewrite(sql, names),
                                                              name=names[name])
        peer.execute(f"CREATE VIEW {peer_name} AS {query}")
        described = peer.execute(f"DESCRIBE {peer_name.split('(')[0]}").fetchall()
        built["ralf_columns"][name] = list(tables[name].schema.columns)
        built["columns"][name] = _as_peer([c for c, *_ in described],
                                          built["ralf_columns"][name])
    return built


def _run(case, server, peer, suffix):
    """The case's tables and views (``_define``), then the peer's statements in order: each
    INSERT is one batch and one ``server.step()``, after which every view equals its SELECT
    recomputed by DuckDB over ralf's tables; each peer query of the view returns the peer's
    expected rows."""
    built = _define(case, server, peer, suffix)
    names, columns, queues = built["names"], built["columns"], built["queues"]
    current = built["current"]
    recomputations = []
    for peer_name, query, adapted in case["views"]:
        name = _plain(peer_name)
        select = ", ".join(f'"{c}"' for c in built["ralf_columns"][name])
        recomputations.append((name, _rewrite(adapted or query, names, built["ralf_columns"],
                                              current),
                               f'SELECT {select} FROM "{names[name]}"'))

    def recomputed():
        for name, want, got in recomputations:
            _assert_equal(_rows(server, want), _rows(server, got),
                          f"{name}: the view and its recomputation")

    server.step()
    recomputed()
    for kind, line, statement, *expected in case["steps"]:
        if kind == "insert":
            table = _target(statement)
            inserted = peer.execute(
                _duckdb(statement).rstrip().rstrip(";") + " RETURNING *").fetchall()
            queues[table].queue.append([_record(columns[table], r) for r in inserted])
            server.step()
            recomputed()
        elif kind in _CHANGES:  # a DELETE/UPDATE/TRUNCATE: one batch of changelog records
            written, changes = _changes(peer, kind, statement)
            table = _plain(written)
            queues[table].queue.append([_change(columns[table], *change) for change in changes])
            server.step()
            recomputed()
        elif kind == "peer":  # a table the view does not read, that a later INSERT reads
            peer.execute(statement)
        else:
            _assert_rows(expected[0], _rows(server, _rewrite(statement, names, columns, current)),
                         f"line {line}: {statement}")


def _assert_refused(case, server, peer, suffix, empty):
    """Defining the case's view raises SchemaError with the case's reason (over sources
    without rows, ``empty``: see ``_define``)."""
    with pytest.raises(SchemaError, match=case["refused"]):
        _define(case, server, peer, suffix, empty)


@contextmanager
def _peer_database(duck):
    """An empty in-memory database on ``duck`` for one case's peer statements; what the case
    attached is detached after it."""
    listed = "SELECT database_name FROM duckdb_databases()"
    before = {name for (name,) in duck.execute(listed).fetchall()}
    name = f"peer_{next(_DATABASES)}"
    duck.execute(f"ATTACH ':memory:' AS {name}")
    duck.execute(f"USE {name}")
    try:
        yield duck
    finally:
        duck.execute("USE memory")
        for (attached,) in duck.execute(listed).fetchall():
            if attached not in before:
                duck.execute(f'DETACH "{attached}"')


_DATABASES = itertools.count()


class Servers:
    """One ralf server for many cases (opening one costs more than most cases), each case's
    tables named apart; a new one after a case that failed (its tables might keep failing).
    ``database``: where the server keeps its tables (None: DuckDB in memory). The peer's
    statements run on one DuckDB connection (opening one costs more than a case), each case
    in a database of its own."""

    def __init__(self, database=None):
        self.database = database
        self.server = None
        self.cases = itertools.count()
        self.empty = {}
        self.duck = duckdb.connect()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        self.duck.close()

    def run(self, case):
        """The case (see the module docstring): maintained like the peer's view, or refused."""
        if self.server is None:
            self.server = Ralf(self.database) if self.database else Ralf()
        with _peer_database(self.duck) as peer:
            try:
                if case["refused"]:
                    _assert_refused(case, self.server, peer, next(self.cases), self.empty)
                else:
                    _run(case, self.server, peer, next(self.cases))
            except BaseException:
                self.close()
                raise

    def close(self):
        if self.server is not None:
            self.server.close()
            self.server = None
            self.empty = {}


def load(name):
    """The cases of a data file in this folder, as pytest parameters: the ones ralf maintains
    and the ones it refuses."""
    document = json.loads((Path(__file__).with_name(name)).read_text())
    maintained, refused = [], []
    for case in document["cases"]:
        case = dict(case)
        id_, wrong = case.pop("id"), case.pop("wrong", None)
        marks = [pytest.mark.xfail(strict=True, reason=wrong)] if wrong else []
        (refused if case["refused"] else maintained).append(
            pytest.param(case, id=id_, marks=marks))
    return maintained, refused


def peer_tests(peer):
    """The two tests of the port of ``peer``, parametrized by the cases of ``<peer>.json``:
    ``test_<peer>_view_is_maintained_like_<peer>`` (the views ralf maintains) and
    ``test_<peer>_view_ralf_refuses`` (the views it refuses), for the test module to bind
    under those names (pytest collects them there). Each takes the module's ``servers``
    fixture, a ``Servers``."""
    maintained, refused = load(f"{peer}.json")

    @pytest.mark.parametrize("case", maintained)
    def test_maintained(case, servers):
        servers.run(case)

    @pytest.mark.parametrize("case", refused)
    def test_refused(case, servers):
        servers.run(case)

    test_maintained.__name__ = f"test_{peer}_view_is_maintained_like_{peer}"
    test_refused.__name__ = f"test_{peer}_view_ralf_refuses"
    for test in (test_maintained, test_refused):
        test.__qualname__ = test.__name__
    return test_maintained, test_refused
