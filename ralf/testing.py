"""Deterministic helpers for testing pipelines (yours and ours).

``ListSource`` replays a list in fixed-size batches; ``recompute`` is the oracle: it runs
an operator from scratch over a table's append log, to compare incremental results with.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from ralf.operators import SourceOperator
from ralf.schema import Record, Schema, quote


class ListSource(SourceOperator):
    """Emits the given rows (dicts or Records) ``batch_size`` at a time, then ends."""

    def __init__(self, schema: Schema, rows: Iterable[Any], batch_size: int = 100) -> None:
        self.schema = schema
        self.rows = list(rows)
        self.batch_size = batch_size
        self.position = 0

    def next(self) -> list[Any] | None:
        if self.position >= len(self.rows):
            return None
        batch = self.rows[self.position:self.position + self.batch_size]
        self.position += len(batch)
        return batch

    def checkpoint(self) -> int:
        return self.position

    def restore(self, state: int) -> None:
        self.position = state


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
