"""The worker's own health endpoint (``wf worker --health-port N``), for liveness probes.

``GET /healthz`` answers the worker's status report as JSON: 200 while every duty has succeeded
recently, 503 naming the duties that have not. It binds to loopback unless told otherwise, and
reveals no run data (duty names, times, counts). Served by uvicorn on the worker's event loop; the
worker keeps its own signal handling (SIGTERM drains it).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

from ._supervisor import Duty


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so that a taken port fails the worker at start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


async def serve(sock: socket.socket, report: Callable[[], dict[str, Any]], duty: Duty) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def healthz(_: Request) -> JSONResponse:
        body = report()
        duty.ok()
        return JSONResponse(body, status_code=200 if body["healthy"] else 503)

    app = Starlette(routes=[Route("/healthz", healthz), Route("/", healthz)])
    await serve_app(sock, app, duty)


async def serve_app(sock: socket.socket, app: Any, duty: Duty) -> None:
    """Serve an ASGI app on the worker's event loop from a socket bound by :func:`bind`."""
    import uvicorn

    server = _quiet_server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    duty.ok()
    await server.serve(sockets=[sock])


def _quiet_server(config: Any) -> Any:
    """uvicorn's Server without its signal handlers: the worker owns SIGTERM and SIGINT."""
    import uvicorn

    class QuietServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return QuietServer(config)
