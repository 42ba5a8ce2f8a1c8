"""The HTTP API of the public contract (docs/contract.md §4) on FastAPI; every route calls
the same functions of ``Ralf`` that the in-process client calls.

Point queries are ``async`` and answered from the serving cache on the event loop (no
thread hop, no SQL); anything that may block on DuckDB or on a lazy refresh runs in the
thread pool, where each thread has its own DuckDB cursor.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from pydantic import BaseModel, Field

from ralf.errors import KeyNotFound, QueryError, RalfError, SchemaError, TableNotFound
from ralf.http import codec, console, docs, features
from ralf.http.fast import FastPath
from ralf.http.models import (
    ROWS_OR_ARROW,
    Health,
    Readiness,
    Removed,
    Row,
    SnapshotPath,
    Status,
    TableEntry,
    errors,
)

if TYPE_CHECKING:
    from ralf.server import Ralf

JSON = "application/json"
MAX_BODY = 64 * 1024
MAX_ENTITY_BODY = 256 * 1024 * 1024
MAX_RESULT_ROWS = 1_000_000
_STATUS = {KeyNotFound: 404, TableNotFound: 404, SchemaError: 400, QueryError: 400}
# Prometheus conventions: counters end in _total (added by the client library), durations
# are in seconds and say so, distributions are histograms; every per-table family has the
# label ``table``.
_COUNTERS = ("ingested", "rejected", "processed", "shed", "refreshes", "failures", "queries",
             "errors_reported")
_GAUGES = {"stale_keys": "stale_keys", "pending_appends": "pending_appends",
           "quarantined_keys": "quarantined_keys", "staleness_p50": "staleness_p50_seconds",
           "staleness_p99": "staleness_p99_seconds", "staleness_max": "staleness_max_seconds"}


class Feedback(BaseModel):
    """The body of ``POST /feedback``: the error of a prediction made with a key's features."""

    table: str
    key: str
    error: float


class SqlRequest(BaseModel):
    """The body of ``POST /sql``: one read-only SQL query."""

    query: str = Field(examples=["SELECT * FROM average LIMIT 5"])


def error(status: int, kind: str, message: str) -> Response:
    """A JSON error answer, ``{"error": kind, "message": message}``, with HTTP ``status``."""
    return Response(codec.dumps({"error": kind, "message": message}), status, media_type=JSON)


def _error_for(exc: RalfError) -> Response:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 400)
    return error(status, type(exc).__name__, str(exc))


def _wants_arrow(request: Request) -> bool:
    return codec.ARROW in request.headers.get("accept", "")


class _MetricsCollector:
    """Prometheus view of ``Ralf.metrics()``, read at scrape time."""

    def __init__(self, server: Ralf) -> None:
        self.server = server

    def collect(self) -> Any:
        metrics = self.server.metrics()
        ticks = CounterMetricFamily("ralf_ticks", "Scheduler ticks run")
        ticks.add_metric([], metrics["ticks"])
        yield ticks
        families: dict[str, Any] = {}
        for name in _COUNTERS:
            families[name] = CounterMetricFamily(f"ralf_{name}", f"{name} per table",
                                                 labels=["table"])
        for name, exported in _GAUGES.items():
            families[name] = GaugeMetricFamily(f"ralf_{exported}", f"{name} per table",
                                               labels=["table"])
        families["refresh_latency"] = HistogramMetricFamily(
            "ralf_refresh_duration_seconds", "Seconds each refresh of a table took",
            labels=["table"])
        families["staleness"] = GaugeHistogramMetricFamily(
            "ralf_staleness_seconds", "Staleness of a table's stale keys now: seconds since "
            "each one's oldest pending append", labels=["table"])
        for table, values in metrics["tables"].items():
            for name, family in families.items():
                value = values.get(name)
                if isinstance(value, dict):  # a histogram
                    family.add_metric([table], *console.prometheus_buckets(value))
                elif value is not None:
                    family.add_metric([table], value)
        yield from families.values()


def _body_limit(path: str) -> int:
    return MAX_ENTITY_BODY if path == "/historical" else MAX_BODY


