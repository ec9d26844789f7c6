"""Our figures of capacity: runs in flight (6), start rate (8) and memory per finished run (9).

6. Worker RSS with 10,000 runs in flight: one worker is started and reads; its ``VmRSS`` is read
   (idle); then 10,000 ``bench.hold`` runs are started with ``start()`` (50 in flight). Each runs one
   step and then sleeps an hour, so all 10,000 stay live; once ``ZCARD <prefix>:{p0}:timers``
   counts 10,000 (every run asleep), the worker's ``VmRSS`` and its peak ``VmHWM`` are read.
8. Start rate: (a) 5,000 ``bench.park`` runs created by ``start()`` from this one process, 50 in
   flight, no worker running: runs/s = 5,000 / seconds. (b) With one worker reading, 5,000
   ``XADD <prefix>:start * workflow bench.park args [i] run_id ...`` requests sent in pipelines of
   500; the clock runs from the first XADD until ``ZCARD <prefix>:{p0}:idx:wf:bench.park`` counts 5,000
   (the worker also takes each created run to its sleep: one more commit per run).
9. Memory: Redis ``used_memory`` before and after 1,000 finished ten-step runs on a fresh prefix,
   both read with no worker connected (so client buffers do not count), divided by 1,000. "After
   compaction": the same with a worker started with ``WORKFLOW_COMPACT_AFTER_S=0``, once none of
   the runs' ``:ev`` streams exists any more (skipped when some still do after 30 s).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import workloads
from bench.infra import RedisServer, log
from bench.ours import (
    RUNS,
    check_outputs,
    check_outputs_api,
    client,
    create_runs,
    create_ten_step_runs,
    engine,
    rss_mb,
    wait_count,
    worker_process,
)
from world_redis import RedisWorld

INFLIGHT_RUNS = 10_000
START_RUNS = 5_000
START_CONCURRENCY = 50
XADD_CHUNK = 500
COMPACT_DEADLINE_S = 30.0


async def wait_worker_reading(r: aioredis.Redis, timeout: float = 30) -> None:
    """Until some client blocks in XREADGROUP: the worker is past start-up and reading."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        clients = await r.client_list()
        if any(c.get("cmd") == "xreadgroup" for c in clients):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the worker did not start reading within {timeout:.0f} s")


# -- figure 6 ------------------------------------------------------------------------------------


