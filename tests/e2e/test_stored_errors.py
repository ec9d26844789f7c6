"""Errors that end processes (SystemExit...) raised by steps or stored in a log: workers live on."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.e2e import fault_workflows as fw
from tests.support import WorkerProcess, eventually, hook_is_live
from worker import (
    RemoteError,
    WorkflowRunFailedError,
    resume_hook,
    start,
)
from world_redis import RedisWorld

MODULE = "tests.e2e.fault_workflows"
SYSTEM_EXIT = '{"$t":"exc","cls":"builtins:SystemExit","args":[7]}'

Fields = dict[str, str]


async def rewrite_log(
    world: RedisWorld, run_id: str, change: Callable[[str, Fields], Fields | None]
) -> None:
    """Rewrite a run's event stream entry by entry, keeping every entry id.

    Stream entries are immutable and XADD only appends after the last id, so the stream is
    rebuilt: ``change(entry id, fields)`` returns the new fields, or None to drop the entry.
    """
    key = world.keys.events(run_id)
    entries = await world.redis.xrange(key, "-", "+")
    async with world.redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        for entry_id, fields in entries:
            new = change(entry_id, dict(fields))
            if new is not None:
                pipe.xadd(key, new, id=entry_id)  # type: ignore[arg-type]
        await pipe.execute()


async def still_serves(worker: WorkerProcess) -> None:
    """The worker process is alive and completes a new run."""
    assert worker.proc.poll() is None, worker.output()
    run = await start(fw.echo_wf, "still here")
    assert await run.result(timeout=20) == "still here"
    assert worker.proc.poll() is None


@pytest.mark.parametrize("in_thread", [False, True], ids=["async_step", "sync_step"])
async def test_step_raising_system_exit_fails_the_step_not_the_worker(
    world: RedisWorld,
    start_worker,  # type: ignore[no-untyped-def]
    in_thread: bool,
) -> None:
    """A step raising SystemExit(7) is recorded as failed, the run fails naming SystemExit, and
    the same worker process lives on and runs the next run."""
    worker = start_worker(MODULE)
    run = await start(fw.step_exits, 7, in_thread)
    with pytest.raises(WorkflowRunFailedError) as err:
        await run.result(timeout=20)
    cause = err.value.__cause__
    assert isinstance(cause, RemoteError) and cause.type_name == "builtins:SystemExit"
    assert str(cause) == "7" and "SystemExit" in cause.remote_traceback
    assert [s.status for s in await run.steps()] == ["failed"]
    await still_serves(worker)


async def test_step_raising_keyboard_interrupt_is_caught_as_remote_error(
    world: RedisWorld,
    start_worker,  # type: ignore[no-untyped-def]
) -> None:
    """A step raising KeyboardInterrupt reaches the workflow as a RemoteError its
    ``except Exception`` catches; the worker lives on."""
    worker = start_worker(MODULE)
    run = await start(fw.step_interrupts)
    result = await run.result(timeout=20)
    assert result == "RemoteError|builtins:KeyboardInterrupt|stored interrupt"
    await still_serves(worker)


async def test_replayed_system_exit_error_leaves_the_worker_alive(
    world: RedisWorld,
    start_worker,  # type: ignore[no-untyped-def]
) -> None:
    """A recorded step_failed rewritten to a SystemExit payload is replayed by a new worker: the
    workflow catches it as RemoteError and completes; the worker process lives on."""
    first = start_worker(MODULE)
    token = "stored-system-exit"
    run = await start(fw.caught_then_hook, token)

    await eventually(
        lambda: hook_is_live(token), 20, what="the run to catch its step failure and wait on a hook"
    )
    assert first.stop() == 0  # the next worker replays the run from its log, not from a cache

    def to_system_exit(entry_id: str, fields: Fields) -> Fields:
        if fields["type"] == "step_failed":
            assert json.loads(fields["error"])["cls"] == "builtins:ValueError"
            fields["error"] = SYSTEM_EXIT
        return fields

    await rewrite_log(world, run.run_id, to_system_exit)
    second = start_worker(MODULE)
    await resume_hook(token, {"go": True})
    assert await run.result(timeout=20) == "RemoteError|builtins:SystemExit|7"
    await still_serves(second)
