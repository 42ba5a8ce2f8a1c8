"""Ingestion: one batch from a source into its append table, with the source's checkpoint."""

from __future__ import annotations

import datetime as dt
import logging
import pickle
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ralf.engine.changelog import resolve
from ralf.engine.node import FeatureNode, Node, SourceNode
from ralf.errors import OperatorError, RalfError, SchemaError
from ralf.faults import crashpoint
from ralf.schema import Record, Rejection
from ralf.storage.units import Append, LogRead

log = logging.getLogger("ralf")


def batch_length(batch: Any) -> int:
    """How many records a batch holds (a single Record or dict is one); raises TypeError
    for something without a length."""
    if isinstance(batch, (pa.Table, pa.RecordBatch)):
        return batch.num_rows
    if isinstance(batch, (Record, dict)):
        return 1
    return len(batch)


def drop_head(batch: Any, n: int) -> Any:
    """The batch without its first n records (resuming a source that has no checkpoint)."""
    if isinstance(batch, (pa.Table, pa.RecordBatch)):
        return batch.slice(n)
    if hasattr(batch, "iloc"):
        return batch.iloc[n:]
    if isinstance(batch, (Record, dict)):
        return [] if n else [batch]
    return list(batch)[n:]


def pull(node: SourceNode, errors: list[RalfError], now: dt.datetime) -> bool:
    """Ingest one batch; returns whether anything was appended. A ``next()`` that raises
    raises :class:`OperatorError` (user code); anything else that raises is the engine's
    or the database's (the scheduler resumes the source from the database either way)."""
    if node.exhausted:
        return False
    crashpoint("ingest.before_next")
    node.touched = True
    batch, n = _next(node)
    while node.skip and n:  # replaying what was appended before: drop it, read on
        dropped = min(node.skip, n)
        node.skip -= dropped
        batch = drop_head(batch, dropped)
        n -= dropped
        if n == 0:
            batch, n = _next(node)
    if batch is None:
        node.exhausted = True
        if node.skip == 0:
            _commit(node, node.schema.arrow.empty_table(), [], 0, now)
        return False
    crashpoint("ingest.after_next")
    if n == 0:
        return False
    retracted: list[int] = []
    try:
        if node.info.changelog is not None:  # changes resolved against the current state
            rejected = []
            resolved = resolve(node.info, node.storage, batch, node.seq + 1, rejected)
            rows, retracted = resolved.rows, resolved.retracted
        else:
            rows, rejected = node.schema.to_arrow(batch, node.name)
    except SchemaError as exc:  # the whole batch is garbage: file it, count it as read
        errors.append(exc)
        _commit(node, node.schema.arrow.empty_table(),
                [Rejection(node.name, str(exc), None, repr(batch))], n, now)
        return False
    take_rejected = getattr(node.source, "take_rejected", None)
    if callable(take_rejected):
        try:
            taken = take_rejected()
        except Exception as exc:  # user code
            raise _user_error(node, "take_rejected()", exc) from exc
        for rejection in taken:
            rejection.table = node.name
            rejected.append(rejection)
    if node.info.changelog is None:  # a changelog's rows are numbered as resolved
        rows = node.storable(rows, rejected)
    elif node.storage.unstorable(rows):  # numbered as resolved: the batch is refused whole
        node.storable(rows, rejected)  # (with the reasons)
        rows, retracted = rows.slice(0, 0), []
    if node.allowed_lateness is not None:
        rows = _drop_late(node, rows, rejected)
    crashpoint("ingest.after_validate")
    if node.partition is not None:  # every shard reads the stream; each keeps its own keys
        rows = node.partition.keep(node.schema, rows)
        if node.partition.shard != 0:
            rejected = []  # filed once, by shard 0
    _commit(node, rows, rejected, n, now, retracted)
    if rejected:
        first = rejected[0]
        more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
        errors.append(SchemaError(first.reason + more, table=node.name, column=first.column))
    return rows.num_rows > 0


def _drop_late(node: SourceNode, rows: pa.Table, rejected: list[Rejection]) -> pa.Table:
    """The rows that are not late: a record is late when its event time is more than the
    source's ``allowed_lateness`` before the newest event time the source had appended
    before it (in arrival order, this batch's earlier records included). Late records are
    filed in ``ralf.rejected`` with the reason."""
    event = node.info.event_column
    if rows.num_rows == 0:
        return rows
    times = rows.column(event).cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()
    # nothing seen yet: far enough below any time that subtracting the lateness cannot wrap
    prior = np.iinfo(np.int64).min // 2 if node.newest_event is None else int(
        pa.scalar(node.newest_event, pa.timestamp("us")).cast(pa.int64()).as_py())
    newest_before = np.maximum.accumulate(np.concatenate([[prior], times]))[:-1]
    late = times < newest_before - int(node.allowed_lateness * 1_000_000)
    if not late.any():
        return rows
    bounds = pa.array(newest_before[late], pa.int64()).cast(pa.timestamp("us")).to_pylist()
    for row, newest in zip(rows.filter(pa.array(late)).to_pylist(), bounds, strict=True):
        reason = (f"table {node.name!r}: column {event!r}: late: event time {row[event]} is "
                  f"more than the allowed lateness "
                  f"({dt.timedelta(seconds=node.allowed_lateness)}) before the "
                  f"newest event time already seen, {newest}")
        rejected.append(Rejection(node.name, reason, event, row))
    return rows.filter(pa.array(~late))


def _next(node: SourceNode) -> tuple[Any, int]:
    """The source's next batch (None: exhausted) and its length."""
    try:
        batch = node.source.next()
    except StopIteration:
        return None, 0
    except Exception as exc:  # user code
        raise _user_error(node, "next()", exc) from exc
    if batch is None:
        return None, 0
    try:
        return batch, batch_length(batch)
    except TypeError:
        return batch, 1  # not a batch at all: to_arrow rejects it


def _user_error(node: SourceNode, call: str, exc: Exception) -> RalfError:
    if isinstance(exc, RalfError):
        return exc
    return OperatorError(f"source {node.name!r}: {call} raised {type(exc).__name__}: {exc}",
                         table=node.name)


def _commit(node: SourceNode, rows: pa.Table, rejected: list, emitted: int,
            now: dt.datetime, retracted: list[int] | None = None) -> None:
    try:
        state = pickle.dumps(node.source.checkpoint()) if node.checkpointed else None
    except Exception as exc:  # user code
        raise _user_error(node, "checkpoint()", exc) from exc
    first_seq = node.seq + 1
    node.storage.append(Append(
        node.info, rows, first_seq, now, state, node.emitted + emitted, node.exhausted, rejected,
        retracted or []))
    crashpoint("append.after_commit")
    node.emitted += emitted
    node.seq += rows.num_rows
    node.metrics.ingested += rows.num_rows
    event = node.info.event_column
    if event is not None and rows.num_rows:
        newest = pc.max(rows.column(event)).as_py()
        node.newest_event = max(newest, node.newest_event or newest)
    node.metrics.rejected += len(rejected)
    if rows.num_rows:
        if node.cache is not None:  # a lookup source: its current row is the latest append
            node.refresh_cache(rows, now)
        notify_children(node, first_seq - 1)


def notify_children(node: Node, after_seq: int) -> None:
    """Tell key-indexed children which keys the appends in (after_seq, node.seq] touched."""
    keyed: list[FeatureNode] = [c for c in node.children if c.pending is not None]
    if not keyed:
        return
    summary = node.storage.pending_summary(LogRead(node.info, after_seq, node.seq, None))
    for child in keyed:
        child.add_pending(summary)
