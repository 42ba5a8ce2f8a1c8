"""The feature-vector routes: ``POST /features`` (ralf's: JSON or Arrow IPC answer) and
``POST /get-online-features`` (Feast's feature-server request and response), see
docs/features.md.

Plain Starlette routes, not FastAPI ones: the body is one small JSON document read once,
and FastAPI's pydantic validation and dependency solving would cost more than the lookup.
A request whose tables are all answered from the serving cache runs on the event loop
(no thread hop, no SQL); one that may refresh a lazy table runs in the thread pool. Errors
are raised as ralf errors, which the app's Guard answers as 4xx.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ralf.errors import SchemaError
from ralf.features import FeatureVectors, feature_refs, parse_feast_request
from ralf.http import codec

if TYPE_CHECKING:
    from ralf.server import Ralf

JSON = "application/json"


def feature_routes(server: Ralf) -> list[Route]:
    """The two routes, bound to ``server``."""

    async def vectors(entities: Any, features: Any, with_staleness: bool) -> FeatureVectors:
        refs = feature_refs(features)
        if any(_refreshes(server, table) for table in dict.fromkeys(t for t, _ in refs)):
            return await run_in_threadpool(server.feature_vectors, entities, features,
                                           with_staleness=with_staleness)
        return server.feature_vectors(entities, features, with_staleness=with_staleness)

    async def features(request: Request) -> Response:
        body = _json(await request.body(), "features")
        staleness = body.get("with_staleness", False)
        if not isinstance(staleness, bool):
            raise SchemaError("features: with_staleness must be true or false")
        answer = await vectors(body.get("entities"), body.get("features"), staleness)
        if codec.ARROW in request.headers.get("accept", ""):
            return Response(codec.arrow_bytes(answer.to_arrow(staleness)),
                            media_type=codec.ARROW)
        columns = answer.columns(staleness)
        names = [name for name, _, _ in columns]
        rows = [dict(zip(names, row, strict=True))
                for row in zip(*(values for _, values, _ in columns), strict=True)]
        return Response(codec.dumps(rows), media_type=JSON)

    async def feast(request: Request) -> Response:
        entities, refs, full = parse_feast_request(await request.body())
        answer = await vectors(entities, refs, False)
        return Response(codec.dumps(answer.to_feast(full)), media_type=JSON)

    return [Route("/features", features, methods=["POST"]),
            Route("/get-online-features", feast, methods=["POST"])]


def _refreshes(server: Ralf, table: str) -> bool:
    """Whether a lookup in ``table`` may block (a lazy refresh, or SQL for a key the
    serving cache does not hold)."""
    return server.table(table).refreshes_on_query or server.partition is not None


def _json(body: bytes, route: str) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise SchemaError(f"{route}: the body is not JSON") from None
    if not isinstance(parsed, dict):
        raise SchemaError(f"{route}: the body must be a JSON object with \"entities\" and "
                          "\"features\"")
    return parsed

