"""Deterministic helpers for testing pipelines (yours and ours).

``ListSource`` replays a list in fixed-size batches; ``ManualClock`` is a clock that only
moves when told; ``recompute`` is the oracle (an operator run from scratch over a source's
append table); ``replay_staleness`` replays a stream under a budget and reports each
key's staleness after every tick; ``new_postgres_database`` / ``drop_postgres_database``
give a test or a benchmark a database of its own on a PostgreSQL server.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

import pandas as pd

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

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.current += dt.timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        """Advance instead of waiting: a tick's wait costs no real time."""
        self.advance(seconds)


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
