"""The built-in fetch step against a local HTTP server started by the test (never the internet)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e import webhook_workflows as ww
from worker import FetchResponse, fetch, start
from worker._serde import dumps, loads
from world_redis import RedisWorld

TODO = {"userId": 1, "id": 1, "title": "delectus aut autem", "completed": False}


class Handler(BaseHTTPRequestHandler):
    """``GET /todos/1`` → the jsonplaceholder todo; ``/echo`` → the request; anything else → 404."""

    def do_GET(self) -> None:
        if self.path == "/todos/1":
            self._send(200, json.dumps(TODO).encode(), "application/json; charset=utf-8")
        elif self.path == "/old":
            self.send_response(302)
            self.send_header("Location", "/todos/1")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"not here", "text/plain")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        echo = {"method": "POST", "x-test": self.headers.get("X-Test"), "body": body.decode()}
        self._send(200, json.dumps(echo).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    """An http.server on 127.0.0.1 (free port) in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_fetch_workflow(world: RedisWorld, start_worker, local_server: str) -> None:  # type: ignore[no-untyped-def]
    """fetchWorkflow: `await fetch(url)` in a workflow, then `.json()` has the todo's fields."""
    start_worker("tests.e2e.webhook_workflows")
    run = await start(ww.fetch_workflow, f"{local_server}/todos/1")
    result = await run.result(timeout=20)
    assert result["status"] == 200 and result["ok"] is True
    assert result["json"].items() >= TODO.items()
    steps = await run.steps()
    assert [(s.name, s.status) for s in steps] == [("worker.fetch", "completed")]


async def test_fetch_outside_workflow(local_server: str) -> None:
    """Outside a workflow fetch is a plain call: method, headers, body, redirects, error statuses."""
    res = await fetch(f"{local_server}/echo", method="post", headers={"X-Test": "1"}, body="abc")
    assert res.status == 200 and res.json() == {"method": "POST", "x-test": "1", "body": "abc"}
    moved = await fetch(f"{local_server}/old")
    assert moved.json() == TODO and moved.url.endswith("/todos/1")
    assert moved.headers["content-type"].startswith("application/json")
    missing = await fetch(f"{local_server}/nothing")
    assert (missing.status, missing.ok, missing.text()) == (404, False, "not here")
    assert loads(dumps(missing)) == missing and isinstance(loads(dumps(missing)), FetchResponse)
