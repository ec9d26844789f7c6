"""Cancellation, leases of long steps, dead letters and graceful shutdown, with real workers."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.e2e import fault_workflows as fw
from tests.e2e.test_bad_input import wait_for_event
from tests.support import eventually
from worker import WorkflowError, WorkflowRunCancelledError, WorkflowRunFailedError, start
from world_redis import RedisWorld

FAST_LEASE = {"WORKFLOW_LEASE_MS": "1500", "WORKFLOW_HEARTBEAT_MS": "200"}


async def test_cancel_pending_run(world: RedisWorld) -> None:
    """A run cancelled before any worker picked it up ends cancelled; result() raises."""
    run = await start(fw.sleeps_then_adds, 1)
    assert await run.status() == "pending"
    await run.cancel()
    assert await run.status() == "cancelled"
    with pytest.raises(WorkflowRunCancelledError):
        await run.result(timeout=5)
    types = [e.__struct_config__.tag for e in await run.events()]
    assert types == ["run_created", "run_cancelled"]


async def test_cancel_running_run_mid_step(world: RedisWorld, start_worker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A run cancelled while its step runs ends cancelled; the step still finishes and nothing follows."""
    marker = tmp_path / "started"
    start_worker("tests.e2e.fault_workflows")
    run = await start(fw.killable, str(marker), 1.0)
    await eventually(marker.exists, what="the step to start")
    await run.cancel()
    with pytest.raises(WorkflowRunCancelledError):
        await run.result(timeout=10)

    async def step_completed() -> bool:
        return [s.status for s in await run.steps()] == ["completed"]

    await eventually(step_completed, 10, what="the in-flight step to finish")
    assert [s.status for s in await run.steps()] == ["completed"]
    types = [e.__struct_config__.tag for e in await run.events()]
    assert types[-1] in ("run_cancelled", "step_completed") and "run_completed" not in types
    assert await run.status() == "cancelled"


async def test_cancel_finished_run_is_refused(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """Cancelling a completed run raises a clear error; cancelling a cancelled run is a no-op."""
    start_worker("tests.e2e.fault_workflows")
    done = await start(fw.echo_wf, "x")
    assert await done.result(timeout=20) == "x"
    with pytest.raises(WorkflowError, match="already completed"):
        await done.cancel()
    sleeping = await start(fw.sleeps_long)
    await wait_for_event(sleeping, "wait_created")
    await sleeping.cancel()
    await sleeping.cancel()
    assert await sleeping.status() == "cancelled"
    types = [e.__struct_config__.tag for e in await sleeping.events()]
    assert types.count("run_cancelled") == 1


async def test_heartbeat_keeps_a_long_step_with_its_worker(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """A step running 3x longer than the lease is not taken over by another worker: attempt stays 1."""
    start_worker("tests.e2e.fault_workflows", **FAST_LEASE)
    start_worker("tests.e2e.fault_workflows", **FAST_LEASE)
    run = await start(fw.long_running, 4.5)
    assert await run.result(timeout=30) == 1
    types = [e.__struct_config__.tag for e in await run.events()]
    assert types.count("step_started") == 1


async def test_poison_run_is_dead_lettered(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """A run whose step kills every worker that takes it goes to the dead-letter stream and fails."""
    env = {**FAST_LEASE, "WORKFLOW_MAX_DELIVERIES": "2"}
    run = await start(fw.poison)
    workers: list[object] = []

    async def failed_or_restart() -> bool:
        if await run.status() == "failed":
            return True
        if not workers or workers[-1].proc.poll() is not None:  # type: ignore[attr-defined]
            # a worker may take the poison run and die before it reports its start
            with contextlib.suppress(RuntimeError):
                workers.append(start_worker("tests.e2e.fault_workflows", **env))
        return False

    await eventually(failed_or_restart, 40, what="the poison run to be dead-lettered")
    with pytest.raises(WorkflowRunFailedError, match="delivered"):
        await run.result(timeout=1)
    entries = await world.redis.xrange(world.keys.dlq(world.keys.partition(run.run_id)))
    assert [f["run"] for _, f in entries] == [run.run_id]
    assert int(entries[0][1]["deliveries"]) > 2


async def test_step_whose_worker_always_dies_fails_after_its_attempts(
    world: RedisWorld, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """A step that kills its worker on every attempt fails once its attempts are used up (here 2);
    the workflow catches the failure and completes."""
    run = await start(fw.survives_poison_step)
    workers: list[object] = []

    async def finished_or_restart() -> bool:
        if await run.status() in ("completed", "failed"):
            return True
        if not workers or workers[-1].proc.poll() is not None:  # type: ignore[attr-defined]
            with contextlib.suppress(RuntimeError):
                workers.append(start_worker("tests.e2e.fault_workflows", **FAST_LEASE))
        return False

    await eventually(finished_or_restart, 90, what="the run to finish")
    result = await run.result(timeout=1)
    assert result.startswith("caught: ") and "exceeded max retries (1 retries)" in result
    steps = await run.steps()
    assert [(s.status, s.attempt) for s in steps] == [("failed", 2)]


async def test_sigterm_drains_and_hands_over(
    world: RedisWorld, start_worker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM during a step: the worker finishes the step, exits 0, and another worker completes the run."""
    marker = tmp_path / "started"
    first = start_worker("tests.e2e.fault_workflows")
    run = await start(fw.killable, str(marker), 1.0)
    await eventually(marker.exists, what="the step to start")
    assert first.stop(timeout=20) == 0
    steps = await run.steps()
    assert [(s.status, s.attempt) for s in steps] == [("completed", 1)]
    start_worker("tests.e2e.fault_workflows")
    assert await run.result(timeout=20) == "finished: done"
