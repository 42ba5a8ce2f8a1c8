"""RalfClient: point, bulk and SQL queries, in process or over HTTP, with the same answers.

``RalfClient(server)`` calls a :class:`ralf.Ralf` in this process; ``RalfClient()`` and
``RalfClient("http://host:port")`` talk to ``ralf serve`` / ``Ralf.serve``. Both return
the same types (``Record``, pandas DataFrame) and raise the same errors.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote, urlencode

import pandas as pd
import pyarrow as pa
import urllib3

import ralf.errors as errors
from ralf.features import entity_columns
from ralf.http import codec
from ralf.schema import Record, Schema, as_frame
from ralf.server import Ralf

DEFAULT_URL = "http://127.0.0.1:8000"
_ERRORS = {cls.__name__: cls for cls in (errors.KeyNotFound, errors.TableNotFound,
                                         errors.SchemaError, errors.QueryError)}


class RalfClient:
    """Queries a ``Ralf`` in this process (given one) or a server at a URL (default
    ``http://127.0.0.1:8000``); ``timeout`` is seconds per HTTP request, ``token`` the bearer
    token (default ``$RALF_TOKEN``)."""

    def __init__(self, server: Ralf | str | None = None, *, timeout: float = 10.0,
                 token: str | None = None) -> None:
        if isinstance(server, Ralf):
            self._server: Ralf | None = server
            self._http: _Http | None = None
        elif server is None or isinstance(server, str):
            self._server = None
            self._http = _Http(server or DEFAULT_URL, timeout,
                               token or os.environ.get("RALF_TOKEN"))
        else:
            raise TypeError(f"RalfClient needs a Ralf instance or a URL, got {server!r}")

    def point_query(self, table: str, key: Any, *, with_metadata: bool = False,
                    as_of: Any = None, by: str = "event") -> Record:
        """The row of ``table`` for ``key``; a lazy table first applies the key's pending
        appends. ``with_metadata`` adds ``_ralf_updated_at``, ``_ralf_pending``,
        ``_ralf_stale``, ``_ralf_quarantined`` (and ``_ralf_event_time`` where the table
        has event time). ``as_of`` (a datetime, UTC if naive) gives the row as it was
        then, from the table's history, by event time where the table has it
        (``by="processing"``: as ralf had written it by then)."""
        if self._server is not None:
            return self._server.point_query(table, key, with_metadata=with_metadata,
                                            as_of=as_of, by=by)
        return self._http.point(table, key, with_metadata, as_of, by)

    def historical_query(self, entity_df: pd.DataFrame, features: list[str],
                         timestamp_column: str = "event_timestamp", *, by: str = "event"
                         ) -> pd.DataFrame:
        """Point-in-time-correct ``"table.column"`` features for each row of ``entity_df``
        (key columns and ``timestamp_column``): training data without leakage. ``by``:
        as for :meth:`point_query`."""
        if self._server is not None:
            return self._server.historical_query(entity_df, features, timestamp_column,
                                                 by=by)
        return self._http.historical(entity_df, features, timestamp_column, by)

    def get_features(self, entities: Any, features: list[str], *,
                     with_staleness: bool = False) -> pd.DataFrame:
        """Current ``"table.column"`` (or ``"table:column"``) features for a batch of
        entities (a DataFrame, ``{"user": [1, 2]}`` or ``[{"user": 1}, ...]``), one row
        per entity: the online counterpart of :meth:`historical_query`. Missing keys get
        nulls; ``with_staleness`` adds per table its rows' status, write time and
        staleness in seconds (docs/features.md). Over HTTP: one ``POST /features``."""
        if self._server is not None:
            return self._server.get_features(entities, features, with_staleness=with_staleness)
        return self._http.features(entities, features, with_staleness)

    def bulk_query(self, table: str, *, with_metadata: bool = False) -> pd.DataFrame:
        """Every row of ``table``, one per key (a lazy table is refreshed first)."""
        if self._server is not None:
            return self._server.bulk_query(table, with_metadata=with_metadata)
        return self._http.bulk(table, with_metadata)

    def sql(self, query: str) -> pd.DataFrame:
        """One read-only SQL query; statements that write raise QueryError."""
        if self._server is not None:
            return self._server.sql(query)
        return self._http.sql(query)

    def record_error(self, table: str, key: Any, error: float) -> None:
        """Report the prediction error observed using ``key``'s features in ``table``, so
        accuracy-aware policies can refresh where staleness costs most."""
        if self._server is not None:
            self._server.record_error(table, key, error)
        else:
            body = json.dumps({"table": table, "key": _key_text(key), "error": error})
            self._http.request("POST", "/feedback", body=body.encode())

    def forget(self, table: str, key: Any) -> dict[str, int]:
        """Forget a key of a changelog source (:meth:`ralf.Ralf.forget`); returns rows
        removed per table. Over HTTP the server must run with a token."""
        if self._server is not None:
            return self._server.forget(table, key)
        path = f"/forget/{quote(table, safe='')}/{quote(_key_text(key), safe='')}"
        return json.loads(self._http.request("POST", path).data)["removed"]

    def rejected(self, table: str | None = None, limit: int = 100) -> pd.DataFrame:
        """Records refused at the door of ``table`` (or of any table), newest first."""
        if self._server is not None:
            return self._server.rejected(table, limit)
        params = {"limit": limit, **({"table": table} if table is not None else {})}
        return pd.DataFrame(self._http.get_json("/rejected?" + urlencode(params)))

    def tables(self) -> list[dict[str, Any]]:
        """Name, kind, laziness and row count of each table (over HTTP, with its schema
        too)."""
        if self._server is not None:
            return self._server.tables()
        return self._http.get_json("/tables")

    def problems(self, max_staleness: float | None = None) -> list[dict[str, Any]]:
        """What keeps the server from serving fresh features (empty when all is well), as
        ``Ralf.problems`` gives them."""
        if self._server is not None:
            return self._server.problems(max_staleness)
        query = "" if max_staleness is None else "?" + urlencode({"max_staleness": max_staleness})
        response = self._http.request("GET", "/ready" + query, also_ok=(503,))  # 503: degraded
        return json.loads(response.data)["problems"]

    def metrics(self) -> dict[str, Any]:
        """The tick count and per-table counters and staleness, as ``Ralf.metrics`` gives
        them."""
        if self._server is not None:
            return self._server.metrics()
        return self._http.get_json("/status")

    def snapshot(self) -> str:
        """Path of a consistent copy of the server's database file (same machine); delete
        it with :meth:`drop_snapshot` when done (the server deletes old ones too)."""
        if self._server is not None:
            return self._server.snapshot()
        return json.loads(self._http.request("POST", "/snapshot").data)["path"]

    def drop_snapshot(self, path: str) -> bool:
        """Delete a snapshot the server made; True if there was one."""
        if self._server is not None:
            return self._server.drop_snapshot(path)
        try:
            self._http.request("DELETE", "/snapshot?" + urlencode({"path": path}))
        except errors.RalfError:
            return False
        return True

    def close(self) -> None:
        """Close the HTTP connections (nothing to do in process)."""
        if self._http is not None:
            self._http.pool.clear()

    def __enter__(self) -> RalfClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Http:
    """The HTTP transport: one keep-alive connection pool, JSON and Arrow payloads."""

    def __init__(self, url: str, timeout: float, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.pool = urllib3.PoolManager(
            num_pools=4, maxsize=8, timeout=urllib3.Timeout(total=timeout), retries=False)
        self._schemas: dict[str, Schema] = {}

    def request(self, method: str, path: str, *, accept: str = "application/json",
                body: bytes | None = None, content_type: str = "application/json",
                also_ok: tuple[int, ...] = ()) -> urllib3.BaseHTTPResponse:
        headers = {**self.headers, "Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            response = self.pool.request(method, self.url + path, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise errors.RalfError(f"no ralf server answers at {self.url}: {exc}") from None
        if response.status >= 400 and response.status not in also_ok:
            _raise(response)
        return response

    def get_json(self, path: str) -> Any:
        return json.loads(self.request("GET", path).data)

    def schema(self, table: str) -> Schema:
        if table not in self._schemas:
            for entry in self.get_json("/tables"):
                spec = entry["schema"]
                self._schemas[entry["name"]] = Schema.from_json(json.dumps(spec))
        return self._schemas[table]

    def point(self, table: str, key: Any, with_metadata: bool, as_of: Any, by: str
              ) -> Record:
        path = f"/table/{quote(table, safe='')}/{quote(_key_text(key), safe='')}"
        params = {}
        if with_metadata:
            params["metadata"] = "true"
        if as_of is not None:
            params["as_of"] = pd.Timestamp(as_of).isoformat()
            if by != "event":
                params["by"] = by
        if params:
            path += "?" + urlencode(params)
        fields = json.loads(self.request("GET", path).data)
        return codec.decode_record(fields, self.schema(table))

    def historical(self, entity_df: pd.DataFrame, features: list[str], timestamp_column: str,
                   by: str) -> pd.DataFrame:
        query = urlencode({"features": ",".join(features), "timestamp_column": timestamp_column,
                           "by": by})
        body = codec.arrow_bytes(pa.Table.from_pandas(entity_df, preserve_index=False))
        data = self.request("POST", f"/historical?{query}", accept=codec.ARROW, body=body,
                            content_type=codec.ARROW).data
        return as_frame(codec.arrow_table(data))

    def features(self, entities: Any, features: list[str], with_staleness: bool
                 ) -> pd.DataFrame:
        body = codec.dumps({"entities": entity_columns(entities), "features": list(features),
                            "with_staleness": with_staleness})
        data = self.request("POST", "/features", accept=codec.ARROW, body=body).data
        return as_frame(codec.arrow_table(data))

    def bulk(self, table: str, with_metadata: bool) -> pd.DataFrame:
        path = f"/table/{quote(table, safe='')}" + ("?metadata=true" if with_metadata else "")
        data = self.request("GET", path, accept=codec.ARROW).data
        return as_frame(codec.arrow_table(data))

    def sql(self, query: str) -> pd.DataFrame:
        body = json.dumps({"query": query}).encode()
        data = self.request("POST", "/sql", accept=codec.ARROW, body=body).data
        return as_frame(codec.arrow_table(data))


def _key_text(key: Any) -> str:
    if isinstance(key, bytes):
        return key.decode("utf-8", errors="surrogateescape")
    if hasattr(key, "isoformat"):
        return key.isoformat()
    return str(key)


def _raise(response: urllib3.BaseHTTPResponse) -> None:
    try:
        payload = json.loads(response.data)
        kind, message = payload.get("error"), payload.get("message") or str(payload)
    except (ValueError, AttributeError):
        kind, message = None, response.data.decode(errors="replace")[:500]
    if response.status == 422 and kind is None:
        raise errors.QueryError(f"the server refused the request: {message}")
    cls = _ERRORS.get(kind)
    if cls is None:  # anything else: the server's words, as a plain RalfError
        raise errors.RalfError(message)
    raise cls(message)
