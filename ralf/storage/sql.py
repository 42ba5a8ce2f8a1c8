"""SQL text both backends share: where a table's log lives and which of its rows are pending.

Plain standard SQL only (joins, ``coalesce``); each backend registers the ``__ralf_keys`` /
``__ralf_wm`` relations a :class:`~ralf.storage.base.LogRead` refers to in its own way.
"""

from __future__ import annotations

import pyarrow.compute as pc

from ralf.schema import quote
from ralf.storage.units import (
    DELETED,
    DIFF,
    EVENT_TIME,
    FEATURE,
    OP,
    SOURCE,
    LogRead,
    TableInfo,
    log_table,
    rows_relation,
)


def time_column(table: TableInfo) -> str:
    """The column a table's log is ordered in time by: ingestion (a source), validity (a
    history)."""
    return "_ralf_ingested_at" if table.kind == SOURCE else "_ralf_valid_from"


def log_from(read: LogRead) -> str:
    """``FROM <log> p ... WHERE <pending>``; integers inlined, so it nests anywhere."""
    key = f"p.{quote(read.table.schema.primary_key)}"
    high = int(read.high)
    if read.keys is not None:
        lo = pc.min(read.keys.column("wm")).as_py()
        lo = high if lo is None else int(lo)
        joins = f"JOIN __ralf_keys k ON {key} = k.key AND p._ralf_seq > k.wm"
        where = f"p._ralf_seq > {lo} AND p._ralf_seq <= {high}"
    elif read.watermarks is not None and read.watermarks.num_rows:
        floor = int(read.floor)
        lo = min(floor, int(pc.min(read.watermarks.column("wm")).as_py()))
        joins = f"LEFT JOIN __ralf_wm w ON {key} = w.key"
        where = (f"p._ralf_seq > {lo} AND p._ralf_seq <= {high} "
                 f"AND p._ralf_seq > coalesce(w.wm, {floor})")
    else:
        joins = ""
        where = f"p._ralf_seq > {int(read.floor)} AND p._ralf_seq <= {high}"
    if read.table.changelog is not None:  # a forgotten key's scrubbed row: no change
        where += f" AND p.{DIFF} <> 0"
    return f"FROM {log_table(read.table)} p {joins} WHERE {where}"


def pending_rows(read: LogRead) -> str:
    """The pending appends as a subquery: user columns and ``_ralf_seq`` (and, from a
    table with event time, that time as ``_ralf_event_time``)."""
    cols = [f"p.{quote(c)}" for c in read.table.schema.names] + ["p._ralf_seq"]
    event = read.table.event_column
    if event is not None:
        cols.append(f"p.{quote(event)} AS {EVENT_TIME}")
    if read.table.changelog is not None:  # each row's sign and change
        cols += [f"p.{DIFF}", f"p.{OP}"]
    return f"SELECT {', '.join(cols)} {log_from(read)}"


def pending_summary(read: LogRead) -> str:
    """Per key of the read: ``key, n, first_seq, last_seq, first_at``."""
    key = f"p.{quote(read.table.schema.primary_key)}"
    return (f"SELECT {key} AS key, count(*) AS n, min(p._ralf_seq) AS first_seq, "
            f"max(p._ralf_seq) AS last_seq, min(p.{time_column(read.table)}) AS first_at "
            f"{log_from(read)} GROUP BY {key}")


def current_query(table: TableInfo, *meta: str) -> str:
    """A SELECT of each key's current row: a feature table's row, a source's latest append
    (whose ``_ralf_ingested_at`` is its ``_ralf_updated_at``; of a changelog source, the
    latest of its current rows); user columns, then ``meta``."""
    columns = [quote(c) for c in table.schema.names]
    if table.kind == FEATURE:
        return f"SELECT {', '.join(columns + list(meta))} FROM {quote(table.name)}"
    rows = quote(table.name) if table.changelog is None else rows_relation(table)
    inner = columns + ["_ralf_ingested_at AS _ralf_updated_at" if m == "_ralf_updated_at" else m
                       for m in meta]
    return (f"SELECT {', '.join(columns + list(meta))} FROM (SELECT {', '.join(inner)}, "
            f"row_number() OVER (PARTITION BY {quote(table.schema.primary_key)} "
            f"ORDER BY _ralf_seq DESC) AS __ralf_rank FROM {rows}) AS latest "
            f"WHERE __ralf_rank = 1")


def _event_select(table: TableInfo) -> str:
    """``, <event time> AS _ralf_event_time`` for a table with event time, else nothing."""
    event = table.event_column
    return "" if event is None else f", {quote(event)} AS {EVENT_TIME}"


def point_query(table: TableInfo, mark: str) -> str:
    """One key's current row, its ``_ralf_updated_at`` (and ``_ralf_event_time``, if the
    table has event time); ``mark``: the key's placeholder."""
    cols = ", ".join(quote(c) for c in table.schema.names)
    event = _event_select(table)
    if table.kind == FEATURE:
        return (f"SELECT {cols}, _ralf_updated_at{event} FROM {quote(table.name)} "
                f"WHERE {quote(table.schema.primary_key)} = {mark}")
    rows = quote(table.name) if table.changelog is None else rows_relation(table)
    return (f"SELECT {cols}, _ralf_ingested_at AS _ralf_updated_at{event} FROM "
            f"{rows} WHERE {quote(table.schema.primary_key)} = {mark} "
            "ORDER BY _ralf_seq DESC LIMIT 1")


def as_of_column(table: TableInfo, by: str) -> str:
    """The column of a table's log an as-of question is answered by: its event time
    (``by="event"``, for a table that has one), else the time ralf wrote each version."""
    if by not in ("event", "processing"):
        raise ValueError(f"by must be 'event' or 'processing', got {by!r}")
    event = table.event_column
    return quote(event) if by == "event" and event is not None else time_column(table)


def point_as_of_query(table: TableInfo, mark: str, by: str = "event") -> str:
    """One key's row as it was at a time: the newest version valid from then or before
    (by event time where the table has it; ``by``: see :func:`as_of_column`), with the
    time ralf wrote it as ``_ralf_updated_at`` (and its ``_ralf_event_time``); ``mark``:
    the placeholder (key, then time)."""
    cols = ", ".join(quote(c) for c in table.schema.names)
    time, written = as_of_column(table, by), time_column(table)
    event = _event_select(table)
    newest = (f"FROM {log_table(table)} WHERE {quote(table.schema.primary_key)} = {mark} "
              f"AND {time} <= {mark} ORDER BY {time} DESC, _ralf_seq DESC LIMIT 1")
    if table.kind == SOURCE:
        return f"SELECT {cols}, {written} AS _ralf_updated_at{event} {newest}"
    # a version recording the key's deletion: the key had no row then
    timed = f", {EVENT_TIME}" if event else ""
    return (f"SELECT {cols}, _ralf_updated_at{timed} FROM (SELECT {cols}, {written} AS "
            f"_ralf_updated_at{event}, {DELETED} {newest}) AS v "
            f"WHERE v.{DELETED} IS NOT TRUE")


def registered(read: LogRead) -> dict[str, object]:
    """The relations a read's SQL refers to, by name (pyarrow tables)."""
    return {name: table for name, table in (("__ralf_keys", read.keys),
                                              ("__ralf_wm", read.watermarks))
            if table is not None}
