"""Helpers of the integration suite: build events, commit one run, snapshot every key of a prefix."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from worker._events import NewEvent
from worker._ids import new_id, new_run_id
from worker._world import Commit, CommitResult
from world_redis import RedisWorld

T = TypeVar("T")

__all__ = [
    "commit1",
    "ev",
    "eventually",
    "new_id",
    "new_run_id",
    "run_with_steps",
    "snapshot",
    "statuses",
]


def ev(etype: str, corr: str = "", **fields: object) -> NewEvent:
    """A NewEvent with every field value as text (what the script receives)."""
    return NewEvent(etype, corr, {k: str(v) for k, v in fields.items()})


async def commit1(
    world: RedisWorld,
    run_id: str,
    *events: NewEvent,
    token: str = "",
    expected_seq: int = -1,
    wake: str = "",
) -> CommitResult:
    """Commit events to one run and return its CommitResult."""
    (result,) = await world.commit(
        [
            Commit(
                run_id=run_id,
                events=list(events),
                token=token,
                expected_seq=expected_seq,
                wake=wake,
            )
        ]
    )
    return result


def statuses(result: CommitResult) -> list[tuple[str, int]]:
    return [(r.status, r.extra) for r in result.results]


async def snapshot(world: RedisWorld) -> dict[str, Any]:
    """Every key of the world's prefix: type, content (HGETALL, XLEN + XRANGE, ZRANGE...), has-TTL."""
    r = world.redis
    out: dict[str, Any] = {}
    async for key in r.scan_iter(match=f"{world.keys.prefix}:*", count=1000):
        kind = await r.type(key)
        if kind == "hash":
            value: Any = await r.hgetall(key)
        elif kind == "stream":
            value = (await r.xlen(key), await r.xrange(key, "-", "+"))
        elif kind == "zset":
            value = await r.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(await r.smembers(key))
        elif kind == "list":
            value = await r.lrange(key, 0, -1)
        else:
            value = await r.get(key)
        out[key] = (kind, value, await r.ttl(key) >= 0)
    return out


async def eventually(
    probe: Callable[[], Awaitable[T]], timeout: float = 5.0, interval: float = 0.05, what: str = ""
) -> T:
    """Await ``probe()`` until it returns a truthy value; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(interval)


async def run_with_steps(
    world: RedisWorld, *step_ids: str, workflow: str = "wf_test", started: bool = True
) -> str:
    """A new run (started unless told otherwise) with the given steps created (pending)."""
    run_id = new_run_id()
    assert await world.create_run(run_id, workflow, "[1]")
    events = [ev("run_started")] if started else []
    events += [ev("step_created", s, name="add", input="[1, 2]") for s in step_ids]
    if events:
        res = await commit1(world, run_id, *events)
        assert res.code == "ok", res
    return run_id
