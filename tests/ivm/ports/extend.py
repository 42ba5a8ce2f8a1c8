"""Continue the ported cases past the DELETE, UPDATE or TRUNCATE they stop at (a converter,
run by hand; not a test).

A case of ``pg_ivm.json`` / ``openivm.json`` (see ``harness.py``) whose ``stop`` is a
DELETE/UPDATE/TRUNCATE of one of its base tables is continued from the peer's own file: the
statements after the view's definition are read again from the stop on, in order, each with
its line, and added to ``steps`` as they are:

* a plain ``DELETE FROM t [WHERE ...]``, ``UPDATE t SET ... [WHERE ...]`` or ``TRUNCATE t``
  of a base table the case reads: ``["delete"|"update"|"truncate", line, statement]``;
* an INSERT into such a table: ``["insert", line, statement]``;
* a peer query of the view: ``["check", line, query, rows]``, the peer's expected rows read
  as the existing checks were (OpenIVM: the sqllogictest result block; pg_ivm: the psql table
  of ``expected/*.out``, pg_ivm's ``__ivm_*`` columns left out), kept only when they are the
  view's contents at that point: the rows DuckDB returns for the query over the case's
  statements replayed with the view as a plain view (a query of a view the peer left stale
  before a refresh, or of a view that has become unpopulated, is left out);
* a statement on a table the view does not read but a later INSERT reads:
  ``["peer", line, statement]``.

The walk ends at the next statement ralf cannot run (``stop``: ``[kind, line]``): a DELETE
with USING or RETURNING, an UPDATE with FROM, a data-modifying WITH, an upsert, an ALTER or
DROP of a base table, a concurrent loop, the view replaced, a ROLLBACK of changes made
before the transaction that defined the view, a statement DuckDB cannot run as written, a
check ralf's adaptation cannot give (``aggregate of no rows``: the peer's aggregate without
GROUP BY has one row over no rows, ralf's, grouped by a constant, none; found by running the
check again with that view given ``HAVING COUNT(*) > 0``); or ``stop`` is null when the
case runs to its end (the view dropped, the transaction that created it rolled back, the end
of the file). Statements on other tables, settings, refreshes and the peer's metadata
queries are passed over, as the port does everywhere.

Each case is replayed in DuckDB while it is extended (the harness's own code turns each
DELETE/UPDATE/TRUNCATE into changelog records), so every added statement runs. A case
already extended (its stop no longer a DELETE/UPDATE/TRUNCATE) is left as it is; other
fields (``wrong`` included) are kept.

    python -m tests.ivm.ports.extend --pg-ivm DIR --openivm DIR [--write]

``DIR``: a checkout of the peer at the commit the data file names, or a bare git directory
(``git show <commit>:<path>`` is used). Without ``--write`` it prints what it would change.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import sqlglot
from sqlglot import exp

from tests.ivm.ports.harness import _assert_rows, _changes, _plain, _python

HERE = Path(__file__).parent
DML = ("delete", "update", "truncate")


# --- the peers' files -------------------------------------------------------------------------

class Files:
    """A peer's files at a commit: a checkout or a bare git directory."""

    def __init__(self, root, commit):
        self.root, self.commit = Path(root), commit

    def read(self, path):
        if (self.root / path).exists():
            return (self.root / path).read_text()
        return subprocess.run(["git", f"--git-dir={self.root}", "show", f"{self.commit}:{path}"],
                              check=True, capture_output=True, text=True).stdout


class Record:
    """A statement or a query of a peer's file: ``kind`` statement / query / directive,
    ``line`` (of the SQL), ``sql``, ``ok`` (the peer expects it to succeed), ``rows`` (a
    query's expected rows, tab-separated), ``cond`` (sqllogictest onlyif/skipif)."""

    def __init__(self, kind, line, sql="", ok=True, rows=None, cond=""):
        self.kind, self.line, self.sql, self.ok, self.rows, self.cond = (
            kind, line, sql, ok, rows, cond)


