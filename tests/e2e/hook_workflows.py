"""Workflows of the hook scenarios (SPEC.md 5 and 8)."""

from __future__ import annotations

import asyncio
from typing import Any

from worker import create_hook, get_workflow_metadata, sleep, step, workflow


@workflow(name="hook_workflow")
async def hook_workflow(token: str, custom_data: str) -> list[dict[str, Any]]:
    """hookWorkflow: collect payloads until one says done, each with the hook's metadata."""
    results: list[dict[str, Any]] = []
    hook = create_hook(token=token, metadata={"customData": custom_data})
    async for payload in hook:
        results.append({**payload, "customData": custom_data})
        if payload.get("done"):
            break
    return results


@workflow(name="hook_cleanup")
async def hook_cleanup(token: str, custom_data: str) -> dict[str, Any]:
    """hookCleanupTestWorkflow: wait for one payload, then finish (freeing the token)."""
    payload = await create_hook(token=token, metadata={"customData": custom_data})
    return {
        "message": payload["message"],
        "customData": payload.get("customData"),
        "hookCleanupTestData": "workflow_completed",
    }


@workflow(name="hook_dispose")
async def hook_dispose(token: str, sleep_s: float) -> dict[str, Any]:
    """hookDisposeTestWorkflow: the hook lives in a `with` block; the run sleeps after it."""
    with create_hook(token=token) as hook:
        payload = await hook
    await sleep(sleep_s)
    return {"received": payload, "disposed": True}


@step
async def process_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return {"processed": True, "type": payload["type"], "id": payload["id"]}


@workflow(name="hook_with_sleep")
async def hook_with_sleep(token: str) -> list[dict[str, Any]]:
    """hookWithSleepWorkflow: a pending day-long sleep must not hold back hook deliveries."""
    background = asyncio.ensure_future(sleep("1d"))
    results = []
    async for payload in create_hook(token=token):
        results.append(await process_payload(payload))
        if payload.get("done"):
            break
    background.cancel()
    return results


@step
async def announce(run_id: str) -> str:
    return run_id


@workflow(name="collect_with_hook")
async def collect_with_hook(token: str, custom_data: str) -> dict[str, Any]:
    """world-testing hooks: collect payloads with their metadata until `done`."""
    hook = create_hook(token=token, metadata={"customData": custom_data})
    await announce(get_workflow_metadata().run_id)
    collected = []
    async for data in hook:
        collected.append({"data": data, "metadata": {"customData": custom_data}})
        if data.get("done"):
            break
    return {"collected": collected}


@workflow(name="default_token")
async def default_token() -> dict[str, Any]:
    hook = create_hook()
    await announce(hook.token)
    payload = await hook
    return {"token": hook.token, "payload": payload}


@step(name="hook_forms.double")
async def double(n: int) -> int:
    return 2 * n


@workflow(name="hook_in_tasks")
async def hook_in_tasks(token: str) -> list[Any]:
    """A hook, a step call and a sleep each wrapped in a task, as users write concurrent code."""
    hook = create_hook(token=token)
    waiting = asyncio.create_task(hook)
    async with asyncio.TaskGroup() as tg:
        doubled = tg.create_task(double(21))
        napped = tg.create_task(sleep("10ms"))
    payload = await waiting
    return [payload, doubled.result(), napped.result()]
