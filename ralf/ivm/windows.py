"""Sliding windows over event time: ``aggregate(by="user", n_7d=("*", "count", "7d"))``.

A windowed output at time ``T`` aggregates the key's records whose event time is in
``(T - W, T]`` — exactly, as pandas' ``rolling(W)`` and SQL's ``RANGE`` frames do. It is
kept incrementally with *tiles*: per key and time bucket of ``tile`` microseconds, the
helpers of the bucket's records (count, sum, min, max, mean, sum of squared deviations,
as :mod:`ralf.ivm.aggregate` keeps per key) and the bucket's first and last event time,
merged with each refresh's appends. The value at ``T`` merges the tiles wholly inside the
window with the records of the (at most two) tiles the window's ends cut, read from the
append table by event time — never the key's whole history.

The value changes when time passes even if no record arrives: each row keeps
``_ralf_expires_at``, the next time its window loses its oldest record (or gains one
dated in the future), and the scheduler refreshes it then (see docs/time.md).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass

from ralf.ivm.aggregate import DeltaAggregate, Output
from ralf.schema import quote

TILE = "_ralf_tile"  # a tile's index: floor(event time in µs since 1970 / tile size)
FIRST = "_ralf_first"  # a tile's earliest event time
LAST = "_ralf_last"  # a tile's latest event time
EXPIRES = "_ralf_expires_at"  # when a row's window next changes with no new record
_EPOCH = dt.datetime(1970, 1, 1)
_MICROSECOND = dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class WindowOutput:
    """One windowed output: its name, function, argument, window and hop (microseconds;
    hop 0: sliding — the window ends now —, else the window ends at the last multiple of
    the hop since 1970: hopping, or tumbling when the hop is the window)."""

    name: str
    function: str
    argument: str
    window: int
    hop: int = 0

    @property
    def frame(self) -> tuple[int, int]:
        """(window, hop): outputs with the same frame aggregate the same records."""
        return self.window, self.hop


def timestamp(at: dt.datetime) -> str:
    """A SQL timestamp literal (both dialects read it)."""
    return f"TIMESTAMP '{at.isoformat(sep=' ', timespec='microseconds')}'"


class WindowAggregate:
    """Maintains sliding-window aggregates per key of a source with event time, with tiles
    (see the module docstring). ``event``: the source's event-time column; ``tile``: the
    tile size in microseconds."""

    def __init__(self, key: str, outputs: list[WindowOutput], event: str, tile: int) -> None:
        self.key, self.outputs, self.event, self.tile = key, outputs, event, tile
        self.helpers_plan = DeltaAggregate(
            key, [Output(o.name, o.function, o.argument) for o in outputs], None)
        self.helpers = self.helpers_plan.helpers
        self.frames = sorted({o.frame for o in outputs})

    # ---- definition -----------------------------------------------------------------------
    def query(self, source: str) -> str:
        """The outputs as a plain (unwindowed) aggregate, for their result types."""
        return self.helpers_plan.query(source)

    def delta_select(self, source: str) -> str:
        """The helpers over ``source``'s rows per key, for their types."""
        return self.helpers_plan.delta_select(source)

    def layout(self) -> str:
        """What the stored tiles depend on (tile size, helpers), as text: a reopen with
        another layout cannot reuse them. (Window lengths and hops can change freely.)"""
        return json.dumps({"tile": self.tile, "key": self.key, "helpers": self.helpers,
                           "arguments": sorted({o.argument for o in self.outputs})})

    def tile_of(self, at: dt.datetime) -> int:
        """The index of the tile ``at`` falls in."""
        return ((at - _EPOCH) // _MICROSECOND) // self.tile

    def tile_start(self, index: int) -> dt.datetime:
        """When tile ``index`` begins."""
        return _EPOCH + index * self.tile * _MICROSECOND

    @staticmethod
    def window_end(at: dt.datetime, hop: int) -> dt.datetime:
        """Where a window served at ``at`` ends: ``at`` itself, or its last hop boundary."""
        if not hop:
            return at
        return _EPOCH + (((at - _EPOCH) // _MICROSECOND) // hop) * hop * _MICROSECOND

    # ---- tiles ----------------------------------------------------------------------------
    def merged_tiles(self, pending: str, tiles: str, epoch_us: Callable[[str], str]) -> str:
        """The tiles the pending appends touch, merged with what they held: key, tile,
        helpers, first and last event time. ``epoch_us``: the dialect's microseconds
        since 1970 of a timestamp expression."""
        key, event = quote(self.key), quote(self.event)
        index = f"CAST(floor(CAST({epoch_us(event)} AS DOUBLE) / {self.tile}) AS BIGINT)"
        delta = (f"SELECT {key}, {index} AS {TILE}, "
                 f"{', '.join(self.helpers_plan.helper_deltas())}, min({event}) AS {FIRST}, "
                 f"max({event}) AS {LAST} FROM ({pending}) AS p GROUP BY 1, 2")
        merged = self.helpers_plan.merged_helpers("o", "d")
        cols = [f"d.{key}", f"d.{TILE}", *(f"{merged[h]} AS {quote(h)}" for h in self.helpers),
                f"least(d.{FIRST}, o.{FIRST}) AS {FIRST}",
                f"greatest(d.{LAST}, o.{LAST}) AS {LAST}"]
        return (f"SELECT {', '.join(cols)} FROM ({delta}) AS d LEFT JOIN {tiles} AS o "
                f"ON o.{key} = d.{key} AND o.{TILE} = d.{TILE}")

    # ---- values at a time -----------------------------------------------------------------
    def values_at(self, at: dt.datetime, probes: str, tiles: str, log: str, log_filter: str,
                  types: dict[str, str]) -> str:
        """Each probed key's outputs as of ``at`` and its ``_ralf_expires_at``: the tiles
        inside each window merged with the records (of ``log``, aliased ``r``, filtered by
        ``log_filter``) of the tiles its ends cut. ``probes``: a relation of keys (column
        ``key``); ``types``: the outputs' SQL types."""
        key = quote(self.key)
        values: dict[str, str] = {}
        joins, exits = [], []
        for i, (window, hop) in enumerate(self.frames):
            alias, end = f"w{i}", self.window_end(at, hop)
            frame = self._window(end, window, hop, probes, tiles, log, log_filter, types)
            joins.append(f"LEFT JOIN ({frame}) AS {alias} ON {alias}.{key} = p.key")
            for o in self.outputs:
                if o.frame == (window, hop):
                    value = f"{alias}.{quote(o.name)}"
                    # a count over an empty window is 0
                    values[o.name] = f"coalesce({value}, 0)" if o.function == "count" else value
            joins.append(f"LEFT JOIN ({self._future(end, probes, tiles, log, log_filter)}) "
                         f"AS f{i} ON f{i}.{key} = p.key")
            change = f"least({alias}.__ralf_exit, f{i}.__ralf_next)"
            if hop:  # it changes at a hop boundary only: the first one after the change
                change = (f"CASE WHEN {change} IS NULL THEN NULL ELSE greatest({change}, "
                          f"{timestamp(end + hop * _MICROSECOND)}) END")
            exits.append(change)
        outputs = ", ".join(f"{values[o.name]} AS {quote(o.name)}" for o in self.outputs)
        return (f"SELECT p.key AS {key}, {outputs}, least({', '.join(exits)}) AS {EXPIRES} "
                f"FROM (SELECT DISTINCT key FROM {probes}) AS p {' '.join(joins)}")

    def _window(self, at: dt.datetime, window: int, hop: int, probes: str, tiles: str,
                log: str, log_filter: str, types: dict[str, str]) -> str:
        """Per key: the outputs of one frame for the window ending at ``at``, and when its
        oldest record leaves it (``__ralf_exit``)."""
        key = quote(self.key)
        span = window * _MICROSECOND
        start = at - span  # the window is (start, at]
        low, high = self.tile_of(start), self.tile_of(at)
        helpers = ", ".join(f"t.{quote(h)}" for h in self.helpers)
        inner = (f"SELECT t.{key}, {helpers}, t.{FIRST} AS __ralf_first FROM {tiles} t "
                 f"WHERE t.{key} IN (SELECT key FROM {probes}) AND t.{TILE} > {low} "
                 f"AND t.{TILE} < {high}")
        event = f"r.{quote(self.event)}"
        if low == high:
            edges = f"{event} > {timestamp(start)} AND {event} <= {timestamp(at)}"
        else:
            edges = (f"({event} > {timestamp(start)} AND {event} < "
                     f"{timestamp(self.tile_start(low + 1))}) OR ({event} >= "
                     f"{timestamp(self.tile_start(high))} AND {event} <= {timestamp(at)})")
        raw = ", ".join(f"{self._one(h)} AS {quote(h)}" for h in self.helpers)
        edge = (f"SELECT r.{key}, {raw}, {event} AS __ralf_first FROM {log} r WHERE "
                f"{log_filter} AND r.{key} IN (SELECT key FROM {probes}) AND ({edges})")
        parts = f"({inner} UNION ALL {edge})"
        first = {h: self._combined(h) for h in self.helpers if not h.endswith("_m2")}
        level1 = (f"SELECT {key}, {', '.join(f'{v} AS {quote(h)}' for h, v in first.items())}"
                  f", min(__ralf_first) AS __ralf_first FROM {parts} AS q GROUP BY {key}")
        combined = {h: f"l.{quote(h)}" for h in first}
        m2 = [h for h in self.helpers if h.endswith("_m2")]
        body = f"({level1}) AS l"
        if m2:
            sums = []
            for h in m2:
                argument, _ = self.helpers_plan.helper_kind(h)
                cnt = quote(self.helpers_plan.helper(argument, "cnt"))
                mean = quote(self.helpers_plan.helper(argument, "mean"))
                sums.append(f"sum(q.{quote(h)}) + sum(q.{cnt} * (q.{mean} - l.{mean}) * "
                            f"(q.{mean} - l.{mean})) AS {quote(h)}")
                combined[h] = f"s.{quote(h)}"
            body += (f" LEFT JOIN (SELECT q.{key}, {', '.join(sums)} FROM {parts} AS q JOIN "
                     f"({level1}) AS l ON l.{key} = q.{key} GROUP BY q.{key}) AS s "
                     f"ON s.{key} = l.{key}")
        outputs = self.helpers_plan.outputs_of(combined, types)
        wanted = ", ".join(f"{outputs[o.name]} AS {quote(o.name)}" for o in self.outputs
                           if o.frame == (window, hop))
        return (f"SELECT l.{key}, {wanted}, l.__ralf_first + INTERVAL "
                f"'{window} microseconds' AS __ralf_exit FROM {body}")

    def _future(self, at: dt.datetime, probes: str, tiles: str, log: str, log_filter: str
                ) -> str:
        """Per key: its earliest record dated after ``at`` (it enters the window then)."""
        key, event = quote(self.key), f"r.{quote(self.event)}"
        high = self.tile_of(at)
        later = (f"SELECT t.{key}, t.{FIRST} AS __ralf_at FROM {tiles} t WHERE t.{key} IN "
                 f"(SELECT key FROM {probes}) AND t.{TILE} > {high}")
        edge = (f"SELECT r.{key}, {event} AS __ralf_at FROM {log} r WHERE {log_filter} AND r.{key} "
                f"IN (SELECT key FROM {probes}) AND {event} > {timestamp(at)} AND {event} < "
                f"{timestamp(self.tile_start(high + 1))}")
        return (f"SELECT {key}, min(__ralf_at) AS __ralf_next FROM ({later} UNION ALL {edge}) AS n "
                f"GROUP BY {key}")

    def _one(self, helper: str) -> str:
        """A helper over one record (its argument's value), as a tile of one."""
        argument, kind = self.helpers_plan.helper_kind(helper)
        value = f"r.{argument}" if argument != "*" else "1"
        if kind == "cnt":
            return "1" if argument == "*" else f"CASE WHEN {value} IS NULL THEN 0 ELSE 1 END"
        if kind == "m2":
            return f"CASE WHEN {value} IS NULL THEN NULL ELSE CAST(0 AS DOUBLE) END"
        if kind == "mean":
            return f"CAST({value} AS DOUBLE)"
        return value

    def _combined(self, helper: str) -> str:
        """A helper (but m2) over several tiles and records."""
        argument, kind = self.helpers_plan.helper_kind(helper)
        name = quote(helper)
        if kind in ("cnt", "sum"):
            return f"sum({name})"
        if kind in ("min", "max"):
            return f"{kind}({name})"
        cnt = quote(self.helpers_plan.helper(argument, "cnt"))  # mean: weighted by counts
        return f"sum({cnt} * {name}) / nullif(sum({cnt}), 0)"

    # ---- from the raw log (historical queries) ------------------------------------------------
    def at_rows(self, entities: str, timestamp_column: str, log: str,
                types: dict[str, str], bucket: Callable[[int, str], str]) -> str:
        """Per entity row (``__ralf_row``): the outputs as of its timestamp, straight from
        the source's log (exact SQL aggregates over each window). ``bucket``: the
        dialect's start of the ``hop``-microsecond bucket (since 1970) of a timestamp."""
        key, event = quote(self.key), f"r.{quote(self.event)}"
        selects, joins = ["e.__ralf_row"], []
        for i, (window, hop) in enumerate(self.frames):
            alias = f"a{i}"
            ts = f"e.{quote(timestamp_column)}"
            if hop:  # the window ends at the row's last hop boundary
                ts = bucket(hop, ts)
            calls = []
            for o in self.outputs:
                if o.frame != (window, hop):
                    continue
                argument = "r._ralf_seq" if o.argument == "*" else f"r.{o.argument}"
                calls.append(f"CAST({o.function}({argument}) AS {types[o.name]}) AS "
                             f"{quote(o.name)}")
            joins.append(
                f"JOIN (SELECT e.__ralf_row, {', '.join(calls)} FROM {entities} e LEFT JOIN "
                f"{log} r ON r.{key} = e.{key} AND {event} > {ts} - INTERVAL "
                f"'{window} microseconds' AND {event} <= {ts} GROUP BY e.__ralf_row) AS {alias} "
                f"ON {alias}.__ralf_row = e.__ralf_row")
            selects += [f"{alias}.{quote(o.name)}" for o in self.outputs
                        if o.frame == (window, hop)]
        return (f"SELECT {', '.join(selects)} FROM {entities} e {' '.join(joins)} "
                "ORDER BY e.__ralf_row")
