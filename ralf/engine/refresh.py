"""Refresh: replay a feature table's pending parent appends through its operator.

One refresh reads the pending appends of the chosen keys in one query, runs them through
the operator in arrival order, and commits outputs, watermarks and the operator's
checkpoint in one transaction. If the operator raises for a key, that key keeps its
watermark and the operator state is rolled back to the last checkpoint before the other
keys are replayed again, so no record is ever applied twice to the state.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ralf.engine.apply import Applied, apply_changes, apply_records
from ralf.engine.ingest import notify_children
from ralf.engine.node import FeatureNode, OperatorNode, SqlTableNode
from ralf.engine.progress import Advance
from ralf.engine.rebuild import rebuild
from ralf.errors import OperatorError, OutputSchemaError, RalfError, SchemaError, ValueRangeError
from ralf.faults import crashpoint
from ralf.ivm.views import Lookup
from ralf.schema import Delete, Record
from ralf.storage.base import VERSION_ORDER
from ralf.storage.units import DIFF, EVENT_TIME, OP, LookupAdvance, Refresh, SqlRefresh

log = logging.getLogger("ralf")

_MAX_RETRY_PASSES = 5


def refresh(node: FeatureNode, keys: list[Any] | None, errors: list[RalfError],
            max_failures: int, now: dt.datetime) -> int:
    """Refresh the given stale keys (None: every stale key). Returns keys refreshed."""
    if keys is not None and not keys:
        return 0
    start = time.perf_counter()
    try:
        if isinstance(node, SqlTableNode):
            return _isolating(node, keys, errors, max_failures, now)
        with _cyclic_gc_paused():
            return _refresh_python(node, keys, errors, max_failures, now)
    finally:
        took = time.perf_counter() - start
        node.metrics.refresh_seconds += took
        node.refresh_latency.observe(took)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Python operators allocate a Record, a dict and an output per record; each few
    hundred allocations would start a cyclic collection, and every few dozen of those a
    full one over the whole heap (operator state, serving cache: millions of objects), a
    third of a refresh's time (benchmarks/ivm.py, part c). Reference counting still frees
    everything as usual; cycles made meanwhile wait for the first collection after."""
    if not gc.isenabled():  # the application turned it off: leave it so
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _refresh_python(node: OperatorNode, keys: list[Any] | None, errors: list[RalfError],
                    max_failures: int, now: dt.datetime) -> int:
    # a lookup join of a changelog: the keys whose records name a key changed there are
    # rebuilt, in this refresh, with the lookup mark committed beside them
    lookup = node.lookup_read() if node.lookup_changed() else None
    reached = [] if lookup is None else node.storage.lookup_changes(
        node.parent.info, Lookup(node.lookup.name, node.info.lookup_on), lookup
    ).column("key").to_pylist()
    if keys is not None and reached:
        keys = list(dict.fromkeys([*keys, *reached]))
    read = node.read_all() if keys is None else node.read_keys(keys)
    data = node.storage.read_log(read)
    crashpoint("refresh.after_read")
    node.touched = True  # from here on the operator (and its policies) may move
    pk = node.parent.schema.primary_key
    batch = callable(getattr(node.operator, "on_batch", None))
    data, shed = _shed(node, data, pk, per_record=batch or node.replicas is not None)
    if batch:
        attempt = _run_batch
    elif DIFF in data.column_names or reached:
        attempt = functools.partial(_run_changes, rebuilt=set(reached))
    else:
        attempt = _run
    skip = set(node.held)
    for _ in range(_MAX_RETRY_PASSES):
        run, rows = attempt(node, data, pk, skip)
        if not run.failed:
            break
        skip |= set(run.failed)
        _record_failures(node, run.failed, errors, max_failures)
        if node.committed_state is None:  # no rollback possible: keep the others' results
            rows = _without(rows, run, node.schema.primary_key, skip)
            break
        node.restore(node.committed_state)  # undo what the failed keys did, then replay
    crashpoint("refresh.after_operator")
    run.shed += shed
    key_type = data.schema.field(pk).type
    if run.whole:  # every key rebuilt: every pending append is applied
        keys = None
        data = pa.concat_tables([data.select([pk]), pa.table({pk: pa.array(
            list(node.pending.keys) if node.pending is not None else [], key_type)})])
    refreshed_keys = _refreshed(pa.concat_tables([data.select([pk]), pa.table(
        {pk: pa.array(reached, key_type)})]).column(pk), keys, skip)
    _commit(node, rows, run, keys, refreshed_keys, skip, read.high, now,
            None if lookup is None else lookup.high)
    return len(refreshed_keys)


