"""A wake-up that reaches a worker while it releases the run's lease is not lost."""

from __future__ import annotations

from collections.abc import Sequence

from tests.e2e import fault_workflows as fw
from tests.support import RedisServer, eventually, running_worker
from worker import resume_hook, start
from worker._worker import Worker, WorkerConfig
from worker._world import Wakeup
from world_redis import RedisWorld


class ResumeDuringRelease(RedisWorld):
    """A real RedisWorld that, once the lease of ``victim`` has been released, resumes its hook and
    lets the release answer only after the worker has read the hook's wake-up: the interleaving
    that loses a run when a release reply and a wake-up arrive in the same turn of the loop."""

    victim = ""
    token = ""
    read: set[str]
    resumed = False

    async def read_wakeups(self, consumer: str, count: int, block_ms: int) -> list[Wakeup]:
        got = await super().read_wakeups(consumer, count, block_ms)
        # the worker dispatches these in the same step of its read loop as this return
        self.read.update(w.message_id for w in got if w.run_id == self.victim)
        return got

    async def release_many(
        self, token: str, runs: Sequence[tuple[str, int, Wakeup | None]]
    ) -> list[tuple[str, int]]:
        replies = await super().release_many(token, runs)
        for (run_id, _, _), (code, _) in zip(runs, replies, strict=True):
            if run_id == self.victim and code == "ok" and not self.resumed:
                self.resumed = True
                await self._resume_and_wait_for_read()
        return replies

    async def _resume_and_wait_for_read(self) -> None:
        before = set(self.read)
        await resume_hook(self.token, "late", self, request_id="r1")
        await eventually(lambda: self.read - before, 10, what="the hook's wake-up read")


async def test_hook_resumed_while_lease_is_released(redis_server: RedisServer, prefix: str) -> None:
    """A hook resumed just after its run's lease was released, whose wake-up the worker reads
    before the release's answer reaches the run: the run still finishes (the wake-up used to be
    acknowledged as a nudge to the departing holder, and the run waited for good)."""
    world = ResumeDuringRelease.from_url(redis_server.url, prefix=prefix)
    world.read = set()
    world.token = f"tok-{prefix}"
    config = WorkerConfig(concurrency=10, lease_ms=2000, heartbeat_ms=200, drain_timeout_s=1)
    try:
        async with running_worker(Worker(world, config)):
            await world.ensure_groups()
            world.victim = "wrun_01JRELEASERACE000000000001"
            run = await start(fw.echo_then_hook, world.token, world=world, run_id=world.victim)
            assert await run.result(timeout=20) == ["before", "late"]
            assert world.resumed
    finally:
        await world.close()
