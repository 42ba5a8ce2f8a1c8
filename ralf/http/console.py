"""The web console (``GET /ui``): a page shipped in the package (``ralf/http/console/``,
no CDN, works offline) and the JSON routes it reads — the pipeline graph, a table's rows,
a key's history and a time series of the metrics (``GET /status/history``) kept by a
sampler thread in a bounded ring buffer — plus the request-latency histograms of
``/metrics``. See docs/console.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily

from ralf.engine.histogram import LATENCY_BOUNDS, Histogram
from ralf.engine.node import FeatureNode, SqlTableNode
from ralf.http import codec, fast
from ralf.http.models import (
    KeyLists,
    MetricsSamples,
    PipelineGraph,
    Row,
    RowsPage,
    errors,
)

if TYPE_CHECKING:
    from ralf.server import Ralf

log = logging.getLogger("ralf")

STATIC = Path(__file__).with_name("console")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
# What a sample keeps of each table's metrics (the page plots these and their rates).
SAMPLED = ("ingested", "processed", "refreshes", "queries", "rejected", "shed", "failures",
           "refresh_seconds", "stale_keys", "pending_appends", "staleness_p50",
           "staleness_p99", "quarantined_keys", "budget")
MAX_ROWS_PAGE = 1000
MAX_VERSIONS = 1000
FILES = frozenset(p.name for p in STATIC.iterdir() if p.suffix in _TYPES)


def is_static(path: str) -> bool:
    """Whether ``path`` is the console's page or one of its static files, which carry no
    data and are served without the bearer token (the page then sends the token it is
    given with every request it makes)."""
    return path == "/ui" or (path.startswith("/ui/static/")
                             and path.removeprefix("/ui/static/") in FILES)


class MetricsHistory:
    """The last ``size`` samples of ``Ralf.metrics()``, one every ``every`` seconds once
    started (:meth:`start`), so a freshly opened page plots the minutes before it. Each
    sample: ``t`` (Unix seconds by the wall clock, which the browser compares with its
    own; not the server's ``Clock``), ``ticks`` and per table the ``SAMPLED`` values."""

    def __init__(self, server: Ralf, every: float = 1.0, size: int = 600) -> None:
        self.server, self.every = server, every
        self.samples: deque[dict[str, Any]] = deque(maxlen=size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the sampler thread runs."""
        return self._thread is not None

    def sample(self) -> None:
        """Take one sample now."""
        metrics = self.server.metrics()
        self.samples.append({
            "t": time.time(), "ticks": metrics["ticks"],
            "tables": {name: {k: m.get(k) for k in SAMPLED}
                       for name, m in metrics["tables"].items()}})

    def start(self) -> None:
        """Sample every ``every`` seconds on a daemon thread until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ralf-console-sampler",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # e.g. the database away for a moment: the next one may do
                log.exception("console: a metrics sample failed")
            if self._stop.wait(self.every):
                return

    def stop(self) -> None:
        """Stop sampling (a no-op when not started)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


class RequestTimer:
    """An ASGI middleware timing requests: each one's seconds by route (the route's
    template, so the label stays bounded) and each point or bulk query's by table (tables
    of the pipeline only); :meth:`collect` gives them to Prometheus as
    ``ralf_http_request_duration_seconds{route}`` and ``ralf_query_duration_seconds{table}``."""

    def __init__(self, app: Any, server: Ralf, registry: CollectorRegistry) -> None:
        self.app, self.server = app, server
        self.routes: dict[str, Histogram] = {}
        self.tables: dict[str, Histogram] = {}
        registry.register(self)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            took = time.perf_counter() - start
            # the template: set by the router on the shared scope, or by the fast path
            route = scope.get("route")
            template = route.path if route is not None else scope.get(fast.ROUTE)
            if template is not None:
                _observe(self.routes, template, took)
                table = scope.get("path_params", {}).get("table")
                if template.startswith("/table/") and self._known(table):
                    _observe(self.tables, table, took)

    def _known(self, table: str | None) -> bool:
        pipeline = self.server.pipeline
        return table is not None and (table in pipeline.nodes or table in pipeline.aliases)

    def collect(self) -> Any:
        """The two histogram families, read at scrape time."""
        for name, label, help_text, histograms in (
                ("ralf_http_request_duration_seconds", "route",
                 "Seconds each HTTP request took, by route", self.routes),
                ("ralf_query_duration_seconds", "table",
                 "Seconds each point or bulk query over HTTP took, by table", self.tables)):
            family = HistogramMetricFamily(name, help_text, labels=[label])
            for value, histogram in list(histograms.items()):
                family.add_metric([value], *prometheus_buckets(histogram.cumulative()))
            yield family


def _observe(histograms: dict[str, Histogram], label: str, seconds: float) -> None:
    histogram = histograms.get(label)
    if histogram is None:
        histogram = histograms.setdefault(label, Histogram(LATENCY_BOUNDS))
    histogram.observe(seconds)


def prometheus_buckets(cumulative: dict[str, Any]) -> tuple[list[tuple[str, float]], float]:
    """A :meth:`Histogram.cumulative` as a Prometheus metric family wants it: the buckets as
    (``le`` text, count) pairs, and the sum."""
    return ([(le if le == "+Inf" else str(float(le)), n)
             for le, n in zip(cumulative["le"], cumulative["buckets"], strict=True)],
            cumulative["sum"])


def graph(server: Ralf) -> dict[str, Any]:
    """The pipeline as nodes (``name``, ``kind``: source, sql, lazy, budgeted or eager, and
    ``layer``: the longest path from a source) and edges (``from``, ``to``, ``role``:
    parent or lookup), plus aliases."""
    pipeline, nodes, edges, layer = server.pipeline, [], [], {}
    for name, node in pipeline.nodes.items():  # parents come before their children
        if isinstance(node, FeatureNode):
            kind = ("sql" if isinstance(node, SqlTableNode) else "lazy" if node.on_lazy_path
                    else "budgeted" if node.budget is not None else "eager")
            links = [(node.parent, "parent")] + (
                [(node.lookup, "lookup")] if node.lookup is not None else [])
            layer[name] = 1 + max(layer.get(n.name, 0) for n, _ in links)
            edges += [{"from": n.name, "to": name, "role": role} for n, role in links]
        else:
            kind, layer[name] = "source", 0
        nodes.append({"name": name, "kind": kind, "layer": layer[name]})
    aliases = {alias: node.name for alias, node in pipeline.aliases.items()}
    return {"nodes": nodes, "edges": edges, "aliases": aliases}


def include(app: FastAPI, server: Ralf, registry: CollectorRegistry) -> None:
    """Add the console's routes and its request timer to ``app``; ``app.state.history``
    is the sampler the HTTP runner starts and stops."""
    app.add_middleware(RequestTimer, server=server, registry=registry)
    history = app.state.history = MetricsHistory(server)

    @app.get("/ui", summary="The web console", include_in_schema=False)
    async def page() -> Response:
        return _static("index.html")

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in FILES:
            return Response(codec.dumps({"error": "NotFound", "message": name}), 404,
                            media_type="application/json")
        return _static(name)

    @app.get("/status/history", summary="Metrics samples of the last minutes, oldest first",
             response_model=MetricsSamples, responses=errors(401, 422))
    def status_history(since: float = 0.0) -> Response:
        if not history.running:  # served without the runner (tests): sample on demand
            history.sample()
        return _json({"every": history.every,
                      "samples": [s for s in list(history.samples) if s["t"] > since]})

    @app.get("/ui/api/graph", summary="The pipeline graph: tables, kinds, parents, lookups",
             response_model=PipelineGraph, responses=errors(401))
    def pipeline_graph() -> Response:
        return _json(graph(server))

    @app.get("/ui/api/rows/{table}", summary="A page of a table's rows, by key",
             response_model=RowsPage, responses=errors(400, 401, 404, 422))
    def rows(table: str, offset: int = 0, limit: int = 100) -> Response:
        if not (0 <= limit <= MAX_ROWS_PAGE and offset >= 0):
            return _json({"error": "QueryError", "message": f"limit must be 0..{MAX_ROWS_PAGE}"
                                                           " and offset at least 0"}, 400)
        data = server.bulk_arrow(table)
        return Response(b'{"total": %d, "offset": %d, "rows": %s}' % (
            data.num_rows, offset, codec.rows_json(data.slice(offset, limit))),
            media_type="application/json")

    @app.get("/ui/api/keys/{table}", summary="A table's quarantined keys and stalest keys",
             response_model=KeyLists, responses=errors(400, 401, 404, 422))
    def keys(table: str, limit: int = 20) -> Response:
        if not 0 <= limit <= MAX_ROWS_PAGE:
            return _json({"error": "QueryError", "message": f"limit must be 0..{MAX_ROWS_PAGE}"},
                         400)
        stale = server.staleness(table).sort_values("staleness", ascending=False)
        return Response(b'{"quarantined": %s, "stalest": %s}' % (
            codec.dumps(server.quarantined(table)[:limit]),
            codec.rows_json(pa.Table.from_pandas(stale.head(limit), preserve_index=False))),
            media_type="application/json")

    @app.get("/ui/api/history/{table}/{key:path}", summary="A key's versions, newest first",
             response_model=list[Row], responses=errors(400, 401, 404, 422))
    async def key_history(table: str, key: str, limit: int = 100) -> Response:
        if not 0 <= limit <= MAX_VERSIONS:
            return _json({"error": "QueryError", "message": f"limit must be 0..{MAX_VERSIONS}"},
                         400)
        frame = await run_in_threadpool(server.history, table, key, limit)
        return Response(codec.rows_json(pa.Table.from_pandas(frame, preserve_index=False)),
                        media_type="application/json")


def _static(name: str) -> Response:
    return Response((STATIC / name).read_bytes(), media_type=_TYPES[Path(name).suffix],
                    headers={"Cache-Control": "no-cache"})


def _json(data: Any, status: int = 200) -> Response:
    return Response(codec.dumps(data), status, media_type="application/json")
