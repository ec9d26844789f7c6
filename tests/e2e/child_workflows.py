"""Workflows for the child-run tests: parents that start and await children."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from worker import (
    FatalError,
    WorkflowRunCancelledError,
    WorkflowRunFailedError,
    create_hook,
    start,
    step,
    workflow,
)


@step
async def double(x: int) -> int:
    return 2 * x


@step
async def count_start(marker: str) -> None:
    """Appends a line to ``marker``: how many times a child's code started a run."""
    with Path(marker).open("a") as f:  # noqa: ASYNC230 -- a tiny marker file for the test
        f.write(f"{os.getpid()}\n")


@step
async def boom(message: str) -> None:
    raise FatalError(message)


@workflow(name="child_double")
async def child_double(x: int) -> int:
    return await double(x)


@workflow(name="child_counted")
async def child_counted(marker: str, x: int) -> int:
    await count_start(marker)
    return x + 1


@workflow(name="child_fails")
async def child_fails(message: str) -> None:
    await boom(message)


@workflow(name="child_waits")
async def child_waits(token: str) -> str:
    """Parks on a hook until a payload arrives (or it is cancelled)."""
    payload: str = await create_hook(token)
    return payload


@workflow(name="parent_one")
async def parent_one(x: int) -> dict[str, object]:
    run = await start(child_double, x)
    value = await run.result()
    return {"child": run.run_id, "value": value}


@workflow(name="parent_counted")
async def parent_counted(marker: str, x: int) -> int:
    run = await start(child_counted, marker, x)
    value: int = await run.result()
    return value * 10


@workflow(name="parent_gather")
async def parent_gather(n: int) -> list[int]:
    runs = [await start(child_double, i) for i in range(n)]
    return list(await asyncio.gather(*(r.result() for r in runs)))


@workflow(name="parent_tasks")
async def parent_tasks(n: int) -> list[int]:
    """Child results through create_task, TaskGroup and as_completed."""
    runs = [await start(child_double, i) for i in range(n)]
    first = asyncio.create_task(runs[0].result())
    async with asyncio.TaskGroup() as tg:
        rest = [tg.create_task(r.result()) for r in runs[1:]]
    out = [await first] + [t.result() for t in rest]
    done = [await f for f in asyncio.as_completed([r.result() for r in runs])]
    assert sorted(done) == sorted(out)
    return out


@workflow(name="parent_of_failing")
async def parent_of_failing(message: str) -> str:
    run = await start(child_fails, message)
    try:
        await run.result()
    except WorkflowRunFailedError as exc:
        return f"{type(exc).__name__}|{exc.run_id == run.run_id}|{exc.__cause__}"
    return "no error"


@workflow(name="parent_of_waiting")
async def parent_of_waiting(token: str, parent_close: str) -> str:
    run = await start(child_waits, token, parent_close=parent_close)
    try:
        return str(await run.result())
    except WorkflowRunCancelledError as exc:
        return f"cancelled {exc.run_id == run.run_id}"


@workflow(name="parent_run_id")
async def parent_run_id(child_id: str, x: int) -> list[object]:
    first = await start(child_double, x, run_id=child_id)
    second = await start(child_double, x + 1, run_id=child_id)
    return [first.run_id, second.run_id, await first.result(), await second.result()]


@workflow(name="parent_unregistered")
async def parent_unregistered() -> str:
    try:
        await start("no_such_workflow", 1)
    except Exception as exc:
        return type(exc).__name__
    return "started"


@workflow(name="parent_fire_and_forget")
async def parent_fire_and_forget(token: str) -> str:
    run = await start(child_waits, token, parent_close="abandon")
    return run.run_id


@step
async def slow_mark(marker: str, seconds: float) -> str:
    """Writes its process id to ``marker`` when it starts, so a test can kill that worker."""
    Path(marker).write_text(str(os.getpid()))  # noqa: ASYNC240 -- a tiny marker file for the test
    await asyncio.sleep(seconds)
    return "slow done"


@workflow(name="child_slow")
async def child_slow(marker: str, seconds: float) -> str:
    return await slow_mark(marker, seconds)


@workflow(name="parent_slow")
async def parent_slow(marker: str, seconds: float) -> str:
    run = await start(child_slow, marker, seconds)
    return f"parent got {await run.result()}"


@workflow(name="parent_leaves_child")
async def parent_leaves_child(token: str) -> str:
    """Returns without awaiting its child (started with the default parent_close="cancel")."""
    run = await start(child_waits, token)
    return run.run_id


@workflow(name="parent_reads_child")
async def parent_reads_child() -> str:
    run = await start(child_double, 1)
    try:
        await run.status()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "read"


@workflow(name="child_sleeps")
async def child_sleeps(days: int) -> int:
    await asyncio.sleep(days * 24 * 3600)  # a durable timer in workflow code
    return days


@workflow(name="parent_of_sleeper")
async def parent_of_sleeper(days: int) -> int:
    run = await start(child_sleeps, days)
    value: int = await run.result()
    return value


@workflow(name="parent_uncaught")
async def parent_uncaught(message: str) -> None:
    run = await start(child_fails, message)
    await run.result()
