"""Workflows of the webhook and fetch scenarios (SPEC.md 5, 4.9 and 8.1)."""

from __future__ import annotations

from typing import Any

from worker import WebhookRequest, WebhookResponse, create_webhook, fetch, step, workflow


def _record(request: WebhookRequest) -> dict[str, Any]:
    return {"url": request.url, "method": request.method, "body": request.text()}


@step
async def respond_from_step(request: WebhookRequest) -> dict[str, Any]:
    """Read the request's body and send the manual response."""
    await request.respond_with(WebhookResponse(200, body=b"Hello from webhook!"))
    return _record(request)


@workflow(name="webhook_workflow")
async def webhook_workflow() -> dict[str, Any]:
    """webhookWorkflow: a default, a static and a manual webhook, awaited in order."""
    default = create_webhook()
    static = create_webhook(
        respond_with=WebhookResponse(status=402, body=b"Hello from static response!")
    )
    manual = create_webhook(respond_with="manual")
    first = _record(await default)
    second = _record(await static)
    third = await respond_from_step(await manual)
    return {"urls": [default.url, static.url, manual.url], "requests": [first, second, third]}


@workflow(name="webhook_once")
async def webhook_once() -> dict[str, Any]:
    """One default webhook; returns the request it received."""
    request = await create_webhook()
    return {**_record(request), "json": request.json(), "headers": request.headers}


@workflow(name="fetch_workflow")
async def fetch_workflow(url: str) -> dict[str, Any]:
    """fetchWorkflow: the built-in fetch step, then the body read in the workflow."""
    response = await fetch(url)
    return {"status": response.status, "json": response.json(), "ok": response.ok}


@workflow(name="webhook_never_responds")
async def webhook_never_responds() -> str:
    """A manual webhook whose request no step ever answers."""
    request = await create_webhook(respond_with="manual")
    return request.text()
