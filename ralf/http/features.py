"""The feature-vector routes: ``POST /features`` (ralf's: JSON or Arrow IPC answer) and
``POST /get-online-features`` (Feast's feature-server request and response), see
docs/features.md.

A request is parsed (:func:`parse`), answered (:func:`answer`) and encoded here; the fast
path (ralf/http/fast.py) calls these on the event loop when no asked table may block, and
the routes :func:`include` adds answer everything else (a lazy table's
refresh, SQL for a sharded worker) in the thread pool. Errors are raised as ralf errors,
which the app answers as 4xx.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ralf.errors import SchemaError
from ralf.features import feature_refs
from ralf.http import codec
from ralf.http.models import (
    ROWS_OR_ARROW,
    FeastRequest,
    FeastResponse,
    FeaturesRequest,
    Row,
    errors,
)

if TYPE_CHECKING:
    from ralf.server import Ralf

JSON = "application/json"
FEAST_ROUTE = "/get-online-features"


@dataclass
class Asked:
    """A parsed feature-vector request: ``feast`` for Feast's route (its answer shape)."""

    entities: Any
    features: Any
    with_staleness: bool = False
    full_feature_names: bool = False
    feast: bool = False


def parse(path: str, body: bytes) -> Asked:
    """The request a body of ``path`` (``/features`` or ``/get-online-features``) asks;
    anything malformed is refused naming what is wrong."""
    feast = path == FEAST_ROUTE
    route = path.lstrip("/")
    try:
        request = json.loads(body)
    except ValueError:
        raise SchemaError(f"{route}: the body is not JSON") from None
    if not isinstance(request, dict):
        raise SchemaError(f"{route}: the body must be a JSON object with \"entities\" and "
                          "\"features\"")
    if feast and request.get("feature_service") is not None:
        raise SchemaError(f"{route}: ralf has no feature services; name the features "
                          "(\"features\": [\"table:column\"])")
    flag = "full_feature_names" if feast else "with_staleness"
    value = request.get(flag, False)
    if not isinstance(value, bool):
        raise SchemaError(f"{route}: {flag} must be true or false")
    if feast and not isinstance(request.get("entities"), dict):
        raise SchemaError(f"{route}: the body needs \"entities\": {{column: [values]}}")
    return Asked(request.get("entities"), request.get("features"), with_staleness=value and
                 not feast, full_feature_names=value and feast, feast=feast)


def blocks(server: Ralf, asked: Asked) -> bool:
    """Whether answering may block: a lazy table's refresh, or SQL for a key the serving
    cache does not hold (a sharded worker)."""
    tables = dict.fromkeys(table for table, _ in feature_refs(asked.features))
    return server.partition is not None or any(
        server.table(table).refreshes_on_query for table in tables)


def answer(server: Ralf, asked: Asked, arrow: bool) -> tuple[bytes, str]:
    """The encoded answer and its media type: Feast's response, Arrow IPC or JSON rows."""
    vectors = server.feature_vectors(asked.entities, asked.features,
                                     with_staleness=asked.with_staleness)
    if asked.feast:
        return codec.dumps(vectors.to_feast(asked.full_feature_names)), JSON
    if arrow:
        return codec.arrow_bytes(vectors.to_arrow(asked.with_staleness)), codec.ARROW
    columns = vectors.columns(asked.with_staleness)
    names = [name for name, _, _ in columns]
    encoded = [codec.encode_column(values) for _, values, _ in columns]
    rows = [dict(zip(names, row, strict=True)) for row in zip(*encoded, strict=True)]
    return codec.dumps_encoded(rows), JSON


def include(app: FastAPI, server: Ralf) -> None:
    """Add the two routes to ``app``, bound to ``server``, answering in the thread pool;
    their bodies are parsed by :func:`parse` (the models only describe them)."""

    async def handle(request: Request) -> Response:
        asked = parse(request.url.path, await request.body())
        data, media = await run_in_threadpool(
            answer, server, asked, codec.ARROW in request.headers.get("accept", ""))
        return Response(data, media_type=media)

    refused = errors(400, 401, 404, 413)
    app.post("/features", response_model=list[Row], responses={**ROWS_OR_ARROW, **refused},
             summary="Features of several tables for a batch of entities (JSON or Arrow IPC)",
             openapi_extra=_body(FeaturesRequest))(handle)
    app.post(FEAST_ROUTE, response_model=FeastResponse, responses=refused,
             summary="The same, in the request and answer shapes of Feast's feature server",
             openapi_extra=_body(FeastRequest))(handle)


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        JSON: {"schema": model.model_json_schema()}}}}
