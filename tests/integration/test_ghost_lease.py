"""A lease that no worker acts on (a "ghost": an acquire whose reply the caller never got, say
it timed out on the client while the server still ran it) does not strand its run. A wake-up that
meets it is answered "busy" and dropped, as one meeting a live holder is (that holder sees the new
events when it renews or lets the run go); so the answer also leaves a timer for when the lease
lapses, and the run is picked up then."""

from __future__ import annotations

import pytest

from tests.support import RedisServer, eventually, running_worker
from worker import create_hook, resume_hook, start, step, workflow
from worker._worker import Worker, WorkerConfig
from world_redis import RedisWorld

GHOST = "ghost-worker:0123456789abcdef"  # a token no live worker holds


@step(name="ghost.double")
async def double(x: int) -> int:
    return 2 * x


@workflow(name="ghost.one_step")
async def one_step(x: int) -> int:
    return await double(x)


@workflow(name="ghost.after_hook")
async def after_hook(token: str) -> int:
    value = await create_hook(token=token)
    return await double(int(value))


async def ghost_lease(world: RedisWorld, run_id: str, ms: int) -> None:
    """The run's lease, held for ``ms`` by a token no worker has: as an acquire leaves it when
    it runs on the server after its caller gave up on the reply."""
    until = await world.server_time_ms() + ms
    await world.redis.hset(
        world.keys.run(run_id), mapping={"lease_owner": GHOST, "lease_until": until}
    )


def worker(world: RedisWorld) -> Worker:
    return Worker(world, WorkerConfig(concurrency=10, lease_ms=2000, heartbeat_ms=300))


async def acked(world: RedisWorld, run_id: str) -> bool:
    """No wake-up of the run is left in its ready streams (acknowledged ones are deleted)."""
    keys = world.keys
    for band in keys.ready_bands(keys.partition(run_id)):
        for _, fields in await world.redis.xrange(band, "-", "+"):
            if fields.get("run") == run_id:
                return False
    return True


@pytest.mark.parametrize("ghost_ms", [1500])
async def test_a_new_run_whose_lease_a_ghost_holds_is_started_when_it_lapses(
    redis_server: RedisServer, prefix: str, ghost_ms: int
) -> None:
    """The new run's wake-up meets the ghost lease (its first commit is refused, its acquire
    answers "busy") and is dropped; the run still starts once the lease lapses."""
    world = RedisWorld.from_url(redis_server.url, prefix=prefix)
    try:
        await world.ensure_groups()
        run = await start(one_step, 21, world=world)
        await ghost_lease(world, run.run_id, ghost_ms)
        async with running_worker(worker(world)):
            await eventually(lambda: acked(world, run.run_id), 20, what="the wake-up dropped")
            assert await run.result(timeout=20) == 42
    finally:
        await world.close()


async def test_a_hook_payload_that_meets_a_ghost_lease_resumes_the_run_when_it_lapses(
    redis_server: RedisServer, prefix: str
) -> None:
    """A run parked on its hook (no lease) gets a ghost lease; the payload's wake-up meets it
    and is dropped. The run still resumes once the lease lapses."""
    token = f"tok-{prefix}"
    world = RedisWorld.from_url(redis_server.url, prefix=prefix)
    try:
        await world.ensure_groups()
        async with running_worker(worker(world)) as w:
            run = await start(after_hook, token, world=world)

            async def parked() -> bool:
                owner = await world.redis.hget(world.keys.run(run.run_id), "lease_owner")
                return (
                    not owner
                    and run.run_id not in w.held
                    and bool(await world.list_hooks(run.run_id))
                )

            await eventually(parked, 20, what="the run parked on its hook, let go")
            await ghost_lease(world, run.run_id, 1500)
            await resume_hook(token, "5", world, request_id="r1")
            await eventually(lambda: acked(world, run.run_id), 20, what="the wake-up dropped")
            assert await run.result(timeout=20) == 10
    finally:
        await world.close()
