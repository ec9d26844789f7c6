"""Workflows of the HTTP hardening tests: webhooks that report the request they received."""

from __future__ import annotations

from typing import Any

from worker import create_webhook, workflow


@workflow(name="webhook_keeps_authorization")
async def webhook_keeps_authorization() -> dict[str, Any]:
    """A default webhook that opts in to receiving the Authorization header; returns the request."""
    request = await create_webhook(keep_headers=["Authorization"])
    return {"url": request.url, "headers": request.headers}
