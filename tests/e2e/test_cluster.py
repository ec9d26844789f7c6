"""A representative e2e subset on a local 3-master Redis Cluster and on one server with 4 partitions.

Every test runs twice (``topology``): on the cluster, where the World and the workers find the
cluster themselves from a plain ``redis://`` URL of one node and agree on its default partition
count (16 per master), and on one server with ``WORKFLOW_PARTITIONS=4``. ``make test-cluster``
runs the whole e2e tier on the cluster; this file keeps a subset in ``make test``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ulid import ULID

from tests.e2e import fault_workflows as fw
from tests.e2e import hook_workflows as hw
from tests.e2e import pool_workflows as pw
from tests.e2e import workflows as wf
from tests.support import (
    RedisClusterNodes,
    RedisServer,
    eventually,
    hook_ready,
    process_world,
    redis_cli_binary,
    redis_cli_errors,
    wait_for,
    wf_json,
    worker_environment,
)
from worker import PartitionCountMismatchError, get_run, resume_hook, start
from world_redis import RedisWorld, partition_of

GROUP = "workers"
MODULES = ("tests.e2e.workflows", "tests.e2e.hook_workflows", "tests.e2e.fault_workflows")
FAST_LEASE = {"WORKFLOW_LEASE_MS": "1500", "WORKFLOW_HEARTBEAT_MS": "300"}
Topology = RedisServer | RedisClusterNodes


@pytest.fixture(scope="module", params=["cluster", "partitions4"])
def topology(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, topology: str) -> Topology:
    name = "redis_cluster" if topology == "cluster" else "single_redis_server"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def configured_partitions(topology: str) -> int | None:
    return 4 if topology == "partitions4" else None


@pytest.fixture
async def world(redis_server: Topology, prefix: str, topology: str) -> AsyncIterator[RedisWorld]:
    async with process_world(redis_server.url, prefix, configured_partitions(topology)) as w:
        yield w


@pytest.fixture
def worker_env(redis_server: Topology, prefix: str, topology: str) -> dict[str, str]:
    return worker_environment(redis_server.url, prefix, configured_partitions(topology))


def cli(server: Topology, *args: str) -> str:
    """One redis-cli command (``-c`` on the cluster); its stdout, error replies refused."""
    binary = redis_cli_binary()
    if binary is None:
        pytest.skip("redis-cli is not installed")
    done = subprocess.run(
        [binary, *server.cli_args(), *args], capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0 and not redis_cli_errors(done.stdout), done
    return done.stdout.strip()


def run_ids_in_partitions(world: RedisWorld, partitions: list[int]) -> list[str]:
    """A new run id in each of ``partitions`` (a partition listed twice gets two)."""
    n, out = world.keys.partitions, list[str]()
    for wanted in partitions:
        while True:
            run_id = f"wrun_{ULID()}"
            if partition_of(run_id, n) == wanted:
                out.append(run_id)
                break
    return out


def spread(world: RedisWorld, runs: int) -> list[int]:
    """``runs`` partitions spread evenly over the partition count (repeated when fewer)."""
    n = world.keys.partitions
    return [r * n // runs for r in range(runs)]


async def test_topology_and_partition_count(
    world: RedisWorld, redis_server: Topology, topology: str, prefix: str
) -> None:
    """A plain URL finds the cluster; its partition count defaults to 16 per master, is stored, spreads over every master, and binds later processes."""
    stored = await world.redis.hgetall(f"{prefix}:config")
    if topology == "partitions4":
        assert world.cluster is False and stored == {"partitions": "4"}
        return
    assert world.cluster is True
    assert world.keys.partitions == 48 and stored == {"partitions": "48"}
    per_master: dict[str, int] = {}
    for p in range(48):
        node = world.redis.get_node_from_key(world.keys.ready(p))  # type: ignore[attr-defined]
        per_master[node.name] = per_master.get(node.name, 0) + 1
    assert len(per_master) == 3 and all(count >= 8 for count in per_master.values()), per_master
    # any node's URL will do; a process with no configured count takes the stored one
    later = RedisWorld.from_url(f"redis://127.0.0.1:{redis_server.ports[-1]}", prefix=prefix)  # type: ignore[union-attr]
    other = RedisWorld.from_url(redis_server.url, prefix=prefix, partitions=4)
    try:
        await later.check_config()
        assert later.cluster is True and later.keys.partitions == 48
        with pytest.raises(PartitionCountMismatchError) as caught:
            await other.create_run(f"wrun_{ULID()}", "add_ten", "[1]")
        assert (caught.value.stored, caught.value.configured) == (48, 4)
    finally:
        await later.close()
        await other.close()


async def test_steps_sleeps_retries_listing_and_health(
    world: RedisWorld, start_worker, worker_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """start() and a worker complete runs with steps, a durable sleep and retries; list_runs sees them newest first; `wf health` is healthy."""
    start_worker(*MODULES)
    runs = [
        await start(wf.add_ten, 123),
        await start(wf.sleeping),
        await start(wf.retry_attempt_counter),
    ]
    assert await runs[0].result(timeout=30) == 133
    slept = await runs[1].result(timeout=30)
    assert slept["endMs"] - slept["startMs"] >= 1000
    assert await runs[2].result(timeout=30) == {"finalAttempt": 3}
    listed, _ = await world.list_runs(limit=10)
    assert {r.run_id for r in listed} == {r.run_id for r in runs}
    created = [r.created_at for r in listed]
    assert created == sorted(created, reverse=True)  # newest first (runs of one ms: any order)
    completed, _ = await world.list_runs(status="completed", workflow="add_ten")
    assert [r.run_id for r in completed] == [runs[0].run_id]
    report = await wf_json(worker_env, "health", "--timeout", "10")
    assert isinstance(report, dict) and report["allHealthy"] is True, report
    assert report["partitions"]["count"] == world.keys.partitions
    assert report["partitions"]["unreachable"] == []


async def test_hooks_resumed_by_api_and_by_xadd_and_start_by_xadd(
    world: RedisWorld, start_worker, redis_server: Topology, prefix: str
) -> None:  # type: ignore[no-untyped-def]
    """Hooks resume through resume_hook and through one XADD by redis-cli; one XADD by redis-cli starts a run."""
    start_worker(*MODULES)
    by_api = await start(hw.hook_cleanup, "api-token", "api")
    by_cli = await start(hw.hook_cleanup, "cli-token", "cli")
    await hook_ready("api-token")
    await hook_ready("cli-token")
    await resume_hook("api-token", {"message": "from the API"})
    cli(redis_server, "XADD", f"{prefix}:hooks:resume", "*", "token", "cli-token",
        "payload", json.dumps({"message": "from redis-cli"}))  # fmt: skip
    assert (await by_api.result(timeout=20))["message"] == "from the API"
    assert (await by_cli.result(timeout=20))["message"] == "from redis-cli"
    run_id = f"wrun_{ULID()}"
    cli(redis_server, "XADD", f"{prefix}:start", "*", "workflow", "add_ten", "args", "[7]",
        "run_id", run_id)  # fmt: skip
    await eventually(lambda: world.get_run(run_id), 20, what="the run the request starts")
    assert await get_run(run_id).result(timeout=20) == 17
    run_key = world.keys.run(run_id)
    assert cli(redis_server, "HGET", run_key, "output") == "17"


async def test_worker_killed_mid_step_is_finished_by_another(
    world: RedisWorld, start_worker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A worker SIGKILLed during a step: another worker reclaims the run after the lease and finishes it."""
    marker = tmp_path / "started"
    first = start_worker("tests.e2e.fault_workflows", **FAST_LEASE)
    run = await start(fw.killable, str(marker), 1.0)
    wait_for(marker.exists, 20, what="the step to start in the first worker")
    first.kill()
    marker.unlink()
    second = start_worker("tests.e2e.fault_workflows", **FAST_LEASE)
    assert await run.result(timeout=30) == "finished: done"
    assert marker.read_text() == str(second.proc.pid)
    (step_info,) = await run.steps()
    assert step_info.status == "completed" and step_info.attempt == 2


