"""Deterministic helpers for testing pipelines (yours and ours).

``ListSource`` replays a list in fixed-size batches; ``ManualClock`` is a clock that only
moves when told; ``EventSource`` emits timestamped events as a manual clock reaches their
arrival times; ``recompute`` is the oracle (an operator run from scratch over a source's
append table), ``replay_by_event_time`` and ``as_of`` the point-in-time one;
``replay_staleness`` replays a stream under a budget and reports each key's staleness
after every tick; ``Changes`` writes a valid changelog (inserts, updates, deletes) and
keeps the current state it leads to, the oracle of a changelog source;
``new_postgres_database`` / ``drop_postgres_database`` give a test or a
benchmark a database of its own on a PostgreSQL server.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

import pandas as pd

import ralf.durations as durations
from ralf.operators import SourceOperator
from ralf.schema import Record, Schema, quote


class ListSource(SourceOperator):
    """Emits the given rows ``batch_size`` at a time, then ends: a list of dicts or Records,
    or a pandas DataFrame (emitted as DataFrame slices, the fast columnar path)."""

    def __init__(self, schema: Schema, rows: Iterable[Any] | pd.DataFrame,
                 batch_size: int = 100) -> None:
        self.schema = schema
        self.rows = rows if isinstance(rows, pd.DataFrame) else list(rows)
        self.batch_size = batch_size
        self.position = 0

    def next(self) -> list[Any] | pd.DataFrame | None:
        if self.position >= len(self.rows):
            return None
        end = self.position + self.batch_size
        if isinstance(self.rows, pd.DataFrame):
            batch = self.rows.iloc[self.position:end]
        else:
            batch = self.rows[self.position:end]
        self.position += len(batch)
        return batch

    def checkpoint(self) -> int:
        """How many rows it has emitted: where a reopened source resumes."""
        return self.position

    def restore(self, state: int) -> None:
        """Resume after ``state`` emitted rows."""
        self.position = state


class QueueSource(SourceOperator):
    """Emits whatever the test or benchmark put in ``queue`` (one batch per tick) and
    ``[]`` ("nothing yet") when it is empty: a stream you feed by hand."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.queue: list[Any] = []

    def next(self) -> Any:
        return self.queue.pop(0) if self.queue else []


class ManualClock:
    """A clock for deterministic tests: ``sleep`` and ``advance`` move it, nothing else."""

    def __init__(self, start: dt.datetime = dt.datetime(2024, 1, 1)) -> None:
        self.current = start

    def now(self) -> dt.datetime:
        """The time it was last moved to."""
        return self.current

    def advance(self, seconds: float | str | dt.timedelta) -> None:
        """Move the clock forward by ``seconds`` (or a duration: ``"1h"``, a timedelta)."""
        if not isinstance(seconds, (int, float)):
            seconds = durations.seconds(seconds, "advance")
        self.current += dt.timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        """Advance instead of waiting: a tick's wait costs no real time."""
        self.advance(seconds)


class EventSource(SourceOperator):
    """Timestamped events as a live stream would bring them: each ``next()`` emits, in the
    order given, the events whose arrival time the ``clock`` has reached (``arrivals``:
    one per event; by default each event's own ``schema.event_time`` value, so an
    in-order stream) and ``[]`` while none is due; once all are emitted it ends (None),
    or with ``endless`` keeps answering ``[]``. Give ``arrivals`` later than the event
    times to make late, out-of-order data."""

    def __init__(self, schema: Schema, events: list[dict[str, Any]], clock: ManualClock, *,
                 arrivals: list[dt.datetime] | None = None, endless: bool = False) -> None:
        if schema.event_time is None and arrivals is None:
            raise ValueError("EventSource: the schema names no event_time; give arrivals")
        self.schema, self.events, self.clock, self.endless = schema, list(events), clock, endless
        self.arrivals = (list(arrivals) if arrivals is not None
                         else [e[schema.event_time] for e in self.events])
        if len(self.arrivals) != len(self.events):
            raise ValueError("EventSource: one arrival time per event")
        order = sorted(range(len(self.events)), key=self.arrivals.__getitem__)
        self._due = [self.events[i] for i in order]
        self._at = [self.arrivals[i] for i in order]
        self.position = 0

    def next(self) -> list[dict[str, Any]] | None:
        if self.position >= len(self._due) and not self.endless:
            return None
        now, start = self.clock.now(), self.position
        while self.position < len(self._due) and self._at[self.position] <= now:
            self.position += 1
        return self._due[start:self.position]

    def checkpoint(self) -> int:
        """How many events it has emitted."""
        return self.position

    def restore(self, state: int) -> None:
        """Resume after ``state`` emitted events."""
        self.position = state