class Guard:
    """In front of every route (a plain ASGI middleware, so a route still hears its
    client go away): the bearer token (but on :func:`ralf.http.docs.public` paths); the
    body limit, by Content-Length when given and by
    counting the bytes as they arrive (a chunked body has no length to trust), holding no
    more than the limit; and ralf errors a route let through, as 4xx answers."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        path = scope["path"]
        if not (docs.public(path) or console.is_static(path)) and not docs.authorized(
                headers.get("authorization", ""), self.token):
            await error(401, "Unauthorized", "missing or wrong bearer token")(
                scope, receive, send)
            return
        limit = _body_limit(scope["path"])
        length = headers.get("content-length")
        too_large = error(413, "PayloadTooLarge", f"request bodies are limited to {limit} bytes")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            size += len(message.get("body", b""))
            if size > limit:
                await too_large(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body, replayed, started = b"".join(chunks), False, False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: a disconnect, when it comes

        async def sending(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replay, sending)
        except RalfError as exc:
            if started:
                raise
            await _error_for(exc)(scope, receive, send)


def create_app(server: Ralf, token: str | None = None) -> FastAPI:
    """The ASGI app serving ``server``; with a token, every route but the probes and the
    API description wants ``Bearer <token>`` (:mod:`ralf.http.docs`)."""
    token = token or os.environ.get("RALF_TOKEN") or None
    app = docs.new_app(token_required=token is not None, title="ralf", version="0.1.0",
                       description="Feature tables kept incrementally up to date in DuckDB.")
    app.state.queries = set()  # cancel events of the SQL queries running now
    app.add_middleware(Guard, token=token)
    # outermost: point queries and feature vectors served from the cache skip the stack
    app.add_middleware(FastPath, server=server, token=token, limit=MAX_BODY,
                       on_error=_error_for)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_MetricsCollector(server))
    console.include(app, server, registry)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input back and fails (500) on non-UTF-8 bytes.
        detail = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}"
                           for e in exc.errors())
        return error(422, "ValidationError", detail or "invalid request")

    features.include(app, server)  # POST /features, /get-online-features

    @app.get("/health", summary="Liveness (no token needed)", response_model=Health)
    async def health() -> Response:
        return Response(codec.dumps({"status": "ok"}), media_type=JSON)

    @app.get("/ready", summary="Readiness: 503 with the problems when degraded (no token "
             "needed)", response_model=Readiness, responses={
                 503: {"model": Readiness, "description": "Degraded: the problems, worst "
                       "first"}, **errors(422)})
    def ready(request: Request, max_staleness: float | None = None) -> Response:
        # the reasons are error messages, which may quote data: only for the token holder
        problems = server.problems(max_staleness=max_staleness)
        if not docs.authorized(request.headers.get("authorization", ""), token):
            problems = [{**p, "reason": None} for p in problems]
        status = "degraded" if problems else "ready"
        return Response(codec.dumps({"status": status, "problems": problems}),
                        503 if problems else 200, media_type=JSON)

    @app.get("/tables", summary="Names, kinds, row counts and schemas of the tables",
             response_model=list[TableEntry], responses=errors(401))
    def tables() -> Response:
        listed = server.tables()
        for entry in listed:
            schema = server.table(entry["name"]).schema
            entry["schema"] = {"primary_key": schema.primary_key,
                               "columns": {n: schema.sql_type(n) for n in schema.names}}
        return Response(codec.dumps(listed), media_type=JSON)

    @app.get("/table/{table}/{key:path}", summary="One row by key (as_of: from history)",
             response_model=Row, responses=errors(400, 401, 404, 422))
    async def point(table: str, key: str, metadata: bool = False,
                    as_of: dt.datetime | None = None,
                    by: Literal["event", "processing"] = "event") -> Response:
        try:
            if as_of is not None or server.table(table).refreshes_on_query:
                record = await run_in_threadpool(server.point_query, table, key,
                                                 with_metadata=metadata, as_of=as_of, by=by)
            else:
                record = server.point_query(table, key, with_metadata=metadata)
        except RalfError as exc:
            return _error_for(exc)
        return Response(codec.dumps(record.__dict__), media_type=JSON)

    @app.get("/table/{table}", summary="All rows, one per key (JSON, or Arrow IPC on request)",
             response_model=list[Row], responses={**ROWS_OR_ARROW, **errors(400, 401, 404,
                                                                           422)})
    def bulk(table: str, request: Request, metadata: bool = False) -> Response:
        try:
            data = server.bulk_arrow(table, with_metadata=metadata)
        except RalfError as exc:
            return _error_for(exc)
        return _rows(data, request)

    @app.post("/sql", summary="One read-only SQL query", response_model=list[Row],
              responses={**ROWS_OR_ARROW, **errors(400, 401, 413, 422)})
    async def sql(request: Request, body: SqlRequest) -> Response:
        # cancelled when the client goes away or the server stops (see HttpServer.stop)
        cancel = threading.Event()
        app.state.queries.add(cancel)
        try:
            running = asyncio.ensure_future(run_in_threadpool(
                server.sql_arrow, body.query, max_rows=MAX_RESULT_ROWS, cancel=cancel))
            while not running.done():
                await asyncio.wait({running}, timeout=0.1)
                if not running.done() and await request.is_disconnected():
                    cancel.set()
            data = running.result()
        except RalfError as exc:
            return _error_for(exc)
        finally:
            app.state.queries.discard(cancel)
        return _rows(data, request)

    @app.post("/feedback", status_code=204,
              summary="Report a prediction error observed with a key's features",
              responses=errors(400, 401, 404, 413, 422))
    async def feedback(body: Feedback) -> Response:
        try:
            server.record_error(body.table, body.key, body.error)
        except RalfError as exc:
            return _error_for(exc)
        return Response(status_code=204)

    @app.post("/forget/{table}/{key:path}",
              summary="Forget a key of a changelog source (needs a server with a token)",
              response_model=Removed, responses=errors(400, 401, 403, 404, 422))
    def forget(table: str, key: str) -> Response:
        if token is None:  # erasing data is never open to whoever reaches the port
            return error(403, "Forbidden", "forget needs a server started with a bearer "
                                            "token (--token or RALF_TOKEN)")
        try:
            removed = server.forget(table, key)
        except RalfError as exc:
            return _error_for(exc)
        return Response(codec.dumps({"removed": removed}), media_type=JSON)

    @app.post("/snapshot", summary="Write a consistent read-only copy of the database file",
              response_model=SnapshotPath, responses=errors(400, 401))
    def snapshot() -> Response:
        return Response(codec.dumps({"path": server.snapshot()}), media_type=JSON)

    @app.delete("/snapshot", status_code=204, summary="Delete a snapshot made by this server",
                responses=errors(401, 404, 422))
    def drop_snapshot(path: str) -> Response:
        if not server.drop_snapshot(path):
            return error(404, "NotFound", f"no snapshot of this server at {path!r}")
        return Response(status_code=204)

    @app.post("/historical", summary="Point-in-time features for entity rows (Arrow IPC in)",
              response_model=list[Row],
              responses={**ROWS_OR_ARROW, **errors(400, 401, 404, 413, 422)},
              openapi_extra={"requestBody": {"required": True, "content": {
                  codec.ARROW: {"schema": {"type": "string", "format": "binary"}}}}})
    async def historical(request: Request, features: str,
                         timestamp_column: str = "event_timestamp",
                         by: Literal["event", "processing"] = "event") -> Response:
        body = await request.body()
        try:
            entities = codec.arrow_table(body)
        except (pa.ArrowInvalid, OSError):
            return error(400, "SchemaError", "expected the entity rows as an Arrow IPC stream")
        try:
            data = await run_in_threadpool(server.historical_arrow, entities,
                                           features.split(","), timestamp_column, by=by)
        except RalfError as exc:
            return _error_for(exc)
        return _rows(data, request)

    @app.get("/rejected", summary="Records refused at the door of a table, newest first",
             response_model=list[Row], responses=errors(400, 401, 404, 422))
    def rejected(table: str | None = None, limit: int = 100) -> Response:
        if limit < 0 or limit > MAX_RESULT_ROWS:
            return error(400, "QueryError", f"limit must be 0..{MAX_RESULT_ROWS}")
        try:
            data = server.rejected(table, limit)
        except RalfError as exc:
            return _error_for(exc)
        return Response(codec.rows_json(pa.Table.from_pandas(data, preserve_index=False)),
                        media_type=JSON)

    @app.get("/status", summary="Per-table metrics as JSON", response_model=Status,
             responses=errors(401))
    def status() -> Response:
        metrics = server.metrics()
        metrics["sql_running"] = len(app.state.queries)  # client SQL queries running now
        return Response(codec.dumps(metrics), media_type=JSON)

    @app.get("/metrics", summary="Prometheus metrics (text format 0.0.4)",
             response_class=PlainTextResponse, responses=errors(401))
    def metrics() -> Response:
        return Response(generate_latest(registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _rows(data: Any, request: Request) -> Response:
    if data.num_rows > MAX_RESULT_ROWS:
        return error(400, "QueryError", f"result has {data.num_rows} rows; the limit is "
                                        f"{MAX_RESULT_ROWS} (add a LIMIT or filter)")
    if _wants_arrow(request):
        return Response(codec.arrow_bytes(data), media_type=codec.ARROW)
    return Response(codec.rows_json(data), media_type=JSON)
