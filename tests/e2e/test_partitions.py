"""Several partitions with real `wf worker` processes: one partition count per prefix, and
``--concurrency`` bounding the runs a worker holds whatever the partition count."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Callable

import pytest

from tests.e2e import fault_workflows as fw
from tests.support import REPO, WF, eventually
from worker import PartitionCountMismatchError, start
from worker._ids import new_run_id
from world_redis import RedisWorld, partition_of

GROUP = "workers"


async def test_worker_with_other_partition_count_exits_naming_both(
    world: RedisWorld, worker_env: dict[str, str]
) -> None:
    """`wf worker` with WORKFLOW_PARTITIONS=4 on a prefix first used with 1 exits non-zero naming 1 and 4."""
    run = await start(fw.echo_wf, 1)
    other = 4 if world.keys.partitions != 4 else 2  # 1 stored on one server; 48 on the cluster
    env = {**worker_env, "WORKFLOW_PARTITIONS": str(other)}
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
    assert f"used with {world.keys.partitions} partition" in done.stderr
    assert f"WORKFLOW_PARTITIONS={other}" in done.stderr
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
    # the worker, still starting, may add its own keys (health stream, lanes): none of a run
    added = set(await client.redis.keys(f"{prefix}:*")) - set(before)
    assert not [k for k in added if ":run:" in k or ":idx:" in k or k.endswith(":workflows")]


async def test_matching_counts_complete_runs(
    world_with_partitions: Callable[[int], RedisWorld], start_worker, prefix: str
) -> None:  # type: ignore[no-untyped-def]
    """A client and a worker on the same partition count (3) complete runs; the count is stored."""
    client = world_with_partitions(3)
    runs = [await start(fw.echo_wf, i, world=client) for i in range(6)]
    assert await client.redis.hgetall(f"{prefix}:config") == {"partitions": "3"}
    start_worker("tests.e2e.fault_workflows", WORKFLOW_PARTITIONS="3")
    assert [await r.result(timeout=30) for r in runs] == list(range(6))


async def start_runs_in_every_partition(client: RedisWorld, per_partition: int) -> list[str]:
    """Start long_running runs (0.3 s step), ``per_partition`` of them in each partition."""
    n = client.keys.partitions
    chosen: dict[int, list[str]] = {p: [] for p in range(n)}
    while any(len(ids) < per_partition for ids in chosen.values()):
        run_id = new_run_id()
        ids = chosen[partition_of(run_id, n)]
        if len(ids) < per_partition:
            ids.append(run_id)
    run_ids = [r for ids in chosen.values() for r in ids]
    for run_id in run_ids:
        await start(fw.long_running, 0.3, run_id=run_id, world=client)
    return run_ids


async def most_held_until_completed(client: RedisWorld, run_ids: list[str], consumer: str) -> int:
    """Sample the wake-ups pending on ``consumer`` over all ready streams until every run has
    completed; the largest number seen."""
    most = 0

    async def all_completed() -> bool:
        nonlocal most
        pipe = client.redis.pipeline(transaction=False)
        for p in range(client.keys.partitions):
            pipe.xpending(client.keys.ready(p), GROUP)
        held = sum(
            int(c["pending"])
            for summary in await pipe.execute()
            for c in summary["consumers"]
            if c["name"] == consumer
        )
        most = max(most, held)
        runs = [await client.get_run(r) for r in run_ids]
        return all(r is not None and r.status == "completed" for r in runs)

    await eventually(all_completed, timeout=90, what="every run to complete")
    return most


async def test_worker_never_holds_more_runs_than_concurrency(
    world_with_partitions: Callable[[int], RedisWorld], start_worker
) -> None:  # type: ignore[no-untyped-def]
    """With 4 partitions and --concurrency 2, the worker's pending wake-ups never exceed 2, and every run completes."""
    client = world_with_partitions(4)
    run_ids = await start_runs_in_every_partition(client, 3)
    worker = start_worker("tests.e2e.fault_workflows", concurrency=2, WORKFLOW_PARTITIONS="4")
    consumer = f"{socket.gethostname()}:{worker.proc.pid}"
    assert 1 <= await most_held_until_completed(client, run_ids, consumer) <= 2


async def test_worker_reclaims_no_more_runs_than_concurrency(
    world_with_partitions: Callable[[int], RedisWorld], start_worker
) -> None:  # type: ignore[no-untyped-def]
    """Wake-ups left pending by a dead consumer are reclaimed at most --concurrency (2) at a time, and every run completes."""
    client = world_with_partitions(4)
    run_ids = await start_runs_in_every_partition(client, 3)
    assert len(await client.read_wakeups("dead-worker", 100, 0)) == 12
    worker = start_worker(
        "tests.e2e.fault_workflows",
        concurrency=2,
        WORKFLOW_PARTITIONS="4",
        WORKFLOW_LEASE_MS="1000",
        WORKFLOW_HEARTBEAT_MS="200",
    )
    consumer = f"{socket.gethostname()}:{worker.proc.pid}"
    assert 1 <= await most_held_until_completed(client, run_ids, consumer) <= 2
