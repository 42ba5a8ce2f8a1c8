"""ralf: a feature store for rapidly changing data, kept incrementally up to date in DuckDB."""

# The one place the version is written: pyproject.toml reads it (hatch's dynamic version).
__version__ = "0.1.0"

from ralf.client import RalfClient
from ralf.errors import (
    KeyNotFound,
    OperatorError,
    OutputSchemaError,
    QueryError,
    RalfError,
    SchemaError,
    TableError,
    TableNotFound,
    ValueRangeError,
)
from ralf.operators import Operator, SourceOperator
from ralf.policies.base import LoadSheddingPolicy, PrioritizationPolicy
from ralf.schema import Delete, Record, Schema
from ralf.server import Ralf
from ralf.table import Table

__all__ = [
    "Delete",
    "KeyNotFound",
    "LoadSheddingPolicy",
    "Operator",
    "OperatorError",
    "OutputSchemaError",
    "PrioritizationPolicy",
    "QueryError",
    "Ralf",
    "RalfClient",
    "RalfError",
    "Record",
    "Schema",
    "SchemaError",
    "SourceOperator",
    "Table",
    "TableError",
    "ValueRangeError",
    "TableNotFound",
]
