"""Workflows of the testing kit's tests (tests/integration/test_testing_kit.py)."""

from __future__ import annotations

from worker import RetryableError, create_hook, get_step_metadata, now, sleep, step, workflow


@step(name="kit.note")
async def note(text: str) -> str:
    return text


@workflow(name="kit.month_later")
async def month_later() -> float:
    """Sleep 30 days; the workflow clock's advance over the sleep, in days."""
    before = now()
    await sleep("30d")
    await note("woke")
    return (now() - before).total_seconds() / 86400


@step(name="kit.later_please", max_retries=2)
async def later_please() -> int:
    attempt = get_step_metadata().attempt
    if attempt == 1:
        raise RetryableError("not yet", retry_after="1h")
    return attempt


@workflow(name="kit.retry_in_an_hour")
async def retry_in_an_hour() -> int:
    return await later_please()


@workflow(name="kit.hook_then_sleep")
async def hook_then_sleep(token: str) -> str:
    payload = await create_hook(token=token)
    await sleep("2d")
    return str(payload)


@step(name="kit.once_an_hour", rate="1/h")
async def once_an_hour(n: int) -> int:
    return n


@workflow(name="kit.rate_limited")
async def rate_limited() -> float:
    """Three calls of a step allowed once an hour; the workflow clock's advance, in hours."""
    before = now()
    for n in range(3):
        await once_an_hour(n)
    return (now() - before).total_seconds() / 3600
