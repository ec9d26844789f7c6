"""Several partitions with real `wf worker` processes: one partition count per prefix, and
``--concurrency`` bounding the runs a worker holds whatever the partition count."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable

import pytest

from tests.e2e import fault_workflows as fw
from tests.support import REPO, WF
from worker import PartitionCountMismatchError, start
from world_redis import RedisWorld

GROUP = "workers"


async def test_worker_with_other_partition_count_exits_naming_both(
    world: RedisWorld, worker_env: dict[str, str]
) -> None:
    """`wf worker` with WORKFLOW_PARTITIONS=4 on a prefix first used with 1 exits non-zero naming 1 and 4."""
    run = await start(fw.echo_wf, 1)
    env = {**worker_env, "WORKFLOW_PARTITIONS": "4"}
    done = await asyncio.to_thread(
        subprocess.run,
        [WF, "worker", "tests.e2e.fault_workflows"],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "used with 1 partition" in done.stderr
    assert "WORKFLOW_PARTITIONS=4" in done.stderr
    assert "worker_started" not in done.stdout + done.stderr
    assert await run.status() == "pending"


async def test_client_with_other_count_raises_before_writing(
    world_with_partitions: Callable[[int], RedisWorld], start_worker, prefix: str
) -> None:  # type: ignore[no-untyped-def]
    """start() from a client on another partition count than the worker's raises and writes nothing."""
    start_worker("tests.e2e.fault_workflows", WORKFLOW_PARTITIONS="4")
    client = world_with_partitions(1)
    before = sorted(await client.redis.keys(f"{prefix}:*"))
    with pytest.raises(PartitionCountMismatchError) as caught:
        await start(fw.echo_wf, 1, world=client)
    assert (caught.value.stored, caught.value.configured) == (4, 1)
    assert sorted(await client.redis.keys(f"{prefix}:*")) == before


async def test_matching_counts_complete_runs(
    world_with_partitions: Callable[[int], RedisWorld], start_worker, prefix: str
) -> None:  # type: ignore[no-untyped-def]
    """A client and a worker on the same partition count (3) complete runs; the count is stored."""
    client = world_with_partitions(3)
    runs = [await start(fw.echo_wf, i, world=client) for i in range(6)]
    assert await client.redis.hgetall(f"{prefix}:config") == {"partitions": "3"}
    start_worker("tests.e2e.fault_workflows", WORKFLOW_PARTITIONS="3")
    assert [await r.result(timeout=30) for r in runs] == list(range(6))
