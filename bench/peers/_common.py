"""What every peer script shares: it runs with the PEER's python (``bench/.venvs/<peer>``), which
has redis-py but not our package, and is imported from the script's own directory.

A peer script measures in its own process, prints progress to stderr and its result as ONE JSON
line on stdout (``emit``); a figure that fails records ``{"error": ...}`` and the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

Result = dict[str, Any]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def latency_summary(samples: list[float]) -> Result:
    """p50, p99, mean and max of latency samples in ms."""
    return {
        "runs": len(samples),
        "p50_ms": round(percentile(samples, 50), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
        "max_ms": round(max(samples), 3),
    }


async def time_sequential(n: int, one: Callable[[int], Awaitable[Any]], warm_up: int = 5) -> Result:
    """``one(i)`` for i in range(n), one at a time, each timed; it must return ``i``."""
    for i in range(warm_up):  # also proves the worker is up
        await one(-1 - i)
    samples: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        value = await one(i)
        samples.append((time.perf_counter() - t0) * 1000)
        if value != i:
            raise RuntimeError(f"job {i} returned {value!r}")
    return latency_summary(samples)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL when the process has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def used_memory(url: str) -> int:
    """Redis ``used_memory`` of the server at ``url``."""
    import redis

    with redis.Redis.from_url(url) as r:
        return int(r.info("memory")["used_memory"])


def job_figures(
    jobs: int, seconds: float, memory: tuple[int, int], what: str, **settings: Any
) -> tuple[Result, Result]:
    """The throughput and memory results of ``jobs`` jobs drained in ``seconds``, with
    ``used_memory`` before and after (``memory``) and the peer's ``settings`` as they ran."""
    before, after = memory
    tp = {
        "jobs": jobs,
        **settings,
        "seconds": round(seconds, 4),
        "jobs_per_s": round(jobs / seconds, 1),
        "checked_results": jobs,
        "what": what,
    }
    mem = {
        "jobs": jobs,
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_job": round((after - before) / jobs, 1),
    }
    return tp, mem


async def poll_until(
    done: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.005
) -> None:
    """Until ``done()``; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not done within {timeout:.0f} s")
        await asyncio.sleep(every)


async def figure(out: Result, keys: tuple[str, ...], make: Callable[[], Awaitable[Any]]) -> None:
    """``out[key] = value`` for each key and value of ``make()``, or the error in each key."""
    try:
        values = await make()
        values = values if len(keys) > 1 else (values,)
        for key, value in zip(keys, values, strict=True):
            out[key] = value
    except Exception as exc:
        for key in keys:
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}


def job_parser(doc: str) -> argparse.ArgumentParser:
    """The command line every job-queue peer shares: ``[bench|worker] --jobs --latency-runs``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("role", nargs="?", choices=["bench", "worker"], default="bench")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency-runs", type=int, default=200)
    return parser


async def job_peer_figures(
    peer: str,
    throughput: Callable[[], Awaitable[tuple[Result, Result]]],
    latency: Callable[[], Awaitable[Result]],
) -> Result:
    """A job-queue peer's result: its version, throughput and memory, latency."""
    out: Result = {"peer": peer, "version": importlib.metadata.version(peer)}
    await figure(out, ("throughput", "memory"), throughput)
    await figure(out, ("latency",), latency)
    out["per_step"] = {"not_applicable": f"{peer} has jobs, not multi-step workflows"}
    return out


def emit(bench: Callable[[], Awaitable[Result]]) -> None:
    """Run ``bench`` with stdout sent to stderr; print its result as one JSON line on stdout."""
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        result = asyncio.run(bench())
    print(json.dumps(result), file=real_stdout, flush=True)
