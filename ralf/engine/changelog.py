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
    checked = Schema(schema.primary_key, {**schema.columns, _INDEX: int})
    columnar = _columnar(batch)
    if columnar is not None:  # a DataFrame or Arrow batch: no Python object per record
        ops, befores, table = _columnar_changes(changelog, schema, columnar, name, rejected)
        valid, refused = checked.to_arrow(table, name)
    else:
        ops, befores, records = _record_changes(changelog, schema, _dicts(batch, name), name,
                                                rejected)
        valid, refused = checked.to_arrow(records, name)
    for rejection in refused:
        _strip(rejection)
    rejected += refused
    old, old_refused = checked.to_arrow(befores, name) if befores else (None, [])
    for rejection in old_refused:
        _strip(rejection)
        rejection.reason = f"{BEFORE_FIELD}: {rejection.reason}"
    rejected += old_refused
    olds = {} if old is None else {r.pop(_INDEX): r for r in old.to_pylist()}
    refused_before = {b[_INDEX] for b in befores if b[_INDEX] not in olds}
    identity = list(changelog.key or schema.names)
    current, state = _current(info, storage, identity, valid, olds)
    # the log's rows, in order: (True, row of ``valid``) for a +1 row, (False, row of
    # ``current``) for a -1 row; built as indices, taken from the two tables at the end
    out: list[tuple[bool, int]] = []
    logged_ops: list[str] = []
    retracts: list[int | None] = []
    plain = "update" if changelog.mode == "upsert" else "insert"
    if not state and not olds and ops.count(plain) + ops.count(None) == len(ops) and (
            _distinct(valid, identity)):  # new rows only (a load): taken as they are
        n = valid.num_rows
        return Resolved(_signed(valid.select(schema.names), ["insert"] * n, [None] * n))
    idents = _identities(valid, identity)
    seqs = current.column("_ralf_seq").to_pylist()
    added: dict[tuple, list[tuple[int, int]]] = {}  # identity -> [(seq, row of valid)]
    for n, i in enumerate(valid.column(_INDEX).to_pylist()):  # in record order
        op = ops[i]
        if i in refused_before:
            continue
        before = olds.get(i)
        ident = _identity(before, identity) if before is not None else idents[n]
        live = added.get(ident) or state.get(ident)
        no_before = op == "update" and changelog.key is None and before is None
        if no_before or (op == "insert" and live and changelog.key is not None) or (
                op != "insert" and not live and (op == "delete" or changelog.mode != "upsert")):
            why = _refusal(changelog, op, bool(live), before, ident, identity)
            rejected.append(Rejection(name, f"table {name!r}: {why}", None,
                                      {**dict(zip(schema.names, _row(valid, n), strict=True)),
                                       OP_FIELD: op}))
            continue
        replaced = bool(live) and op in ("update", "delete")
        if replaced:
            fresh, where = _take(added, state, ident)
            if fresh:  # a row this batch added: retract its copy in ``valid``
                seq, row = where
                out.append((True, row))
            else:
                seq = seqs[where]
                out.append((False, where))
            logged_ops.append(op)
            retracts.append(seq)
        if op == "delete":
            continue
        out.append((True, n))
        logged_ops.append("update" if replaced else "insert")  # an upsert of a new key
        retracts.append(None)
        added.setdefault(idents[n], []).append((first_seq + len(out) - 1, n))
    return Resolved(_log_rows(schema, valid, current, out, logged_ops, retracts),
                    [seq for seq in retracts if seq is not None])


def _distinct(table: pa.Table, identity: list[str]) -> bool:
    """No two rows of ``table`` have the same identity."""
    try:
        return table.group_by(identity).aggregate([]).num_rows == table.num_rows
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):  # e.g. a list column
        idents = _identities(table, identity)
        return len(set(idents)) == len(idents)


def _operation(changelog: Changelog, given: Any) -> str | None:
    """ralf's operation for a record's ``op`` (None: not one)."""
    if given is None:
        return "update" if changelog.mode == "upsert" else "insert"
    op = _OPS.get(str(given).lower())
    return "update" if op == "insert" and changelog.mode == "upsert" else op


