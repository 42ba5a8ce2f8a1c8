"""Pipelines that evolve: what changed between the tables a database stores and the ones a
pipeline defines, and what that invalidates (docs/evolve.md).

A feature table's *definition* is what computes its rows beyond its schema: its operator's
identity (the ``version=`` its author set, else a hash of the operator class's code), or
its SQL query, and the digests of the tables it reads. A table whose parent is rebuilt
reads a new log, so its digest changes with its parent's: a change invalidates every
descendant without a second walk, and a rebuild a crash interrupted is still seen as
needed when the database is reopened.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import textwrap
from dataclasses import dataclass, field
from typing import Any

from ralf.storage.units import SOURCE, TableInfo

# how a table is treated when its stored definition differs from the pipeline's
REFUSE, REBUILD = "refuse", "rebuild"
MODES = (REFUSE, REBUILD)
# a changed table's new version is built beside it under this suffix, then swapped in
SHADOW = "__next"
SOURCE_CHANGE = ("a source's log is its data, which a rebuild cannot bring back: define the "
                 "changed source under another name")


def shadow_name(name: str) -> str:
    """The name a changed table's new version is built under while the old one serves."""
    return name + SHADOW


def is_shadow(name: str) -> bool:
    """Whether a stored table is a new version being built (see :func:`shadow_name`)."""
    return name.endswith(SHADOW)


def operator_identity(operator: Any, version: str | None) -> dict[str, str]:
    """What identifies a Python operator's code: the ``version`` its author gave, else a
    hash of its class's source (of its methods', or their bytecode's, where the class's
    is not available). Code the class calls elsewhere is not part of it: a changed
    helper needs a new ``version``."""
    if version is not None:
        if not isinstance(version, str | int) or isinstance(version, bool):
            raise ValueError(f"version must be a string or an int, got {version!r}")
        return {"version": str(version)}
    cls = operator if isinstance(operator, type) else type(operator)
    try:
        code = textwrap.dedent(inspect.getsource(cls))  # nested in a function or not
    except (OSError, TypeError):  # e.g. its module is not in sys.modules: method by method
        code = "\n".join(_function_text(f) for _, f in sorted(vars(cls).items())
                         if inspect.isfunction(f))
    return {"code": hashlib.sha256(code.encode()).hexdigest()[:12]}


def _function_text(function: Any) -> str:
    try:
        return textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):  # typed into a REPL: its bytecode, without where it was
        return _code_text(function.__code__)


def _code_text(code: Any) -> str:
    consts = [_code_text(c) if inspect.iscode(c) else repr(c) for c in code.co_consts]
    return repr((code.co_code, code.co_names, code.co_varnames, consts))


