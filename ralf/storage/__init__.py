"""Storage backends behind one interface (:mod:`ralf.storage.base`): DuckDB, the embedded
default, and PostgreSQL, for several processes sharing one database."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ralf.storage.base import Storage


def is_postgres_url(path: str | None) -> bool:
    """Whether ``path`` is a PostgreSQL URL (``postgres://`` or ``postgresql://``,
    optionally ``+driver``) rather than a DuckDB file."""
    return bool(path) and re.match(r"^postgres(ql)?(\+\w+)?://", path) is not None


def open_storage(path: str | None, *, memory_limit: str | None = None, shard: int = 0,
                 num_shards: int = 1) -> Storage:
    """The backend a ``Ralf(path)`` asks for: a ``postgresql://`` URL, else a DuckDB file
    (in memory when ``path`` is None)."""
    if is_postgres_url(path):
        if memory_limit is not None:
            raise ValueError("memory_limit is a DuckDB setting; PostgreSQL has its own")
        try:
            from ralf.storage.postgres import PostgresStorage
        except ImportError as exc:
            raise ImportError(f"the PostgreSQL backend needs psycopg: pip install 'ralf[postgres]'"
                              f" ({exc})") from None

        return PostgresStorage(path, shard=shard, num_shards=num_shards)
    from ralf.storage.duckdb import DuckDBStorage

    return DuckDBStorage(path, memory_limit=memory_limit)