def replay_by_event_time(events: pd.DataFrame, operator: Any, event_time: str
                         ) -> pd.DataFrame:
    """The point-in-time oracle of a Python operator: ``events`` (in arrival order) through
    a fresh ``operator`` in event-time order, ties in arrival order, as ralf applies a
    backfill; one row per output, with the event time of the record that made it in
    column ``event_time``."""
    ordered = events.sort_values(event_time, kind="stable")
    made = []
    for row in ordered.to_dict("records"):
        result = operator.on_record(Record.from_dict(dict(row)))
        if result is None:
            continue
        for out in (result,) if isinstance(result, Record) else result:
            made.append({**out.to_dict(), event_time: row[event_time]})
    return pd.DataFrame(made)


def as_of(versions: pd.DataFrame, entities: pd.DataFrame, key: str, event_time: str,
          timestamp_column: str = "event_timestamp") -> pd.DataFrame:
    """The point-in-time join pandas does (``merge_asof``): each entity row gets the last
    version of its key whose ``event_time`` is at or before its ``timestamp_column``
    (NaN where there is none), rows in the entities' order."""
    rows = entities.reset_index(drop=True).assign(__row=lambda f: range(len(f)))
    rows = rows.sort_values(timestamp_column, kind="stable")
    features = versions.drop_duplicates([key, event_time], keep="last")
    features = features.sort_values(event_time, kind="stable")
    joined = pd.merge_asof(rows, features.rename(columns={event_time: "__at"}),
                           left_on=timestamp_column, right_on="__at", by=key)
    return (joined.sort_values("__row").drop(columns=["__row", "__at"])
            .reset_index(drop=True))


def replay_staleness(
    schema: Schema,
    rows: list[Any],
    operator: Any,
    args: tuple = (),
    *,
    budget: int | None,
    policy: Any = None,
    shedding: Any = None,
    batch_size: int = 100,
    tick_seconds: float = 1.0,
    max_ticks: int = 100_000,
) -> pd.DataFrame:
    """Replay ``rows`` through ``operator`` with ``budget`` refreshes per tick (and the
    given prioritization / load-shedding policy), one batch and one clock second per tick.

    Returns one row per (tick, key seen so far): ``pending`` appends and ``staleness``
    in seconds since the key's oldest pending append (0 when fresh).
    """
    from ralf.server import Ralf

    clock = ManualClock()
    frames = []
    with Ralf(clock=clock) as server:
        source = server.create_source(ListSource, args=(schema, rows, batch_size),
                                      name="stream")
        table = source.map(operator, args=args, name="features", budget=budget)
        if policy is not None:
            table.add_prioritization_policy(policy)
        if shedding is not None:
            table.add_load_shedding(shedding)
        key = table.schema.primary_key  # the features' key (the stream's, for most operators)
        seen: dict[Any, None] = {}
        for tick in range(1, max_ticks + 1):
            server.step()
            stale = server.staleness("features").set_index("key")
            seen.update(dict.fromkeys(stale.index))
            seen.update(dict.fromkeys(server.bulk_arrow("features").column(key).to_pylist()))
            keys = list(seen)
            frames.append(pd.DataFrame({
                "tick": tick,
                "key": keys,
                "pending": [int(stale.at[k, "pending"]) if k in stale.index else 0
                            for k in keys],
                "staleness": [float(stale.at[k, "staleness"]) if k in stale.index else 0.0
                              for k in keys],
            }))
            if server.drained():
                break
            clock.advance(tick_seconds)
    return pd.concat(frames, ignore_index=True)


