"""Several partitions on one Redis: the stored partition count, and reads that respect a count."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from worker import PartitionCountMismatchError
from world_redis import RedisWorld, partition_of

from .helpers import new_run_id

GROUP = "workers"
PARTITIONS = 4


@pytest.fixture
def world4(world_with_partitions: Callable[[int], RedisWorld]) -> RedisWorld:
    """A RedisWorld with four partitions on the test's own prefix."""
    return world_with_partitions(PARTITIONS)


def runs_per_partition(per_partition: int) -> list[str]:
    """Run ids, ``per_partition`` of them in each of the four partitions."""
    chosen: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    while any(len(ids) < per_partition for ids in chosen.values()):
        run_id = new_run_id()
        ids = chosen[partition_of(run_id, PARTITIONS)]
        if len(ids) < per_partition:
            ids.append(run_id)
    return [r for ids in chosen.values() for r in ids]


async def pending_of(world: RedisWorld, consumer: str) -> int:
    """Wake-ups pending on ``consumer`` over all ready streams."""
    total = 0
    for p in range(world.keys.partitions):
        summary = await world.redis.xpending(world.keys.ready(p), GROUP)
        total += sum(int(c["pending"]) for c in summary["consumers"] if c["name"] == consumer)
    return total


async def test_first_user_stores_its_partition_count(world4: RedisWorld, prefix: str) -> None:
    """The first World used on a prefix stores its partition count in <prefix>:config."""
    assert await world4.redis.hgetall(f"{prefix}:config") == {}
    await world4.create_run(new_run_id(), "wf_test", "[]")
    assert await world4.redis.hgetall(f"{prefix}:config") == {"partitions": "4"}


async def test_other_count_is_refused_before_any_write(
    world4: RedisWorld, world_with_partitions: Callable[[int], RedisWorld], prefix: str
) -> None:
    """A World with another partition count raises PartitionCountMismatchError naming both counts, writing nothing."""
    await world4.check_config()
    other = world_with_partitions(1)
    before = sorted(await world4.redis.keys(f"{prefix}:*"))
    with pytest.raises(PartitionCountMismatchError) as caught:
        await other.create_run(new_run_id(), "wf_test", "[]")
    assert (caught.value.stored, caught.value.configured) == (4, 1)
    assert "used with 4 partition" in str(caught.value)
    assert "WORKFLOW_PARTITIONS=1" in str(caught.value)
    with pytest.raises(PartitionCountMismatchError):
        await other.ensure_groups()
    assert sorted(await world4.redis.keys(f"{prefix}:*")) == before


async def test_read_wakeups_never_returns_more_than_count(world4: RedisWorld) -> None:
    """With wake-ups in all four partitions, read_wakeups takes at most ``count`` of them."""
    for run_id in runs_per_partition(3):
        await world4.create_run(run_id, "wf_test", "[]")
    first = await world4.read_wakeups("c1", 2, 0)
    assert len(first) == 2
    assert await pending_of(world4, "c1") == 2
    second = await world4.read_wakeups("c1", 5, 0)
    assert len(second) == 5
    assert await pending_of(world4, "c1") == 7
    rest = await world4.read_wakeups("c1", 100, 0)
    assert len(rest) == 12 - 7
    # less room than partitions, one wake-up in each: the rest stays for the next read
    for run_id in runs_per_partition(1):
        await world4.create_run(run_id, "wf_test", "[]")
    assert len(await world4.read_wakeups("c2", 3, 0)) == 3
    assert len(await world4.read_wakeups("c2", 3, 50)) == 1


async def test_reclaim_takes_at_most_count_over_all_partitions(world4: RedisWorld) -> None:
    """reclaim's count bounds the wake-ups taken over all partitions, not per partition."""
    for run_id in runs_per_partition(2):
        await world4.create_run(run_id, "wf_test", "[]")
    assert len(await world4.read_wakeups("dead", 100, 0)) == 8
    first = await world4.reclaim("c2", 0, 3)
    assert len(first) == 3
    assert await pending_of(world4, "c2") == 3
    assert len({w.partition for w in await world4.reclaim("c3", 0, 100)}) == PARTITIONS