async def test_pool_steps_of_runs_in_every_partition_run_in_the_pool(
    world: RedisWorld, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """Runs spread over the partitions (48 on the cluster), each with a gpu step: one --queues gpu
    worker with a concurrency below the partition count reads every partition's queue stream
    (a reader per queue and partition used to starve most of them) and runs every step."""
    start_worker("tests.e2e.pool_workflows", POOL_MARKER="default")
    gpu = start_worker("tests.e2e.pool_workflows", concurrency=8, queues="gpu", POOL_MARKER="gpu")
    runs = [await start(pw.pool_basic, i) for i in range(24)]
    assert len({world.keys.partition(r.run_id) for r in runs}) > 2
    for i, run in enumerate(runs):
        out = await run.result(timeout=60)
        assert out["gpu"] == {"pid": gpu.proc.pid, "marker": "gpu", "x": 2 * i}


async def pending_on(world: RedisWorld, consumer: str) -> int:
    """Wake-ups pending on ``consumer``, over every partition's ready stream (one read each)."""
    summaries = await asyncio.gather(
        *(world.redis.xpending(world.keys.ready(p), GROUP) for p in range(world.keys.partitions))  # type: ignore[attr-defined]
    )
    return sum(
        int(c["pending"]) for s in summaries for c in s["consumers"] if c["name"] == consumer
    )


async def test_worker_never_holds_more_runs_than_its_concurrency(
    world: RedisWorld, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """Runs in 12 partitions and --concurrency 2: the wake-ups pending on the worker and the runs it reports holding never exceed 2."""
    run_ids = run_ids_in_partitions(world, spread(world, 12))
    for run_id in run_ids:
        await start(fw.long_running, 0.2, run_id=run_id)
    worker = start_worker("tests.e2e.fault_workflows", concurrency=2)
    consumer = f"{socket.gethostname()}:{worker.proc.pid}"
    most = {"pending": 0, "held": 0}

    async def all_completed() -> bool:
        most["pending"] = max(most["pending"], await pending_on(world, consumer))
        status: dict[str, Any] = json.loads(
            await world.redis.hget(world.keys.workers(), consumer) or "{}"
        )
        most["held"] = max(most["held"], int(status.get("held", 0)))
        runs = [await world.get_run(r) for r in run_ids]
        return all(r is not None and r.status == "completed" for r in runs)

    await eventually(all_completed, timeout=90, what="every run to complete")
    assert 1 <= most["pending"] <= 2 and most["held"] <= 2, most


async def test_reads_never_take_more_than_count(world: RedisWorld) -> None:
    """With wake-ups in 12 partitions, read_wakeups and reclaim never return more than ``count``, whatever the partition count."""
    run_ids = run_ids_in_partitions(world, spread(world, 12))
    for run_id in run_ids * 2:  # two wake-ups per run: one at creation, one requested here
        if not await world.create_run(run_id, "add_ten", "[1]"):
            p = world.keys.partition(run_id)
            await world.redis.xadd(world.keys.ready(p), {"run": run_id, "reason": "test"})
    total = 2 * len(run_ids)
    got = []
    for count in (1, 3, 5, 100):
        batch = await world.read_wakeups("reader", count, 0)
        assert len(batch) <= count
        got += batch
    assert len(got) == min(total, 1 + 3 + 5 + 100)
    assert await pending_on(world, "reader") == len(got)
    assert len(await world.read_wakeups("reader", 100, 50)) == total - len(got)
    for consumer, count in (("second", 2), ("third", 7)):
        assert len(await world.reclaim(consumer, 0, count)) == count
        assert await pending_on(world, consumer) == count


async def test_priority_bands_in_every_partition(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """Band streams share their partition's slot: in one partition a hi run is read before an
    older priority-0 one; reads over bands in 12 partitions never exceed ``count``; priority
    runs (pool steps too) spread over the partitions all complete."""
    older, newer = run_ids_in_partitions(world, [0, 0])
    await world.create_run(older, "add_ten", "[1]")
    await world.create_run(newer, "add_ten", "[1]", priority=3)
    assert [(w.run_id, w.band) for w in await world.read_wakeups("reader", 1, 0)] == [(newer, "hi")]
    for i, run_id in enumerate(run_ids_in_partitions(world, spread(world, 12))):
        await world.create_run(run_id, "add_ten", "[1]", priority=(i % 3) - 1)
    got = []
    for count in (1, 3, 5, 100):
        batch = await world.read_wakeups("reader", count, 0)
        assert len(batch) <= count
        got += batch
    assert len(got) == 12 + 1  # the older run's wake-up and the twelve
    start_worker("tests.e2e.pool_workflows", POOL_MARKER="default")
    start_worker("tests.e2e.pool_workflows", concurrency=4, queues="gpu", POOL_MARKER="gpu")
    runs = [await start(pw.pool_basic, i, priority=(i % 3) - 1) for i in range(9)]
    for i, run in enumerate(runs):
        assert (await run.result(timeout=60))["gpu"]["x"] == 2 * i


async def test_every_entry_point_works_first(redis_server: Topology, prefix: str) -> None:
    """A fresh World's first call may be any entry point: each finds the topology and the partition count."""
    firsts: list[Any] = [
        lambda w: w.get_run(f"wrun_{ULID()}"),
        lambda w: w.find_hook("no-such-token"),
        lambda w: w.list_hooks(f"wrun_{ULID()}"),
        lambda w: w.list_runs(),
        lambda w: w.streams.list_streams(f"wrun_{ULID()}"),
        lambda w: w.worker_statuses(),
        lambda w: w.pop_reply("", "hc_none", 0.01),
        lambda w: w.read_events(f"wrun_{ULID()}"),
        lambda w: w.promote_timers(),
        lambda w: w.expire_indexes(),
    ]
    for first in firsts:
        w = RedisWorld.from_url(redis_server.url, prefix=prefix)
        try:
            await first(w)
            assert w.cluster is isinstance(redis_server, RedisClusterNodes)
        finally:
            await w.close()
