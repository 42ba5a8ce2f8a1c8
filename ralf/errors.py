"""Error classes of ralf's public API."""

from __future__ import annotations


class RalfError(Exception):
    """Base class of every error ralf raises on purpose."""


class SchemaError(RalfError):
    """A record or a table definition does not match a schema."""

    def __init__(self, message: str, *, table: str | None = None, column: str | None = None):
        super().__init__(message)
        self.table = table
        self.column = column


class TableNotFound(RalfError):
    """No table (or alias) of that name exists."""


class KeyNotFound(RalfError, KeyError):
    """The table has no row for that key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OperatorError(RalfError):
    """A user operator or source raised; names the table and the key it was working on."""

    def __init__(self, message: str, *, table: str, key: object = None):
        super().__init__(message)
        self.table = table
        self.key = key


class OutputSchemaError(OperatorError, SchemaError):
    """An operator's output does not fit its feature table: a SchemaError (the contract:
    records are validated on entry to every table) and an OperatorError (it names the
    key whose refresh produced it)."""

    def __init__(self, message: str, *, table: str, key: object = None,
                 column: str | None = None):
        RalfError.__init__(self, message)
        self.table, self.key, self.column = table, key, column


class TableError(RalfError):
    """Work on a table or source failed outside the per-key code of its operator (a
    database error, a policy that raised, an engine fault). The table was put back as a
    reopen would put it (nothing half-applied stays in memory) and the work is retried."""

    def __init__(self, message: str, *, table: str):
        super().__init__(message)
        self.table = table


class ValueRangeError(RalfError):
    """A value a SQL table computed from its data does not fit its column (a ``sum()``
    past the BIGINT range): the keys it belongs to are isolated (retried, then
    quarantined) and the others go on."""


class QueryError(RalfError):
    """A client query was refused (e.g. SQL that would write)."""
