"""Webhooks end to end: real workers, the app served by uvicorn, requests with httpx."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.e2e import hook_workflows as hw
from tests.e2e import webhook_workflows as ww
from tests.e2e.test_http import API, serving
from tests.support import RedisServer, eventually
from worker import Run, resume_hook, start
from world_redis import RedisWorld

MODULES = ("tests.e2e.webhook_workflows", "tests.e2e.hook_workflows")


async def webhook_tokens(run: Run, count: int) -> list[str]:
    """The run's webhook tokens from its hook_created events, in creation order."""

    async def tokens() -> list[str] | None:
        found = [e.token for e in await run.events() if e.__struct_config__.tag == "hook_created"]
        return found if len(found) >= count else None

    found = await eventually(tokens, 20, what=f"{count} hooks of run {run.run_id}")
    assert isinstance(found, list)
    return found


async def test_webhook_workflow(  # type: ignore[no-untyped-def]
    world: RedisWorld, redis_server: RedisServer, prefix: str, start_worker
) -> None:
    """webhookWorkflow: default → 202 empty, static → 402 text, manual → the step's 200 response."""
    with serving(redis_server, prefix) as base:
        start_worker(*MODULES, WORKFLOW_BASE_URL=base)
        run = await start(ww.webhook_workflow)
        urls = [f"{base}{API}/webhook/{t}" for t in await webhook_tokens(run, 3)]
        async with httpx.AsyncClient(timeout=20) as client:
            answers = [
                await client.post(url, content=json.dumps({"message": m}))
                for url, m in zip(urls, ["one", "two", "three"], strict=True)
            ]
        result = await run.result(timeout=20)
    assert [(a.status_code, a.text) for a in answers] == [
        (202, ""),
        (402, "Hello from static response!"),
        (200, "Hello from webhook!"),
    ]
    assert result["urls"] == urls
    assert result["requests"] == [
        {"url": url, "method": "POST", "body": json.dumps({"message": m})}
        for url, m in zip(urls, ["one", "two", "three"], strict=True)
    ]


async def test_invalid_token(world: RedisWorld, redis_server: RedisServer, prefix: str) -> None:
    """The webhook route answers an unknown token with 404 and an empty body."""
    with serving(redis_server, prefix) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            res = await client.post(f"{API}/webhook/invalid", content=b"{}")
    assert res.status_code == 404 and res.text == ""


async def test_plain_hook_not_resumable_via_webhook(  # type: ignore[no-untyped-def]
    world: RedisWorld, redis_server: RedisServer, prefix: str, start_worker
) -> None:
    """A create_hook hook is refused by the public webhook route (404); resume_hook still works."""
    start_worker(*MODULES)
    run = await start(hw.hook_workflow, "plain-hook-token", "custom")
    await webhook_tokens(run, 1)
    with serving(redis_server, prefix) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            res = await client.post(f"{API}/webhook/plain-hook-token", json={"message": "x"})
    assert res.status_code == 404 and res.text == ""
    await resume_hook("plain-hook-token", {"message": "one", "done": True})
    assert len(await run.result(timeout=20)) == 1


async def test_request_details_and_limits(  # type: ignore[no-untyped-def]
    world: RedisWorld, redis_server: RedisServer, prefix: str, start_worker
) -> None:
    """An oversized body → 413 (hook untouched); the hook API refuses webhooks (409); the workflow
    sees the method, query, headers and JSON body."""
    with serving(redis_server, prefix, max_body_bytes=1000) as base:
        start_worker(*MODULES, WORKFLOW_BASE_URL=base)
        run = await start(ww.webhook_once)
        (token,) = await webhook_tokens(run, 1)
        async with httpx.AsyncClient(base_url=base) as client:
            res = await client.put(f"{API}/webhook/{token}", content=b"x" * 1001)
            assert res.status_code == 413
            res = await client.post(f"{API}/hooks/{token}", json={"a": 1})
            assert res.status_code == 409 and "webhook" in res.json()["error"]
            res = await client.put(
                f"{API}/webhook/{token}?source=test", json={"n": 1}, headers={"X-Sig": "abc"}
            )
            assert res.status_code == 202 and res.content == b""
        result: dict[str, Any] = await run.result(timeout=20)
    assert result["method"] == "PUT" and result["json"] == {"n": 1}
    assert result["url"] == f"{base}{API}/webhook/{token}?source=test"
    assert result["headers"]["x-sig"] == "abc"


async def test_manual_response_timeout(  # type: ignore[no-untyped-def]
    world: RedisWorld, redis_server: RedisServer, prefix: str, start_worker
) -> None:
    """A manual webhook whose workflow never responds answers 504 after the timeout."""
    with serving(redis_server, prefix, response_timeout_s=0.5) as base:
        start_worker(*MODULES, WORKFLOW_BASE_URL=base)
        run = await start(ww.webhook_never_responds)
        (token,) = await webhook_tokens(run, 1)
        async with httpx.AsyncClient(base_url=base) as client:
            res = await client.post(f"{API}/webhook/{token}", content=b"hello")
        assert res.status_code == 504
        assert await run.result(timeout=20) == "hello"
