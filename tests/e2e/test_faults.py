"""Faults: a worker killed mid-step, code changed between workers, Redis restarted under a worker."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.e2e import fault_workflows as fw
from tests.e2e.test_bad_input import wait_for_event
from tests.support import RedisServer, WorkerProcess, eventually, wait_for
from worker import NondeterminismError, WorkflowRunFailedError, start
from world_redis import RedisWorld

FAST_LEASE = {"WORKFLOW_LEASE_MS": "1500", "WORKFLOW_HEARTBEAT_MS": "300"}


async def test_worker_killed_mid_step_is_reclaimed(
    world: RedisWorld, start_worker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A worker SIGKILLed during a step: another worker reclaims the run after the lease and finishes it."""
    marker = tmp_path / "started"
    first = start_worker("tests.e2e.fault_workflows", **FAST_LEASE)
    run = await start(fw.killable, str(marker), 1.0)
    wait_for(marker.exists, 20, what="the step to start in the first worker")
    assert marker.read_text() == str(first.proc.pid)
    first.kill()
    marker.unlink()
    second = start_worker("tests.e2e.fault_workflows", **FAST_LEASE)
    assert await run.result(timeout=30) == "finished: done"
    assert marker.read_text() == str(second.proc.pid)
    steps = await run.steps()
    assert len(steps) == 1 and steps[0].status == "completed" and steps[0].attempt == 2
    types = [e.__struct_config__.tag for e in await run.events()]
    assert types.count("step_started") == 2 and types.count("step_completed") == 1


async def test_worker_killed_holding_a_hi_band_run_is_reclaimed(
    world: RedisWorld, start_worker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A worker SIGKILLed during a step of a priority run (its wake-up read from the hi band):
    another worker reclaims that wake-up after the lease and finishes the run."""
    marker = tmp_path / "started"
    first = start_worker("tests.e2e.fault_workflows", **FAST_LEASE)
    run = await start(fw.killable, str(marker), 1.0, priority=50)
    wait_for(marker.exists, 20, what="the step to start in the first worker")
    keys = world.keys
    hi = keys.ready(keys.partition(run.run_id), "hi")
    assert (await world.redis.xpending(hi, "workers"))["pending"] == 1
    first.kill()
    marker.unlink()
    second = start_worker("tests.e2e.fault_workflows", **FAST_LEASE)
    assert await run.result(timeout=30) == "finished: done"
    assert marker.read_text() == str(second.proc.pid)
    steps = await run.steps()
    assert len(steps) == 1 and steps[0].status == "completed" and steps[0].attempt == 2

    async def settled() -> bool:  # the wake-up is acknowledged once the run is let go
        return bool((await world.redis.xpending(hi, "workers"))["pending"] == 0)

    await eventually(settled, what="the reclaimed wake-up to be acknowledged")


async def test_changed_step_between_workers_is_nondeterminism(
    world: RedisWorld, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """Workflow code changed between two worker processes: the run fails with NondeterminismError."""
    old = start_worker("tests.e2e.fault_workflows", WF_CODE_VERSION="1")
    run = await start(fw.versioned)
    await wait_for_event(run, "wait_created")
    old.stop()
    start_worker("tests.e2e.fault_workflows", WF_CODE_VERSION="2")
    # the new worker replays the run when it is woken (here: by a wake-up message)
    await world.redis.xadd(world.keys.ready(0), {"run": run.run_id, "reason": "test"})
    with pytest.raises(WorkflowRunFailedError) as err:
        await run.result(timeout=20)
    cause = err.value.__cause__
    assert isinstance(cause, NondeterminismError)
    assert "step_created" in str(cause) and "big_result" in str(cause) and "echo" in str(cause)


async def test_worker_survives_redis_restart(tmp_path: Path, prefix: str) -> None:
    """Redis restarted (with AOF) under a running worker: the worker reconnects and runs complete."""
    server = RedisServer.start("--appendonly", "yes", "--appendfsync", "always")
    env = {
        **os.environ,
        "WORKFLOW_REDIS_URL": server.url,
        "WORKFLOW_PREFIX": prefix,
        "WORKFLOW_LOG_FORMAT": "json",
        **FAST_LEASE,
    }
    proc = WorkerProcess.start(["tests.e2e.fault_workflows"], env, tmp_path / "w.log")
    w = RedisWorld.from_url(server.url, prefix=prefix)
    try:
        before = await start(fw.sleeps_then_adds, 1, world=w)
        assert await before.result(timeout=20) == 2
        during = await start(fw.sleeps_then_adds, 10, world=w)
        server.stop()
        t0 = time.monotonic()
        server = RedisServer.start(
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            port=server.port,
            directory=server.directory,
        )
        assert time.monotonic() - t0 < 15
        assert await during.result(timeout=30) == 11
        after = await start(fw.sleeps_then_adds, 20, world=w)
        assert await after.result(timeout=30) == 21
        assert proc.proc.poll() is None
    finally:
        await w.close()
        proc.stop()
        server.stop()
        await asyncio.sleep(0)
