"""Hook tokens across partitions: one holder per token on all partitions, stale reservations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e import hook_workflows as hw
from tests.support import RedisServer, eventually, process_world
from worker import (
    HookNotFoundError,
    Run,
    WorkflowRunFailedError,
    get_hook_by_token,
    resume_hook,
    start,
)
from worker._ids import new_run_id
from world_redis import RedisWorld
from world_redis._keys import partition_of

MODULE = "tests.e2e.hook_workflows"
PARTITIONS = 4


@pytest.fixture
async def world(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisWorld]:
    """A RedisWorld with four partitions on the private server, set as the process World."""
    async with process_world(redis_server.url, prefix, PARTITIONS) as w:
        yield w


def run_id_in(partition: int) -> str:
    """A fresh run id that lands in ``partition``."""
    while True:
        run_id = new_run_id()
        if partition_of(run_id, PARTITIONS) == partition:
            return run_id


async def holder(token: str) -> str | None:
    """The run id of the live hook holding ``token``, or None."""
    try:
        return (await get_hook_by_token(token)).run_id
    except HookNotFoundError:
        return None


async def held_by(token: str, run: Run) -> bool:
    return await holder(token) == run.run_id


async def event_types(run: Run) -> list[str]:
    return [str(e.__struct_config__.tag) for e in await run.events()]


async def fails_with_conflict(run: Run) -> None:
    with pytest.raises(WorkflowRunFailedError) as err:
        await run.result(timeout=30)
    assert "already in use by another workflow" in str(err.value.__cause__)
    assert (await event_types(run)).count("hook_conflict") == 1


async def test_token_is_unique_across_partitions(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """Two runs in different partitions ask for one token: the second gets hook_conflict."""
    start_worker(MODULE, WORKFLOW_PARTITIONS=str(PARTITIONS))
    token = "cross-partition"
    first = await start(hw.hook_cleanup, token, "first", run_id=run_id_in(0))
    await eventually(lambda: held_by(token, first), 20, "the first run to hold the token")
    second = await start(hw.hook_cleanup, token, "second", run_id=run_id_in(1))
    await fails_with_conflict(second)
    assert await holder(token) == first.run_id
    await resume_hook(token, {"message": "hello", "customData": "first"})
    assert (await first.result(timeout=20))["customData"] == "first"


async def test_many_runs_race_for_one_token(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """Twenty runs over four partitions and two workers ask for one token at once: one holds it."""
    for _ in range(2):
        start_worker(MODULE, WORKFLOW_PARTITIONS=str(PARTITIONS))
    token = "raced-for"
    runs = await asyncio.gather(
        *(start(hw.hook_cleanup, token, f"r{i}", run_id=run_id_in(i % 4)) for i in range(20))
    )

    async def settled() -> list[str]:
        """Each run's fate once all have one: 'held' or 'failed'."""
        fates = []
        for run in runs:
            types = await event_types(run)
            if "hook_created" in types:
                fates.append("held")
            elif await run.status() == "failed":
                fates.append("failed")
            else:
                return []
        return fates

    fates: Any = await eventually(settled, 60, "every run to hold the token or fail")
    assert fates.count("held") == 1, fates
    winner = runs[fates.index("held")]
    assert await holder(token) == winner.run_id
    for run in runs:
        if run is not winner:
            await fails_with_conflict(run)
    await resume_hook(token, {"message": "won"})
    assert (await winner.result(timeout=20))["message"] == "won"


@pytest.mark.parametrize("stale", ["live_run_without_the_hook", "ended_run"])
async def test_stale_reservation_is_reclaimed(world: RedisWorld, start_worker, stale: str) -> None:  # type: ignore[no-untyped-def]
    """A reservation left by a crash between reserve and commit names no holder and is taken over."""
    start_worker(MODULE, WORKFLOW_PARTITIONS=str(PARTITIONS))
    token = f"left-by-a-crash-{stale}"
    if stale == "ended_run":
        stale_holder = f"{run_id_in(2)}|hook_1"  # its run is gone: expired after it ended
    else:
        other = await start(hw.hook_cleanup, "other-token", "other", run_id=run_id_in(2))
        other_hook = await eventually(lambda: holder("other-token"), 20, "the other run's hook")
        assert other_hook == other.run_id
        hook_id = (await get_hook_by_token("other-token")).hook_id
        stale_holder = f"{other.run_id}|{hook_id}"  # a live run whose hook has another token
    await world.redis.set(world.keys.hook_token(token), stale_holder)
    assert await holder(token) is None
    with pytest.raises(HookNotFoundError):
        await resume_hook(token, {"message": "nobody"})

    taker = await start(hw.hook_cleanup, token, "taker", run_id=run_id_in(3))
    await eventually(lambda: held_by(token, taker), 20, "the new run to take the token")
    assert await world.redis.get(world.keys.hook_token(token)) != stale_holder
    await resume_hook(token, {"message": "taken"})
    assert (await taker.result(timeout=20))["message"] == "taken"
    if stale == "live_run_without_the_hook":  # the fenced run keeps its own hook
        await resume_hook("other-token", {"message": "still here"})
        assert (await other.result(timeout=20))["message"] == "still here"


async def test_dispose_and_run_end_free_the_token(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """A disposed hook's token, then an ended run's token, goes to a run of another partition."""
    start_worker(MODULE, WORKFLOW_PARTITIONS=str(PARTITIONS))
    token = "passed-on"
    key = world.keys.hook_token(token)

    async def released() -> bool:
        return await world.redis.exists(key) == 0

    disposer = await start(hw.hook_dispose, token, 30.0, run_id=run_id_in(0))
    await eventually(lambda: held_by(token, disposer), 20, "the first hook")
    await resume_hook(token, "p1")
    await eventually(released, 20, "the reservation to be released")
    assert await disposer.status() == "running"  # disposed, the run sleeps on

    ender = await start(hw.hook_cleanup, token, "ender", run_id=run_id_in(1))
    await eventually(lambda: held_by(token, ender), 20, "the second run to take the token")
    await resume_hook(token, {"message": "bye"})
    await ender.result(timeout=20)
    await eventually(released, 20, "the ended run's token to be freed")

    last = await start(hw.hook_cleanup, token, "last", run_id=run_id_in(2))
    await eventually(lambda: held_by(token, last), 20, "the third run to take the token")
    await resume_hook(token, {"message": "last"})
    assert (await last.result(timeout=20))["message"] == "last"
