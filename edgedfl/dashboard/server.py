"""The dashboard's web server: one page, its assets, the view as JSON and as server-sent events.

``Dashboard(view).start()`` serves on ``http://127.0.0.1:<port>/`` (port 0:
a free one) from a thread; :meth:`Dashboard.follow` feeds the view from the
swarm's broker (a paho thread enqueues, a pump thread hands each message to
:meth:`SwarmView.handle`). Routes:

==================  ========================================================
``/``               the page (``static/index.html``)
``/static/...``     its script, styles and the vendored uPlot and cytoscape.js
``/api/state``      :meth:`SwarmView.snapshot` as JSON
``/api/events``     server-sent events: a ``state`` event with the snapshot at
                    every change (at most four a second), a comment every 15 s
==================  ========================================================

Starlette (routing, static files, a streaming response) on uvicorn: small,
maintained, asyncio-native, no template engine or ORM to carry. They are the
``dashboard`` extra (``pip install 'edgedfl[dashboard]'``) and load only here.
Server-sent events rather than WebSockets: the page only listens, the
browser's ``EventSource`` reconnects by itself, and nothing more is needed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

from edgedfl.dashboard.view import SwarmView
from edgedfl.errors import BackendUnavailable, EdgeDFLError
from edgedfl.transport.base import Transport
from edgedfl.transport.url import transport_from_url

__all__ = ["Dashboard", "static_dir", "web_available"]

log = logging.getLogger("edgedfl.dashboard")

#: how often the event stream looks for a change, and how often it sends a keep-alive comment
_TICK_S = 0.25
_KEEPALIVE_S = 15.0


def web_available() -> bool:
    """Whether the ``dashboard`` extra (Starlette, uvicorn) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("starlette", "uvicorn"))


def _require_web() -> None:
    if not web_available():
        raise BackendUnavailable("the dashboard needs Starlette and uvicorn: pip install 'edgedfl[dashboard]'")


def static_dir() -> Path:
    """The page and its assets, shipped inside the package (no network at run time)."""
    return Path(str(resources.files("edgedfl.dashboard") / "static"))


def build_app(view: SwarmView) -> Any:
    """The Starlette application serving ``view``."""
    _require_web()
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    static = static_dir()
    page = (static / "index.html").read_text()

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def state(request: Request) -> JSONResponse:
        return JSONResponse(view.snapshot(), headers={"Cache-Control": "no-store"})

    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            seen, quiet = -1, 0.0
            while True:
                if view.version != seen:
                    seen = view.version
                    data = json.dumps(view.snapshot(), separators=(",", ":"), allow_nan=False)
                    yield f"event: state\ndata: {data}\n\n"
                    quiet = 0.0
                elif quiet >= _KEEPALIVE_S:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                await asyncio.sleep(_TICK_S)
                quiet += _TICK_S

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return Starlette(routes=[
        Route("/", index), Route("/api/state", state), Route("/api/events", events),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ])


class Dashboard:
    """A running dashboard: the web server (a thread) and, when following a broker, its MQTT client.

    Binds ``127.0.0.1`` unless told otherwise: the page shows a swarm's
    inner workings and has no login, so exposing it is the user's choice.
    """

    def __init__(self, view: SwarmView, *, host: str = "127.0.0.1", port: int = 0) -> None:
        _require_web()
        self.view = view
        self.host = host
        self.port = port
        self.transport: Transport | None = None
        self._server: Any = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # -- the swarm's broker -------------------------------------------------------------

    def follow(self, broker_url: str, *, client_id: str | None = None) -> None:
        """Subscribe to the swarm's presence, hellos and metrics on ``broker_url`` and feed the view."""
        t = transport_from_url(broker_url, client_id=client_id or f"edgedfl-dashboard-{secrets.token_hex(3)}",
                               clean_session=True)
        for pattern in self.view.subscriptions():
            t.subscribe(pattern, qos=1)
        self.transport = t
        self.view.broker = broker_url.split("?", 1)[0]

        def pump() -> None:
            while not self._stop.is_set():
                try:
                    msg = t.receive(0.2)
                except EdgeDFLError:  # closed under us
                    return
                if msg is not None:
                    self.view.handle(msg.topic, msg.payload)

        th = threading.Thread(target=pump, name="edgedfl-dashboard-mqtt", daemon=True)
        th.start()
        self._threads.append(th)

    def unfollow(self) -> None:
        """Stop following the broker (the view keeps what it has)."""
        t, self.transport = self.transport, None
        if t is not None:
            t.close()

    # -- the web server ------------------------------------------------------------------

    def start(self) -> str:
        """Serve from a thread; returns the page's URL once the socket listens."""
        import uvicorn

        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(64)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(build_app(self.view), log_level="warning", access_log=False,
                                timeout_graceful_shutdown=1, lifespan="off")
        self._server = uvicorn.Server(config)
        th = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="edgedfl-dashboard-http",
                              daemon=True)
        th.start()
        self._threads.append(th)
        deadline = time.monotonic() + 10
        while not self._server.started and th.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.url

    def wait(self, seconds: float | None = None) -> None:
        """Block until :meth:`stop` (or Ctrl-C), or for ``seconds``."""
        self._stop.wait(seconds)

    def stop(self) -> None:
        """Stop following and serving. Idempotent."""
        self._stop.set()
        self.unfollow()
        if self._server is not None:
            self._server.should_exit = True
        for th in self._threads:
            th.join(timeout=5)
        self._threads.clear()
