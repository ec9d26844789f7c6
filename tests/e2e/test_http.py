"""The HTTP API end to end: the app served by uvicorn on 127.0.0.1, real workers, httpx requests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

import tests.e2e.workflows  # noqa: F401 -- registers add_ten here: the app checks start arguments
from tests.integration.helpers import commit1, ev, new_run_id
from tests.integration.test_request_handling import hook_received, live_hook
from tests.support import RedisServer, eventually, free_port, wait_for
from worker import PayloadCodec, create_app
from worker._codec import generate_key
from world_redis import RedisWorld

API = "/.well-known/workflow/v1"
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def serving(
    redis: RedisServer, prefix: str, *, own_origin: bool = True, **options: Any
) -> Iterator[str]:
    """Serve ``create_app(**options)`` in a thread with a World of its own; yields the base URL.

    ``own_origin``: the app's base URL is its own origin unless ``base_url`` is given; without it,
    the app is left to its default (``WORKFLOW_BASE_URL``)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if own_origin:
        options.setdefault("base_url", base)
    key = options.pop("world_codec", None)  # the app World's encryption key, if any
    codec = PayloadCodec.parse(key) if key else None
    app_world = RedisWorld.from_url(redis.url, prefix=prefix, codec=codec)
    app = create_app(app_world, **options)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            await app_world.close()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 10, what="uvicorn to start")
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(10)


