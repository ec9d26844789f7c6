"""Workflows of the ACL and TLS tests: one run that touches every kind of key the engine writes."""

from __future__ import annotations

from typing import Any

from worker import (
    RetryableError,
    create_hook,
    get_step_metadata,
    get_writable,
    sleep,
    step,
    workflow,
)


@step(max_retries=1)
async def double_on_second_try(x: int) -> int:
    if get_step_metadata().attempt == 1:
        raise RetryableError("first attempt fails", retry_after=0.05)
    return 2 * x


@step
async def publish(out: Any, value: Any) -> None:
    await out.write(value)
    await out.close()


@workflow(name="acl_tour")
async def acl_tour(token: str, x: int) -> dict[str, Any]:
    """A retried step (timer), a durable sleep, an output stream, then two hook payloads."""
    doubled = await double_on_second_try(x)
    await sleep("0.05s")
    await publish(get_writable(), {"doubled": doubled})
    with create_hook(token=token) as hook:
        payloads = [await hook, await hook]
    return {"doubled": doubled, "payloads": payloads}


@step
async def add(a: int, b: int) -> int:
    return a + b


@workflow(name="acl_add")
async def acl_add(a: int, b: int) -> int:
    return await add(a, b)