def sqllogictest(text):
    """OpenIVM's ``.test`` file as records."""
    lines = text.split("\n")
    records, i, cond = [], 0, ""
    while i < len(lines):
        s = lines[i].strip()
        if not s or s.startswith("#"):
            i += 1
            continue
        if s.startswith(("onlyif", "skipif")):
            cond, i = s, i + 1
            continue
        if s.startswith(("statement", "query")):
            query = s.startswith("query")
            ok = query or s.split()[1] == "ok"
            i += 1
            line, body = i + 1, []
            while i < len(lines) and lines[i].strip() and lines[i].strip() != "----":
                body.append(lines[i])
                i += 1
            rows = []
            if i < len(lines) and lines[i].strip() == "----":
                i += 1
                while i < len(lines) and lines[i].strip():
                    rows.append(lines[i])
                    i += 1
            records.append(Record("query" if query else "statement", line, "\n".join(body),
                                  ok, rows, cond))
        else:
            records.append(Record("directive", i + 1, s, cond=cond))
            i += 1
        cond = ""
    return records


def _psql_statements(text):
    out, cur, start, dollar = [], [], None, False
    for i, line in enumerate(text.split("\n"), 1):
        s = line.strip()
        if not cur and (not s or s.startswith("--") or s.startswith("\\")):
            continue
        if start is None:
            start = i
        cur.append(line)
        if line.count("$$") % 2:
            dollar = not dollar
        if not dollar and s.endswith(";"):
            out.append((start, "\n".join(cur)))
            cur, start = [], None
    return out


def _psql_table(output):
    """psql's aligned table as tab-separated rows (an empty cell NULL), pg_ivm's
    ``__ivm_*`` columns left out; None without a table."""
    lines = [x for x in output if x.strip() and not x.startswith(("NOTICE", "DETAIL", "HINT"))]
    sep = next((i for i, x in enumerate(lines) if re.match(r"^-+(\+-+)*$", x)), None)
    if sep is None:
        return None
    header = [h.strip() for h in lines[sep - 1].split("|")]
    keep = [i for i, h in enumerate(header) if not h.startswith("__ivm")]
    rows = []
    for x in lines[sep + 1:]:
        if re.match(r"^\(\d+ rows?\)$", x):
            break
        cells = [c.strip() for c in x.split("|")]
        rows.append("\t".join(cells[i] if cells[i] != "" else "NULL" for i in keep))
    return rows


def psql(sql_text, out_text):
    """pg_ivm's ``sql/*.sql`` file as records, each with its output in ``expected/*.out``
    (which echoes every statement before its output)."""
    statements = _psql_statements(sql_text)
    out = out_text.split("\n")
    starts, pos = [], 0
    for _, statement in statements:
        first, j = statement.split("\n")[0], pos
        while j < len(out) and out[j] != first:
            j += 1
        starts.append(None if j == len(out) else j)
        if j < len(out):
            pos = j + len(statement.split("\n"))
    records = []
    for k, (line, statement) in enumerate(statements):
        output = []
        if starts[k] is not None:
            begin = starts[k] + len(statement.split("\n"))
            end = next((s for s in starts[k + 1:] if s is not None), len(out))
            output = out[begin:end]
        ok = not any(x.startswith("ERROR") for x in output)
        rows = _psql_table(output)
        query = (re.match(r"\s*(select|table|with)\b", statement, re.I) is not None
                 and classify(statement)[0] == "other" and rows is not None
                 and not re.search(r"pgivm\.|create_immv|refresh_immv", statement, re.I))
        records.append(Record("query" if query else "statement", line, statement, ok, rows))
    return records


# --- statements -------------------------------------------------------------------------------

def _name(raw):
    """A table name as written (with its schema or catalog), without quotes, in lower case;
    PostgreSQL's default schema ``public.`` dropped."""
    name = raw.replace('"', "").lower()
    return name[len("public."):] if name.startswith("public.") else name


