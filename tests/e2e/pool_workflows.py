"""Workflows of the worker-pool tests: steps declared with a queue (``@step(queue="gpu")``)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from worker import RetryableError, get_step_metadata, sleep, step, workflow


def where() -> dict[str, object]:
    """The process a step ran in: its pid and the worker's marker (POOL_MARKER)."""
    return {"pid": os.getpid(), "marker": os.environ.get("POOL_MARKER", "")}


@step(queue="gpu")
async def on_gpu(x: int) -> dict[str, object]:
    return {**where(), "x": x * 2}


@step
async def on_default() -> dict[str, object]:
    return where()


@workflow(name="pool_basic")
async def pool_basic(x: int) -> dict[str, object]:
    gpu = await on_gpu(x)
    default = await on_default()
    return {"gpu": gpu, "default": default}


@step(queue="gpu")
def gpu_until(marker: str) -> dict[str, object]:
    """Writes ``<marker>.<pid>`` when it starts, then runs until ``<marker>.go`` exists (or
    a minute passed: a test that failed never leaves a step running for good)."""
    Path(f"{marker}.{os.getpid()}").write_text(str(get_step_metadata().attempt))
    go = Path(f"{marker}.go")
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return where()


@workflow(name="pool_slow")
async def pool_slow(marker: str) -> dict[str, object]:
    return await gpu_until(marker)


@step(queue="gpu", max_retries=3)
def gpu_flaky(failures: int) -> dict[str, object]:
    """Fails ``failures`` times (a sync step: runs in the pool worker's thread pool)."""
    attempt = get_step_metadata().attempt
    if attempt <= failures:
        raise RetryableError(f"attempt {attempt} failed", retry_after=0.2)
    return {**where(), "attempt": attempt}


@workflow(name="pool_retries")
async def pool_retries(failures: int) -> dict[str, object]:
    return await gpu_flaky(failures)


@workflow(name="pool_parallel")
async def pool_parallel(n: int) -> list[int]:
    results = await asyncio.gather(*(on_gpu(i) for i in range(n)))
    return [int(str(r["x"])) for r in results]


@workflow(name="pool_routed_workflow", queue="wfq")
async def routed_workflow(x: int) -> dict[str, object]:
    """Replayed only by workers serving "wfq": its step without a queue runs there too, its gpu
    step in the gpu pool; the sleep (longer than a worker holds a run for a timer) brings it
    back through the ready stream, forwarded again."""
    here = await on_default()
    await sleep(1.5)
    gpu = await on_gpu(x)
    return {"default_step": here, "gpu": gpu}


@step
def default_until(marker: str) -> dict[str, object]:
    """Like ``gpu_until``, for a step without a queue (it runs where its run is held)."""
    Path(f"{marker}.{os.getpid()}").write_text(str(get_step_metadata().attempt))
    go = Path(f"{marker}.go")
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return where()


@workflow(name="pool_routed_slow", queue="wfq")
async def routed_slow(marker: str) -> dict[str, object]:
    return await default_until(marker)
