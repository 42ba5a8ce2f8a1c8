"""RalfClient: point, bulk and SQL queries against a ralf server.

``RalfClient(server)`` queries a :class:`ralf.Ralf` in this process; the HTTP transport
(``RalfClient()`` / ``RalfClient(url)``) arrives with the serving layer.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ralf.schema import Record
from ralf.server import Ralf


class RalfClient:
    def __init__(self, server: Ralf) -> None:
        if not isinstance(server, Ralf):
            raise TypeError(
                f"RalfClient needs a Ralf instance to query in process, got {server!r}")
        self._server = server

    def point_query(self, table: str, key: Any, *, with_metadata: bool = False) -> Record:
        """The row of ``table`` for ``key``; a lazy table first applies the key's pending
        appends. ``with_metadata`` adds ``_ralf_updated_at``, ``_ralf_pending``,
        ``_ralf_stale`` and ``_ralf_quarantined``."""
        return self._server.point_query(table, key, with_metadata=with_metadata)

    def bulk_query(self, table: str, *, with_metadata: bool = False) -> pd.DataFrame:
        """Every row of ``table``, one per key (a lazy table is refreshed first)."""
        return self._server.bulk_query(table, with_metadata=with_metadata)

    def sql(self, query: str) -> pd.DataFrame:
        """One read-only SQL query; statements that write raise QueryError."""
        return self._server.sql(query)
