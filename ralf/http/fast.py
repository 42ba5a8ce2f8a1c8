"""The serving fast path: point queries and feature vectors answered in front of the app.

A plain ASGI layer, outermost, that answers the hot requests itself — ``GET
/table/{table}/{key}`` without a query string and ``POST /features`` /
``POST /get-online-features`` — when every table asked is answered from the serving cache
(no lazy refresh, no SQL): on the event loop, with no routing, no middleware stack, no
pydantic validation and no thread hop. Everything else, and any request it is unsure of
(a wrong token, a body without a length or past the limit, a lazy table), goes to the app
unchanged, which answers it as before. Errors get the app's answer (``on_error``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ralf.errors import RalfError
from ralf.http import codec, docs
from ralf.http.features import FEAST_ROUTE, answer, blocks, parse

if TYPE_CHECKING:
    from ralf.server import Ralf

_JSON = [(b"content-type", b"application/json")]
_ARROW = [(b"content-type", codec.ARROW.encode())]
_VECTOR_ROUTES = ("/features", FEAST_ROUTE)
ROUTE = "ralf.route"  # the scope entry naming the route template the fast path answered
POINT_ROUTE = "/table/{table}/{key:path}"  # the app's template of the route


class FastPath:
    """The ASGI fast path in front of ``app`` (see the module docstring). ``limit``: the
    largest body it reads; ``on_error``: the app's answer to a ralf error."""

    def __init__(self, app: Any, server: Ralf, token: str | None, limit: int,
                 on_error: Callable[[RalfError], Any]) -> None:
        self.app, self.server, self.limit, self.on_error = app, server, limit, on_error
        self.token = token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if method == "GET" and path.startswith("/table/") and not scope["query_string"]:
                if await self._point(scope, receive, send, path):
                    return
            elif method == "POST" and path in _VECTOR_ROUTES:
                receive = await self._vectors(scope, receive, send, path)
                if receive is None:
                    return
        await self.app(scope, receive, send)

    def _header(self, scope: dict, name: bytes) -> bytes | None:
        for key, value in scope["headers"]:
            if key == name:  # ASGI servers give header names in lower case
                return value
        return None

    def _allowed(self, scope: dict) -> bool:
        return docs.authorized((self._header(scope, b"authorization") or b"").decode("latin-1"),
                               self.token)

    async def _point(self, scope: dict, receive: Any, send: Any, path: str) -> bool:
        table, _, key = path[len("/table/"):].partition("/")
        server = self.server
        if not key or server.partition is not None or not self._allowed(scope):
            return False
        # what the router would have set, for the request timer (console.RequestTimer)
        scope[ROUTE] = POINT_ROUTE
        scope["path_params"] = {"table": table, "key": key}
        try:
            if server.table(table).refreshes_on_query:
                return False
            record = server.point_query(table, key)
        except RalfError as exc:
            await self.on_error(exc)(scope, receive, send)
            return True
        await _send(send, codec.dumps(record.__dict__), _JSON)
        return True

    async def _vectors(self, scope: dict, receive: Any, send: Any, path: str
                       ) -> Callable[[], Awaitable[dict]] | None:
        """Answers the request (returns None) or hands back a ``receive`` that replays
        the body for the app."""
        length = self._header(scope, b"content-length")
        if length is None or not length.isdigit() or int(length) > self.limit or \
                not self._allowed(scope):
            return receive
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            asked = parse(path, body)
            if not blocks(self.server, asked):
                scope[ROUTE] = path
                arrow = codec.ARROW.encode() in (self._header(scope, b"accept") or b"")
                data, media = answer(self.server, asked, arrow)
                await _send(send, data, _ARROW if media == codec.ARROW else _JSON)
                return None
        except RalfError as exc:
            await self.on_error(exc)(scope, receive, send)
            return None
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


async def _send(send: Any, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