def _shed(node: OperatorNode, data: pa.Table, pk: str, per_record: bool
          ) -> tuple[pa.Table, int]:
    """Apply load shedding ahead of the operator: ``select`` policies always, ``process``
    policies too for ``on_batch`` operators (the per-record path asks them as it goes, so a
    two-argument policy sees the row each record produced). Returns the kept rows and how
    many went."""
    per_record = per_record and bool(node.policies.shedding)
    if not per_record and not node.policies.selectors:
        return data, 0
    records = node.parent.schema.records(data)
    for i, record in enumerate(records):
        record._ralf_row = i
    kept = records
    retractions: list[Record] = []
    if DIFF in data.column_names:  # a retraction is never shed: only +1 rows are chosen
        signs = data.column(DIFF).to_pylist()
        retractions = [r for r, sign in zip(records, signs, strict=True) if sign < 0]
        kept = [r for r, sign in zip(records, signs, strict=True) if sign > 0]
    try:  # user code, over the refresh's records as a whole: a failure fails the table
        for policy in node.policies.selectors:
            kept = policy.select(kept, pk)
        if per_record:  # on_batch: the kept record stands in for the row it will produce
            latest: dict[Any, Any] = {}
            survivors = []
            for record in kept:
                key = getattr(record, pk)
                if _keep(node, record, key, latest):
                    survivors.append(record)
                    latest[key] = record
            kept = survivors
    except Exception as exc:
        raise OperatorError(f"table {node.name!r}: load shedding raised "
                            f"{type(exc).__name__}: {exc}", table=node.name) from exc
    rows = sorted(r.__dict__.pop("_ralf_row") for r in [*kept, *retractions])
    return data.take(pa.array(rows, pa.int64())), data.num_rows - len(rows)


def _keep(node: OperatorNode, record: Record, key: Any, outputs: dict[Any, Any]) -> bool:
    for policy, wants_current in node.policies.shedding:
        if wants_current:
            current = outputs.get(key)
            if current is None:
                current = node.current(key)
            elif not isinstance(current, Record):
                current = Record.from_dict(dict(current))
            keep = policy.process(record, current)
        else:
            keep = policy.process(record)
        if not keep:
            return False
    return True


def _isolating(node: SqlTableNode, keys: list[Any] | None, errors: list[RalfError],
               max_failures: int, now: dt.datetime) -> int:
    """Refresh a SQL table; if a value of some key does not fit its column, find the keys
    it belongs to by halving (each half its own transaction) and hold them back like an
    operator's failing keys, so the others go on."""
    try:
        return _refresh_sql_table(node, keys, now)
    except ValueRangeError as exc:
        if keys is None:  # an eager table keeps no stale-key index: ask the database
            follow_lookup(node)  # the keys a lookup reaches become pending keys too
            read = node.read_all(unread=node.held)
            keys = node.storage.pending_summary(read).column("key").to_pylist()
        if not keys:
            raise
        if len(keys) == 1:
            _record_failures(node, {keys[0]: exc}, errors, max_failures)
            return 0
        half = len(keys) // 2
        return (_isolating(node, keys[:half], errors, max_failures, now)
                + _isolating(node, keys[half:], errors, max_failures, now))


def follow_lookup(node: FeatureNode) -> None:
    """A SQL table that looks up another table: make stale the keys whose parent rows name
    a key the other table changed since this one last looked, by lowering their watermark
    to the start of the log (a recompute reads their rows as they are now). The lowered
    marks and how far the other's log was followed commit together; then memory moves."""
    if not isinstance(node, SqlTableNode) or not node.lookup_changed():
        return  # a Python join follows its lookup in its refresh (_refresh_python)
    read = node.lookup_read()
    reached = node.storage.lookup_changes(node.parent.info, node.plan.lookup, read)
    base = node.storage.seq_base
    # a key whose mark is the start already has all its rows pending
    lowered = [k for k in reached.column("key").to_pylist() if node.marks.of(k) > base]
    text = node.parent.schema.key_to_text
    node.storage.advance_lookup(LookupAdvance(node.info, read.high,
                                              {text(k): base for k in lowered}))
    crashpoint("lookup.after_commit")
    node.lookup_mark = read.high
    node.marks.overrides.update(dict.fromkeys(lowered, base))
    if node.pending is not None and lowered:
        node.add_pending(node.storage.pending_summary(node.read_keys(lowered)))


