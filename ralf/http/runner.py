"""uvicorn in a background thread, so ``Ralf.serve`` returns and processing goes on."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import uvicorn

from ralf.errors import RalfError
from ralf.http.app import create_app

if TYPE_CHECKING:
    from ralf.server import Ralf


class HttpServer:
    """A ``Ralf``'s HTTP API, served by uvicorn on a daemon thread (see :meth:`start`)."""

    def __init__(self, server: Ralf, host: str, port: int, token: str | None, *,
                 access_log: bool = False) -> None:
        self._app = create_app(server, token)
        # graceful shutdown waits for requests in flight, but not for long: SQL queries are
        # cancelled at stop() and anything else gets this many seconds. log_config=None:
        # uvicorn's records go where the application's logging sends them (ralf.logs), and
        # the access log, off by default, is one info record per request on uvicorn.access
        config = uvicorn.Config(self._app, host=host, port=port, log_config=None,
                                log_level="warning", access_log=access_log, lifespan="off",
                                timeout_graceful_shutdown=5)
        if access_log:  # uvicorn set it to warning, and detached it if a server had it off
            access = logging.getLogger("uvicorn.access")
            access.setLevel(logging.INFO)
            access.propagate = True
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, name="ralf-http",
                                        daemon=True)

    def start(self, timeout: float = 10.0) -> str:
        """Start serving and wait until it listens; returns the URL. Raises RalfError when
        the server does not start within ``timeout`` seconds (e.g. the port is in use)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:  # uvicorn offers a flag, not an event
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RalfError("the HTTP server did not start (is the port in use?)")
            time.sleep(0.005)
        host, port = self._uvicorn.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self._app.state.history.start()  # the console's metrics samples
        return self.url

    def stop(self) -> None:
        """Cancel the running SQL queries, shut uvicorn down and wait for it (requests in
        flight get up to 5 s)."""
        self._app.state.history.stop()
        for cancel in list(self._app.state.queries):  # running SQL stops at once
            cancel.set()
        self._uvicorn.should_exit = True
        self._thread.join()
