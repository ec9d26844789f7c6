"""Workflows of the payload encryption scenarios: steps, a hook with a payload, an output stream."""

from __future__ import annotations

from typing import Any

from worker import create_hook, get_writable, step, workflow


@step
async def charge(item: str) -> str:
    return f"charged {item}"


@step
async def publish(writable: Any, value: Any) -> None:
    await writable.write(value)
    await writable.close()


@workflow(name="secret_order")
async def secret_order(item: str, token: str) -> dict[str, Any]:
    """Charge, publish a chunk, wait for an approval payload on a hook, return all three."""
    receipt = await charge(item)
    await publish(get_writable(), {"receipt": receipt})
    approval = await create_hook(token=token, metadata={"note": f"approve {item}"})
    return {"receipt": receipt, "approval": approval}


@workflow(name="echo")
async def echo(value: str) -> str:
    """A run with no hook: done as soon as a worker reads its input."""
    return value
