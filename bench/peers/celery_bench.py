"""Celery peer (Redis broker and result backend): throughput, latency, memory; prints one JSON line.

Run with the python of ``bench/.venvs/celery`` (``bench.run`` does that), with the broker and the
result backend on two databases of their own:

- throughput: 10,000 no-op tasks (= 1,000 runs x 10 steps; Celery's chains would cost a message per
  link the same way) are sent up front with ``apply_async``, then ONE worker process is spawned
  (``--pool solo``: one process, tasks run in its main thread; prefetch multiplier 4, the
  default); the clock runs from spawning it until the backend database holds 10,000 results
  (``DBSIZE``, polled every 5 ms). jobs/s = 10,000 / seconds. Every stored result is checked.
- latency: with a worker running, 200 sequential tasks, each timed from ``delay()`` until
  ``AsyncResult.get()`` returns (the Redis backend subscribes to the task's result).
- memory: ``used_memory`` before sending and after draining the 10,000 tasks (results kept:
  ``result_expires`` default, 1 day), divided by 10,000, read with no worker connected.

``worker`` as first argument runs the worker itself (until SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import redis
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
from celery import Celery

app = Celery("wfbench")


@app.task(name="wfbench.noop")
def noop(i: int) -> int:
    """A no-op task: returns its argument."""
    return i


def configure(args: argparse.Namespace) -> None:
    app.conf.update(
        broker_url=args.broker_url,
        result_backend=args.backend_url,
        worker_hijack_root_logger=False,
        task_ignore_result=False,
        broker_connection_retry_on_startup=True,
    )


def spawn_worker(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, os.path.abspath(__file__), "worker"]
    cmd += ["--broker-url", args.broker_url, "--backend-url", args.backend_url]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_worker() -> None:
    app.worker_main(["worker", "--pool", "solo", "--loglevel", "WARNING", "--without-gossip"])


def check_results(backend: redis.Redis, ids: list[str]) -> None:
    """Every task's stored result is SUCCESS with its input as value."""
    raw = backend.mget([f"celery-task-meta-{task_id}" for task_id in ids])
    wrong = [
        i
        for i, value in enumerate(raw)
        if value is None
        or json.loads(value).get("result") != i
        or json.loads(value)["status"] != "SUCCESS"
    ]
    if wrong:
        raise RuntimeError(f"{len(wrong)} tasks without their result, e.g. task {wrong[0]}")


async def throughput(args: argparse.Namespace) -> tuple[Result, Result]:
    """Drain time of ``args.jobs`` pre-sent tasks by one worker process; and memory per task."""
    before = used_memory(args.broker_url)
    backend = redis.Redis.from_url(args.backend_url)
    t = time.perf_counter()
    ids = [noop.apply_async((i,)).id for i in range(args.jobs)]
    send_s = time.perf_counter() - t
    t0 = time.perf_counter()
    proc = spawn_worker(args)

    async def drained() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}")
        return int(backend.dbsize()) >= args.jobs

    try:
        await poll_until(drained, timeout=600)
        seconds = time.perf_counter() - t0
    finally:
        await asyncio.to_thread(stop, proc)
    check_results(backend, ids)
    backend.close()
    after = used_memory(args.broker_url)
    what = f"{args.jobs:,} no-op tasks (no chains), one worker process (--pool solo)"
    return job_figures(
        args.jobs, seconds, (before, after), what, pool="solo", send_seconds=round(send_s, 4)
    )


async def latency(args: argparse.Namespace) -> Result:
    """delay() to get() of single tasks, one at a time, with a worker already running."""
    proc = spawn_worker(args)

    async def one(i: int) -> Any:
        return noop.delay(i).get(timeout=60 if i < 0 else 30)

    try:
        return await time_sequential(args.latency_runs, one)
    finally:
        await asyncio.to_thread(stop, proc)


def main() -> None:
    parser = job_parser(__doc__)
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--backend-url", required=True)
    args = parser.parse_args()
    configure(args)
    if args.role == "worker":
        run_worker()
        return
    emit(lambda: job_peer_figures("celery", lambda: throughput(args), lambda: latency(args)))


if __name__ == "__main__":
    main()