async def http_result(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """Poll ``GET /runs/{id}`` until the run has finished; its JSON."""

    async def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = (await client.get(f"{API}/runs/{run_id}", headers=AUTH)).json()
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    found = await eventually(finished, 20, what=f"run {run_id} to finish")
    assert isinstance(found, dict)
    return found


async def test_start_run_and_read_result(  # type: ignore[no-untyped-def]
    world: RedisWorld, redis_server: RedisServer, prefix: str, start_worker
) -> None:
    """POST /runs starts addTen over HTTP (201, chosen run id) and GET /runs/{id} reads 133."""
    start_worker("tests.e2e.workflows")
    with serving(redis_server, prefix, token=TOKEN) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            body = {"workflow": "add_ten", "args": [123], "run_id": "wrun_http_add_ten"}
            res = await client.post(f"{API}/runs", json=body, headers=AUTH)
            assert res.status_code == 201 and res.json() == {"run_id": "wrun_http_add_ten"}
            result = await http_result(client, "wrun_http_add_ten")
    assert result == {
        "run_id": "wrun_http_add_ten",
        "status": "completed",
        "output": 133,
        "error": None,
    }


async def test_resume_hook_over_http(  # type: ignore[no-untyped-def]
    world: RedisWorld, redis_server: RedisServer, prefix: str, start_worker
) -> None:
    """POST /hooks/{token} delivers the JSON body as the payload (202 with run and hook ids)."""
    start_worker("tests.e2e.hook_workflows")
    with serving(redis_server, prefix, token=TOKEN) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            body = {"workflow": "hook_cleanup", "args": ["http-token", "data"]}
            run_id = (await client.post(f"{API}/runs", json=body, headers=AUTH)).json()["run_id"]

            async def resumed() -> httpx.Response | None:
                payload = {"message": "over http", "customData": "data"}
                res = await client.post(f"{API}/hooks/http-token", json=payload, headers=AUTH)
                return res if res.status_code == 202 else None

            res = await eventually(resumed, 20, what="the hook to accept the payload")
            assert isinstance(res, httpx.Response) and res.json()["run_id"] == run_id
            assert res.json()["hook_id"].startswith("hook_")
            result = await http_result(client, run_id)
    assert result["output"]["message"] == "over http"


async def test_bad_requests(world: RedisWorld, redis_server: RedisServer, prefix: str) -> None:
    """Malformed JSON and bad fields → 400 with a message; unknown run or hook → 404."""
    with serving(redis_server, prefix) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            json_type = {"Content-Type": "application/json"}
            res = await client.post(f"{API}/runs", content=b"{not json", headers=json_type)
            assert res.status_code == 400 and "malformed JSON" in res.json()["error"]
            cases = [
                ([1, 2], "JSON object"),
                ({"args": []}, "'workflow'"),
                ({"workflow": "add_ten", "args": "x"}, "'args'"),
                ({"workflow": "add_ten", "args": [1], "run_id": "bad id"}, "invalid run id"),
                ({"workflow": "add_ten", "args": ["not a number"]}, "add_ten"),
            ]
            for body, message in cases:
                res = await client.post(f"{API}/runs", json=body)
                assert res.status_code == 400 and message in res.json()["error"], body
            res = await client.post(f"{API}/hooks/any", content=b"[1,", headers=json_type)
            assert res.status_code == 400 and "malformed JSON" in res.json()["error"]
            res = await client.get(f"{API}/runs/wrun_does_not_exist")
            assert res.status_code == 404 and "not found" in res.json()["error"]
            res = await client.post(f"{API}/hooks/no-such-token", json={"a": 1})
            assert res.status_code == 404 and "not found" in res.json()["error"]


async def test_bearer_token(world: RedisWorld, redis_server: RedisServer, prefix: str) -> None:
    """With a token configured, the API answers 401 without it or with a wrong one."""
    with serving(redis_server, prefix, token=TOKEN) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            body = {"workflow": "add_ten", "args": [1]}
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                res = await client.post(f"{API}/runs", json=body, headers=headers)
                assert res.status_code == 401 and "bearer token" in res.json()["error"]
                assert res.headers["www-authenticate"] == "Bearer"
            res = await client.get(f"{API}/runs/wrun_x", headers={"Authorization": "Bearer no"})
            assert res.status_code == 401
            res = await client.post(f"{API}/hooks/t", json=1)
            assert res.status_code == 401
            res = await client.get(f"{API}/runs/wrun_x", headers=AUTH)
            assert res.status_code == 404


async def test_resume_retried_with_idempotency_key_is_received_once(
    world: RedisWorld, redis_server: RedisServer, prefix: str
) -> None:
    """POST /hooks/{token} sent twice with one Idempotency-Key delivers one payload; another key,
    another delivery."""
    run_id = await live_hook(world, "tok-http-idem")
    with serving(redis_server, prefix, token=TOKEN) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            for key, n in (("key-1", 1), ("key-1", 1), ("key-2", 2)):
                headers = {**AUTH, "Idempotency-Key": key}
                res = await client.post(
                    f"{API}/hooks/tok-http-idem", json={"n": n}, headers=headers
                )
                assert res.status_code == 202, res.text
    received = await hook_received(world, run_id)
    assert [(e["payload"], e["request_id"]) for e in received] == [
        ('{"n":1}', "key-1"),
        ('{"n":2}', "key-2"),
    ]


async def test_stored_data_the_app_cannot_decrypt_is_a_json_500(
    world: RedisWorld, redis_server: RedisServer, prefix: str
) -> None:
    """A hook whose metadata was encrypted with a key the app lacks: POST /hooks/{token} answers
    500 with a JSON error naming the decryption problem (it used to be answered as a bad request)."""
    writer = RedisWorld.from_url(
        redis_server.url, prefix=prefix, codec=PayloadCodec.parse(generate_key("ka"))
    )
    try:
        run_id = new_run_id()
        await writer.create_run(run_id, "noop", "[1]")
        hook = ev("hook_created", "hook_1", token="tok-other-key", metadata='{"m": 1}')
        assert (await commit1(writer, run_id, ev("run_started"), hook)).code == "ok"
    finally:
        await writer.close()
    app_key = generate_key("kb")
    with serving(redis_server, prefix, token=TOKEN, world_codec=app_key) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            res = await client.post(f"{API}/hooks/tok-other-key", json={"n": 1}, headers=AUTH)
    assert res.status_code == 500 and "'ka'" in res.json()["error"]