def recompute(server: Any, source: str, operator: Any, key: str) -> pd.DataFrame:
    """The oracle: replay every record of the source's append table, in arrival order,
    through a fresh ``operator`` instance; returns the last output row per ``key``,
    sorted by key."""
    data = server.sql(
        f"SELECT * EXCLUDE (_ralf_seq, _ralf_ingested_at) FROM {quote(source)} "
        "ORDER BY _ralf_seq")
    outputs: dict[Any, dict[str, Any]] = {}
    for row in data.to_dict("records"):
        result = operator.on_record(Record.from_dict(row))
        if result is None:
            continue
        for out in (result,) if isinstance(result, Record) else result:
            fields = out.to_dict()
            outputs[fields[key]] = fields
    frame = pd.DataFrame(list(outputs.values()))
    if frame.empty:
        return frame
    return frame.sort_values(key).reset_index(drop=True)


class Changes:
    """A changelog for ``create_source(mode=...)``, written change by change, with the
    current state it leads to kept beside it (the oracle of a changelog source).

    ``mode="changelog"`` writes records with ``op`` (and ``before`` where ``key`` is None:
    rows are then a multiset); ``mode="upsert"`` writes plain records (an insert or update
    of the ``key``) and tombstones. An update or delete names a live row by position
    (modulo the number of live rows; nothing is written when there is none)."""

    def __init__(self, mode: str = "changelog", key: list[str] | None = None) -> None:
        if mode not in ("changelog", "upsert") or (mode == "upsert" and not key):
            raise ValueError("Changes: mode 'changelog', or 'upsert' with key=[columns]")
        self.mode, self.key = mode, key
        self.live: list[dict[str, Any]] = []  # the current rows, oldest first
        self.records: list[dict[str, Any]] = []  # what the source emits

    def _index(self, row: dict[str, Any]) -> int | None:
        if self.key is None:
            return None
        ident = [row[c] for c in self.key]
        return next((i for i, r in enumerate(self.live) if [r[c] for c in self.key] == ident),
                    None)

    def insert(self, row: dict[str, Any]) -> None:
        """A new row (upsert mode: it replaces the row of its key, if any; changelog mode
        with a key: written as an update when its key has a row)."""
        at = self._index(row)
        if at is not None:
            self.live.pop(at)
            op = "update"
        else:
            op = "insert"
        self.live.append(dict(row))
        self.records.append(dict(row) if self.mode == "upsert" else {**row, "op": op})

    def update(self, position: int, **values: Any) -> None:
        """Change some values of a live row (with a key, never the key's columns: the new
        values are a row of the same key)."""
        if not self.live:
            return
        old = self.live.pop(position % len(self.live))
        new = {**old, **values, **{c: old[c] for c in self.key or ()}}
        self.live.append(new)
        if self.mode == "upsert":
            self.records.append(dict(new))
        else:
            self.records.append({**new, "op": "update", "before": dict(old)})

    def delete(self, position: int) -> None:
        """Remove a live row."""
        if not self.live:
            return
        self.records.append(self._deletion(self.live.pop(position % len(self.live))))

    def _deletion(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.key is not None:  # a tombstone: the key is enough
            return {**{c: row[c] for c in self.key}, "op": "delete"}
        return {**row, "op": "delete"}

    def current(self) -> pd.DataFrame:
        """The source's current rows, as the changes so far leave them."""
        return pd.DataFrame(self.live)


def new_postgres_database(server_url: str) -> str:
    """A new, empty database on the PostgreSQL server at ``server_url``; returns its URL.
    (Needs ``pip install 'ralf[postgres]'``.)"""
    import psycopg

    name = f"ralf_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(url: str) -> None:
    """Drop a database ``new_postgres_database`` made, closing its sessions."""
    import psycopg

    server_url, name = url.rsplit("/", 1)
    with psycopg.connect(server_url + "/postgres", autocommit=True) as con:
        con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
