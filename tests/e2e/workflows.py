"""Workflows of the end-to-end suite, ported from the peer's e2e workbench (SPEC.md 8.1)."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime
from typing import Any

import msgspec

from tests.e2e.wf_helpers import call_thrower
from worker import (
    FatalError,
    RetryableError,
    get_run,
    get_step_metadata,
    get_workflow_metadata,
    now,
    sleep,
    start,
    step,
    workflow,
)


@step
async def add(a: int, b: int) -> int:
    return a + b


@workflow(name="add_ten")
async def add_ten(x: int) -> int:
    a = await add(x, 2)
    b = await add(a, 3)
    return await add(b, 5)


# -- promise combinators -------------------------------------------------------------------------


@step
async def upper_after_random_delay(letter: str) -> str:
    await asyncio.sleep(random.uniform(0, 0.3))
    return letter.upper()


@workflow(name="promise_all")
async def promise_all() -> str:
    letters = await asyncio.gather(*(upper_after_random_delay(c) for c in "abc"))
    return "".join(letters)


@step
async def delayed_letter(seconds: float, letter: str) -> str:
    await asyncio.sleep(seconds)
    return letter


@workflow(name="promise_race")
async def promise_race() -> str:
    calls = [delayed_letter(1.0, "a"), delayed_letter(0.05, "b"), delayed_letter(2.0, "c")]
    done, _ = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
    return next(iter(done)).result().upper()


@workflow(name="promise_race_as_completed")
async def promise_race_as_completed() -> str:
    calls = [delayed_letter(1.0, "a"), delayed_letter(0.05, "b"), delayed_letter(2.0, "c")]
    for first in asyncio.as_completed(calls):
        return (await first).upper()
    raise AssertionError("unreachable")


@step
async def fail_fatally() -> str:
    raise FatalError("this step always fails")


@workflow(name="promise_any")
async def promise_any() -> str:
    calls = [fail_fatally(), delayed_letter(0.1, "b"), delayed_letter(0.6, "c")]
    errors: list[BaseException] = []
    for next_done in asyncio.as_completed(calls):
        try:
            return (await next_done).upper()
        except Exception as exc:
            errors.append(exc)
    raise ExceptionGroup("all steps failed", errors)


@step
async def sleep_then_index(index: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return index


@workflow(name="promise_race_stress")
async def promise_race_stress() -> list[int]:
    remaining = {sleep_then_index(i, i * 0.3) for i in range(5)}
    winners: list[int] = []
    while remaining:
        done, remaining = await asyncio.wait(remaining, return_when=asyncio.FIRST_COMPLETED)
        winners.extend(sorted(fut.result() for fut in done))
    return winners


# -- sleeps --------------------------------------------------------------------------------------


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@workflow(name="sleeping")
async def sleeping() -> dict[str, int]:
    start_ms = _epoch_ms(now())
    await sleep("1s")
    return {"startMs": start_ms, "endMs": _epoch_ms(now())}


@workflow(name="parallel_sleeps")
async def parallel_sleeps() -> str:
    await asyncio.gather(*(sleep("1s") for _ in range(10)))
    return "done"


# -- values and metadata -------------------------------------------------------------------------


@step
async def null_byte_step() -> str:
    return "null byte \x00"


@workflow(name="null_byte")
async def null_byte() -> str:
    return await null_byte_step()


@step
async def read_metadata() -> dict[str, Any]:
    return {
        "step": msgspec.structs.asdict(get_step_metadata()),
        "workflow": msgspec.structs.asdict(get_workflow_metadata()),
    }


@workflow(name="workflow_and_step_metadata")
async def workflow_and_step_metadata() -> dict[str, Any]:
    workflow_metadata = msgspec.structs.asdict(get_workflow_metadata())
    from_step = await read_metadata()
    return {
        "workflowMetadata": workflow_metadata,
        "stepMetadata": from_step["step"],
        "innerWorkflowMetadata": from_step["workflow"],
    }


# -- retries and errors --------------------------------------------------------------------------


@step
async def fail_twice() -> int:
    attempt = get_step_metadata().attempt
    if attempt < 3:
        raise Exception(f"attempt {attempt} fails")
    return attempt


@workflow(name="retry_attempt_counter")
async def retry_attempt_counter() -> dict[str, int]:
    return {"finalAttempt": await fail_twice()}


@step
async def retry_once_later() -> dict[str, int]:
    attempt = get_step_metadata().attempt
    if attempt == 1:
        raise RetryableError("try again later", retry_after=1.5)
    return {"attempt": attempt}


@workflow(name="retryable_and_fatal_error")
async def retryable_and_fatal_error() -> dict[str, Any]:
    retryable_result = await retry_once_later()
    got_fatal = False
    try:
        await fail_fatally()
    except FatalError:
        got_fatal = True
    return {"gotFatalError": got_fatal, "retryableResult": retryable_result}


@step(max_retries=0)
async def succeed_without_retries() -> int:
    return get_step_metadata().attempt


@step(max_retries=0)
async def fail_without_retries() -> int:
    raise Exception(f"failed on attempt {get_step_metadata().attempt}")


@workflow(name="max_retries_zero")
async def max_retries_zero() -> dict[str, Any]:
    succeeded = await succeed_without_retries()
    try:
        await fail_without_retries()
    except Exception as exc:
        failed = str(exc)
    else:
        failed = ""
    return {"succeeded": succeeded, "failed": failed}


@workflow(name="cross_file_error")
async def cross_file_error() -> None:
    call_thrower()


# -- step functions as values --------------------------------------------------------------------


@step
async def double_number(x: int) -> int:
    return x * 2


@step
async def step_with_step_fn_arg(fn: Any, x: int) -> int:
    return await fn(x) * 2


@workflow(name="step_function_passing")
async def step_function_passing(x: int) -> int:
    return await step_with_step_fn_arg(double_number, x)


@step
async def wrapper(fn: Any, x: int) -> str:
    return "Wrapped: " + await fn(x)


@workflow(name="step_function_with_closure")
async def step_function_with_closure(x: int) -> str:
    multiplier = 3
    prefix = "Result: "

    @step
    async def calculate(value: int) -> str:
        return f"{prefix}{value * multiplier}"

    return await wrapper(calculate, x)


@workflow(name="closure_variable")
async def closure_variable(x: int) -> str:
    multiplier = 3
    prefix = "Result: "

    @step
    async def calculate() -> str:
        return f"{prefix}{x * multiplier}"

    return await calculate()


# -- workflows started from steps ----------------------------------------------------------------


@workflow(name="child_workflow")
async def child_workflow(value: int) -> dict[str, int]:
    return {"childResult": await double_number(value), "originalValue": value}


@step
async def spawn_child(value: int) -> str:
    return (await start(child_workflow, value)).run_id


@step
async def await_child(run_id: str) -> Any:
    return await get_run(run_id).result(timeout=30)


@workflow(name="spawn_workflow_from_step")
async def spawn_workflow_from_step(value: int) -> dict[str, Any]:
    child_run_id = await spawn_child(value)
    child_result = await await_child(child_run_id)
    return {"parentInput": value, "childRunId": child_run_id, "childResult": child_result}


@workflow(name="long_sleep")
async def long_sleep() -> str:
    await sleep("30s")
    return "woke up"


# -- world testing -------------------------------------------------------------------------------


@step
async def identity(index: int) -> int:
    return index


@workflow(name="idempotency")
async def idempotency() -> dict[str, list[int]]:
    first = await asyncio.gather(*(identity(i) for i in range(10)))
    second = await asyncio.gather(*(identity(10 + i) for i in range(100)))
    return {"numbers": [*first, *second]}


@workflow(name="addition")
async def addition(a: int, b: int) -> int:
    return await add(a, b)


@workflow(name="add_flow")
async def add_flow(a: int, b: int) -> int:
    """One step: ``a + b`` (the wf command tests start, rerun and inspect it)."""
    return await add(a, b)


@workflow(name="sleep_then_step")
async def sleep_then_step(seconds: int) -> int:
    """A durable sleep of ``seconds``, then one step."""
    await sleep(seconds)
    return await add(1, 2)