def _refresh_sql_table(node: SqlTableNode, keys: list[Any] | None, now: dt.datetime) -> int:
    """A SQL-maintained table: the plan runs inside the database, in one transaction."""
    held = node.held  # their appends stay unread
    read = node.read_all(unread=held) if keys is None else node.read_keys(keys)
    # a whole refresh follows the looked-up table's changes in the same transaction (the
    # keys they reach are among the ones it recomputes); one leaving keys held cannot,
    # as it would recompute them too: follow_lookup has made them stale first
    lookup = (node.lookup_read() if keys is None and not held and node.lookup_changed() else None)
    full = keys is None or _still_stale(node, keys, keys, set()) is not None
    advance = node.marks.advance(keys or [], list(held) if full else None, read.high)
    unit = SqlRefresh(
        table=node.info, read=read, plan=node.plan, version=node.seq + 1,
        updated_at=now, watermark=advance.floor, set_watermarks=_as_text(node, advance),
        clear_watermarks=advance.clear, lookup=lookup,
        held=pa.table({"key": pa.array(list(held), node.schema.arrow.field(
            node.schema.primary_key).type)}) if held and node.windowed else None)
    rows, deleted = node.storage.refresh_sql_table(unit)
    crashpoint("sql.after_commit")
    _move_marks(node, advance)
    if lookup is not None:
        node.lookup_mark = lookup.high
    node.put_rows(rows, now)
    if node.windowed:
        node.next_expiry = node.storage.next_expiry(node.info)
    for k in deleted:
        node.cache.pop(k, None)
    if keys is None:
        keys = rows.column(node.schema.primary_key).to_pylist() + list(deleted)
    _after_refresh(node, keys, rows.num_rows + len(deleted), now)  # a deletion is a version
    return len(keys)


def _run(node: OperatorNode, data: pa.Table, pk: str, skip: set[Any]) -> tuple[Applied, pa.Table]:
    """The per-record path: ``on_record`` for each pending append, in arrival order — here,
    or on the table's Ray replicas."""
    records = node.parent.schema.records(data)
    others = None
    if node.lookup is not None:
        on, lookup = node.info.lookup_on, node.lookup
        others = [lookup.current(getattr(r, on)) for r in records]
    args = (records, pk, node.schema.primary_key, node.aligned)
    if node.replicas is not None:
        result = node.replicas.apply(*args, others=others, skip=skip)
    else:
        keep = ((lambda r, k, outputs: _keep(node, r, k, outputs))
                if node.policies.shedding else None)
        result = apply_records(node.operator.on_record, *args, others=others, keep=keep,
                               skip=skip, every=node.info.timed)
    if node.info.timed:
        return result, _version_rows(node, result, data)
    return result, _output_rows(node, result, list(result.outputs.values()))


def _run_changes(node: OperatorNode, data: pa.Table, pk: str, skip: set[Any],
                 rebuilt: set[Any]) -> tuple[Applied, pa.Table]:
    """The per-record path over a changelog's signed rows: to ``on_delete`` /
    ``on_update`` when the operator defines them, else its keys that lost a record are
    rebuilt from the records they still have (ralf.engine.rebuild) — and the ``rebuilt``
    keys (a looked-up changelog changed a key their records name) in any case."""
    records = node.parent.schema.records(data)
    signs = (data.column(DIFF).to_pylist() if DIFF in data.column_names
             else [1] * data.num_rows)
    others = None
    if node.lookup is not None:
        on, lookup = node.info.lookup_on, node.lookup
        others = [lookup.current(getattr(r, on)) for r in records]
    keep = ((lambda r, k, outputs: _keep(node, r, k, outputs))
            if node.policies.shedding else None)
    out_pk = node.schema.primary_key
    if callable(getattr(node.operator, "on_delete", None)) and not rebuilt:
        result = apply_changes(node.operator, records, signs, data.column(OP).to_pylist(),
                               data.column("_ralf_seq").to_pylist(), pk, out_pk,
                               node.aligned, others=others, keep=keep, skip=skip)
    else:
        retracted: dict[Any, list[Record]] = {key: [] for key in rebuilt}
        for record, sign in zip(records, signs, strict=True):
            if sign < 0:
                retracted.setdefault(record.__dict__[pk], []).append(record)
        plain = [i for i, r in enumerate(records) if r.__dict__[pk] not in retracted]
        result = apply_records(node.operator.on_record, [records[i] for i in plain], pk,
                               out_pk, node.aligned, keep=keep, skip=skip,
                               others=None if others is None else [others[i] for i in plain])
        rebuilt_run = rebuild(node, list(retracted), retracted, skip | set(result.failed))
        if rebuilt_run.whole:  # the operator restarted: the plain records' run is void
            result = rebuilt_run
        else:
            result.merge(rebuilt_run)
    return result, _output_rows(node, result, [o for o in result.outputs.values()
                                               if not isinstance(o, Delete)])