def classify(sql):
    """(kind, table) of a statement."""
    low = sql.strip().lower()
    m = re.match(r"\s*create\s+(or\s+replace\s+)?materialized\s+view\s+(if\s+not\s+exists\s+)?"
                 r"([\w.\"-]+)", sql, re.I)
    if m:
        return "view", _name(m.group(3))
    m = re.search(r"create_immv\(\s*'([^'(]*)", sql, re.I)
    if m:
        return "view", _name(m.group(1).strip())
    if re.match(r"(begin|start transaction)\b", low):
        return "begin", None
    if re.match(r"(commit|end)\b", low):
        return "commit", None
    if re.match(r"rollback\s+to\b", low):
        return "rollback to savepoint", None
    if re.match(r"(rollback|abort)\b", low):
        return "rollback", None
    if re.match(r"with\b", low) and re.search(r"\b(insert|update|delete)\b", low):
        return "with", None
    m = re.match(r"\s*drop\s+(materialized\s+view|view|table)\s+(if\s+exists\s+)?([\w.\"-]+)",
                 sql, re.I)
    if m:
        return ("dropview" if "view" in m.group(1).lower() else "droptable"), _name(m.group(3))
    m = re.match(r"\s*insert\s+(or\s+\w+\s+)?into\s+([\w.\"-]+)", sql, re.I)
    if m:
        if sql.strip().rstrip(";").count(";"):
            return "multi", _name(m.group(2))
        upsert = m.group(1) or re.search(r"on\s+conflict", sql, re.I)
        return ("upsert" if upsert else "insert"), _name(m.group(2))
    for kind, pattern in _ONE_TABLE:
        m = re.match(pattern, sql, re.I)
        if m:
            return kind, _name(m.group("table"))
    return "other", None


# statements on one table: their kind, and where the table's name is (group "table")
_TABLE = r"(?P<table>[\w.\"-]+)"
_ONE_TABLE = [
    ("delete", rf"\s*delete\s+from\s+(only\s+)?{_TABLE}"),
    ("truncate", rf"\s*truncate\s+(table\s+)?(only\s+)?{_TABLE}"),
    ("update", rf"\s*update\s+(only\s+)?{_TABLE}"),
    ("alter", rf"\s*alter\s+table\s+(if\s+exists\s+)?{_TABLE}"),
    ("copy", rf"\s*copy\s+{_TABLE}"),
]


def plain_change(kind, sql):
    """None when ``sql`` is a plain DELETE/UPDATE/TRUNCATE of one table (the harness turns it
    into changelog records), else the stop's kind."""
    if sql.strip().rstrip(";").count(";"):
        return "multi"
    if kind == "truncate":
        m = re.match(r"\s*truncate\s+(table\s+)?([\w.\"-]+)\s*;?\s*$", sql, re.I)
        return None if m else "truncate of several tables"
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError:
        return f"{kind} sqlglot cannot parse"
    if tree.args.get("returning"):
        return f"{kind} returning"
    if kind == "delete":
        if not isinstance(tree, exp.Delete):
            return "delete"
        return "delete using" if tree.args.get("using") else None
    if not isinstance(tree, exp.Update):
        return "update"
    return "update from" if tree.args.get("from") or tree.args.get("from_") else None


def tables_read(sql):
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError:
        return None
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    out = set()
    for table in tree.find_all(exp.Table):
        if table.name and table.name.lower() not in ctes:
            out.add(_name(".".join(p for p in (table.catalog, table.db, table.name) if p)))
    return out


# --- extending a case -------------------------------------------------------------------------

