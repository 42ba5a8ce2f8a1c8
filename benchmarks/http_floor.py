"""The floor of a Python HTTP server here: a FastAPI app with one trivial route, on the
uvicorn configuration ``ralf serve`` uses (benchmarks/query_latency.py measures it).

    python -m benchmarks.http_floor PORT
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response

BODY = b'{"user_id":1,"average_rating":3.0,"n_ratings":1}'


def app() -> FastAPI:
    """GET and POST ``/constant``: the same small JSON document, whatever is asked."""
    floor = FastAPI()

    async def constant() -> Response:
        return Response(BODY, media_type="application/json")

    floor.add_api_route("/constant", constant, methods=["GET", "POST"])
    return floor


if __name__ == "__main__":
    uvicorn.run(app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, lifespan="off")
