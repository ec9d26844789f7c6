"""Workflows for the chaos runs: steps, retries, sleeps, hooks and child runs, with every step
execution recorded outside Redis so duplicates can be counted.

Each step appends ``<run id> <step id> <attempt> <step name>`` to a file of its own process under
``CHAOS_EXEC_DIR`` (one ``write`` of an ``O_APPEND`` file per line: a SIGKILLed process loses no
line it wrote, and a Redis fault cannot lose or double a record, as a counter in that same Redis
could).
"""

from __future__ import annotations

import asyncio
import os

from worker import (
    FatalError,
    RetryableError,
    RunNotFoundError,
    create_hook,
    get_run,
    get_step_metadata,
    get_workflow_metadata,
    sleep,
    start,
    step,
    workflow,
)

# a step may meet a worker death (an attempt) or a Redis outage (a failed call) several times
ROBUST = 20


def record() -> int:
    """Append this execution to the process's record; the attempt number."""
    meta = get_step_metadata()
    directory = os.environ.get("CHAOS_EXEC_DIR")
    if directory:
        run_id = get_workflow_metadata().run_id
        line = f"{run_id} {meta.step_id} {meta.attempt} {meta.step_name}\n".encode()
        fd = os.open(
            os.path.join(directory, f"exec-{os.getpid()}.log"),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT,
            0o644,
        )
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    return meta.attempt


@step(max_retries=ROBUST)
async def double(x: int) -> int:
    record()
    await asyncio.sleep(0.02)
    return x * 2


@step(max_retries=ROBUST)
def inc(x: int) -> int:
    record()
    return x + 1


@step(max_retries=ROBUST)
async def flaky_add(x: int, y: int) -> int:
    """Fails its first attempt, always: a retry recorded in the log."""
    if record() == 1:
        raise RetryableError("first attempt fails by design", retry_after=0.2)
    return x + y


@step(max_retries=ROBUST)
async def start_child(i: int) -> str:
    record()
    parent = get_workflow_metadata().run_id
    run = await start(chaos_child, i, run_id=f"{parent}_c")  # idempotent: one child per parent
    return run.run_id


@step(max_retries=ROBUST)
async def child_value(run_id: str) -> int | None:
    """The child's result, or None while it runs (the workflow sleeps and asks again)."""
    record()
    try:
        info = await get_run(run_id).info()
    except RunNotFoundError:
        return None
    if info.status == "completed":
        return int(await get_run(run_id).result(timeout=5))
    if info.status in ("failed", "cancelled"):
        raise FatalError(f"child run {run_id} {info.status}")
    return None


@workflow(name="chaos_child")
async def chaos_child(i: int) -> int:
    return await inc(await double(i))


def hook_token(run_id: str) -> str:
    return f"chaos-{run_id}"


def hook_payload(i: int) -> dict[str, int]:
    return {"add": i % 11}


@workflow(name="chaos_mixed")
async def chaos_mixed(i: int) -> int:
    """Every run takes a step and a parallel pair; some retry, sleep, wait for a hook or a child."""
    total = await double(i)
    if i % 3 == 0:
        total = await flaky_add(total, 1)
    if i % 4 == 0:
        await sleep("0.5s")
    if i % 5 == 0:
        run_id = get_workflow_metadata().run_id
        with create_hook(token=hook_token(run_id)) as hook:
            payload = await hook
        total += int(payload["add"])
    if i % 7 == 0:
        child = await start_child(i)
        while (value := await child_value(child)) is None:
            await sleep("0.3s")
        total += value
    a, b = await asyncio.gather(double(total), inc(total))
    return a + b


def expected(i: int) -> int:
    """What ``chaos_mixed(i)`` returns when nothing is lost or doubled."""
    total = 2 * i
    if i % 3 == 0:
        total += 1
    if i % 5 == 0:
        total += hook_payload(i)["add"]
    if i % 7 == 0:
        total += 2 * i + 1
    return 2 * total + total + 1


@step(max_retries=ROBUST)
def light_inc(x: int) -> int:
    record()
    return x + 1


@workflow(name="chaos_light")
async def chaos_light(x: int) -> int:
    """One step: for floods of start requests."""
    return await light_inc(x)