def _query(peer, sql):
    """A peer query's rows in DuckDB, its ORDER BY dropped as the harness drops it (rows are
    compared as multisets; pg_ivm orders by its hidden columns too)."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    if not (tree.args.get("limit") or tree.args.get("offset")):
        tree.set("order", None)
    return peer.execute(tree.sql("duckdb")).fetchall()


def _matches(expected, got):
    try:
        _assert_rows(expected, [tuple(_python(v) for v in row) for row in got], "")
        return True
    except AssertionError:
        return False


def _replay(case):
    """A DuckDB database holding the case's tables after its setup, its views as plain
    views, and its steps applied (their checks verified against DuckDB)."""
    peer = duckdb.connect()
    for _, statement in case["setup"]:
        peer.execute(statement)
    for peer_name, query, _ in case["views"]:
        peer.execute(f"CREATE VIEW {peer_name} AS {query}")
    for kind, line, statement, *expected in case["steps"]:
        if kind in DML:
            _changes(peer, kind, statement)
        elif kind == "check":
            if not _matches(expected[0], _query(peer, statement)):
                print(f"  {case['id']}: the existing check at line {line} differs from DuckDB",
                      file=sys.stderr)
        else:
            peer.execute(statement)
    return peer


def _constant_groups(case):
    """The case's views that are an aggregate without GROUP BY, which ralf is given grouped
    by a constant (``'all' AS scope ... GROUP BY scope``), as ``(CREATE VIEW as the peer
    defines it, CREATE VIEW as ralf holds it)``: ralf's has no row over no rows (a group
    that loses its last row disappears), the peer's has one (``COUNT`` 0, the rest NULL)."""
    out = []
    for peer_name, query, adapted in case["views"]:
        tree = sqlglot.parse_one(query, read="duckdb")
        while isinstance(tree, exp.Subquery):
            tree = tree.this
        if (adapted and isinstance(tree, exp.Select) and not tree.args.get("group")
                and tree.find(exp.AggFunc) and " GROUP BY " in adapted.upper()):
            having = tree.having("COUNT(*) > 0").sql("duckdb")
            out.append((f"CREATE OR REPLACE VIEW {peer_name} AS {query}",
                        f"CREATE OR REPLACE VIEW {peer_name} AS {having}"))
    return out


def _in_transaction(records, line):
    """The peer's file has a transaction open at ``line`` (pg_ivm's BEGIN ... ROLLBACK)."""
    open_ = False
    for record in records:
        if record.line >= line:
            return open_
        kind = classify(record.sql)[0] if record.kind == "statement" else None
        if kind == "begin":
            open_ = True
        elif kind in ("commit", "rollback"):
            open_ = False
    return open_


def extend(case, records):
    """The case's new steps and stop (or None when it does not stop at a DELETE/UPDATE/
    TRUNCATE)."""
    stop = case["stop"]
    if not stop or stop[0] not in DML:
        return None
    views = {_name(v[0].split("(")[0]) for v in case["views"]}
    views |= {v.split(".")[-1] for v in views}
    base = {_name(t) for t in case["keys"]}
    created = {_name(t) for _, s in case["setup"]
               for kind, t in [classify(s)] if kind == "other"
               for t in re.findall(r"^\s*create\s+table\s+(?:if\s+not\s+exists\s+)?([\w.\"]+)",
                                   s, re.I)}
    aux = created - base
    defined_line = int(case["id"].split(":")[1])
    in_transaction = _in_transaction(records, defined_line)
    peer = _replay(case)
    constant_groups = _constant_groups(case)
    steps = []
    for record in records:
        if record.line < stop[1] or record.cond:
            continue
        if record.kind == "directive":
            if record.sql.startswith(("loop", "concurrentloop", "foreach")):
                return steps, ["loop", record.line]
            continue
        if record.kind == "query":
            read = tables_read(record.sql)
            if not read or not read & views or not read <= views | base | {_plain(b) for b in base}:
                continue
            try:
                got = _query(peer, record.sql)
            except (duckdb.Error, sqlglot.errors.ParseError):
                continue
            if _matches(record.rows, got):
                for _, as_ralf in constant_groups:
                    peer.execute(as_ralf)
                ralf_can = _matches(record.rows, _query(peer, record.sql))
                for as_peer, _ in constant_groups:
                    peer.execute(as_peer)
                if not ralf_can:
                    return steps, ["aggregate of no rows", record.line]
                steps.append(["check", record.line, record.sql, record.rows])
            else:
                print(f"  {case['id']}: line {record.line} left out, its rows are not the "
                      "view's", file=sys.stderr)
            continue
        kind, table = classify(record.sql)
        if kind == "rollback":
            return steps, (None if in_transaction else ["rollback", record.line])
        if kind == "rollback to savepoint":
            return steps, ["rollback to savepoint", record.line]
        if not record.ok:
            continue
        if kind == "view" and table in views:
            return steps, ["view replaced", record.line]
        if kind in ("dropview", "droptable") and table in views:
            return steps, None
        if kind == "with":
            if (tables_read(record.sql) or base) & base:
                return steps, ["with", record.line]
            continue
        if table in base:
            if kind == "insert":
                if (tables_read(record.sql) or set()) & views:
                    return steps, ["insert reads a view", record.line]
                step = ["insert", record.line, record.sql]
            elif kind in DML:
                why = plain_change(kind, record.sql)
                if why:
                    return steps, [why, record.line]
                step = [kind, record.line, record.sql]
            else:
                return steps, [kind, record.line]
            try:
                if kind in DML:
                    _changes(peer, kind, record.sql)
                else:
                    peer.execute(record.sql)
            except duckdb.Error as error:
                print(f"  {case['id']}: line {record.line} fails in DuckDB: {error}",
                      file=sys.stderr)
                return steps, [f"{kind} DuckDB cannot run", record.line]
            steps.append(step)
        elif table in aux and kind != "other":
            try:
                peer.execute(record.sql)
            except duckdb.Error:
                continue
            steps.append(["peer", record.line, record.sql])
    return steps, None


