"""A testing kit for users' own tests: an isolated world with an in-process worker, and durable
time that skips ahead.

```python
from worker.testing import workflow_env

async def test_reminder():
    async with workflow_env("myapp.flows") as env:
        run = await env.start(send_reminder, "ann", days=30)
        assert await run.result(timeout=10) == "sent"   # 30 days of sleep: milliseconds here
```

``workflow_env(*modules)`` imports the modules, takes a fresh key prefix on the Redis at
``redis_url`` (default ``WORKFLOW_REDIS_URL``, else the embedded server that the engine starts
under ``.workflow/``), runs a worker in the test's event loop, makes its world the process's
world for the block, and deletes the prefix's keys at the end.

Durable time is skipped (``skip_time=True``): when the worker holds no run and no wake-up waits
in a ready stream, while a timer (a ``sleep()``, a retry delay) is set, the environment moves the
world's clock to that timer's time. The clock is an offset the scripts add to the server's time
for timers and waits only (leases keep the real time), so a workflow that sleeps 30 days
completes at once, and ``now()`` inside it has advanced by 30 days. ``env.skip(duration)`` moves
the clock by hand. Hooks are not skipped: a run waiting on a hook waits for the test to resume
it (unless it also sleeps: the skip then reaches the sleep's end first).

The pytest plugin (registered as ``workflows``) offers the same as a fixture, ``workflow_env``:
an async factory, ``async with workflow_env("myapp.flows") as env: ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

from ._client import Run, set_world, start
from ._duration import Duration, to_seconds
from ._registry import import_workflow_modules
from ._world import World

IDLE_CHECK_S = 0.01  # how often the environment looks for a moment to skip time


class WorkflowEnv:
    """An isolated world and its worker (see the module docstring)."""

    def __init__(self, world: Any, worker: Any) -> None:
        self.world = world
        self.worker = worker
        self.skipped_ms = 0  # how far the clock was moved, in total

    async def start(self, fn: Any, *args: Any, **kwargs: Any) -> Run:
        """``start()`` in this environment's world."""
        return await start(fn, *args, world=self.world, **kwargs)

    async def skip(self, duration: Duration) -> None:
        """Move the world's clock forward by ``duration`` (timers due by then fire)."""
        await self._advance(int(to_seconds(duration) * 1000))

    async def now_ms(self) -> int:
        """The world's clock: the server's time plus what was skipped."""
        return int(await self.world.server_time_ms()) + self.skipped_ms

    async def _advance(self, ms: int) -> None:
        if ms <= 0:
            return
        self.skipped_ms += ms
        keys, redis = self.world.keys, self.world.redis
        for p in range(keys.partitions):
            await redis.set(keys.clock(p), str(self.skipped_ms))
        self.worker.skip_clock(ms)
        await self.world.promote_timers()

    async def _skip_when_idle(self) -> None:
        """Skip to the next timer whenever nothing else can happen (see the module docstring)."""
        while True:
            await asyncio.sleep(IDLE_CHECK_S)
            if self.worker.held or not await self._queues_empty():
                continue
            due = await self._next_timer()
            if due is not None:
                await self._advance(due - await self.now_ms())

    async def _queues_empty(self) -> bool:
        keys, redis = self.world.keys, self.world.redis
        for p in range(keys.partitions):
            if await redis.xlen(keys.start_stream()):
                return False
            for stream in keys.ready_bands(p):
                if await redis.xlen(stream):
                    return False
        return True

    async def _next_timer(self) -> int | None:
        keys, redis = self.world.keys, self.world.redis
        dues = []
        for p in range(keys.partitions):
            first = await redis.zrange(keys.timers(p), 0, 0, withscores=True)
            if first:
                dues.append(int(first[0][1]))
        return min(dues, default=None)


@contextlib.asynccontextmanager
async def workflow_env(
    *modules: str,
    redis_url: str | None = None,
    prefix: str | None = None,
    skip_time: bool = True,
    concurrency: int = 50,
) -> AsyncIterator[WorkflowEnv]:
    """An isolated world with an in-process worker for ``modules`` (see the module docstring)."""
    import world_redis

    from ._worker import Worker, WorkerConfig

    import_workflow_modules(list(modules))
    url = redis_url or os.environ.get("WORKFLOW_REDIS_URL") or world_redis.ensure_embedded()
    world = world_redis.RedisWorld.from_url(url, prefix=prefix or f"wftest-{secrets.token_hex(6)}")
    config = WorkerConfig(concurrency=concurrency, deployment="test", drain_timeout_s=5.0)
    worker = Worker(world, config)
    previous = _current_world()
    set_world(world)
    running = asyncio.create_task(worker.run())
    env = WorkflowEnv(world, worker)
    skipper = asyncio.create_task(env._skip_when_idle()) if skip_time else None
    try:
        yield env
    finally:
        if skipper is not None:
            skipper.cancel()
            await asyncio.gather(skipper, return_exceptions=True)
        worker.stop()
        await asyncio.gather(running, return_exceptions=True)
        await _delete_prefix(world)
        await world.close()
        set_world(previous)


def _current_world() -> World | None:
    from . import _client

    return _client._world


async def _delete_prefix(world: Any) -> None:
    """Delete every key of the environment's prefix (its runs, streams and settings)."""
    with contextlib.suppress(Exception):
        async for key in world.redis.scan_iter(match=f"{world.keys.prefix}:*", count=1000):
            await world.redis.delete(key)
