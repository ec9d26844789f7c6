"""Hook token reservations at the World: a reclaimed reservation's hook can never hold the token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support import RedisServer
from worker._events import NewEvent
from worker._ids import new_run_id
from worker._world import Commit
from world_redis import RedisWorld
from world_redis._keys import partition_of

PARTITIONS = 4


@pytest.fixture
async def world(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisWorld]:
    """A RedisWorld with four partitions on the private server."""
    w = RedisWorld.from_url(redis_server.url, prefix=prefix, partitions=PARTITIONS)
    try:
        yield w
    finally:
        await w.close()


async def new_run(world: RedisWorld, partition: int) -> str:
    while partition_of(run_id := new_run_id(), PARTITIONS) != partition:
        pass
    assert await world.create_run(run_id, "wf_tokens", "[]")
    return run_id


def hook_event(etype: str, hook_id: str, token: str = "") -> NewEvent:
    return NewEvent(etype, hook_id, {"token": token} if token else {})


async def test_fenced_hook_created_in_flight_records_a_conflict(world: RedisWorld) -> None:
    """A hook whose reservation was reclaimed gets hook_conflict when its commit arrives late."""
    token = "in-flight"
    key = world.keys.hook_token(token)
    late, taker = await new_run(world, 0), await new_run(world, 1)
    await world.redis.set(key, f"{late}|h1")  # reserved, its commit not yet arrived
    (res,) = await world.commit(
        [Commit(run_id=taker, events=[hook_event("hook_created", "h1", token)])]
    )
    assert [e.__struct_config__.tag for e in res.appended] == ["hook_created"]
    assert await world.find_hook(token) == (taker, "h1", "null")

    (res,) = await world.commit([Commit(run_id=taker, events=[hook_event("hook_disposed", "h1")])])
    assert res.code == "ok" and await world.redis.exists(key) == 0  # disposed: released

    (res,) = await world.commit(
        [Commit(run_id=late, events=[hook_event("hook_created", "h1", token)])]
    )
    assert [e.__struct_config__.tag for e in res.appended] == ["hook_conflict"]
    assert await world.list_hooks(late) == []
    assert await world.find_hook(token) is None and await world.redis.exists(key) == 0


async def test_commit_refused_for_an_ended_run_releases_its_reservation(world: RedisWorld) -> None:
    """A hook_created refused because its run ended leaves no reservation behind."""
    token = "too-late"
    run_id = await new_run(world, 2)
    (res,) = await world.commit([Commit(run_id=run_id, events=[NewEvent("run_cancelled", "", {})])])
    assert res.code == "ok"
    (res,) = await world.commit(
        [Commit(run_id=run_id, events=[hook_event("hook_created", "h1", token)])]
    )
    assert res.code == "rejected" and res.results[0].status == "terminal"
    assert await world.redis.exists(world.keys.hook_token(token)) == 0
