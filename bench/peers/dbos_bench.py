"""DBOS Transact peer: the same four figures on PostgreSQL; prints one JSON line.

Run with the python of ``bench/.venvs/dbos`` (``bench.run`` does that). A fresh database
``wfbench_<random>`` is created on the given server, used as DBOS's system database, and dropped at
the end. DBOS runs workflows in the process that starts them (there is no separate worker), so every
figure is measured in this one process, after ``DBOS.launch()``:

- throughput: 1,000 workflows of 10 sequential no-op ``@DBOS.step()``s started with
  ``DBOS.start_workflow_async``, at most ``--concurrency`` in flight (default 50: with 200, as our
  worker's ``--concurrency``, DBOS was slower in a trial here, 432 vs 535 steps/s); the clock runs
  from the first start until the last result.
  steps/s = 10,000 / seconds.
- latency: 200 sequential one-step workflows, each timed from ``start_workflow_async`` until
  ``handle.get_result()`` returns.
- per-step overhead: one workflow of 1,000 sequential no-op steps; gaps between consecutive
  ``completed_at_epoch_ms`` of its steps (``DBOS.list_workflow_steps_async``), steps 1-100 vs 901-1000.
- storage: total size of the tables of the ``dbos`` schema before and after the 1,000 ten-step
  workflows, divided by 1,000 (PostgreSQL pages, so coarse; for information).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import json
import sys
import time
import uuid
from typing import Any

import psycopg
from _common import percentile, time_sequential
from dbos import DBOS, DBOSConfig

RUNS = 1_000
STEPS = 10
LATENCY_RUNS = 200
LONG_STEPS = 1_000


@DBOS.step()
async def noop(i: int) -> int:
    """A no-op step: returns its argument."""
    return i


@DBOS.workflow()
async def ten_steps(n: int) -> int:
    """Ten sequential no-op steps; returns ``n + 45``."""
    total = 0
    for i in range(STEPS):
        total += await noop(i)
    return n + total


@DBOS.workflow()
async def one_step(n: int) -> int:
    """One no-op step; returns ``n``."""
    return await noop(n)


@DBOS.workflow()
async def long_run(steps: int) -> int:
    """``steps`` sequential no-op steps; returns ``steps``."""
    done = 0
    for i in range(steps):
        done += await noop(i) - i + 1
    return done


def schema_bytes(url: str) -> int:
    """Total size (tables, indexes, TOAST) of the tables in the ``dbos`` schema."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'dbos' AND c.relkind = 'r'"
        ).fetchone()
    return int(row[0]) if row else 0


async def throughput(db_url: str, concurrency: int) -> tuple[dict[str, Any], dict[str, Any]]:
    before = await asyncio.to_thread(schema_bytes, db_url)
    sem = asyncio.Semaphore(concurrency)

    async def one(n: int) -> int:
        async with sem:
            handle = await DBOS.start_workflow_async(ten_steps, n)
            return int(await handle.get_result())

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(n) for n in range(RUNS)))
    seconds = time.perf_counter() - t0
    wrong = [n for n, r in enumerate(results) if r != n + sum(range(STEPS))]
    if wrong:
        raise RuntimeError(f"{len(wrong)} workflows returned a wrong result")
    after = await asyncio.to_thread(schema_bytes, db_url)
    tp = {
        "runs": RUNS,
        "steps_per_run": STEPS,
        "concurrency": concurrency,
        "seconds": round(seconds, 4),
        "steps_per_s": round(RUNS * STEPS / seconds, 1),
        "runs_per_s": round(RUNS / seconds, 1),
        "checked_results": RUNS,
        "what": f"{RUNS:,} workflows x {STEPS} steps, in-process, {concurrency} in flight",
    }
    storage = {
        "runs": RUNS,
        "schema_bytes_before": before,
        "schema_bytes_after": after,
        "bytes_per_run": round((after - before) / RUNS, 1),
    }
    return tp, storage


async def latency() -> dict[str, Any]:
    """start_workflow_async() to get_result() of one-step workflows, one at a time."""

    async def one(i: int) -> Any:
        return await (await DBOS.start_workflow_async(one_step, i)).get_result()

    return await time_sequential(LATENCY_RUNS, one)


async def per_step() -> dict[str, Any]:
    t0 = time.perf_counter()
    handle = await DBOS.start_workflow_async(long_run, LONG_STEPS)
    value = await handle.get_result()
    wall = time.perf_counter() - t0
    if value != LONG_STEPS:
        raise RuntimeError(f"long_run returned {value!r}")
    steps = await DBOS.list_workflow_steps_async(handle.get_workflow_id(), load_output=False)
    done = sorted(
        (s["function_id"], s["completed_at_epoch_ms"])
        for s in steps
        if s["function_name"].endswith("noop") and s["completed_at_epoch_ms"] is not None
    )
    ms = [c for _, c in done]
    if len(ms) != LONG_STEPS:
        raise RuntimeError(f"expected {LONG_STEPS} completed steps, found {len(ms)}")
    gaps = [float(b - a) for a, b in itertools.pairwise(ms)]
    first = (ms[99] - ms[0]) / 99
    last = (ms[-1] - ms[-100]) / 99
    return {
        "steps": len(ms),
        "mean_gap_ms_steps_1_100": round(first, 3),
        "mean_gap_ms_steps_901_1000": round(last, 3),
        "ratio_last_first": round(last / first, 3) if first > 0 else None,
        "p50_gap_ms": round(percentile(gaps, 50), 3),
        "mean_gap_ms_all": round((ms[-1] - ms[0]) / (len(ms) - 1), 3),
        "timestamp_resolution_ms": 1,
        "wall_seconds": round(wall, 3),
    }


async def bench(db_url: str, concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {"peer": "dbos", "version": importlib.metadata.version("dbos")}
    t = time.perf_counter()
    DBOS(config=DBOSConfig(name="wfbench", system_database_url=db_url, log_level="WARNING"))
    DBOS.launch()
    out["launch_seconds"] = round(time.perf_counter() - t, 3)
    try:
        try:
            out["throughput"], out["storage"] = await throughput(db_url, concurrency)
        except Exception as exc:
            out["throughput"] = out["storage"] = {"error": f"{type(exc).__name__}: {exc}"}
        for name, fn in (("latency", latency), ("per_step", per_step)):
            try:
                out[name] = await fn()
            except Exception as exc:
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        DBOS.destroy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    name = f"wfbench_{uuid.uuid4().hex[:12]}"
    admin = args.pg_url
    db_url = admin.rsplit("/", 1)[0] + f"/{name}"
    real_stdout = sys.stdout
    result: dict[str, Any] = {"peer": "dbos", "database": name}
    with contextlib.redirect_stdout(sys.stderr):
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            try:
                result.update(asyncio.run(bench(db_url, args.concurrency)))
            finally:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                result["database_dropped"] = True
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(result), file=real_stdout, flush=True)


if __name__ == "__main__":
    main()
