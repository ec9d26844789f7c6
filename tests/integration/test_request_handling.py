"""Request ingestion in one process against real Redis."""

from __future__ import annotations

from world_redis import RedisWorld


async def test_request_stream_deleted_under_the_reader_gets_its_group_back(
    world: RedisWorld,
) -> None:
    """DEL of the start stream (an operator clearing a backlog): the next read recreates the group instead of failing with NOGROUP for ever."""
    await world.ensure_groups()
    await world.redis.delete(world.keys.start_stream())
    assert await world.read_start_requests("c1", 10, 0) == []
    mid = await world.redis.xadd(world.keys.start_stream(), {"workflow": "noop", "args": "[1]"})
    (req,) = await world.read_start_requests("c1", 10, 0)
    assert req.message_id == mid and req.source == world.keys.start_stream()
