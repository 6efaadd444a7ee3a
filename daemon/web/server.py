"""The web page's server: uvicorn serving the Starlette app on an event loop of its own, in one thread ("web").

Why this stack: Starlette and uvicorn are small, widely used and well kept; uvicorn without its extras is pure
Python (h11), runs its own asyncio loop in a thread of ours, and bounds what clients can hold: at most
`MAX_CONNECTIONS` requests at once (503 beyond), idle keep-alive connections closed after `KEEP_ALIVE_SECONDS`.
Blocking work (a search, a control request waiting for its answer) runs in Starlette's thread pool, so the loop
keeps serving. uvicorn's access log is off: a first visit's URL carries the token.
"""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from starlette.applications import Starlette

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 16  # requests served at once; more are answered 503
KEEP_ALIVE_SECONDS = 5  # an idle connection is closed after this
START_SECONDS = 10.0  # longest wait for the socket to be listening
STOP_SECONDS = 1.0  # longest wait for requests in progress at a stop


class WebServerError(OSError):
    """The page cannot be served: the address cannot be bound (in use, not this machine's, not allowed)."""


class WebServer:
    """Listens from `start` until `close`; `port` is the one bound (a configured 0 picks a free one)."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # the daemon's logging stays as it is
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=int(STOP_SECONDS),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="web", daemon=True)
        self._host = host
        self._error: BaseException | None = None
        self.port = port

    def start(self) -> None:
        """Bind and begin serving; `WebServerError` if the address cannot be bound."""
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.close()
            reason = f": {self._error}" if self._error is not None else " (it did not start in time)"
            raise WebServerError(f"web: cannot listen on {self._host}:{self.port} (web.host, web.port){reason}")
        sockets = [sock for server in self._server.servers for sock in server.sockets]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        shown = f"[{self._host}]" if ":" in self._host else self._host
        logger.info("web page on http://%s:%d/", shown, self.port)

    def close(self) -> None:
        """Stop listening; requests in progress get `STOP_SECONDS` to finish."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(STOP_SECONDS + 1.0)

    def _serve(self) -> None:
        try:
            self._server.run()
        except BaseException as e:  # uvicorn ends a failed bind with SystemExit
            self._error = e
        if not self._server.started and self._error is None:
            self._error = RuntimeError("the server stopped before listening (the address may be in use)")