# --- the data files ---------------------------------------------------------------------------

def _compact(value):
    return json.dumps(value, ensure_ascii=False)


def _element(value):
    """A list field's element on a line; a check's expected rows a line each when long."""
    text = _compact(value)
    if len(text) <= 96 or not (isinstance(value, list) and value and isinstance(value[-1], list)
                               and value[-1]):
        return "    " + text
    head = _compact(value[:-1])[:-1]
    rows = ",\n".join("     " + _compact(r) for r in value[-1])
    return f"    {head}, [\n{rows}\n    ]]"


def render(document):
    """The data file as it is laid out: a case a block, a field a line, each element of a
    list field (a statement, a view, a step) a line of its own."""
    out = ["{", ' "source": ' + json.dumps(document["source"], indent=1, ensure_ascii=False)
           .replace("\n", "\n ") + ",", ' "cases": [']
    for i, case in enumerate(document["cases"]):
        fields = []
        for key, value in case.items():
            if isinstance(value, list) and value:
                items = ",\n".join(_element(v) for v in value)
                fields.append(f"   {_compact(key)}: [\n{items}\n   ]")
            else:
                fields.append(f"   {_compact(key)}: {_compact(value)}")
        sep = "," if i < len(document["cases"]) - 1 else ""
        out.append("  {\n" + ",\n".join(fields) + "\n  }" + sep)
    out += [" ]", "}"]
    return "\n".join(out) + "\n"


def records_of(peer, files, file):
    if peer == "pg_ivm":
        base = file.removesuffix(".sql")
        return psql(files.read(f"sql/{base}.sql"), files.read(f"expected/{base}.out"))
    return sqllogictest(files.read(f"test/sql/{file}"))


def convert(peer, root, write):
    path = HERE / f"{peer}.json"
    text = path.read_text()
    document = json.loads(text)
    assert render(document) == text, f"{path} is not laid out as render() lays it out"
    files = Files(root, document["source"]["commit"])
    parsed = {}
    changed = 0
    for case in document["cases"]:
        file = case["id"].split(":")[0]
        if file not in parsed:
            parsed[file] = records_of(peer, files, file)
        result = extend(case, parsed[file])
        if result is None:
            continue
        steps, stop = result
        changed += 1
        kinds = [s[0] for s in steps]
        print(f"{case['id']}: {case['stop']} -> {stop}; +{len(steps)} steps "
              f"({', '.join(f'{k} {kinds.count(k)}' for k in dict.fromkeys(kinds))})"
              + ("  [refused]" if case["refused"] else ""))
        case["steps"] = case["steps"] + steps
        case["stop"] = stop
    if write:
        path.write_text(render(document))
    print(f"{peer}: {changed} cases extended" + ("" if write else " (dry run)"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg-ivm", help="pg_ivm: a checkout or a bare git directory")
    parser.add_argument("--openivm", help="OpenIVM: a checkout or a bare git directory")
    parser.add_argument("--write", action="store_true", help="rewrite the data files")
    args = parser.parse_args()
    if args.pg_ivm:
        convert("pg_ivm", args.pg_ivm, args.write)
    if args.openivm:
        convert("openivm", args.openivm, args.write)


if __name__ == "__main__":
    main()