def digest(info: TableInfo) -> str:
    """A short hash of everything that makes a table's rows what they are; a table reading
    it keeps it in its definition."""
    # a SQL table's schema is the backend's reading of its query: left out, the digest is
    # the same on DuckDB and PostgreSQL (ralf plan builds the pipeline on DuckDB)
    schema = None if _computed_schema(info) else info.schema.to_json()
    text = json.dumps([info.kind, schema, info.parent,
                       info.changelog.to_json() if info.changelog else None,
                       info.definition], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _computed_schema(info: TableInfo) -> bool:
    """Whether SQL computes the table's schema (from its query and its parents')."""
    definition = info.definition or {}
    return "query" in definition or "tiles" in definition


def _identity_text(definition: dict[str, Any]) -> str:
    if "version" in definition:
        return f"version {definition['version']}"
    if "code" in definition:
        return f"code hash {definition['code']}"
    return "query"


def differences(stored: TableInfo, defined: TableInfo, *, schemas: bool = True) -> list[str]:
    """Why ``defined`` is not the table ``stored`` holds, one reason a line (none: it is
    the same). ``schemas=False`` leaves out a SQL table's schema, which its query and
    parents decide (compared across backends, whose type names differ)."""
    reasons = []
    if stored.kind != defined.kind:
        reasons.append(f"kind {stored.kind} -> {defined.kind}")
    if stored.parent != defined.parent:
        reasons.append(f"parent {stored.parent!r} -> {defined.parent!r}")
    if (schemas or not _computed_schema(defined)) and stored.schema != defined.schema:
        reasons.append(f"schema {stored.schema!r} -> {defined.schema!r}")
    if stored.changelog != defined.changelog:
        reasons.append("changelog mode or key")
    if (stored.lookup, stored.lookup_on) != (defined.lookup, defined.lookup_on):
        # a Python join's rows came from the rows the old lookup gave its operator
        reasons.append(f"lookup {stored.lookup!r} on {stored.lookup_on!r} -> "
                       f"{defined.lookup!r} on {defined.lookup_on!r}")
    old, new = stored.definition, defined.definition or {}
    if old is None or reasons:
        return reasons  # a definition stored before ralf kept one is adopted
    if old.get("query") != new.get("query"):
        reasons.append(f"query {old.get('query')!r} -> {new.get('query')!r}")
    if old.get("tiles") != new.get("tiles"):
        reasons.append(f"tiles of another layout {old.get('tiles')} -> {new.get('tiles')}")
    old_id, new_id = _identity_text(old), _identity_text(new)
    if (old.get("version"), old.get("code")) != (new.get("version"), new.get("code")):
        reasons.append(f"operator {old_id} -> {new_id}")
    old_reads = old.get("reads", {})
    for table, mark in sorted(new.get("reads", {}).items()):
        if table in old_reads and old_reads[table] != mark:
            reasons.append(f"reads {table!r}, which changed")
    return reasons


@dataclass
class Change:
    """One table in a plan: its status, why, and what it identifies its operator by."""

    name: str
    status: str  # new | unchanged | adopted | changed | invalidated | removed | dropped
    reasons: list[str] = field(default_factory=list)
    identity: str | None = None  # "version 3", "code hash ab12...", "query"
    invalidates: list[str] = field(default_factory=list)  # descendants rebuilt with it

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of this entry."""
        return {"name": self.name, "status": self.status, "reasons": self.reasons,
                "identity": self.identity, "invalidates": self.invalidates}


@dataclass
class Plan:
    """What applying a pipeline to a database does, table by table."""

    changes: list[Change]

    def by_status(self, status: str) -> list[str]:
        """The names of the tables with ``status``."""
        return [c.name for c in self.changes if c.status == status]

    @property
    def empty(self) -> bool:
        """Nothing to create, rebuild or drop."""
        return all(c.status in ("unchanged", "adopted") for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every table's entry."""
        return {"tables": [c.to_dict() for c in self.changes], "empty": self.empty}

    def render(self) -> str:
        """The plan as text, a table a line, reasons and invalidated descendants below."""
        marks = {"new": "+", "changed": "~", "invalidated": "~", "removed": "-",
                 "dropped": "-", "adopted": "=", "unchanged": " "}
        notes = {"removed": "removed (kept; drop with --drop-removed)",
                 "adopted": "stored without a definition: adopting the current one",
                 "invalidated": "rebuilt: it reads a rebuilt table"}
        lines = []
        for c in self.changes:
            ident = f" [{c.identity}]" if c.identity else ""
            lines.append(f"{marks[c.status]} {c.name}: {notes.get(c.status, c.status)}{ident}")
            lines += [f"    {reason}" for reason in c.reasons]
            if c.invalidates:
                lines.append(f"    invalidates: {', '.join(c.invalidates)}")
        lines.append("no changes" if self.empty else
                     f"{len(self.by_status('new'))} new, {len(self.by_status('changed'))} "
                     f"changed, {len(self.by_status('invalidated'))} invalidated, "
                     f"{len(self.by_status('removed')) + len(self.by_status('dropped'))} "
                     "removed")
        return "\n".join(lines)


def plan(stored: dict[str, TableInfo], defined: dict[str, TableInfo], *,
         schemas: bool = True, drop_removed: bool = False) -> Plan:
    """Compare the tables a database stores with the ones a pipeline defines (both by
    name, the pipeline's in definition order)."""
    changes: dict[str, Change] = {}
    for name, info in defined.items():
        identity = None if info.kind == SOURCE else _identity_text(info.definition or {})
        old = stored.get(name)
        if old is None:
            changes[name] = Change(name, "new", identity=identity)
            continue
        reasons = differences(old, info, schemas=schemas)
        if not reasons:
            status = "adopted" if old.definition is None and info.kind != SOURCE else (
                "unchanged")
        elif all(r.startswith("reads ") for r in reasons):
            status = "invalidated"
        else:
            status = "changed"
            if info.kind == SOURCE:
                reasons.append(SOURCE_CHANGE)
        changes[name] = Change(name, status, reasons, identity)
    for name in stored.keys() - defined.keys():
        changes[name] = Change(name, "dropped" if drop_removed else "removed")
    for name, change in changes.items():
        if change.status in ("changed", "new"):
            change.invalidates = [d for d in _descendants(name, defined)
                                  if changes[d].status == "invalidated"]
    return Plan(list(changes.values()))


def _descendants(name: str, tables: dict[str, TableInfo]) -> list[str]:
    found: list[str] = []
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for child, info in tables.items():
            if current in (info.parent, info.lookup) and child not in found:
                found.append(child)
                frontier.append(child)
    return [t for t in tables if t in found]  # in definition order
