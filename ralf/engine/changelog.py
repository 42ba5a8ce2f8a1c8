"""Changelog sources: a batch of changes (insert / update / delete, or upserts and
tombstones) resolved against the source's current state into signed rows for its log.

A change becomes one or two rows of the append table: a row that enters the current state
(``_ralf_diff`` +1) and, for an update or a delete, the row it replaces or removes (-1,
with ``_ralf_retracts`` naming the +1 row it retracts). The old values always come from
ralf's own current state, never from the record alone, so a -1 row retracts exactly a row
that the tables downstream have seen (a Debezium ``before`` only says which row is meant
when the source has no identity key). History is never rewritten: every change stays in
the log in arrival order; ``ralf."<source>__current"`` holds the live rows.

The model is the one of differential dataflow and Materialize: a collection is a multiset
of rows, a change a signed row; every maintained table consumes the signed rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ralf.errors import SchemaError
from ralf.schema import Record, Rejection, Schema
from ralf.storage.base import Storage
from ralf.storage.units import DIFF, OP, RETRACTS, Changelog, TableInfo

# The fields of a record (beside its columns) that say what change it is.
OP_FIELD = "op"
BEFORE_FIELD = "before"
MODES = ("upsert", "changelog")
# A record's operation as written (ours, Debezium's letters, a sign) -> ralf's.
_OPS = {"insert": "insert", "c": "insert", "r": "insert", "create": "insert", "read": "insert",
        "+": "insert", "update": "update", "u": "update", "upsert": "update",
        "delete": "delete", "d": "delete", "-": "delete"}
_INDEX = "__ralf_i"


def changelog_of(mode: str, key: Any, schema: Schema, what: str) -> Changelog | None:
    """The changelog definition of ``create_source(mode=..., key=...)``, checked against the
    schema (None: an append-only source)."""
    if mode == "append":
        if key is not None:
            raise SchemaError(f"{what}: key= names the identity of rows that change; an "
                              "append-only source has none (mode='upsert' or 'changelog')")
        return None
    if mode not in MODES:
        raise SchemaError(f"{what}: mode must be 'append', 'upsert' or 'changelog', got "
                          f"{mode!r}")
    if key is None and mode == "upsert":
        key = schema.primary_key
    columns = (key,) if isinstance(key, str) else None if key is None else tuple(key)
    for column in columns or ():
        if column not in schema.columns:
            raise SchemaError(f"{what}: key {column!r} is not a column of the schema "
                              f"{list(schema.columns)}", column=column)
    for reserved in (OP_FIELD, BEFORE_FIELD):
        if reserved in schema.columns:
            raise SchemaError(f"{what}: a changelog source's records say their change in the "
                              f"fields {OP_FIELD!r} and {BEFORE_FIELD!r}; the schema has a "
                              f"column named {reserved!r} (rename it)", column=reserved)
    if schema.event_time is not None:
        raise SchemaError(f"{what}: a changelog source with event time is not supported yet "
                          "(a retraction would have to rewrite the history by event time)")
    return Changelog(mode, columns)


@dataclass
class Resolved:
    """A batch of changes as rows of the log (user columns and the change columns, in
    order) and the ``_ralf_seq`` of the current rows they retract."""

    rows: pa.Table
    retracted: list[int] = field(default_factory=list)


def resolve(info: TableInfo, storage: Storage, batch: Any, first_seq: int,
            rejected: list[Rejection]) -> Resolved:
    """Resolve a batch of changes against the source's current state; a change that does
    not apply (a delete or update of a row that does not exist, an insert of a key that
    does) is added to ``rejected`` with the reason, and the others go on."""
    changelog, schema, name = info.changelog, info.schema, info.name
    records = _dicts(batch, name)
    changes, befores = [], []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            rejected.append(Rejection(name, f"table {name!r}: expected a record, got "
                                      f"{type(record).__name__}", None, repr(record)))
            continue
        op_given = record.pop(OP_FIELD, None)
        before = record.pop(BEFORE_FIELD, None)
        op = _OPS.get(str(op_given).lower()) if op_given is not None else (
            "update" if changelog.mode == "upsert" else "insert")
        if op is None:
            rejected.append(Rejection(name, f"table {name!r}: field {OP_FIELD!r}: {op_given!r} "
                                      "is not insert, update or delete", OP_FIELD, record))
            continue
        if op == "insert" and changelog.mode == "upsert":  # replaces a row of its key
            op = "update"
        if op == "delete" and changelog.key is not None:  # a tombstone: the key is enough
            record = {c: record.get(c) for c in schema.names}
        changes.append((i, op, record))
        if before is not None:
            if not isinstance(before, Mapping):
                rejected.append(Rejection(name, f"table {name!r}: field {BEFORE_FIELD!r} must "
                                          "be a record of the old values", BEFORE_FIELD, record))
                changes.pop()
                continue
            befores.append({**before, _INDEX: i})
    checked = Schema(schema.primary_key, {**schema.columns, _INDEX: int})
    valid, refused = checked.to_arrow([{**r, _INDEX: i} for i, _, r in changes], name)
    for rejection in refused:
        _strip(rejection)
    rejected += refused
    old, old_refused = checked.to_arrow(befores, name) if befores else (None, [])
    for rejection in old_refused:
        _strip(rejection)
        rejection.reason = f"{BEFORE_FIELD}: {rejection.reason}"
    rejected += old_refused
    rows = {r.pop(_INDEX): r for r in valid.to_pylist()}
    olds = {} if old is None else {r.pop(_INDEX): r for r in old.to_pylist()}
    refused_before = {i for i, _, _ in changes if i not in rows} | {
        b[_INDEX] for b in befores if b[_INDEX] not in olds}
    identity = list(changelog.key or schema.names)
    state = _current(info, storage, identity,
                     [*(rows[i] for i, _, _ in changes if i in rows), *olds.values()])
    out: list[dict[str, Any]] = []
    retracted: list[int] = []

    def emit(row: dict[str, Any], diff: int, op: str, retracts: int | None) -> int:
        out.append({**row, DIFF: diff, OP: op, RETRACTS: retracts})
        return first_seq + len(out) - 1

    for i, op, _ in changes:
        if i not in rows or i in refused_before:
            continue
        row, before = rows[i], olds.get(i)
        ident = _identity(before if before is not None else row, identity)
        live = state.get(ident, [])
        why = _refusal(changelog, op, live, before, ident, identity)
        if why is not None:
            rejected.append(Rejection(name, f"table {name!r}: {why}", None,
                                      {**row, OP_FIELD: op}))
            continue
        replaced = bool(live) and op in ("update", "delete")
        if replaced:
            seq, current = live.pop(0)
            emit(current, -1, op, seq)
            retracted.append(seq)
        if op == "delete":
            continue
        logged = "update" if replaced else "insert"  # an upsert of a new key inserts
        state.setdefault(_identity(row, identity), []).append((emit(row, 1, logged, None), row))
    return Resolved(_table(schema, out), retracted)


def _refusal(changelog: Changelog, op: str, live: list, before: dict | None, ident: tuple,
             identity: list[str]) -> str | None:
    """Why a change does not apply to the current state (None: it does)."""
    described = ", ".join(f"{c}={v!r}" for c, v in zip(identity, ident, strict=True))
    if op == "insert" and live and changelog.key is not None:
        return (f"insert: a row with key ({described}) exists already (an update, or "
                "mode='upsert', replaces it)")
    if op == "delete" and not live:
        return f"delete: no current row ({described})"
    if op == "update" and changelog.mode == "changelog" and not live:
        if changelog.key is None and before is None:
            return (f"update: a source without key= needs the old row in the field "
                    f"{BEFORE_FIELD!r}")
        return f"update: no current row ({described})"
    return None


def _current(info: TableInfo, storage: Storage, identity: list[str],
             rows: list[dict[str, Any]]) -> dict[tuple, list[tuple[int, dict[str, Any]]]]:
    """The current rows of the identities among ``rows``: identity -> [(seq, row)], oldest
    first."""
    if not rows:
        return {}
    arrow = info.schema.arrow
    wanted = pa.Table.from_pylist([{c: r[c] for c in identity} for r in rows],
                                  schema=pa.schema([arrow.field(c) for c in identity]))
    state: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
    for row in storage.current_changes(info, wanted).to_pylist():
        seq = row.pop("_ralf_seq")
        state.setdefault(_identity(row, identity), []).append((seq, row))
    return state


def _identity(row: Mapping[str, Any], identity: list[str]) -> tuple:
    return tuple(_hashable(row[c]) for c in identity)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _dicts(batch: Any, table: str) -> list[Any]:
    """A batch's records as dicts (their own copies: resolving pops fields)."""
    if isinstance(batch, pa.RecordBatch):
        batch = pa.Table.from_batches([batch])
    if isinstance(batch, pa.Table):
        return batch.to_pylist()
    if hasattr(batch, "to_dict") and hasattr(batch, "iloc"):  # a DataFrame
        return batch.to_dict("records")
    if isinstance(batch, (Record, Mapping)):
        batch = [batch]
    if isinstance(batch, (str, bytes)) or not hasattr(batch, "__iter__"):
        raise SchemaError(f"table {table!r}: expected records, a list of records, a DataFrame "
                          f"or an Arrow table, got {type(batch).__name__}", table=table)
    return [dict(r.__dict__) if isinstance(r, Record) else dict(r) if isinstance(r, Mapping)
            else r for r in batch]


def _strip(rejection: Rejection) -> None:
    if isinstance(rejection.raw, dict):
        rejection.raw.pop(_INDEX, None)


def _table(schema: Schema, rows: list[dict[str, Any]]) -> pa.Table:
    fields = [*schema.arrow, pa.field(DIFF, pa.int64()), pa.field(OP, pa.string()),
              pa.field(RETRACTS, pa.int64())]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def retractions(schema: Schema, live: pa.Table) -> pa.Table:
    """Log rows retracting ``live`` (current rows with their ``_ralf_seq``): a delete each."""
    rows = [{**{c: row[c] for c in schema.names}, DIFF: -1, OP: "delete",
             RETRACTS: row["_ralf_seq"]} for row in live.to_pylist()]
    return _table(schema, rows)