async def runs_in_flight(server: RedisServer, prefix: str, workdir: Path) -> dict[str, Any]:
    """Figure 6: the worker's RSS once INFLIGHT_RUNS runs are live (asleep after one step)."""
    async with (
        engine(server.url, prefix) as world,
        worker_process(server.url, prefix, workdir) as worker,
    ):
        await wait_worker_reading(client(world))
        pid = worker.proc.pid
        idle = rss_mb(pid)
        t0 = time.perf_counter()
        await create_runs(workloads.hold, INFLIGHT_RUNS, START_CONCURRENCY)
        try:
            seconds, _ = await wait_count(
                client(world),
                world.keys.timers(0),
                INFLIGHT_RUNS,
                timeout=300,
                alive=lambda: worker.proc.poll() is None,
                failed_key=world.keys.idx_status(0, "failed"),
                t0=t0,
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{worker.tail()}") from None
        return {
            "runs": INFLIGHT_RUNS,
            "workflow": "bench.hold: one no-op step, then sleep('1h')",
            "worker_rss_mb_idle": idle,
            "worker_rss_mb_with_runs_in_flight": rss_mb(pid),
            "worker_rss_mb_peak": rss_mb(pid, "VmHWM"),
            "seconds_until_all_asleep": round(seconds, 3),
        }


# -- figure 8 ------------------------------------------------------------------------------------


async def start_rate_client(server: RedisServer, prefix: str) -> dict[str, Any]:
    """Figure 8a: runs/s created by ``start()`` from this process, no worker running."""
    async with engine(server.url, prefix) as world:
        t0 = time.perf_counter()
        await create_runs(workloads.park, START_RUNS, START_CONCURRENCY)
        seconds = time.perf_counter() - t0
        created = int(await client(world).zcard(world.keys.idx_workflow(0, "bench.park")))
    if created != START_RUNS:
        raise RuntimeError(f"expected {START_RUNS} runs, found {created}")
    return {
        "runs": START_RUNS,
        "in_flight": START_CONCURRENCY,
        "seconds": round(seconds, 3),
        "runs_per_s": round(START_RUNS / seconds, 1),
    }


async def send_start_requests(world: RedisWorld, n: int) -> None:
    """``n`` start requests on ``<prefix>:start``, pipelined XADD_CHUNK at a time."""
    stream = world.keys.start_stream()
    for lo in range(0, n, XADD_CHUNK):
        pipe = client(world).pipeline(transaction=False)
        for i in range(lo, min(n, lo + XADD_CHUNK)):
            fields = {"workflow": "bench.park", "args": f"[{i}]", "run_id": f"wrun_bx{i}"}
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        await pipe.execute()


async def start_rate_xadd(server: RedisServer, prefix: str, workdir: Path) -> dict[str, Any]:
    """Figure 8b: runs/s created by a worker from plain XADD start requests."""
    async with (
        engine(server.url, prefix) as world,
        worker_process(server.url, prefix, workdir) as worker,
    ):
        r, keys = client(world), world.keys
        await wait_worker_reading(r)
        t0 = time.perf_counter()
        await send_start_requests(world, START_RUNS)
        sent = time.perf_counter() - t0
        try:
            seconds, _ = await wait_count(
                r,
                keys.idx_workflow(0, "bench.park"),
                START_RUNS,
                300,
                lambda: worker.proc.poll() is None,
                t0=t0,
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{worker.tail()}") from None
        rejected = int(await r.xlen(keys.rejected(keys.start_stream())))
        sampled = [keys.run(f"wrun_bx{i}") for i in range(0, START_RUNS, 97)]
        missing = len(sampled) - int(await r.exists(*sampled))
    if rejected or missing:
        raise RuntimeError(f"{rejected} start requests rejected, {missing} sampled runs missing")
    return {
        "runs": START_RUNS,
        "xadd_seconds": round(sent, 3),
        "seconds": round(seconds, 3),
        "runs_per_s": round(START_RUNS / seconds, 1),
    }


async def start_rate(server: RedisServer, prefix: str, workdir: Path) -> dict[str, Any]:
    """Figure 8, both ways."""
    return {
        "start_api": await start_rate_client(server, f"{prefix}a"),
        "xadd": await start_rate_xadd(server, f"{prefix}x", workdir),
    }


# -- figure 9 ------------------------------------------------------------------------------------


async def event_streams_left(world: RedisWorld, run_ids: list[str]) -> int:
    """How many of the runs' ``:ev`` streams still exist."""
    pipe = client(world).pipeline(transaction=False)
    for rid in run_ids:
        pipe.exists(world.keys.events(rid))
    return sum(int(n) for n in await pipe.execute())


async def wait_compacted(world: RedisWorld, run_ids: list[str]) -> int:
    """Wait until no run has an ``:ev`` stream, at most COMPACT_DEADLINE_S; the count left."""
    deadline = time.monotonic() + COMPACT_DEADLINE_S
    left = await event_streams_left(world, run_ids)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        left = await event_streams_left(world, run_ids)
    return left


async def wait_queue_empty(world: RedisWorld) -> None:
    """Until the wake-ups are acknowledged and deleted (at most 10 s)."""
    r, keys = client(world), world.keys
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = await r.xpending(keys.ready(0), "workers")
        if int(await r.xlen(keys.ready(0))) == 0 and int(info["pending"]) == 0:
            return
        await asyncio.sleep(0.05)


async def one_run_keys(world: RedisWorld, rid: str) -> dict[str, Any]:
    """MEMORY USAGE of one run's keys (None for a key that does not exist)."""
    r, keys = client(world), world.keys
    return {
        "run_hash": await r.memory_usage(keys.run(rid), samples=0),
        "event_stream": await r.memory_usage(keys.events(rid), samples=0),
        "entity_hash": await r.memory_usage(keys.entities(rid), samples=0),
    }


async def memory_per_run(
    server: RedisServer, prefix: str, workdir: Path, compact: bool = False
) -> dict[str, Any]:
    """used_memory growth per finished ten-step run on a fresh prefix (compacted or not)."""
    env = {"WORKFLOW_COMPACT_AFTER_S": "0"} if compact else None
    async with engine(server.url, prefix) as world:
        # let the worker create the group and streams first, then stop it: fixed costs are out
        async with worker_process(server.url, prefix, workdir):
            await wait_worker_reading(client(world))
        await asyncio.sleep(0.2)
        before = server.used_memory()
        run_ids = await create_ten_step_runs(RUNS, 1)  # one connection: no extra client buffers
        async with worker_process(server.url, prefix, workdir, env) as worker:
            try:
                await wait_count(
                    client(world),
                    world.keys.idx_status(0, "completed"),
                    RUNS,
                    timeout=300,
                    failed_key=world.keys.idx_status(0, "failed"),
                )
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\nworker log:\n{worker.tail()}") from None
            await wait_queue_empty(world)
            left = await wait_compacted(world, run_ids) if compact else 0
        if left:
            return {"skipped": "compaction not available", "event_streams_left": left}
        await asyncio.sleep(0.2)
        after = server.used_memory()
        sample = await one_run_keys(world, run_ids[0])
        # a compacted run may keep no run hash: check it through the API only
        checks = await (check_outputs_api(run_ids) if compact else check_outputs(world, run_ids))
    return {
        "runs": RUNS,
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_run": round((after - before) / RUNS, 1),
        "memory_usage_of_one_run_keys": sample,
        "stream_node_max_bytes": server.config_value("stream-node-max-bytes"),
        **checks,
    }


async def memory(server: RedisServer, prefix: str, workdir: Path) -> dict[str, Any]:
    """Figure 9: as the runs finish, and after compaction (or why that was skipped)."""
    out = await memory_per_run(server, f"{prefix}m", workdir)
    log("ours: memory per run after compaction (WORKFLOW_COMPACT_AFTER_S=0)")
    try:
        out["after_compaction"] = await memory_per_run(server, f"{prefix}c", workdir, compact=True)
    except Exception as exc:
        out["after_compaction"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out
