"""End-to-end scenarios ported from the peer's e2e suite: real worker processes, real Redis."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime

import pytest

from tests.e2e import workflows as wf
from tests.support import all_keys
from worker import (
    Run,
    WorkflowRunCancelledError,
    WorkflowRunFailedError,
    get_run,
    start,
)
from world_redis import RedisWorld

WORKFLOWS = "tests.e2e.workflows"


async def event_types(run: Run) -> list[str]:
    return [str(e.__struct_config__.tag) for e in await run.events()]


async def wait_for_event(run: Run, event_type: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while event_type not in await event_types(run):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{run} has no {event_type} event after {timeout} s")
        await asyncio.sleep(0.05)


# -- promise combinators -------------------------------------------------------------------------


async def test_promise_all(world: RedisWorld, start_worker) -> None:
    """promiseAll: gather of three steps yields 'ABC' and all three are created in one suspension."""
    start_worker(WORKFLOWS)
    run = await start(wf.promise_all)
    assert await run.result(timeout=30) == "ABC"
    types = await event_types(run)
    first_completed = types.index("step_completed")
    assert types[:first_completed].count("step_created") == 3
    assert types.count("step_completed") == 3


async def test_promise_race(world: RedisWorld, start_worker) -> None:
    """promiseRace: asyncio.wait(FIRST_COMPLETED) over three steps returns the fastest, 'B'."""
    start_worker(WORKFLOWS)
    run = await start(wf.promise_race)
    assert await run.result(timeout=30) == "B"


async def test_promise_race_as_completed(world: RedisWorld, start_worker) -> None:
    """promiseRace: the first result of asyncio.as_completed over three steps is 'B'."""
    start_worker(WORKFLOWS)
    run = await start(wf.promise_race_as_completed)
    assert await run.result(timeout=30) == "B"


async def test_promise_any(world: RedisWorld, start_worker) -> None:
    """promiseAny: as_completed skipping a fatal failure returns the first success, 'B'."""
    start_worker(WORKFLOWS)
    run = await start(wf.promise_any)
    assert await run.result(timeout=30) == "B"


async def test_promise_race_stress(world: RedisWorld, start_worker) -> None:
    """promiseRaceStress: racing the remaining steps again and again yields them in finish order."""
    start_worker(WORKFLOWS)
    run = await start(wf.promise_race_stress)
    assert await run.result(timeout=30) == [0, 1, 2, 3, 4]


# -- sleeps --------------------------------------------------------------------------------------


async def test_sleeping(world: RedisWorld, start_worker) -> None:
    """sleeping: the workflow clock advances by at least the slept second across a durable sleep."""
    start_worker(WORKFLOWS)
    run = await start(wf.sleeping)
    result = await run.result(timeout=30)
    assert result["startMs"] < result["endMs"]
    assert result["endMs"] - result["startMs"] >= 1000


async def test_parallel_sleeps(world: RedisWorld, start_worker) -> None:
    """parallel sleeps: ten gathered one-second sleeps run concurrently, not one after another."""
    start_worker(WORKFLOWS)
    began = time.monotonic()
    run = await start(wf.parallel_sleeps)
    assert await run.result(timeout=30) == "done"
    elapsed = time.monotonic() - began
    assert 0.9 < elapsed < 5


# -- values and metadata -------------------------------------------------------------------------


async def test_null_byte(world: RedisWorld, start_worker) -> None:
    """nullByte: a step result holding a NUL character comes back unchanged."""
    start_worker(WORKFLOWS)
    run = await start(wf.null_byte)
    assert await run.result(timeout=30) == "null byte \x00"


async def test_workflow_and_step_metadata(world: RedisWorld, start_worker) -> None:
    """workflowAndStepMetadata: workflow and step see the same run metadata; the step its own."""
    start_worker(WORKFLOWS)
    run = await start(wf.workflow_and_step_metadata)
    result = await run.result(timeout=30)
    workflow_md, step_md = result["workflowMetadata"], result["stepMetadata"]
    assert workflow_md == result["innerWorkflowMetadata"]
    assert set(workflow_md) == {"run_id", "workflow_name", "started_at", "url"}
    assert workflow_md["run_id"] == run.run_id
    assert workflow_md["workflow_name"] == "workflow_and_step_metadata"
    assert isinstance(workflow_md["started_at"], datetime)
    assert step_md["attempt"] >= 1
    assert step_md["step_id"].startswith("step_")
    assert isinstance(step_md["started_at"], datetime)
    assert not {"step_id", "step_name", "attempt"} & set(workflow_md)


# -- retries and errors --------------------------------------------------------------------------


async def test_retry_attempt_counter(world: RedisWorld, start_worker) -> None:
    """retryAttemptCounter: a step failing twice succeeds on its third attempt and reports it."""
    start_worker(WORKFLOWS)
    run = await start(wf.retry_attempt_counter)
    assert await run.result(timeout=30) == {"finalAttempt": 3}
    (step_info,) = await run.steps()
    assert step_info.status == "completed"
    assert step_info.attempt == 3


async def test_retryable_and_fatal_error(world: RedisWorld, start_worker) -> None:
    """retryableAndFatalError: retry_after delays the retry; a FatalError is catchable in code."""
    start_worker(WORKFLOWS)
    run = await start(wf.retryable_and_fatal_error)
    assert await run.result(timeout=30) == {
        "gotFatalError": True,
        "retryableResult": {"attempt": 2},
    }
    steps = {s.name.rpartition(":")[2]: s for s in await run.steps()}
    retried = steps["retry_once_later"]
    assert retried.status == "completed" and retried.attempt == 2
    assert retried.started_at is not None and retried.completed_at is not None
    assert retried.completed_at - retried.started_at >= 1500
    fatal = steps["fail_fatally"]
    assert fatal.status == "failed" and fatal.attempt == 1


async def test_max_retries_zero(world: RedisWorld, start_worker) -> None:
    """maxRetries=0: steps run exactly once; a failure is final at attempt 1 and catchable."""
    start_worker(WORKFLOWS)
    run = await start(wf.max_retries_zero)
    assert await run.result(timeout=30) == {"succeeded": 1, "failed": "failed on attempt 1"}
    assert await run.status() == "completed"
    steps = {s.name.rpartition(":")[2]: s for s in await run.steps()}
    assert steps["succeed_without_retries"].status == "completed"
    assert steps["succeed_without_retries"].attempt == 1
    assert steps["fail_without_retries"].status == "failed"
    assert steps["fail_without_retries"].attempt == 1
    assert "step_retrying" not in await event_types(run)


async def test_cross_file_error(world: RedisWorld, start_worker) -> None:
    """crossFileError: an error raised in an imported module keeps its message and its frames."""
    start_worker(WORKFLOWS)
    run = await start(wf.cross_file_error)
    with pytest.raises(WorkflowRunFailedError) as caught:
        await run.result(timeout=30)
    cause = caught.value.__cause__
    assert cause is not None
    assert "Error from imported helper module" in str(cause)
    tb = getattr(cause, "__wf_traceback__", "") or getattr(cause, "remote_traceback", "")
    for name in ("wf_helpers", "throw_error", "call_thrower", "cross_file_error"):
        assert name in tb, f"{name!r} missing from traceback:\n{tb}"
    assert await run.status() == "failed"


# -- steps as plain functions and as values ------------------------------------------------------


async def test_step_direct_call(world: RedisWorld, start_worker) -> None:
    """stepDirectCall: a step called outside any workflow runs inline and writes nothing."""
    assert await wf.add(3, 5) == 8
    runs, _ = await world.list_runs()
    assert runs == []
    # only the deployment's settings, stored when the fixture first used the World
    assert await all_keys(world, f"{world.keys.prefix}:*") == [world.keys.config()]


async def test_step_function_passing(world: RedisWorld, start_worker) -> None:
    """stepFunctionPassing: a step passed to a step runs inline there; one step is recorded."""
    start_worker(WORKFLOWS)
    run = await start(wf.step_function_passing, 10)
    assert await run.result(timeout=30) == 40
    assert (await event_types(run)).count("step_completed") == 1


async def test_step_function_with_closure(world: RedisWorld, start_worker) -> None:
    """stepFunctionWithClosure: a nested step passed to a step keeps its closure variables."""
    start_worker(WORKFLOWS)
    run = await start(wf.step_function_with_closure, 7)
    assert await run.result(timeout=30) == "Wrapped: Result: 21"


async def test_closure_variable(world: RedisWorld, start_worker) -> None:
    """closureVariable: a step defined inside the workflow uses workflow-scope variables."""
    start_worker(WORKFLOWS)
    run = await start(wf.closure_variable, 7)
    assert await run.result(timeout=30) == "Result: 21"


# -- runs started from steps, cancellation -------------------------------------------------------


async def test_spawn_workflow_from_step(world: RedisWorld, start_worker) -> None:
    """spawnWorkflowFromStep: a step starts a child run, another step awaits its result."""
    start_worker(WORKFLOWS)
    run = await start(wf.spawn_workflow_from_step, 42)
    result = await run.result(timeout=30)
    assert result["parentInput"] == 42
    assert re.match(r"^wrun_", result["childRunId"])
    assert result["childResult"] == {"childResult": 84, "originalValue": 42}
    assert await run.status() == "completed"
    assert await get_run(result["childRunId"]).status() == "completed"


async def test_cancel_sleeping_run(world: RedisWorld, start_worker) -> None:
    """cancel: a sleeping run can be cancelled; its result raises; cancelling again is a no-op."""
    start_worker(WORKFLOWS)
    run = await start(wf.long_sleep)
    await wait_for_event(run, "wait_created")
    await run.cancel()
    with pytest.raises(WorkflowRunCancelledError):
        await run.result(timeout=30)
    assert await run.status() == "cancelled"
    await run.cancel()
    assert await run.status() == "cancelled"


# -- world testing -------------------------------------------------------------------------------


async def test_idempotency(world: RedisWorld, start_worker) -> None:
    """world-testing idempotency: 10 then 100 gathered steps each complete exactly once."""
    start_worker(WORKFLOWS)
    run = await start(wf.idempotency)
    result = await run.result(timeout=60)
    assert result == {"numbers": list(range(110))}
    assert len(result["numbers"]) == 110
    assert (await event_types(run)).count("step_completed") == 110
    steps = await run.steps()
    assert len(steps) == 110 and all(s.status == "completed" and s.attempt == 1 for s in steps)


async def test_addition(world: RedisWorld, start_worker) -> None:
    """addition (world-testing): a one-step workflow adds 1 and 2 in a run with a wrun_ id."""
    start_worker(WORKFLOWS)
    run = await start(wf.addition, 1, 2)
    assert re.match(r"^wrun_", run.run_id)
    assert await run.result(timeout=30) == 3
