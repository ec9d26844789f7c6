"""Workflows for the fault and bad-input tests (kept apart from the ported scenarios)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from worker import FatalError, create_hook, sleep, step, workflow


@step
async def slow_step(marker: str, seconds: float) -> str:
    """Writes a marker file when it starts, so a test can kill the worker mid-step."""
    Path(marker).write_text(str(os.getpid()))  # noqa: ASYNC240 -- tiny marker file for the test
    await _asleep(seconds)
    return f"done by {os.getpid()}"


async def _asleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@workflow(name="killable")
async def killable(marker: str, seconds: float) -> str:
    result = await slow_step(marker, seconds)
    return f"finished: {result.split()[0]}"


class Unserializable:
    """A plain object instance: not serializable on purpose."""


@step
async def returns_object() -> object:
    return Unserializable()


@workflow(name="bad_step_result")
async def bad_step_result() -> str:
    try:
        await returns_object()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@step
async def echo(value: object) -> object:
    return value


@workflow(name="bad_step_args")
async def bad_step_args() -> object:
    return await echo({"conn": Unserializable()})


@step
async def big_result(size: int) -> str:
    return "x" * size


@workflow(name="oversize_result")
async def oversize_result(size: int) -> str:
    return await big_result(size)


class WeirdError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.handle = Unserializable()
        self.lock = __import__("threading").Lock()


@step(max_retries=0)
async def raises_weird() -> None:
    raise WeirdError("weird failure with unserializable attributes")


@workflow(name="weird_error")
async def weird_error() -> None:
    await raises_weird()


@workflow(name="blocks_loop")
async def blocks_loop(seconds: float) -> str:
    time.sleep(seconds)  # noqa: ASYNC251 -- deliberately blocking: the worker must report it
    return await echo("survived")


@step
async def fail_fatal() -> None:
    raise FatalError("nope")


@workflow(name="versioned")
async def versioned() -> str:
    """Its first step's name depends on WF_CODE_VERSION: a code change between two workers."""
    if os.environ.get("WF_CODE_VERSION", "1") == "1":
        first = await echo("v1")
    else:
        first = await big_result(2)
    await sleep("60s")
    return str(first)


@workflow(name="sleeps_then_adds")
async def sleeps_then_adds(x: int) -> int:
    await sleep("1s")
    return int(str(await echo(x + 1)))


@workflow(name="echo_wf")
async def echo_wf(value: object) -> object:
    return await echo(value)


@step
async def long_step(seconds: float) -> int:
    """Outlives the lease several times over; the heartbeat must keep the run with its worker."""
    import asyncio

    await asyncio.sleep(seconds)
    from worker import get_step_metadata

    return get_step_metadata().attempt


@workflow(name="long_running")
async def long_running(seconds: float) -> int:
    return int(str(await long_step(seconds)))


@step
async def crash_worker() -> None:
    """Kills the worker process running it: the poison-pill case for dead-lettering."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@workflow(name="poison")
async def poison() -> None:
    await crash_worker()


@workflow(name="sleeps_long")
async def sleeps_long() -> str:
    await sleep("30s")
    return "woke"


@step(max_retries=1)
async def crash_worker_twice() -> None:
    """Kills its worker on every attempt: after its attempts are used up it must fail, not loop."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@workflow(name="survives_poison_step")
async def survives_poison_step() -> str:
    try:
        await crash_worker_twice()
    except Exception as exc:
        return f"caught: {exc}"
    return "not reached"


@step(max_retries=0)
async def exits_async(code: int) -> None:
    """Raises SystemExit in the worker's event loop: a step failure, never the end of the worker."""
    raise SystemExit(code)


@step(max_retries=0)
def exits_in_thread(code: int) -> None:
    """Raises SystemExit in the worker's thread pool (a sync step)."""
    raise SystemExit(code)


@step(max_retries=0)
async def interrupts() -> None:
    raise KeyboardInterrupt("stored interrupt")


@workflow(name="step_exits")
async def step_exits(code: int, in_thread: bool) -> None:
    await (exits_in_thread(code) if in_thread else exits_async(code))


@workflow(name="step_interrupts")
async def step_interrupts() -> str:
    try:
        await interrupts()
    except Exception as exc:
        return f"{type(exc).__name__}|{getattr(exc, 'type_name', '')}|{exc}"
    return "no error"


@step(max_retries=0)
async def fails_plainly(message: str) -> None:
    raise ValueError(message)


@workflow(name="caught_then_hook")
async def caught_then_hook(token: str) -> str:
    """Catches a step failure, then waits on a hook: a new worker replays the failure on resume."""
    try:
        await fails_plainly("plain failure")
    except Exception as exc:
        caught = f"{type(exc).__name__}|{getattr(exc, 'type_name', '')}|{exc}"
    else:
        caught = "no error"
    await create_hook(token=token)
    return caught


@workflow(name="echo_then_hook")
async def echo_then_hook(token: str) -> list[object]:
    """One step, then a wait on a hook: a parked run whose log a test can alter."""
    first = await echo("before")
    payload = await create_hook(token=token)
    return [first, payload]


@workflow(name="exits_the_process")
async def exits_the_process() -> None:
    """Workflow code (not a step) that calls sys.exit: the run fails, the worker lives on."""
    import sys

    await echo("before")
    sys.exit(5)
