"""The PostgreSQL backend: :class:`PostgresStorage` (storage.py), its types (types.py) and
the translation of ralf's DuckDB-dialect SQL (translate.py)."""

from ralf.storage.postgres.storage import SHARD_BITS, SQL_ROLE, PostgresStorage
from ralf.storage.postgres.translate import Translator, catalog_columns
from ralf.storage.postgres.types import pg_type

__all__ = ["SHARD_BITS", "SQL_ROLE", "PostgresStorage", "Translator", "catalog_columns",
           "pg_type"]
