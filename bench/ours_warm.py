"""Our figures measured against ONE worker that is already running (warm): 4, 5 and 7.

4. Latency: 200 sequential ``bench.one_step`` runs, each timed from ``start()`` until
   ``run.result()`` returns (it blocks on the run's event stream), after 5 warm-up runs.
5. Per-step cost over one long run: one ``bench.long_run`` of 10,000 sequential steps; the mean gap
   between consecutive ``step_completed`` events of its log (their timestamps, ms resolution) over
   steps 1-100 and 9,901-10,000 and over each 1,000-step block; and the worker's RSS (``VmRSS``)
   before and after that run.
7. Fan-out: one ``bench.fan_out`` run gathering 1,000, then one gathering 10,000 parallel no-op
   steps, each timed from ``start()`` to ``result()``; steps/s = steps / seconds.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import workloads
from bench.infra import RedisServer, log
from bench.ours import WorkerProc, engine, rss_mb, worker_process
from bench.stats import gap_stats, summary_ms
from worker import get_run, start

LATENCY_RUNS = 200
FAN_OUT = (1_000, 10_000)
FAN_OUT_TIMEOUT_S = 120.0  # a few seconds here; a stuck run must not eat the run's time budget
WARM_FIGURES = ("latency", "long_run", "fan_out")


async def latency(n: int = LATENCY_RUNS) -> dict[str, Any]:
    """Figure 4: start() to result() of one-step runs, one at a time, with a worker running."""
    for i in range(5):  # warm-up; also proves the worker is up
        run = await start(workloads.one_step, -i)
        await run.result(timeout=60)
    samples: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        run = await start(workloads.one_step, i)
        value = await run.result(timeout=30)
        samples.append((time.perf_counter() - t0) * 1000)
        if value != i:
            raise RuntimeError(f"one_step({i}) returned {value!r}")
    return summary_ms(samples)


async def long_run(worker: WorkerProc, steps: int = workloads.LONG_RUN_STEPS) -> dict[str, Any]:
    """Figure 5: one run of ``steps`` sequential no-op steps, gaps read from its event log.

    A short run first, so that "RSS before" is the warm worker's and not a process still starting
    (as it would be when this figure is the first, ``--only 5``)."""
    warm = await start(workloads.long_run, 10)
    if await warm.result(timeout=60) != 10:
        raise RuntimeError("the warm-up long_run(10) returned a wrong value")
    rss_before = rss_mb(worker.proc.pid)
    t0 = time.perf_counter()
    run = await start(workloads.long_run, steps)
    value = await run.result(timeout=600)
    wall = time.perf_counter() - t0
    rss_after = rss_mb(worker.proc.pid)
    if value != steps:
        raise RuntimeError(f"long_run({steps}) returned {value!r}")
    events = await get_run(run.run_id).events()
    done = [ev.ts for ev in events if ev.__struct_config__.tag == "step_completed"]
    if len(done) != steps:
        raise RuntimeError(f"expected {steps} step_completed events, found {len(done)}")
    return {
        **gap_stats(done),
        "wall_seconds": round(wall, 3),
        "events": len(events),
        "worker_rss_mb_before": rss_before,
        "worker_rss_mb_after": rss_after,
        "worker_rss_mb_peak": rss_mb(worker.proc.pid, "VmHWM"),
    }


async def fan_out_one(n: int) -> dict[str, Any]:
    """One run gathering ``n`` parallel steps: seconds from start() to result(), and steps/s."""
    t0 = time.perf_counter()
    run = await start(workloads.fan_out, n)
    value = await run.result(timeout=FAN_OUT_TIMEOUT_S)
    seconds = time.perf_counter() - t0
    if value != n * (n - 1) // 2:
        raise RuntimeError(f"fan_out({n}) returned {value!r}")
    return {"seconds": round(seconds, 3), "steps_per_s": round(n / seconds, 1)}


async def fan_out(worker: WorkerProc, sizes: tuple[int, ...] = FAN_OUT) -> dict[str, Any]:
    """Figure 7: one run per size; a size that fails records its error, the next still runs."""
    out: dict[str, Any] = {}
    for n in sizes:
        log(f"ours: fan-out of {n:,} steps")
        out[str(n)] = await guarded(functools.partial(fan_out_one, n), worker)
    return out


async def guarded(make: Callable[[], Awaitable[dict[str, Any]]], worker: WorkerProc) -> Any:
    """A figure's result, or its error with the tail of the worker's log."""
    try:
        return await make()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}\n{worker.tail()}"}


async def warm_figures(
    server: RedisServer, prefix: str, workdir: Path, wanted: set[str]
) -> dict[str, Any]:
    """The figures of WARM_FIGURES that are ``wanted``, on one prefix with one worker throughout."""
    out: dict[str, Any] = {}
    async with engine(server.url, prefix), worker_process(server.url, prefix, workdir) as worker:
        figures: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
            "latency": latency,
            "long_run": lambda: long_run(worker),
            "fan_out": lambda: fan_out(worker),
        }
        for name, make in figures.items():
            if name in wanted:
                log(f"ours: {name}")
                out[name] = await guarded(make, worker)
    return out
