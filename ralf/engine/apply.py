"""Applying records to an operator: the inner loop of a refresh, wherever it runs.

The local executor calls it in the ralf process; the Ray executor calls it inside each
replica on that replica's share of the keys. It needs no table, storage or scheduler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ralf.errors import SchemaError
from ralf.faults import crashpoint
from ralf.schema import Delete, Record


@dataclass
class Applied:
    """What running records through an operator produced."""

    outputs: dict[Any, Record | Mapping] = field(default_factory=dict)  # out key -> row
    # out key -> input key, where they differ (a table keyed like its parent has no entries)
    origin: dict[Any, Any] = field(default_factory=dict)
    failed: dict[Any, BaseException] = field(default_factory=dict)  # input key -> why
    processed: int = 0
    shed: int = 0
    # every output row in the order made, with the index of the record that made it (kept
    # when asked: a timed table logs a version per event time)
    versions: list[tuple[Record | Mapping, int]] = field(default_factory=list)
    # over a changelog: whether every key was rebuilt (ralf.engine.rebuild)
    whole: bool = False

    def merge(self, other: Applied) -> None:
        """Add what another share of the records produced (one Ray replica's) to this result."""
        self.outputs.update(other.outputs)
        self.origin.update(other.origin)
        self.failed.update(other.failed)
        self.processed += other.processed
        self.shed += other.shed
        self.versions += other.versions

    def source_of(self, out_key: Any) -> Any:
        """The input key whose record produced the output row ``out_key``."""
        return self.origin.get(out_key, out_key)


def apply_records(on_record: Callable[..., Any], records: list[Record], pk: str, out_pk: str,
                  aligned: bool, *, others: list[Any] | None = None,
                  keep: Callable[[Record, Any, dict], bool] | None = None,
                  skip: set[Any] | frozenset = frozenset(), every: bool = False) -> Applied:
    """``on_record`` for each record in order (with its lookup row when ``others`` is
    given); a key that fails (its operator or its load-shedding policy raised) is skipped
    from then on. ``keep`` is load shedding; ``every`` keeps every output in
    ``Applied.versions``, not only each key's last.

    The loop runs once per record, so it does as little as it can: a Record output (the
    common case) is filed without the general path's checks."""
    result = Applied()
    outputs, origin, failed = result.outputs, result.origin, result.failed
    versions = result.versions if every else None
    blocked = set(skip)  # skipped keys, and keys that failed in this call
    processed = 0
    for i, record in enumerate(records):
        key = record.__dict__[pk]
        if key in blocked:
            continue
        crashpoint("refresh.in_operator")
        try:  # user code: the load-shedding policy, then the operator
            if keep is not None and not keep(record, key, outputs):
                result.shed += 1
                continue
            out = on_record(record) if others is None else on_record(record, others[i])
        except Exception as exc:
            failed[key] = exc
            blocked.add(key)
            continue
        processed += 1
        if out is None:
            continue
        if out.__class__ is Record and aligned:
            out_key = out.__dict__.get(out_pk, _MISSING)
            if out_key == key:
                outputs[key] = out
                if versions is not None:
                    versions.append((out, i))
                continue
        problem = _file(out, key, out_pk, aligned, outputs, origin,
                        None if versions is None else (versions, i))
        if problem is not None:
            failed[key] = problem
            blocked.add(key)
    result.processed = processed
    return result


_MISSING = object()


def apply_changes(operator: Any, records: list[Record], signs: list[int], ops: list[str],
                  seqs: list[int], pk: str, out_pk: str, aligned: bool, *,
                  others: list[Any] | None = None,
                  keep: Callable[[Record, Any, dict], bool] | None = None,
                  skip: set[Any] | frozenset = frozenset()) -> Applied:
    """Like :func:`apply_records`, over a changelog's signed rows: a +1 row goes to
    ``on_record``, a -1 row to ``on_delete(record)`` — or, the -1 and +1 rows of one update
    of a key (consecutive), to ``on_update(old, new)`` when the operator defines it. An
    output :class:`~ralf.schema.Delete` removes a key's row. Load shedding (``keep``)
    applies to +1 rows only: a retraction is never shed (it would leave a row that no
    longer exists counted)."""
    on_record, on_delete = operator.on_record, operator.on_delete
    on_update = getattr(operator, "on_update", None)
    result = Applied()
    blocked = set(skip)
    processed, i, n = 0, 0, len(records)
    while i < n:
        record = records[i]
        key = record.__dict__[pk]
        at, i = i, i + 1
        if key in blocked:
            continue
        crashpoint("refresh.in_operator")
        other = () if others is None else (others[at],)
        try:  # user code: the load-shedding policy, then the operator
            if signs[at] > 0:
                if keep is not None and not keep(record, key, result.outputs):
                    result.shed += 1
                    continue
                out = on_record(record, *other)
            elif (on_update is not None and ops[at] == "update" and i < n and signs[i] > 0
                  and seqs[i] == seqs[at] + 1 and records[i].__dict__[pk] == key):
                out = on_update(record, records[i], *(() if others is None else (others[i],)))
                i += 1  # the update's new row: given with the old one
            else:
                out = on_delete(record, *other)
        except Exception as exc:
            result.failed[key] = exc
            blocked.add(key)
            continue
        processed += 1
        if out is None:
            continue
        if isinstance(out, Delete):
            out = (out,)
        problem = _file(out, key, out_pk, aligned, result.outputs, result.origin, None)
        if problem is not None:
            result.failed[key] = problem
            blocked.add(key)
    result.processed = processed
    return result


def _file(out: Any, key: Any, out_pk: str, aligned: bool, outputs: dict, origin: dict,
          versions: tuple[list, int] | None) -> BaseException | None:
    """File an operator's output rows under their keys (and in ``versions``, with the
    record's index, when kept); returns why they were refused."""
    if isinstance(out, (Record, Mapping)):
        out = (out,)
    try:
        for row in out:
            if isinstance(row, Delete):  # the key's row is gone
                fields = {out_pk: row.key}
            else:
                fields = row.__dict__ if isinstance(row, Record) else row
            out_key = fields[out_pk]
            if aligned and out_key != key:
                raise LookupError(f"it returned a row for key {out_key!r} while refreshing "
                                  f"key {key!r} (the table shares its parent's key)")
            outputs[out_key] = row
            if versions is not None:
                versions[0].append((row, versions[1]))
            if out_key != key:
                origin[out_key] = key
            else:
                origin.pop(out_key, None)
    except KeyError:
        return SchemaError(f"operator output for key {key!r} rejected: no column {out_pk!r}",
                           column=out_pk)
    except LookupError as exc:  # a row for another key
        return ValueError(f"operator output for key {key!r} rejected: {exc}")
    except TypeError as exc:
        return TypeError(f"operator returned {out!r}, not Records ({exc})")
    return None
