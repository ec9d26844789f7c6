"""Our engine's four figures, each against a private Redis and ``wf worker`` processes.

1. Throughput: 1,000 runs of ``bench.ten_steps`` are created with ``start()`` while no worker runs,
   then ONE ``wf worker bench.workloads --concurrency 200`` process is started; the clock runs from
   spawning it until ``ZCARD <prefix>:{p0}:idx:completed`` reaches 1,000 (nothing subtracted, so the
   worker's start-up is included). steps/s = 10,000 / seconds. Every run's output is then checked,
   and 20 sampled runs also through ``get_run(id).result()``.
2. Latency: with a worker already running, 200 sequential ``bench.one_step`` runs, each timed from
   ``start()`` until ``run.result()`` returns (it blocks on the run's event stream).
3. Per-step overhead: one ``bench.long_run`` of 1,000 sequential steps; the gaps between consecutive
   ``step_completed`` events of its log (server time, ms resolution) for steps 1-100 and 901-1000.
4. Memory: Redis ``used_memory`` before and after 1,000 finished ten-step runs on a fresh prefix,
   both read with no worker connected (so client buffers do not count), divided by 1,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import workloads
from bench.infra import ROOT, RedisServer, log
from worker import get_run, set_world, start
from world_redis import RedisWorld

RUNS = 1_000
LATENCY_RUNS = 200
WORKER_CONCURRENCY = 200
SAMPLE_RESULTS = 20
POLL_S = 0.005


def wf_binary() -> str:
    """The ``wf`` entry point of the interpreter running the benchmark (``.venv/bin/wf``)."""
    beside = Path(sys.executable).parent / "wf"
    return str(beside if beside.exists() else ROOT / ".venv" / "bin" / "wf")


def spawn_worker(
    url: str, prefix: str, log_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """One ``wf worker bench.workloads`` process on ``prefix``; its output goes to ``log_path``."""
    env = {
        **os.environ,
        "WORKFLOW_REDIS_URL": url,
        "WORKFLOW_PREFIX": prefix,
        "WORKFLOW_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [wf_binary(), "worker", "bench.workloads", "--concurrency", str(WORKER_CONCURRENCY)],
            cwd=str(ROOT),
            env=env,
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


@contextlib.asynccontextmanager
async def engine(url: str, prefix: str) -> AsyncIterator[RedisWorld]:
    """A RedisWorld on ``prefix`` set as the process's world; closed at the end."""
    world = RedisWorld.from_url(url, prefix=prefix)
    set_world(world)
    try:
        yield world
    finally:
        set_world(None)
        await world.close()


@contextlib.asynccontextmanager
async def worker_process(url: str, prefix: str, workdir: Path) -> AsyncIterator[Path]:
    """A worker running for the duration of the block; yields its log file."""
    path = workdir / f"worker-{prefix.replace(':', '_')}.log"
    proc = spawn_worker(url, prefix, path)
    try:
        yield path
    finally:
        await asyncio.to_thread(stop_worker, proc)