def _bad_op(name: str, given: Any, record: Any) -> Rejection:
    return Rejection(name, f"table {name!r}: field {OP_FIELD!r}: {given!r} is not insert, "
                     "update or delete", OP_FIELD, record)


def _record_changes(changelog: Changelog, schema: Schema, records: list[Any], name: str,
                    rejected: list[Rejection]) -> tuple[list, list, list]:
    """Records (dicts) as each one's operation (None: rejected), the old rows given (with
    their record's index) and the records to validate (with their index); what is not a
    change is rejected."""
    ops: list[str | None] = [None] * len(records)
    changes, befores = [], []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            rejected.append(Rejection(name, f"table {name!r}: expected a record, got "
                                      f"{type(record).__name__}", None, repr(record)))
            continue
        given = record.pop(OP_FIELD, None)
        before = record.pop(BEFORE_FIELD, None)
        op = _operation(changelog, given)
        if op is None:
            rejected.append(_bad_op(name, given, record))
            continue
        if before is not None and not isinstance(before, Mapping):
            rejected.append(Rejection(name, f"table {name!r}: field {BEFORE_FIELD!r} must be "
                                      "a record of the old values", BEFORE_FIELD, record))
            continue
        if op == "delete" and changelog.key is not None:  # a tombstone: the key is enough
            for column in schema.names:
                record.setdefault(column, None)
        record[_INDEX] = i
        ops[i] = op
        changes.append(record)
        if before is not None:
            befores.append({**before, _INDEX: i})
    return ops, befores, changes


