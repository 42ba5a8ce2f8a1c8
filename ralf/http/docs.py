"""The API's own description: Swagger UI at ``/docs`` from assets served by this server
(the PyPI package ``fastapi-offline`` ships them), so it works without internet access;
and the bearer scheme declared in ``/openapi.json``, so Swagger's Authorize button sends
the token. (No ReDoc page: its bundle loads its logo from its vendor's site.)

Which paths answer without the token (:func:`public`; every other request must carry it,
:func:`authorized`): the probes (``/health``, ``/ready``: Kubernetes cannot send one) and
the description itself (a browser loading ``/docs`` cannot either; it holds the routes'
shapes, no data).
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from ralf.http.models import ErrorBody

ASSETS = "/docs/assets"
PUBLIC = frozenset({"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
BEARER = "bearer"


def public(path: str) -> bool:
    """Whether ``path`` answers without the bearer token."""
    return path in PUBLIC or path.startswith(ASSETS + "/")


def authorized(given: str, token: str | None) -> bool:
    """Whether a request's ``Authorization`` header ``given`` carries the bearer token
    (any request does when there is none); compared in constant time."""
    return token is None or hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def new_app(*, token_required: bool, **kwargs: Any) -> FastAPI:
    """A FastAPI app whose ``/docs`` loads its script, style and icon from
    ``/docs/assets`` on this server, and whose OpenAPI description declares the bearer
    scheme: required on every non-public route when ``token_required``, optional
    otherwise."""
    app = FastAPIOffline(static_url=ASSETS, redoc_url=None, **kwargs)
    describe = app.openapi  # FastAPI's own, which builds the description once and keeps it

    def openapi() -> dict[str, Any]:
        spec = describe()
        components = spec.setdefault("components", {})
        components.setdefault("schemas", {})["ErrorBody"] = ErrorBody.model_json_schema()
        components.setdefault("securitySchemes", {})[BEARER] = {
            "type": "http", "scheme": "bearer",
            "description": "`Authorization: Bearer <token>`, when the server was started "
                           "with a token (--token or RALF_TOKEN)"}
        spec["security"] = [{BEARER: []}] if token_required else [{}, {BEARER: []}]
        for path, operations in spec["paths"].items():
            if public(path):
                for operation in operations.values():
                    operation["security"] = []
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    return app
