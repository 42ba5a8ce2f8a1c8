"""Forgetting a key: its source records, every row derived from them, their history, and
its part of operator state — durably, exactly once, with an audit row.

Three steps, each committed:

1. **Asked**: the request (``ralf.forgotten``, with the key) and the retraction of the key's
   current rows (-1 rows appended to the changelog source, as a delete would) commit
   together. From here the forget is acknowledged: a crash later finishes it on restart.
2. **Retracted**: every table derived from the source refreshes the keys the retraction
   reached, by the ordinary refresh paths (aggregates retract, recomputed groups lose the
   rows, Python operators' ``on_delete`` or rebuild), so every current value computed from
   the key's records no longer includes them.
3. **Erased**: the key's records leave the source's log, and the key's rows and history
   versions leave every table keyed like the source (its aligned descendants), with the
   key's per-key operator state (:mod:`ralf.engine.rebuild`'s observation, or the
   operator's own ``forget(key)``); the request's key is cleared and what was removed is
   counted in its audit row.

What it cannot reach: history versions of tables keyed by another column (a per-movie
average once computed with the user's rating stays in that table's history; its current
value no longer includes it), and an operator's state that mixes keys (a total over all
keys) unless the operator defines ``forget(key)``. ``ralf.rejected`` keeps records that
were refused at the door, whatever their key (docs/changelog.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from ralf.engine.changelog import retractions
from ralf.engine.ingest import notify_children
from ralf.engine.node import FeatureNode, Node, OperatorNode, SourceNode
from ralf.engine.rebuild import keyed_attributes
from ralf.engine.refresh import refresh
from ralf.errors import RalfError, SchemaError
from ralf.faults import crashpoint
from ralf.schema import Record
from ralf.storage.units import Append, Erase, LogRead


def forget(source: SourceNode, features: list[FeatureNode], key: Any, max_failures: int,
           now: dt.datetime) -> dict[str, int]:
    """Forget ``key`` of a changelog source (see the module docstring); returns what was
    removed, per table. ``features``: every feature table, in topological order."""
    if source.info.changelog is None:
        raise SchemaError(f"forget: {source.name!r} is an append-only source, whose records "
                          "cannot be retracted from the tables derived from it; create it "
                          "with mode='changelog' (or 'upsert') to be able to forget a key",
                          table=source.name)
    key = source.schema.parse_key(key)
    text = source.schema.key_to_text(key)
    request = source.storage.forget_requested(source.name, text)
    if request is None:
        request = _ask(source, key, text, now)
    return finish(source, features, key, request, max_failures, now)


def _ask(source: SourceNode, key: Any, text: str, now: dt.datetime) -> int:
    """Step 1: the request and the retraction of the key's current rows, in one commit."""
    info = source.info
    live = source.storage.live_rows(info, pa.array([key], info.schema.arrow.field(
        info.schema.primary_key).type))
    rows = retractions(info.schema, live)
    first = source.seq + 1
    request = source.storage.ask_forget(
        Append(info, rows, first, now, None, 0, False, [], live.column("_ralf_seq").to_pylist()),
        text, hashlib.sha256(text.encode()).hexdigest())
    crashpoint("forget.after_ask")
    source.seq += rows.num_rows
    if rows.num_rows:
        if source.cache is not None:
            source.refresh_cache(rows, now)
        notify_children(source, first - 1)
    return request


def finish(source: SourceNode, features: list[FeatureNode], key: Any, request: int,
           max_failures: int, now: dt.datetime) -> dict[str, int]:
    """Steps 2 and 3 of an asked forget (again after a crash: each is idempotent)."""
    descendants = list(_descendants(source, features))
    errors: list[RalfError] = []
    since = {node.name: node.seq for node in [source, *descendants]}
    # what the retraction reached, table by table (a parent's new versions: its child's)
    since[source.name] = source.storage.forget_seq(request)
    for node in descendants:
        node.now = now
        reached = node.storage.pending_summary(LogRead(
            node.parent.info, since[node.parent.name], node.parent.seq, None))
        keys = reached.column("key").to_pylist()
        if node.pending is None:
            refresh(node, None, errors, max_failures, now)
        elif keys:
            refresh(node, keys, errors, max_failures, now)
        if errors:
            raise RalfError(f"forget: table {node.name!r} could not apply the retraction "
                            f"of the key ({errors[0]}); the request stays open and is "
                            "finished by the next forget() of the key or on reopen",
                            table=node.name)
    crashpoint("forget.after_retract")
    aligned = [node for node in descendants if _aligned(node, source)]
    records = source.schema.records(source.storage.source_records(source.info, key))
    states: dict[str, bytes | None] = {}
    for node in aligned:
        if isinstance(node, OperatorNode) and _forget_state(node, key, records, source):
            states[node.name] = node.checkpoint()
    keyed = [source, *aligned]  # a child of one of them keeps watermarks by the key's text
    marked = [node for node in descendants if node.parent in keyed]
    removed = source.storage.erase(Erase(
        source.info, key, source.schema.key_to_text(key), [n.info for n in aligned],
        [n.name for n in marked], states, request, now))
    crashpoint("forget.after_erase")
    for node in marked:  # the aligned tables among them
        node.marks.overrides.pop(key, None)
    for node in aligned:
        node.cache.pop(key, None)
        if node.pending is not None:
            node.pending.pop(key)
        if node.name in states:
            node.committed_state = states[node.name]
    if source.cache is not None:
        source.cache.pop(key, None)
    return removed


def _descendants(source: SourceNode, features: list[FeatureNode]) -> Iterator[FeatureNode]:
    """The tables derived from ``source`` (through parents, or looking one of them up),
    in topological order."""
    reached: set[str] = {source.name}
    for node in features:
        if node.parent.name in reached or (node.lookup is not None
                                           and node.lookup.name in reached):
            reached.add(node.name)
            yield node


def _aligned(node: FeatureNode, source: SourceNode) -> bool:
    """Keyed like the source all the way up: a row of ``node`` with the key is the key's."""
    current: Node = node
    while isinstance(current, FeatureNode):
        plan = getattr(current, "plan", None)
        if not current.aligned or getattr(plan, "key_expression", None) is not None:
            return False
        current = current.parent
    return current is source


def _forget_state(node: OperatorNode, key: Any, records: list[Record], source: SourceNode
                  ) -> bool:
    """Drop the key's part of a Python operator's state: its own ``forget(key)``, or (an
    operator reading the source itself) the dict entries that observing it on the key's
    records finds keyed by it. Returns whether anything was done."""
    own = getattr(node.operator, "forget", None)
    if callable(own):
        own(key)
        return True
    if node.parent is not source or not records:
        return False
    keyed = keyed_attributes(node, [key], {key: records})
    for name in keyed or ():
        getattr(node.operator, name).pop(key, None)
    return bool(keyed)

