"""Feature vectors: several features of several tables for a batch of entities in one
call, the online counterpart of ``historical_query`` (docs/features.md).

This module holds what does not touch the engine: reading the entity rows and feature
references the ways callers give them (ralf's and Feast's), and the answer,
:class:`FeatureVectors`, with its encodings (Arrow, JSON rows, Feast's response).
``Ralf.feature_vectors`` does the lookups.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from ralf.errors import SchemaError
from ralf.schema import python_values

# Feast's FieldStatus names (feast/protos/feast/serving/ServingService.proto)
PRESENT, NULL_VALUE, NOT_FOUND, OUTSIDE_MAX_AGE = (
    "PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE")
_EPOCH = "1970-01-01T00:00:00Z"  # Feast's timestamp of a value it has none for


def feature_refs(features: Any) -> list[tuple[str, str]]:
    """``(table, column)`` of each reference, ``"table.column"`` or Feast's
    ``"table:column"``, duplicates dropped; a reference of neither form is refused."""
    if isinstance(features, str) or not isinstance(features, (list, tuple)) or not features:
        raise SchemaError(f"get_features: features must be a non-empty list of "
                          f"'table.column' names, got {features!r}")
    refs = []
    for ref in dict.fromkeys(features):
        text = str(ref)
        table, _, column = text.rpartition(":" if ":" in text else ".")
        if not table or not column:
            raise SchemaError(f"get_features: {text!r} is not 'table.column' (or Feast's "
                              "'table:column')", column=text)
        refs.append((table, column))
    return refs


def entity_columns(entities: Any) -> dict[str, list[Any]]:
    """The entity rows as columns of Python values: from a pandas DataFrame, an Arrow
    table, a dict of equally long lists (Feast's feature server: ``{"user": [1, 2]}``) or
    a list of dicts with the same keys (Feast's ``entity_rows``)."""
    if isinstance(entities, pd.DataFrame):
        columns = {str(c): entities[c].tolist() for c in entities.columns}
    elif isinstance(entities, pa.Table):
        columns = {n: python_values(c) for n, c in zip(entities.column_names, entities.columns,
                                                     strict=True)}
    elif isinstance(entities, dict):
        columns = {str(k): _as_list(k, v) for k, v in entities.items()}
    elif isinstance(entities, (list, tuple)) and all(isinstance(r, dict) for r in entities):
        names = list(entities[0]) if entities else []
        for i, row in enumerate(entities):
            if list(row) != names and set(row) != set(names):
                raise SchemaError(f"get_features: entity row {i} has the columns "
                                  f"{sorted(row)}, the first row {sorted(names)}")
        columns = {str(n): [row[n] for row in entities] for n in names}
    else:
        raise SchemaError("get_features: entities must be a DataFrame, a dict of lists "
                          f"or a list of dicts, got {type(entities).__name__}")
    if not columns:
        raise SchemaError("get_features: the entity rows have no columns")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise SchemaError(f"get_features: the entity columns differ in length "
                          f"({ {k: len(v) for k, v in columns.items()} })")
    return columns


def _as_list(name: Any, values: Any) -> list[Any]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise SchemaError(f"get_features: entity column {name!r} must be a list of values, "
                          f"got {values!r}", column=str(name))
    return list(values)


def key_column(entities: dict[str, list[Any]], table: str, primary_key: str) -> str:
    """The entity column a table's rows are looked up by: the one named like its primary
    key, or else the only entity column there is."""
    if primary_key in entities:
        return primary_key
    if len(entities) == 1:
        return next(iter(entities))
    raise SchemaError(f"get_features: the entity rows need the key column {primary_key!r} "
                      f"of {table!r} (they have {list(entities)})", column=primary_key)


@dataclass
class TableAnswer:
    """One table's part of the answer, a value per entity row: the asked columns' values,
    the row status (PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE), when ralf wrote the row
    (processing time), its event time (tables with event time) and its staleness in
    seconds (processing time since the oldest append it has not applied; 0: fresh)."""

    table: str
    columns: list[str]
    types: list[pa.DataType]
    values: list[list[Any]]
    status: list[str]
    updated_at: list[dt.datetime | None]
    event_time: list[dt.datetime | None] | None
    staleness: list[float] | None = None


@dataclass
class FeatureVectors:
    """The answer of ``get_features``: the entity columns as given, then per feature its
    values (and, when asked, per table its rows' status and staleness)."""

    entities: dict[str, list[Any]]
    entity_types: dict[str, pa.DataType | None]
    refs: list[tuple[str, str]]
    tables: dict[str, TableAnswer] = field(default_factory=dict)

    def columns(self, with_staleness: bool) -> list[tuple[str, list[Any], pa.DataType | None]]:
        """``(name, values, type)`` of each column of the answer, in order: the entity
        columns, ``"table.column"`` per feature, then with staleness per table
        ``"table._ralf_status"``, ``"table._ralf_updated_at"`` and
        ``"table._ralf_staleness"`` (seconds)."""
        out = [(n, v, self.entity_types.get(n)) for n, v in self.entities.items()]
        for table, column in self.refs:
            answer = self.tables[table]
            i = answer.columns.index(column)
            out.append((f"{table}.{column}", answer.values[i], answer.types[i]))
        if with_staleness:
            for table, answer in self.tables.items():
                out += [(f"{table}._ralf_status", answer.status, pa.string()),
                        (f"{table}._ralf_updated_at", answer.updated_at, pa.timestamp("us")),
                        (f"{table}._ralf_staleness", answer.staleness, pa.float64())]
        return out

    def to_arrow(self, with_staleness: bool = False) -> pa.Table:
        """The answer as an Arrow table, one row per entity row (types of the tables'
        schemas)."""
        arrays, names = [], []
        for name, values, typ in self.columns(with_staleness):
            try:
                arrays.append(pa.array(values, typ))
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed entity values: as text
                arrays.append(pa.array([None if v is None else str(v) for v in values]))
            names.append(name)
        return pa.Table.from_arrays(arrays, names=names)

    def to_feast(self, full_feature_names: bool) -> dict[str, Any]:
        """Feast's ``/get-online-features`` answer: ``metadata.feature_names`` (the entity
        columns, then each feature as ``column`` or, with ``full_feature_names``,
        ``table__column``) and per name ``values``, ``statuses`` and ``event_timestamps``
        (a feature's: its row's event time, or when ralf wrote it for tables without
        one)."""
        names, results = [], []
        rows = len(next(iter(self.entities.values())))
        for name, values in self.entities.items():
            names.append(name)
            results.append({"values": values, "statuses": [PRESENT] * rows,
                            "event_timestamps": [_EPOCH] * rows})
        for table, column in self.refs:
            name = f"{table}__{column}" if full_feature_names else column
            if name in names:
                raise SchemaError(f"get-online-features: two features are named {name!r}; "
                                  "ask with full_feature_names", column=name)
            names.append(name)
            answer = self.tables[table]
            values = answer.values[answer.columns.index(column)]
            times = answer.event_time or answer.updated_at
            results.append({
                "values": values,
                "statuses": [NULL_VALUE if s == PRESENT and v is None else s
                             for s, v in zip(answer.status, values, strict=True)],
                "event_timestamps": [_EPOCH if t is None else _rfc3339(t) for t in times]})
        return {"metadata": {"feature_names": names}, "results": results}


def _rfc3339(stamp: dt.datetime) -> str:
    """A stored (UTC, naive) timestamp as Feast writes one: ``...Z``, with milli- or
    microseconds only when it has them."""
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    micros = stamp.microsecond
    if micros == 0:
        return text + "Z"
    if micros % 1000 == 0:
        return f"{text}.{micros // 1000:03d}Z"
    return f"{text}.{micros:06d}Z"