def _columnar(batch: Any) -> pa.Table | None:
    """A DataFrame or Arrow batch as an Arrow table (None: records, or a DataFrame Arrow
    cannot type — its records path names the bad values)."""
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    if isinstance(batch, pa.Table):
        return batch
    if hasattr(batch, "iloc") and hasattr(batch, "columns") and BEFORE_FIELD not in batch:
        try:
            return pa.Table.from_pandas(batch, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
    return None


def _columnar_changes(changelog: Changelog, schema: Schema, table: pa.Table, name: str,
                      rejected: list[Rejection]) -> tuple[list, list, pa.Table]:
    """A columnar batch as each record's operation and the old rows given (see
    :func:`_record_changes`), and the table to validate (its columns, with each record's
    index)."""
    if OP_FIELD in table.column_names:
        given = table.column(OP_FIELD).to_pylist()
        ops = [_operation(changelog, g) for g in given]
    else:
        given = None
        ops = [_operation(changelog, None)] * table.num_rows
    if BEFORE_FIELD in table.column_names:  # old rows given: the records path reads them
        befores_given = table.column(BEFORE_FIELD).to_pylist()
    else:
        befores_given = None
    table = table.drop_columns([c for c in (OP_FIELD, BEFORE_FIELD) if c in table.column_names])
    if changelog.key is not None and "delete" in ops:  # tombstones carry the key alone
        for column in schema.names:
            if column not in table.column_names:
                table = table.append_column(column, pa.nulls(table.num_rows,
                                                             schema.arrow.field(column).type))
    table = table.append_column(_INDEX, pa.array(range(table.num_rows), pa.int64()))
    befores = [{**before, _INDEX: i} for i, before in enumerate(befores_given or ())
               if isinstance(before, Mapping)]
    if None not in ops:
        return ops, befores, table
    keep = []
    for i, op in enumerate(ops):
        if op is None:
            rejected.append(_bad_op(name, given[i], table.slice(i, 1).to_pylist()[0]))
        else:
            keep.append(i)
    return ops, befores, table.take(pa.array(keep, pa.int64()))


def _take(added: dict, state: dict, ident: tuple) -> tuple[bool, Any]:
    """The oldest live row of an identity, removed from where it is kept: (True, (seq, row
    of the batch)) for a row this batch added, (False, row of the current state) else."""
    if state.get(ident):
        return False, state[ident].pop(0)
    return True, added[ident].pop(0)


def _row(table: pa.Table, n: int) -> list[Any]:
    return [table.column(c)[n].as_py() for c in table.column_names if c != _INDEX]


def _log_rows(schema: Schema, valid: pa.Table, current: pa.Table, out: list[tuple[bool, int]],
              ops: list[str], retracts: list[int | None]) -> pa.Table:
    """The log's rows from their indices into the batch (``valid``) and the current
    state (``current``), in order, with their change columns."""
    names = schema.names
    both = pa.concat_tables([valid.select(names), current.select(names)])
    offset = valid.num_rows  # the current state's rows come after the batch's
    order = [n if fresh else offset + n for fresh, n in out]
    return _signed(both.take(pa.array(order, pa.int64())), ops, retracts)


def _signed(rows: pa.Table, ops: list[str], retracts: list[int | None]) -> pa.Table:
    """Log rows (user columns) with their change columns: -1 where a row retracts one
    (``retracts``: the ``_ralf_seq`` it retracts), else +1."""
    diffs = [1 if seq is None else -1 for seq in retracts]
    return rows.append_column(DIFF, pa.array(diffs, pa.int64())).append_column(
        OP, pa.array(ops, pa.string())).append_column(RETRACTS, pa.array(retracts, pa.int64()))


def _refusal(changelog: Changelog, op: str, live: bool, before: dict | None, ident: tuple,
             identity: list[str]) -> str | None:
    """Why a change does not apply to the current state (None: it does)."""
    described = ", ".join(f"{c}={v!r}" for c, v in zip(identity, ident, strict=True))
    if op == "update" and changelog.key is None and before is None:
        return (f"update: a source without key= needs the old row in the field "
                f"{BEFORE_FIELD!r}")
    if op == "insert" and live and changelog.key is not None:
        return (f"insert: a row with key ({described}) exists already (an update, or "
                "mode='upsert', replaces it)")
    if op == "delete" and not live:
        return f"delete: no current row ({described})"
    if op == "update" and changelog.mode == "changelog" and not live:
        return f"update: no current row ({described})"
    return None


def _current(info: TableInfo, storage: Storage, identity: list[str], valid: pa.Table,
             olds: dict[int, dict[str, Any]]) -> tuple[pa.Table, dict[tuple, list[int]]]:
    """The current rows of the identities of the batch (``valid``) and of its old rows
    (``olds``), and identity -> their indices, oldest first."""
    wanted = valid.select(identity)
    if olds:
        wanted = pa.concat_tables([wanted, pa.Table.from_pylist(
            [{c: r[c] for c in identity} for r in olds.values()], schema=wanted.schema)])
    current = storage.current_changes(info, wanted) if wanted.num_rows else None
    if current is None:
        current = pa.Table.from_pylist([], schema=pa.schema(
            [*info.schema.arrow, pa.field("_ralf_seq", pa.int64())]))
    state: dict[tuple, list[int]] = {}
    for n, ident in enumerate(_identities(current, identity)):
        state.setdefault(ident, []).append(n)
    return current, state


def _identities(table: pa.Table, identity: list[str]) -> list[tuple]:
    """Each row's identity, hashable, without a Python call per value."""
    columns = [table.column(c).to_pylist() for c in identity]
    if any(pa.types.is_list(table.schema.field(c).type) for c in identity):
        columns = [[_hashable(v) for v in column] for column in columns]
    return list(zip(*columns, strict=True))


def _identity(row: Mapping[str, Any], identity: list[str]) -> tuple:
    return tuple(_hashable(row[c]) for c in identity)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _dicts(batch: Any, table: str) -> list[Any]:
    """A batch's records as dicts (their own copies: resolving pops fields); an Arrow
    batch never comes here (:func:`_columnar` takes it)."""
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


def retractions(schema: Schema, live: pa.Table) -> pa.Table:
    """Log rows retracting ``live`` (current rows with their ``_ralf_seq``): a delete each."""
    return _signed(live.select(schema.names), ["delete"] * live.num_rows,
                   live.column("_ralf_seq").to_pylist())
