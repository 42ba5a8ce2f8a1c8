"""Retractions a Python operator has no hook for: its keys rebuilt from their surviving
records.

An operator that defines ``on_delete`` is handed each retracted record (and
``on_update(old, new)`` each update, if it defines that too). One that does not is correct
by default: the keys that lost a record are rebuilt by replaying the records they still
have (the changelog source's current rows) — per key when the operator's state is kept
per key, whole otherwise. A lookup join of a changelog source rebuilds the same way the
keys whose records name a key that changed there (the records replayed with the other
side's current rows).

"Kept per key" is observed, not assumed: a fresh copy of the operator (its state as
created) is given the key's records, retracted and surviving; if every attribute they
changed is a dict in which only that key's entry changed (``self.sums[user]``, the
tutorial's pattern), the key's entries are dropped from the live operator's dicts and its
surviving records replayed through it. Anything else (a counter over all keys, a list, a
dict keyed by another column, a custom ``__getstate__``) mixes keys: the operator is then
restarted from its initial state and every current record replayed (exact, and as costly
as a rebuild from the log).
"""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from ralf.engine.apply import Applied, apply_records
from ralf.engine.node import OperatorNode
from ralf.schema import Delete, Record

log = logging.getLogger("ralf")
_ABSENT = object()


def rebuild(node: OperatorNode, keys: list[Any], retracted: dict[Any, list[Record]],
            skip: set[Any]) -> Applied:
    """Rebuild ``keys`` of a Python operator's table from their surviving records (see the
    module docstring); ``retracted``: each key's retracted records, observed with its
    surviving ones to see where the operator keeps the key's state. Returns the rebuilt
    keys' outputs (a :class:`~ralf.schema.Delete` for a key left without a row), marked
    ``whole`` when every key was rebuilt."""
    pk = node.parent.schema.primary_key
    survivors = node.storage.live_rows(node.parent.info, pa.array(
        keys, node.parent.schema.arrow.field(pk).type))
    records = node.parent.schema.records(survivors)
    seen = {key: list(retracted.get(key, [])) for key in keys}  # what to observe it with
    for record in records:
        seen[record.__dict__[pk]].append(record)
    keyed = keyed_attributes(node, keys, seen) if node.aligned else None
    if keyed is None:
        return _whole(node, skip)
    operator = node.operator
    for name in keyed:  # the keys' part of the state goes; their records come back
        part = getattr(operator, name)
        for key in keys:
            part.pop(key, None)
    run = _replay(node, records, skip)
    for key in keys:
        if key not in skip and key not in run.failed:
            run.outputs.setdefault(key, Delete(key))  # no record left makes no row
    return run


def _whole(node: OperatorNode, skip: set[Any]) -> Applied:
    """The operator restarted from its initial state and every current record replayed;
    every key that has a row and gets none is deleted."""
    if node.initial is not None:
        node.restore(node.initial)
    else:
        node.operator = node.remade()
    log.info("table %r: the operator's state mixes keys (or cannot be observed per key): "
             "rebuilt whole from its parent's current rows after a retraction", node.name)
    survivors = node.storage.live_rows(node.parent.info, None)
    run = _replay(node, node.parent.schema.records(survivors), skip)
    for key in list(node.cache or ()):
        run.outputs.setdefault(key, Delete(key))
    run.whole = True
    return run


def _replay(node: OperatorNode, records: list[Record], skip: set[Any]) -> Applied:
    others = None
    if node.lookup is not None:
        others = [node.lookup.current(getattr(r, node.info.lookup_on)) for r in records]
    return apply_records(node.operator.on_record, records, node.parent.schema.primary_key,
                         node.schema.primary_key, node.aligned, others=others, skip=skip)


def keyed_attributes(node: OperatorNode, keys: Iterable[Any],
                      records: dict[Any, list[Record]]) -> set[str] | None:
    """The operator's attributes that hold per-key state, observed on a fresh copy given
    each key's ``records``; None when its state mixes keys (or cannot be observed: no
    initial state, a custom ``__setstate__``, a replay that raises)."""
    if node.initial is None or hasattr(type(node.operator), "__setstate__"):
        return None
    initial = pickle.loads(node.initial)
    if not isinstance(initial, dict):
        return None
    keyed: set[str] = set()
    for key in keys:
        probe = copy.copy(node.operator)
        probe.__dict__ = pickle.loads(node.initial)
        try:
            for record in records.get(key, []):
                if node.lookup is None:
                    probe.on_record(record)
                else:
                    probe.on_record(record, node.lookup.current(
                        getattr(record, node.info.lookup_on)))
            changed = _changed(initial, probe.__dict__, key)
        except Exception:  # user code, or state that cannot be compared: observe nothing
            return None
        if changed is None:
            return None
        keyed |= changed
    return keyed


def _changed(before: dict[str, Any], after: dict[str, Any], key: Any) -> set[str] | None:
    """The attributes that changed between two states, if each is a dict whose only
    changed entry is ``key``'s; None otherwise."""
    changed = set()
    for name in before.keys() | after.keys():
        old, new = before.get(name, _ABSENT), after.get(name, _ABSENT)
        if _same(old, new):
            continue
        if not (isinstance(old, dict) and isinstance(new, dict)):
            return None
        entries = {k for k in old.keys() | new.keys()
                   if not _same(old.get(k, _ABSENT), new.get(k, _ABSENT))}
        if entries - {key}:
            return None
        changed.add(name)
    return changed


def _same(a: Any, b: Any) -> bool:
    result = a is b or a == b
    if not isinstance(result, bool):  # e.g. numpy arrays: elementwise
        raise TypeError("not comparable")
    return result