def _version_rows(node: OperatorNode, run: Applied, data: pa.Table) -> pa.Table:
    """A timed table's outputs: every version the refresh made, in order, each with the
    event time of the record that made it (storage makes it the key's newest so far)."""
    made = [{**(row.__dict__ if isinstance(row, Record) else row), VERSION_ORDER: i}
            for row, i in run.versions]
    rows, rejected = node.version_schema.to_arrow(made, node.name)
    for rejection in rejected:  # it names the schema's column, not the order
        if isinstance(rejection.raw, dict):
            rejection.raw.pop(VERSION_ORDER, None)
    rows = node.storable(rows, rejected)
    _reject_outputs(node, run, rejected)
    return rows.append_column(EVENT_TIME, data.column(EVENT_TIME).take(
        rows.column(VERSION_ORDER)))


def _run_batch(node: OperatorNode, data: pa.Table, pk: str, skip: set[Any]
               ) -> tuple[Applied, pa.Table]:
    """The vectorised path: ``on_batch(df)`` once for all chosen keys; if it raises, once
    per key, to find the keys that fail."""
    result = Applied()
    if skip:
        data = data.filter(pc.invert(pc.is_in(data.column(pk), pa.array(list(skip)))))
    frame = data.select(node.parent.schema.names).to_pandas()
    try:
        outputs = [_batch_output(node, frame)]
    except Exception:  # user code: find the failing keys, one call per key
        if node.committed_state is not None:
            node.restore(node.committed_state)
        outputs = []
        for key, group in frame.groupby(pk, sort=False):
            try:
                outputs.append(_batch_output(node, group))
            except Exception as exc:
                result.failed[key] = exc
    result.processed = len(frame)
    combined = pd.concat([o for o in outputs if len(o)], ignore_index=True) if outputs else None
    if combined is None or combined.empty:
        return result, node.schema.arrow.empty_table()
    out_pk = node.schema.primary_key
    if out_pk in combined.columns:
        combined = combined.drop_duplicates(subset=[out_pk], keep="last")
    return result, _output_rows(node, result, combined)


def _batch_output(node: OperatorNode, frame: pd.DataFrame) -> pd.DataFrame:
    out = node.operator.on_batch(frame)
    if isinstance(out, pa.Table):
        out = out.to_pandas()
    if out is None:
        return frame.iloc[0:0]
    if not isinstance(out, pd.DataFrame):
        raise TypeError(f"on_batch must return a DataFrame or an Arrow table, got "
                        f"{type(out).__name__}")
    return out


def _output_rows(node: FeatureNode, run: Applied, outputs: Any) -> pa.Table:
    """The operator's outputs as rows to upsert; a bad one (wrong for the schema, or one
    the database cannot hold) fails the input key that produced it."""
    rows, rejected = node.schema.to_arrow(outputs, node.name)
    rows = node.storable(rows, rejected)
    _reject_outputs(node, run, rejected)
    return rows


def _reject_outputs(node: FeatureNode, run: Applied, rejected: list) -> None:
    """A bad output is a failure of the input key that produced it."""
    pk = node.schema.primary_key
    for rejection in rejected:
        raw = rejection.raw
        fields = raw.__dict__ if isinstance(raw, Record) else raw
        out_key = fields.get(pk) if isinstance(fields, Mapping) else None
        run.failed[run.source_of(out_key)] = SchemaError(
            f"operator output rejected: {rejection.reason}", table=node.name,
            column=rejection.column)


def _without(rows: pa.Table, run: Applied, pk: str, skip: set[Any]) -> pa.Table:
    """Drop outputs that came from keys held back."""
    gone = [out for out in rows.column(pk).to_pylist() if run.source_of(out) in skip]
    if not gone:
        return rows
    return rows.filter(pc.invert(pc.is_in(rows.column(pk), pa.array(gone))))


