"""BullMQ peer (the ``bullmq`` Python package): throughput, latency, memory; prints one JSON line.

Run with the python of ``bench/.venvs/bullmq`` (``bench.run`` does that), on its own Redis database:

- throughput: 10,000 no-op jobs (= 1,000 runs x 10 steps; BullMQ has flows but no sequential
  chains) are added up front with ``Queue.addBulk``, then ONE worker process (``concurrency``
  200, like our ``--concurrency 200``) is spawned; the clock runs from spawning it until
  ``getJobCounts("completed")`` reaches 10,000 (polled every 5 ms). jobs/s = 10,000 / seconds.
  Every job's stored ``returnvalue`` is then checked.
- latency: with a worker running, 200 sequential jobs, each timed from ``Queue.add`` until its job
  hash has a ``finishedOn`` (polled every 2 ms, as arq's ``job.result(poll_delay=0.002)``).
- memory: Redis ``used_memory`` before adding and after draining the 10,000 jobs (completed jobs
  kept, BullMQ's default), divided by 10,000, read with no worker connected.

``worker`` as first argument runs the worker itself (until SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from _common import (
    Result,
    emit,
    job_figures,
    job_parser,
    job_peer_figures,
    poll_until,
    stop,
    time_sequential,
    used_memory,
)
from bullmq import Queue, Worker

QUEUE = "wfbench"
PREFIX = "bull"
ADD_CHUNK = 1_000


async def noop(job: Any, token: str) -> int:
    """A no-op job: returns its argument."""
    return int(job.data["i"])


async def run_worker(url: str, concurrency: int) -> None:
    """The worker process: ``noop`` jobs from QUEUE until SIGTERM."""
    worker = Worker(QUEUE, noop, {"connection": url, "concurrency": concurrency})
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    await worker.close()


def spawn_worker(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, os.path.abspath(__file__), "worker", "--redis-url", args.redis_url]
    cmd += ["--concurrency", str(args.concurrency)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr)


def job_key(job_id: str) -> str:
    return f"{PREFIX}:{QUEUE}:{job_id}"


async def add_all(queue: Queue, n: int) -> list[str]:
    """Add ``n`` jobs (data ``{"i": i}``) in bulks; their ids in order."""
    ids: list[str] = []
    for lo in range(0, n, ADD_CHUNK):
        jobs = [{"name": "noop", "data": {"i": i}} for i in range(lo, min(n, lo + ADD_CHUNK))]
        ids += [str(job.id) for job in await queue.addBulk(jobs)]
    return ids


async def check_results(r: aioredis.Redis, ids: list[str]) -> None:
    """Every job's stored return value is its input."""
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(job_key(job_id), "returnvalue")
    values = await pipe.execute()
    wrong = [i for i, v in enumerate(values) if v is None or int(v) != i]
    if wrong:
        raise RuntimeError(f"{len(wrong)} jobs without their result, e.g. job {wrong[0]}")


async def throughput(args: argparse.Namespace) -> tuple[Result, Result]:
    """Drain time of ``args.jobs`` pre-added jobs by one worker process; and memory per job."""
    before = used_memory(args.redis_url)
    queue = Queue(QUEUE, {"connection": args.redis_url})
    r = aioredis.Redis.from_url(args.redis_url, decode_responses=True)
    try:
        t = time.perf_counter()
        ids = await add_all(queue, args.jobs)
        add_s = time.perf_counter() - t
        t0 = time.perf_counter()
        proc = spawn_worker(args)

        async def drained() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {proc.returncode}")
            counts = await queue.getJobCounts("completed", "failed")
            if counts["failed"]:
                raise RuntimeError(f"{counts['failed']} jobs failed")
            return bool(counts["completed"] >= args.jobs)

        try:
            await poll_until(drained, timeout=600)
            seconds = time.perf_counter() - t0
        finally:
            await asyncio.to_thread(stop, proc)
        await check_results(r, ids)
    finally:
        await queue.close()
        await r.aclose()
    after = used_memory(args.redis_url)
    what = (
        f"{args.jobs:,} no-op jobs (no chains), one worker process, concurrency {args.concurrency}"
    )
    return job_figures(
        args.jobs,
        seconds,
        (before, after),
        what,
        concurrency=args.concurrency,
        add_seconds=round(add_s, 4),
    )


async def latency(args: argparse.Namespace) -> Result:
    """Add-to-finished of single jobs, one at a time, with a worker already running."""
    proc = spawn_worker(args)
    queue = Queue(QUEUE, {"connection": args.redis_url})
    r = aioredis.Redis.from_url(args.redis_url, decode_responses=True)

    async def one(i: int) -> int:
        job = await queue.add("noop", {"i": i})
        key = job_key(str(job.id))

        async def finished() -> bool:
            return bool(await r.hexists(key, "finishedOn"))

        await poll_until(finished, timeout=30, every=0.002)
        return int(await r.hget(key, "returnvalue") or "nan")

    try:
        return await time_sequential(args.latency_runs, one)
    finally:
        await queue.close()
        await r.aclose()
        await asyncio.to_thread(stop, proc)


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    if args.role == "worker":
        asyncio.run(run_worker(args.redis_url, args.concurrency))
        return
    emit(lambda: job_peer_figures("bullmq", lambda: throughput(args), lambda: latency(args)))


if __name__ == "__main__":
    main()
