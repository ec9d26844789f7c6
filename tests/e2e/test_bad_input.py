"""Bad input: each gets a clear, typed error or a failed run saying what was wrong; workers live on."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.e2e import fault_workflows as fw
from worker import (
    PayloadTooLargeError,
    SerializationError,
    WorkflowRunFailedError,
    start,
)
from world_redis import RedisWorld


async def test_unserializable_start_argument_fails_before_any_run(world: RedisWorld) -> None:
    """start() with an unserializable argument raises SerializationError naming the path; no run."""
    with pytest.raises(SerializationError) as err:
        await start(fw.echo_wf, {"a": [1, fw.Unserializable()]})
    assert '$[0]["a"][1]' in str(err.value)
    assert (await world.list_runs())[0] == []


async def test_wrong_argument_type_fails_at_start(world: RedisWorld) -> None:
    """A value of the wrong type for an annotated parameter fails at start(), naming the parameter."""
    with pytest.raises(SerializationError) as err:
        await start(fw.sleeps_then_adds, "not a number")
    assert "'x'" in str(err.value)
    assert (await world.list_runs())[0] == []


async def test_oversize_argument_is_refused(redis_server, prefix) -> None:  # type: ignore[no-untyped-def]
    """Arguments over the payload limit raise PayloadTooLargeError with sizes; nothing is stored."""
    w = RedisWorld.from_url(redis_server.url, prefix=prefix, max_payload_bytes=1000)
    try:
        with pytest.raises(PayloadTooLargeError) as err:
            await start(fw.echo_wf, "x" * 2000, world=w)
        assert err.value.limit == 1000 and err.value.size > 2000
        assert (await w.list_runs())[0] == []
    finally:
        await w.close()


async def test_unserializable_step_result_and_args(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """A step result that cannot be serialized fails the step (caught as SerializationError);
    step arguments that cannot be serialized fail the run, naming the path."""
    proc = start_worker("tests.e2e.fault_workflows")
    run = await start(fw.bad_step_result)
    result = await run.result(timeout=20)
    assert result.startswith("SerializationError") and "Unserializable" in result
    run2 = await start(fw.bad_step_args)
    with pytest.raises(WorkflowRunFailedError) as err:
        await run2.result(timeout=20)
    assert '$["args"][0]["conn"]' in str(err.value.__cause__)
    assert proc.proc.poll() is None


async def test_oversize_step_result_fails_the_step(redis_server, prefix, start_worker) -> None:  # type: ignore[no-untyped-def]
    """A step result over the configured limit fails the run with PayloadTooLargeError."""
    w = RedisWorld.from_url(redis_server.url, prefix=prefix)
    try:
        start_worker("tests.e2e.fault_workflows", WORKFLOW_MAX_PAYLOAD_BYTES="5000")
        run = await start(fw.oversize_result, 10_000, world=w)
        with pytest.raises(WorkflowRunFailedError) as err:
            await run.result(timeout=20)
        assert isinstance(err.value.__cause__, PayloadTooLargeError)
        assert "5000" in str(err.value.__cause__)
    finally:
        await w.close()


async def test_exception_with_unserializable_attributes(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """A step error whose attributes cannot be serialized is still recorded by type, message, traceback."""
    start_worker("tests.e2e.fault_workflows")
    run = await start(fw.weird_error)
    with pytest.raises(WorkflowRunFailedError) as err:
        await run.result(timeout=20)
    cause = err.value.__cause__
    assert type(cause).__name__ == "WeirdError"
    assert "weird failure with unserializable attributes" in str(cause)
    assert "raises_weird" in getattr(cause, "__wf_traceback__", "")
    steps = await run.steps()
    assert [s.status for s in steps] == ["failed"]


async def test_unknown_workflow_fails_the_run(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """A run of a workflow no worker registers fails with a message naming the workflow."""
    proc = start_worker("tests.e2e.fault_workflows")
    run = await start("no_such_workflow", 1)
    with pytest.raises(WorkflowRunFailedError) as err:
        await run.result(timeout=20)
    assert "no_such_workflow" in str(err.value) and "not registered" in str(err.value)
    assert proc.proc.poll() is None


async def test_malformed_wakeup_is_dead_lettered(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """A queue message without a valid run id goes to the dead-letter stream; the worker lives on."""
    proc = start_worker("tests.e2e.fault_workflows")
    r = world.redis
    ready, dlq = world.keys.ready(0), world.keys.dlq(0)
    await r.xadd(ready, {"garbage": "1"})
    await r.xadd(ready, {"run": "../../etc/passwd"})

    async def dead() -> int:
        return int(await r.xlen(dlq))

    for _ in range(200):
        if await dead() == 2:
            break
        await asyncio.sleep(0.05)
    assert await dead() == 2
    entries = await r.xrange(dlq)
    assert all("malformed" in fields["reason"] for _, fields in entries)
    run = await start(fw.sleeps_then_adds, 1)
    assert await run.result(timeout=20) == 2
    assert proc.proc.poll() is None


async def test_corrupt_event_fails_only_its_run(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """An event that does not parse fails its run with an error naming the event; others go on."""
    start_worker("tests.e2e.fault_workflows")
    run = await start(fw.sleeps_then_adds, 1)
    await wait_for_event(run, "wait_created")
    info = await run.info()
    await world.redis.xadd(
        world.keys.events(run.run_id), {"type": "step_exploded", "x": "1"}, id=f"{info.seq + 1}-0"
    )
    await world.redis.hset(world.keys.run(run.run_id), "seq", info.seq + 1)
    with pytest.raises(WorkflowRunFailedError) as err:
        await run.result(timeout=20)
    assert "step_exploded" in str(err.value) and str(info.seq + 1) in str(err.value)
    other = await start(fw.sleeps_then_adds, 5)
    assert await other.result(timeout=20) == 6


async def test_blocking_workflow_is_reported(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """A workflow that blocks the loop with synchronous work is detected and logged; it still completes."""
    proc = start_worker("tests.e2e.fault_workflows", WORKFLOW_BLOCK_WARN_SECONDS="0.3")
    run = await start(fw.blocks_loop, 0.8)
    assert await run.result(timeout=20) == "survived"
    out = proc.output()
    assert "workflow_blocking_loop" in out and "workflow_blocked_loop" in out
    assert "time.sleep" in out or "blocks_loop" in out


async def wait_for_event(run, event_type: str, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    """Poll the run's log until an event of this type appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e.__struct_config__.tag == event_type for e in await run.events()):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {event_type} event within {timeout} s")
