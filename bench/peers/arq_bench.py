"""arq peer: the same figures as our engine where arq has an equivalent; prints one JSON line.

Run with the python of ``bench/.venvs/arq`` (``bench.run`` does that):

- throughput: 10,000 no-op jobs (= 1,000 runs x 10 steps) are enqueued up front, then ONE arq worker
  process (``max_jobs`` 200, like our ``--concurrency 200``) drains them in burst mode; the clock runs
  from spawning it until it exits with the queue empty. jobs/s = 10,000 / seconds.
- latency: with a worker running, 200 sequential jobs, each timed from ``enqueue_job`` until
  ``job.result(poll_delay=0.002)`` returns.
- memory: Redis ``used_memory`` before enqueueing and after draining the 10,000 jobs (results kept,
  arq's default ``keep_result`` of 1 h), divided by 10,000, read with no worker connected.

arq polls its queue (``poll_delay``; default 0.5 s): the worker here uses 0.005 s, which favours
arq's latency over its idle CPU. ``worker`` as first argument runs the worker itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from _common import emit, job_figures, job_parser, job_peer_figures, stop, time_sequential
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job
from arq.worker import Worker

QUEUE = "arq:queue:wfbench"


async def noop(ctx: dict[str, Any], i: int) -> int:
    """A no-op job: returns its argument."""
    return i


def run_worker(url: str, burst: bool, max_jobs: int, poll_delay: float) -> None:
    """The worker process: ``noop`` jobs from QUEUE until the queue is empty (burst) or SIGTERM."""
    worker = Worker(
        functions=[noop],
        queue_name=QUEUE,
        redis_settings=RedisSettings.from_dsn(url),
        burst=burst,
        max_jobs=max_jobs,
        poll_delay=poll_delay,
        handle_signals=True,
    )
    worker.run()


def spawn_worker(args: argparse.Namespace, burst: bool) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, os.path.abspath(__file__), "worker", "--redis-url", args.redis_url]
    cmd += ["--max-jobs", str(args.max_jobs), "--poll-delay", str(args.poll_delay)]
    if burst:
        cmd.append("--burst")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr)


async def used_memory(url: str) -> int:
    r = aioredis.Redis.from_url(url)
    try:
        return int((await r.info("memory"))["used_memory"])
    finally:
        await r.aclose()


async def enqueue_all(pool: ArqRedis, n: int, limit: int) -> list[Job]:
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Job:
        async with sem:
            job = await pool.enqueue_job("noop", i, _queue_name=QUEUE)
            if job is None:
                raise RuntimeError(f"job {i} was not enqueued")
            return job

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def throughput(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Drain time of ``args.jobs`` pre-enqueued jobs by one burst worker; and memory per job."""
    before = await used_memory(args.redis_url)
    pool = await create_pool(RedisSettings.from_dsn(args.redis_url), default_queue_name=QUEUE)
    try:
        t = time.perf_counter()
        jobs = await enqueue_all(pool, args.jobs, 50)
        enqueue_s = time.perf_counter() - t
        queued = int(await pool.zcard(QUEUE))
        if queued != args.jobs:
            raise RuntimeError(f"expected {args.jobs} queued jobs, found {queued}")
        t0 = time.perf_counter()
        proc = spawn_worker(args, burst=True)
        code = await asyncio.to_thread(proc.wait, 600)
        seconds = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"the arq worker exited with {code}")
        # every job has a stored result; 20 sampled also through job.result()
        pipe = pool.pipeline(transaction=False)
        for job in jobs:
            pipe.exists(f"arq:result:{job.job_id}")
        missing = sum(1 for found in await pipe.execute() if not found)
        step = max(1, len(jobs) // 20)
        wrong = [i for i in range(0, len(jobs), step) if await jobs[i].result(timeout=10) != i]
        if missing or wrong:
            raise RuntimeError(f"{missing} results missing, {len(wrong)} wrong")
    finally:
        await pool.aclose()
    after = await used_memory(args.redis_url)
    what = f"{args.jobs:,} no-op jobs (no chains), one burst worker, max_jobs {args.max_jobs}"
    return job_figures(
        args.jobs,
        seconds,
        (before, after),
        what,
        max_jobs=args.max_jobs,
        poll_delay_s=args.poll_delay,
        enqueue_seconds=round(enqueue_s, 4),
    )


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    """Enqueue-to-result of single jobs, one at a time, with a worker already running."""
    proc = spawn_worker(args, burst=False)
    pool = await create_pool(RedisSettings.from_dsn(args.redis_url), default_queue_name=QUEUE)

    async def one(i: int) -> Any:
        job = await pool.enqueue_job("noop", i, _queue_name=QUEUE)
        if job is None:
            raise RuntimeError(f"job {i} was not enqueued")
        return await job.result(timeout=60 if i < 0 else 30, poll_delay=0.002)

    try:
        return await time_sequential(args.latency_runs, one)
    finally:
        await pool.aclose()
        await asyncio.to_thread(stop, proc)


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--max-jobs", type=int, default=200)
    parser.add_argument("--poll-delay", type=float, default=0.005)
    parser.add_argument("--burst", action="store_true")
    args = parser.parse_args()
    if args.role == "worker":
        run_worker(args.redis_url, args.burst, args.max_jobs, args.poll_delay)
        return
    emit(lambda: job_peer_figures("arq", lambda: throughput(args), lambda: latency(args)))


if __name__ == "__main__":
    main()
