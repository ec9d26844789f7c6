"""Faults met by an in-process worker on a real Redis: a run whose processing fails while Redis is
unreachable, and a worker whose clock disagrees with the server's."""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Sequence

import pytest

from tests.e2e import fault_workflows as fw
from tests.support import running_worker
from worker import start
from worker._errors import WorkflowRunFailedError, WorldUnavailableError
from worker._worker import Worker, WorkerConfig
from worker._world import Commit, CommitResult, Wakeup
from world_redis import RedisWorld


class Outage(RedisWorld):
    """A real RedisWorld through which one run meets an outage: its commit fails, its heartbeat
    fails, and the release of its lease hangs past the lease and then fails, as they do while
    Redis is stopped longer than the retry window."""

    victim = ""
    release_hang_s = 0.0

    async def commit(self, commits: Sequence[Commit]) -> list[CommitResult]:
        if self.victim and any(c.run_id == self.victim for c in commits):
            raise WorldUnavailableError("Redis unavailable: injected outage (commit)")
        return await super().commit(commits)

    async def heartbeat(
        self, token: str, run_ids: Sequence[str], wakeups: Sequence[Wakeup], lease_ms: int
    ) -> dict[str, int]:
        if self.victim and self.victim in run_ids:
            raise WorldUnavailableError("Redis unavailable: injected outage (heartbeat)")
        return await super().heartbeat(token, run_ids, wakeups, lease_ms)

    async def release_many(
        self, token: str, runs: Sequence[tuple[str, int, Wakeup | None]]
    ) -> list[tuple[str, int]]:
        if self.victim and any(r[0] == self.victim for r in runs):
            await asyncio.sleep(self.release_hang_s)
            self.victim = ""  # Redis is back from here on
            raise WorldUnavailableError("Redis unavailable: injected outage (release)")
        return await super().release_many(token, runs)


async def test_run_whose_processing_failed_is_recovered(redis_server, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """A run whose processing fails in an outage, and whose release hangs past the lease while the
    reclaim loop takes its wake-up back, is still finished afterwards (it used to be stranded:
    the reclaimed wake-up was acknowledged as a duplicate of the run being released)."""
    world = Outage.from_url(redis_server.url, prefix=prefix)
    lease_ms = 600
    world.release_hang_s = 4 * lease_ms / 1000
    config = WorkerConfig(concurrency=10, lease_ms=lease_ms, heartbeat_ms=150, drain_timeout_s=1)
    try:
        async with running_worker(Worker(world, config)):
            await world.ensure_groups()
            run = await start(
                fw.echo_wf, "ok", world=world, run_id="wrun_01JOUTAGE00000000000000001"
            )
            world.victim = run.run_id
            assert await run.result(timeout=30) == "ok"
    finally:
        await world.close()


async def test_timers_follow_the_server_clock(
    world: RedisWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose clock is 5 s behind the Redis server still wakes a run from its sleep when
    the server says it is due (it used to judge the timer not due and let the run go for good)."""
    skewed = types.SimpleNamespace(
        time=lambda: time.time() - 5.0, monotonic=time.monotonic, perf_counter=time.perf_counter
    )
    monkeypatch.setattr("worker._worker.time", skewed)
    config = WorkerConfig(concurrency=10, drain_timeout_s=1)
    async with running_worker(Worker(world, config)):
        run = await start(fw.sleeps_then_adds, 1)
        assert await run.result(timeout=20) == 2


async def test_every_step_gives_its_slot_back(world: RedisWorld) -> None:
    """Steps that complete and steps that fail each give their slot of the worker's concurrency
    back: with two slots, nine runs (three of them failing) all end, and both slots are free."""
    config = WorkerConfig(concurrency=2, drain_timeout_s=1)
    async with running_worker(Worker(world, config)) as worker:
        ok = [await start(fw.echo_wf, i) for i in range(6)]
        failing = [await start(fw.weird_error) for _ in range(3)]
        assert [await run.result(timeout=30) for run in ok] == list(range(6))
        for run in failing:
            with pytest.raises(WorkflowRunFailedError):
                await run.result(timeout=30)
        slots = worker.steps.slots
        assert (slots.free, len(slots.waiters)) == (2, 0)
