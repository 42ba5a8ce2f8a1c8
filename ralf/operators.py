"""The two kinds of user code ralf runs: sources that produce records, operators that map them.

Neither base class needs ``super().__init__``: the framework binds ``self.schema`` itself,
as the tutorial's sketches never call it.
"""

from __future__ import annotations

from typing import Any

from ralf.schema import Record, Schema


class SourceOperator:
    """Produces raw records for a source table.

    ``next()`` returns a batch (a list of Records or dicts, a Record, a pandas DataFrame or
    a pyarrow Table), ``[]`` when nothing is available yet, and ``None`` (or raises
    ``StopIteration``) when the source is exhausted.

    For exactly-once ingestion across restarts a source may define ``checkpoint()``
    (returning picklable state) and ``restore(state)``; without them ralf re-creates the
    source on reopen and skips the records it had already ingested, which needs a
    deterministic source.
    """

    schema: Schema

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accepts the ``args=`` of ``create_source`` (the schema is bound by the framework)."""

    def next(self) -> Any:
        """The next batch, ``[]`` when nothing is available yet, or None when exhausted (see
        above); every source must define it."""
        raise NotImplementedError(f"{type(self).__name__} must define next()")


class Operator:
    """Turns one parent record into feature rows: ``on_record(record) -> Record | list | None``.

    In a lookup join (``table.join``) it is ``on_record(record, other_row)``. Attributes
    set on ``self`` are operator state; they are checkpointed with the table's progress
    (via ``__getstate__``/``__setstate__`` when defined, else ``__dict__``).
    """

    schema: Schema

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accepts the ``args=`` of ``map`` (the schema is bound by the framework)."""

    def on_record(self, record: Record, *other: Record | None) -> Any:
        """The feature row(s) for one parent record: a Record or dict, a list of them, or
        None; in a lookup join ``other`` is the joined row (None when there is none). Must be
        defined."""
        raise NotImplementedError(f"{type(self).__name__} must define on_record()")


def resolve_schema(args: tuple, kwargs: dict, schema: Schema | None, what: str) -> Schema:
    """The schema of a source or operator: ``schema=`` if given, else the first one in args."""
    if schema is not None:
        return schema
    for value in (*args, *kwargs.values()):
        if isinstance(value, Schema):
            return value
    raise TypeError(f"{what}: no Schema given (pass schema=... or put a Schema in args)")


def instantiate(cls_or_instance: Any, args: tuple, kwargs: dict, schema: Schema | None,
                what: str) -> tuple[Any, Schema]:
    """Build the user object (a class with args, or an instance as is) and bind its schema."""
    if isinstance(cls_or_instance, type):
        found = resolve_schema(args, kwargs, schema, what)
        instance = cls_or_instance(*args, **kwargs)
    else:
        instance = cls_or_instance
        found = schema or getattr(instance, "schema", None)
        if not isinstance(found, Schema):
            raise TypeError(f"{what}: an instance was given; pass schema=... as well")
    instance.schema = found
    return instance, found