def _record_failures(node: FeatureNode, failed: dict[Any, BaseException],
                     errors: list[RalfError], max_failures: int) -> None:
    for key, exc in failed.items():
        detail = exc if isinstance(exc, RalfError) else f"{type(exc).__name__}: {exc}"
        node.metrics.failures += 1
        # exponential backoff, in ticks: 1, 2, 4, ...; quarantined after max_failures
        quarantined = node.failures.record(key, node.tick, max_failures, str(detail))
        count = node.failures.count[key]
        what = "refresh" if isinstance(node, SqlTableNode) else "operator"
        message = (f"table {node.name!r}, key {key!r}: {what} failed ({detail})"
                   + (f"; key quarantined after {count} failures" if quarantined else ""))
        if isinstance(exc, SchemaError):
            error: OperatorError = OutputSchemaError(message, table=node.name, key=key,
                                                     column=exc.column)
        else:
            error = OperatorError(message, table=node.name, key=key)
        error.__cause__ = exc
        errors.append(error)
        log.error("%s", error, extra={"table": node.name, "key": key},
                  exc_info=exc if log.isEnabledFor(logging.DEBUG) else None)


def _refreshed(read_keys: pa.ChunkedArray, keys: list[Any] | None, skip: set[Any]
               ) -> list[Any]:
    if keys is None:  # the keys read, in first-seen order; not one Python object per row
        keys = pc.unique(read_keys).to_pylist()
    return [k for k in keys if k not in skip]


def _commit(node: OperatorNode, rows: pa.Table, run: Applied, keys: list[Any] | None,
            refreshed: list[Any], skip: set[Any], high: int, now: dt.datetime,
            lookup_mark: int | None = None) -> None:
    advance = node.marks.advance(refreshed, _still_stale(node, keys, refreshed, skip), high)
    state = node.checkpoint() if run.processed else node.committed_state
    gone = [k for k, out in run.outputs.items() if isinstance(out, Delete)]
    rows = node.storage.refresh(Refresh(
        table=node.info,
        rows=rows,
        version=node.seq + 1,
        updated_at=now,
        watermark=advance.floor,
        set_watermarks=_as_text(node, advance),
        clear_watermarks=advance.clear,
        state=state,
        write_state=run.processed > 0 or bool(gone),
        deleted=pa.table({"key": pa.array(gone, node.schema.arrow.field(
            node.schema.primary_key).type)}) if gone else None,
        lookup_mark=lookup_mark,
    ))
    crashpoint("refresh.after_commit")
    # Committed: now memory may move.
    node.committed_state = state
    _move_marks(node, advance)
    if lookup_mark is not None:
        node.lookup_mark = lookup_mark
    node.put_rows(rows, now)
    for key in gone:
        node.cache.pop(key, None)
    crashpoint("refresh.after_cache")
    node.metrics.processed += run.processed
    node.metrics.shed += run.shed
    _after_refresh(node, refreshed, rows.num_rows + len(gone), now)


def _as_text(node: FeatureNode, advance: Advance) -> dict[str, int]:
    """The marks a refresh writes, keyed as the database keeps them."""
    return {node.parent.schema.key_to_text(k): v for k, v in advance.changed.items()}


def _move_marks(node: FeatureNode, advance: Advance) -> None:
    """Committed: the in-memory marks (and the catalog's floor) may move."""
    node.info.watermark = advance.floor
    node.marks.move(advance)


def _after_refresh(node: FeatureNode, refreshed: list[Any], written: int, now: dt.datetime
                   ) -> None:
    """Bookkeeping after a commit; a refresh that wrote (or deleted) rows is one new
    version in the log."""
    node.failures.succeeded(refreshed)
    if node.pending is not None:
        for k in refreshed:
            node.pending.pop(k)
    node.metrics.refreshes += len(refreshed)
    node.tell_policy("on_refresh", refreshed, now)
    if written:
        node.seq += 1
        notify_children(node, node.seq - 1)


def _still_stale(node: FeatureNode, keys: list[Any] | None, refreshed: list[Any],
                 skip: set[Any]) -> list[Any] | None:
    """The keys left stale if this refresh drains the table of all others, else None."""
    if keys is None:
        return list(skip)
    if node.pending is None:  # no stale-key index (an eager table): cannot tell
        return None
    held = skip | node.held
    done = set(refreshed)
    if len(node.pending) - len(done) > len(held):
        return None
    left = [k for k in node.pending.keys if k not in done]
    return left if all(k in held for k in left) else None