async def bounded(n: int, limit: int, make: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """``make(i)`` for i in range(n), at most ``limit`` at a time, results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with sem:
            return await make(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def create_ten_step_runs(n: int, limit: int) -> list[str]:
    """Start ``n`` ten-step runs (input i) and return their ids in input order."""

    async def make(i: int) -> str:
        run = await start(workloads.ten_steps, i)
        return run.run_id

    return await bounded(n, limit, make)


async def wait_count(
    r: aioredis.Redis,
    key: str,
    target: int,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    failed_key: str | None = None,
    t0: float | None = None,
) -> tuple[float, float | None]:
    """Poll ZCARD ``key`` until it reaches ``target``: (seconds since ``t0``, to the first one)."""
    t0 = time.perf_counter() if t0 is None else t0
    first: float | None = None
    while True:
        count = int(await r.zcard(key))
        now = time.perf_counter() - t0
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
        await asyncio.sleep(POLL_S)


async def check_outputs(world: RedisWorld, run_ids: list[str]) -> dict[str, Any]:
    """Every run's stored output equals ``expected_ten_steps(i)``; 20 also via ``result()``."""
    pipe = world.redis.pipeline(transaction=False)
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


# -- figure 1 ------------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc (0.0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(server: RedisServer) -> float:
    cpu = server.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def throughput(server: RedisServer, prefix: str, workdir: Path) -> dict[str, Any]:
    """Figure 1: durable steps/s of ONE worker process draining 1,000 pre-created ten-step runs."""
    async with engine(server.url, prefix) as world:
        t = time.perf_counter()
        run_ids = await create_ten_step_runs(RUNS, 50)
        create_s = time.perf_counter() - t
        r = world.redis
        keys = world.keys
        pending = int(await r.zcard(keys.idx_status(0, "pending")))
        if pending != RUNS:
            raise RuntimeError(f"expected {RUNS} pending runs before the worker, found {pending}")
        path = workdir / "worker-throughput.log"
        redis_cpu0 = redis_cpu_s(server)
        t0 = time.perf_counter()
        proc = spawn_worker(server.url, prefix, path)
        worker_cpu = 0.0
        try:
            seconds, first = await wait_count(
                r,
                keys.idx_status(0, "completed"),
                RUNS,
                timeout=300,
                alive=lambda: proc.poll() is None,
                failed_key=keys.idx_status(0, "failed"),
                t0=t0,  # the clock started before spawning the worker
            )
            worker_cpu = process_cpu_s(proc.pid)  # before it drains: start-up included
            redis_cpu = redis_cpu_s(server) - redis_cpu0
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\nworker log:\n{worker_log_tail(path)}") from None
        finally:
            await asyncio.to_thread(stop_worker, proc)
        checks = await check_outputs(world, run_ids)
    steps = RUNS * workloads.STEPS_PER_RUN
    return {
        "runs": RUNS,
        "steps_per_run": workloads.STEPS_PER_RUN,
        "worker_concurrency": WORKER_CONCURRENCY,
        "seconds": round(seconds, 4),
        "steps_per_s": round(steps / seconds, 1),
        "runs_per_s": round(RUNS / seconds, 1),
        "first_run_completed_after_s": round(first or 0.0, 4),
        "create_runs_seconds": round(create_s, 4),
        "worker_cpu_us_per_step": round(worker_cpu * 1e6 / steps, 1),
        "redis_cpu_us_per_step": round(redis_cpu * 1e6 / steps, 1),
        **checks,
    }


# -- figures 2 and 3 -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


async def latency(n: int) -> dict[str, Any]:
    """Figure 2: start() to result() of one-step runs, one at a time, with a worker running."""
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
    return {
        "runs": n,
        "p50_ms": round(percentile(samples, 50), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
        "max_ms": round(max(samples), 3),
    }


def gap_stats(completed_ms: list[int]) -> dict[str, Any]:
    """Gaps between consecutive step completions: steps 1-100, 901-1000, p50 over all."""
    n = len(completed_ms)
    gaps = [b - a for a, b in itertools.pairwise(completed_ms)]
    first = (completed_ms[99] - completed_ms[0]) / 99
    last = (completed_ms[n - 1] - completed_ms[n - 100]) / 99
    return {
        "steps": n,
        "mean_gap_ms_steps_1_100": round(first, 3),
        "mean_gap_ms_steps_901_1000": round(last, 3),
        "ratio_last_first": round(last / first, 3) if first > 0 else None,
        "p50_gap_ms": round(percentile([float(g) for g in gaps], 50), 3),
        "mean_gap_ms_all": round((completed_ms[-1] - completed_ms[0]) / (n - 1), 3),
        "timestamp_resolution_ms": 1,
    }


async def per_step_overhead(steps: int) -> dict[str, Any]:
    """Figure 3: one run of ``steps`` sequential no-op steps, gaps read from its event log."""
    t0 = time.perf_counter()
    run = await start(workloads.long_run, steps)
    value = await run.result(timeout=600)
    wall = time.perf_counter() - t0
    if value != steps:
        raise RuntimeError(f"long_run({steps}) returned {value!r}")
    events = await get_run(run.run_id).events()
    done = [ev.ts for ev in events if ev.__struct_config__.tag == "step_completed"]
    if len(done) != steps:
        raise RuntimeError(f"expected {steps} step_completed events, found {len(done)}")
    return {**gap_stats(done), "wall_seconds": round(wall, 3), "events": len(events)}


async def latency_and_overhead(server: RedisServer, prefix: str, workdir: Path) -> dict[str, Any]:
    """Figures 2 and 3 on one prefix with one worker running throughout."""
    async with engine(server.url, prefix), worker_process(server.url, prefix, workdir) as path:
        out: dict[str, Any] = {}
        try:
            out["latency"] = await latency(LATENCY_RUNS)
        except Exception as exc:
            out["latency"] = {"error": f"{exc}\n{worker_log_tail(path)}"}
        try:
            out["per_step"] = await per_step_overhead(workloads.LONG_RUN_STEPS)
        except Exception as exc:
            out["per_step"] = {"error": f"{exc}\n{worker_log_tail(path)}"}
        return out


# -- figure 4 ------------------------------------------------------------------------------------


async def wait_worker_reading(r: aioredis.Redis, timeout: float = 30) -> None:
    """Until some client blocks in XREADGROUP: the worker is past start-up and reading."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        clients = await r.client_list()
        if any(c.get("cmd") == "xreadgroup" for c in clients):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the worker did not start reading within {timeout:.0f} s")


async def memory_per_run(server: RedisServer, prefix: str, workdir: Path) -> dict[str, Any]:
    """Figure 4: used_memory growth per finished ten-step run on a fresh prefix."""
    async with engine(server.url, prefix) as world:
        r = world.redis
        keys = world.keys
        # let the worker create the group and streams first, then stop it: fixed costs are out
        async with worker_process(server.url, prefix, workdir):
            await wait_worker_reading(r)
        await r.ping()
        await asyncio.sleep(0.2)
        before = server.used_memory()
        run_ids = await create_ten_step_runs(RUNS, 1)  # one connection: no extra client buffers
        async with worker_process(server.url, prefix, workdir) as path:
            try:
                await wait_count(
                    r,
                    keys.idx_status(0, "completed"),
                    RUNS,
                    timeout=300,
                    failed_key=keys.idx_status(0, "failed"),
                )
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\nworker log:\n{worker_log_tail(path)}") from None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # wake-ups acknowledged and deleted
                info = await r.xpending(keys.ready(0), "workers")
                if int(await r.xlen(keys.ready(0))) == 0 and int(info["pending"]) == 0:
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        after = server.used_memory()
        rid = run_ids[0]
        sample = {
            "run_hash": await r.memory_usage(keys.run(rid), samples=0),
            "event_stream": await r.memory_usage(keys.events(rid), samples=0),
            "entity_hash": await r.memory_usage(keys.entities(rid), samples=0),
        }
        checks = await check_outputs(world, run_ids)
    return {
        "runs": RUNS,
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_run": round((after - before) / RUNS, 1),
        "memory_usage_of_one_run_keys": sample,
        "stream_node_max_bytes": config_value(server, "stream-node-max-bytes"),
        **checks,
    }


def config_value(server: RedisServer, name: str) -> str:
    with server.client() as c:
        return str(c.config_get(name).get(name, "?"))


# -- all four ------------------------------------------------------------------------------------


async def run_all(server: RedisServer, tag: str) -> dict[str, Any]:
    """Every figure of our engine; a failing figure records its error and the others still run."""
    workdir = Path(tempfile.mkdtemp(prefix="wfbench-ours-"))
    out: dict[str, Any] = {"worker_logs": str(workdir)}
    log("ours: figure 1, throughput (1,000 runs x 10 steps, one worker)")
    try:
        out["throughput"] = await throughput(server, f"wfb{tag}tp", workdir)
    except Exception as exc:
        out["throughput"] = {"error": str(exc)}
    log("ours: figures 2 and 3, latency and per-step overhead")
    try:
        out.update(await latency_and_overhead(server, f"wfb{tag}lat", workdir))
    except Exception as exc:
        out["latency"] = out["per_step"] = {"error": str(exc)}
    log("ours: figure 4, Redis memory per finished run")
    try:
        out["memory"] = await memory_per_run(server, f"wfb{tag}mem", workdir)
    except Exception as exc:
        out["memory"] = {"error": str(exc)}
    if any("error" in v for v in out.values() if isinstance(v, dict)):
        log(f"ours: worker logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        out["worker_logs"] = None
    return out
