"""Our engine's throughput figures, and the helpers every figure of ours uses.

Figures 1-3 (``throughput``): ``TP_RUNS`` runs of ``bench.ten_steps`` are created with ``start()``
while no worker runs, then N ``wf worker bench.workloads --concurrency 200`` processes are spawned.
``ZCARD <prefix>:{p0}:idx:completed`` is polled every 5 ms with a timestamp, from spawning the
workers until it reaches ``TP_RUNS``:

- total steps/s = steps / seconds from spawning the workers to the last completion (start-up
  included, nothing subtracted);
- steady steps/s = 10 x (completed at the first poll that saw >= 90 % done - completed at the first
  poll that saw >= 10 %) / the time between those two polls (``bench.stats.steady_rate``);
- CPU per step: each worker's user+system CPU (``/proc/<pid>/stat``), redis-server's
  (``INFO cpu``) and this client process's (it polls), read at those polls and at the end, divided
  by the steps completed in between.

Every run's output is then checked, and 20 sampled runs also through ``get_run(id).result()``.
Figure 1 is one worker on the private server (persistence off), figure 2 the same on a second
server with AOF ``appendfsync everysec``, figure 3 two workers on the first server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis

from bench import workloads
from bench.infra import ROOT, RedisServer
from bench.stats import Sample, crossing, steady_rate
from worker import get_run, set_world, start
from world_redis import RedisWorld

RUNS = 1_000  # runs of the memory and scale-out figures
TP_RUNS = 5_000  # runs of the throughput figures: enough for a steady state between 10 % and 90 %
WORKER_CONCURRENCY = 200
SAMPLE_RESULTS = 20
POLL_S = 0.005
STEADY_WINDOW = (0.1, 0.9)


def wf_binary() -> str:
    """The ``wf`` entry point of the interpreter running the benchmark (``.venv/bin/wf``)."""
    beside = Path(sys.executable).parent / "wf"
    return str(beside if beside.exists() else ROOT / ".venv" / "bin" / "wf")


def worker_env(url: str, prefix: str, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``wf worker`` on ``prefix`` (warnings only in its log)."""
    return {
        **os.environ,
        "WORKFLOW_REDIS_URL": url,
        "WORKFLOW_PREFIX": prefix,
        "WORKFLOW_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }


def worker_command() -> list[str]:
    return [wf_binary(), "worker", "bench.workloads", "--concurrency", str(WORKER_CONCURRENCY)]


def spawn_worker(
    url: str, prefix: str, log_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """One ``wf worker bench.workloads`` process on ``prefix``; its output goes to ``log_path``."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            worker_command(),
            cwd=str(ROOT),
            env=worker_env(url, prefix, extra_env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the worker drains), then SIGKILL if it has not exited within 40 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def worker_log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def client(world: RedisWorld) -> aioredis.Redis:
    """The world's client with all of redis-py's commands: the benchmark reads what the engine's
    narrower ``RedisClient`` protocol does not name (ZCARD, MEMORY USAGE...) on a single server."""
    return cast(aioredis.Redis, world.redis)


@contextlib.asynccontextmanager
async def engine(url: str, prefix: str) -> AsyncIterator[RedisWorld]:
    """A RedisWorld on ``prefix`` set as the process's world (its partition count settled, so
    its keys can be built at once); closed at the end."""
    world = RedisWorld.from_url(url, prefix=prefix)
    set_world(world)
    try:
        await world.check_config()
        yield world
    finally:
        set_world(None)
        await world.close()


@dataclass
class WorkerProc:
    """A running worker process and its log file."""

    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return worker_log_tail(self.log)


@contextlib.asynccontextmanager
async def worker_process(
    url: str, prefix: str, workdir: Path, extra_env: dict[str, str] | None = None
) -> AsyncIterator[WorkerProc]:
    """A worker running for the duration of the block."""
    path = workdir / f"worker-{prefix.replace(':', '_')}.log"
    proc = spawn_worker(url, prefix, path, extra_env)
    try:
        yield WorkerProc(proc, path)
    finally:
        await asyncio.to_thread(stop_worker, proc)


async def bounded(n: int, limit: int, make: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """``make(i)`` for i in range(n), at most ``limit`` at a time, results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with sem:
            return await make(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def create_runs(fn: Any, n: int, limit: int) -> list[str]:
    """Start ``n`` runs of ``fn`` (input i) and return their ids in input order."""

    async def make(i: int) -> str:
        run = await start(fn, i)
        return run.run_id

    return await bounded(n, limit, make)


async def create_ten_step_runs(n: int, limit: int) -> list[str]:
    """Start ``n`` ten-step runs (input i) and return their ids in input order."""
    return await create_runs(workloads.ten_steps, n, limit)


async def wait_count(
    r: aioredis.Redis,
    key: str,
    target: int,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    failed_key: str | None = None,
    t0: float | None = None,
    on_poll: Callable[[Sample], Awaitable[None]] | None = None,
    poll_s: float = POLL_S,
) -> tuple[float, float | None]:
    """Poll ZCARD ``key`` every ``poll_s`` until it reaches ``target``: (seconds since ``t0``,
    to the first one).

    ``on_poll`` sees every poll's (time, count).
    """
    t0 = time.perf_counter() if t0 is None else t0
    first: float | None = None
    while True:
        count = int(await r.zcard(key))
        now = time.perf_counter() - t0
        if on_poll is not None:
            await on_poll(Sample(now, count))
        if count and first is None:
            first = now
        if count >= target:
            return now, first
        if failed_key and int(await r.zcard(failed_key)):
            raise RuntimeError(f"runs failed: {await r.zcard(failed_key)} in {failed_key}")
        if not alive():
            raise RuntimeError(f"the worker exited with {count}/{target} runs completed")
        if now > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s with {count}/{target} completed")
        await asyncio.sleep(poll_s)


async def check_outputs_api(run_ids: list[str]) -> dict[str, Any]:
    """Every run's ``get_run(id).result()`` equals ``expected_ten_steps(i)`` (50 at a time): the
    check for runs whose storage the benchmark does not read itself, such as compacted ones."""

    async def wrong(i: int) -> bool:
        return bool(await get_run(run_ids[i]).result(timeout=30) != workloads.expected_ten_steps(i))

    bad = [rid for rid, w in zip(run_ids, await bounded(len(run_ids), 50, wrong), strict=True) if w]
    if bad:
        raise RuntimeError(f"{len(bad)} runs returned a wrong result, e.g. {bad[:3]}")
    return {"checked_outputs": len(run_ids), "checked_via_result_api": len(run_ids)}


async def check_outputs(world: RedisWorld, run_ids: list[str]) -> dict[str, Any]:
    """Every run's stored output equals ``expected_ten_steps(i)``; 20 also via ``result()``."""
    pipe = client(world).pipeline(transaction=False)
    for rid in run_ids:
        pipe.hmget(world.keys.run(rid), "status", "output")
    rows = await pipe.execute()
    wrong = [
        rid
        for i, (rid, (status, output)) in enumerate(zip(run_ids, rows, strict=True))
        if status != "completed" or json.loads(output or "null") != workloads.expected_ten_steps(i)
    ]
    step = max(1, len(run_ids) // SAMPLE_RESULTS)
    sampled = list(range(0, len(run_ids), step))[:SAMPLE_RESULTS]
    for i in sampled:
        value = await get_run(run_ids[i]).result(timeout=10)
        if value != workloads.expected_ten_steps(i):
            wrong.append(run_ids[i])
    if wrong:
        raise RuntimeError(f"{len(wrong)} runs returned a wrong result, e.g. {wrong[:3]}")
    return {"checked_outputs": len(run_ids), "checked_via_result_api": len(sampled)}


# -- CPU and memory of processes -----------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc (0.0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_status_kb(pid: int, field: str) -> int | None:
    """A ``/proc/<pid>/status`` figure in kB (``VmRSS``, ``VmHWM``), None where unreadable."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return None


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    kb = process_status_kb(pid, field)
    return None if kb is None else round(kb / 1024, 1)


def redis_cpu_s(server: RedisServer) -> float:
    cpu = server.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


@dataclass(frozen=True)
class CpuMark:
    """CPU seconds used so far by each worker, redis-server and this client, at ``completed``."""

    completed: int
    workers: tuple[float, ...]
    redis: float
    client: float

    def per_step_us(self, since: CpuMark, steps_per_run: int) -> dict[str, Any]:
        """µs of CPU per step of each side between ``since`` and this mark."""
        steps = (self.completed - since.completed) * steps_per_run
        if steps <= 0:
            return {}

        def us(a: float, b: float) -> float:
            return round((a - b) * 1e6 / steps, 1)

        per_worker = [us(a, b) for a, b in zip(self.workers, since.workers, strict=True)]
        return {
            "steps": steps,
            "workers": per_worker,
            "workers_total": round(sum(per_worker), 1),
            "redis": us(self.redis, since.redis),
            "client": us(self.client, since.client),
        }


def cpu_mark(completed: int, procs: Sequence[subprocess.Popen[bytes]], redis: float) -> CpuMark:
    return CpuMark(
        completed, tuple(process_cpu_s(p.pid) for p in procs), redis, time.process_time()
    )


# -- figures 1, 2 and 3 --------------------------------------------------------------------------


class Progress:
    """The polls of one throughput measurement and the CPU marks at 10 %, 90 % and the end."""

    def __init__(self, r: aioredis.Redis, procs: Sequence[subprocess.Popen[bytes]], total: int):
        self.r, self.procs, self.total = r, procs, total
        self.samples: list[Sample] = []
        self.marks: dict[str, CpuMark] = {}

    async def mark(self, name: str, completed: int) -> None:
        cpu = await self.r.info("cpu")
        redis = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        self.marks[name] = cpu_mark(completed, self.procs, redis)

    async def on_poll(self, sample: Sample) -> None:
        self.samples.append(sample)
        for name, fraction in zip(("lo", "hi"), STEADY_WINDOW, strict=True):
            if name not in self.marks and sample.count >= fraction * self.total:
                await self.mark(name, sample.count)


async def drain_runs(
    server: RedisServer, world: RedisWorld, workers: int, workdir: Path
) -> tuple[float, Progress]:
    """Spawn ``workers`` workers and poll until TP_RUNS runs completed: (seconds, progress)."""
    keys = world.keys
    paths = [workdir / f"worker-tp-{world.keys.prefix}-{i}.log" for i in range(workers)]
    t0 = time.perf_counter()
    procs = [spawn_worker(server.url, keys.prefix, path) for path in paths]
    progress = Progress(client(world), procs, TP_RUNS)
    await progress.mark("start", 0)
    try:
        seconds, _ = await wait_count(
            client(world),
            keys.idx_status(0, "completed"),
            TP_RUNS,
            timeout=300,
            alive=lambda: all(p.poll() is None for p in procs),
            failed_key=keys.idx_status(0, "failed"),
            t0=t0,  # the clock started before spawning the workers
            on_poll=progress.on_poll,
        )
        await progress.mark("end", TP_RUNS)
    except RuntimeError as exc:
        tails = "\n".join(worker_log_tail(path) for path in paths)
        raise RuntimeError(f"{exc}\nworker log:\n{tails}") from None
    finally:
        for proc in procs:
            await asyncio.to_thread(stop_worker, proc)
    return seconds, progress


def throughput_figures(seconds: float, progress: Progress) -> dict[str, Any]:
    """Total and steady-state rates and CPU per step, from one drain's polls and marks."""
    per_run = workloads.STEPS_PER_RUN
    steps = TP_RUNS * per_run
    first = crossing(progress.samples, 1)
    steady = steady_rate(progress.samples, TP_RUNS, *STEADY_WINDOW)
    marks = progress.marks
    out: dict[str, Any] = {
        "seconds": round(seconds, 4),
        "steps_per_s": round(steps / seconds, 1),
        "first_run_completed_after_s": round(first.t, 4) if first else None,
        "cpu_us_per_step_total": marks["end"].per_step_us(marks["start"], per_run),
    }
    if steady is not None:
        out["steady_steps_per_s"] = round(steady["per_s"] * per_run, 1)
        out["steady_window"] = {k: round(v, 4) for k, v in steady.items() if k != "per_s"}
    if "lo" in marks and "hi" in marks:
        out["cpu_us_per_step_steady"] = marks["hi"].per_step_us(marks["lo"], per_run)
    return out


STEADY_HOW = (
    "steady_steps_per_s = 10 x (runs completed at the first poll of ZCARD idx:completed that saw "
    ">= 90 % of the runs done - completed at the first poll that saw >= 10 %) / seconds between "
    "those two polls (polled every 5 ms); cpu_us_per_step_steady: CPU read at those two polls "
    "over the steps completed between them; *_total: from spawning the workers to the last "
    "completion, start-up included"
)


async def throughput(
    server: RedisServer, prefix: str, workdir: Path, workers: int = 1
) -> dict[str, Any]:
    """Durable steps/s of ``workers`` worker processes draining TP_RUNS pre-created runs."""
    async with engine(server.url, prefix) as world:
        t = time.perf_counter()
        run_ids = await create_ten_step_runs(TP_RUNS, 50)
        create_s = time.perf_counter() - t
        pending = int(await client(world).zcard(world.keys.idx_status(0, "pending")))
        if pending != TP_RUNS:
            raise RuntimeError(
                f"expected {TP_RUNS} pending runs before the worker, found {pending}"
            )
        seconds, progress = await drain_runs(server, world, workers, workdir)
        checks = await check_outputs(world, run_ids)
    return {
        "runs": TP_RUNS,
        "steps_per_run": workloads.STEPS_PER_RUN,
        "workers": workers,
        "worker_concurrency": WORKER_CONCURRENCY,
        **throughput_figures(seconds, progress),
        "how": STEADY_HOW,
        "create_runs_seconds": round(create_s, 4),
        **checks,
    }
