"""Worker pools: steps declared with a queue run only on workers serving it (``--queues``)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e import pool_workflows as pw
from tests.support import WF, eventually, wait_for, wf_json
from worker import start
from world_redis import RedisWorld

FAST_LEASE = {"WORKFLOW_LEASE_MS": "1500", "WORKFLOW_HEARTBEAT_MS": "300"}
MODULE = "tests.e2e.pool_workflows"


def _types(events: list[Any]) -> list[str]:
    return [str(e.__struct_config__.tag) for e in events]


async def _queue_row(env: dict[str, str], queue: str) -> dict[str, Any] | None:
    rows = await wf_json(env, "inspect", "queues")
    assert isinstance(rows, list)
    return next((r for r in rows if r["queue"] == queue), None)


async def test_step_waits_for_its_pool_then_runs_there(
    world: RedisWorld, start_worker, worker_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """A gpu step waits (run running, visible in inspect) until a --queues gpu worker starts,
    then runs in that worker's process; the default step runs in the default worker."""
    default = start_worker(MODULE, POOL_MARKER="default")
    run = await start(pw.pool_basic, 21)

    async def waiting() -> dict[str, Any] | None:
        shown = await wf_json(worker_env, "inspect", "run", run.run_id)
        assert isinstance(shown, dict)
        return shown if shown.get("waiting_on") else None

    shown = await eventually(waiting, 20, what="the run to wait on the gpu queue")
    assert isinstance(shown, dict) and shown["status"] == "running"
    (wait,) = shown["waiting_on"]
    assert wait["queue"] == "gpu" and wait["lag"] == 1
    row = await _queue_row(worker_env, "gpu")
    assert row is not None and row["length"] == 1 and row["lag"] == 1
    assert row["oldest_age_ms"] is not None
    text = await asyncio.to_thread(
        subprocess.run,
        [WF, "inspect", "queues"],
        env=worker_env,
        capture_output=True,
        text=True,
        check=True,
    )
    header, *lines = text.stdout.splitlines()
    assert header.split() == [
        "partition",
        "queue",
        "deployment",
        "length",
        "lag",
        "pending",
        "oldest",
    ]
    # the task waits in the gpu lane of the run's deployment (the default worker's), in the
    # run's partition (0 on one server; any of them on a cluster)
    partition = str(world.keys.partition(run.run_id))
    assert any(
        line.split()[:2] == [partition, "gpu"] and line.split()[3:6] == ["1", "1", "0"]
        for line in lines
    ), text.stdout
    assert wait["deployment"] == row["deployment"] == (await run.info()).deployment
    assert await run.status() == "running"

    gpu = start_worker(MODULE, queues="gpu", POOL_MARKER="gpu")
    out = await run.result(timeout=30)
    assert out["gpu"] == {"pid": gpu.proc.pid, "marker": "gpu", "x": 42}
    assert out["default"] == {"pid": default.proc.pid, "marker": "default"}
    row = await _queue_row(worker_env, "gpu")
    assert row is not None and row["length"] == 0 and row["pending"] == 0
    wait_for(lambda: "pool_step_done" in gpu.output(), 20, what="the gpu worker's log line")
    assert "step_routed" in default.output() and "pool_step_done" not in default.output()


async def test_pool_worker_killed_mid_step_another_finishes(
    world: RedisWorld, start_worker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A gpu worker SIGKILLed mid-step: another gpu worker reclaims the task after the lease and
    finishes the step; the log holds exactly one step_completed, from the second worker."""
    marker = tmp_path / "m"
    start_worker(MODULE, **FAST_LEASE)
    first = start_worker(MODULE, queues="gpu", POOL_MARKER="first", **FAST_LEASE)
    run = await start(pw.pool_slow, str(marker))
    started = tmp_path / f"m.{first.proc.pid}"
    wait_for(started.exists, 20, what="the step to start in the first gpu worker")
    first.kill()
    second = start_worker(MODULE, queues="gpu", POOL_MARKER="second", **FAST_LEASE)
    again = tmp_path / f"m.{second.proc.pid}"
    wait_for(again.exists, 30, what="the second gpu worker to take the step over")
    assert again.read_text() == "2"  # a new attempt under a new claim
    (tmp_path / "m.go").touch()
    out = await run.result(timeout=30)
    assert out == {"pid": second.proc.pid, "marker": "second"}
    types = _types(await run.events())
    assert types.count("step_started") == 2 and types.count("step_completed") == 1
    wait_for(lambda: "pool_task_reclaimed" in second.output(), 20, what="the reclaim's log")


async def test_retries_go_through_the_pool(
    world: RedisWorld, start_worker, worker_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """A gpu step that fails twice with RetryableError: each retry is routed to the gpu queue
    again when due, and the third attempt succeeds in the gpu worker (a default worker never
    runs it)."""
    start_worker(MODULE, POOL_MARKER="default")
    gpu = start_worker(MODULE, queues="gpu", POOL_MARKER="gpu")
    run = await start(pw.pool_retries, 2)
    out = await run.result(timeout=30)
    assert out == {"pid": gpu.proc.pid, "marker": "gpu", "attempt": 3}
    types = _types(await run.events())
    assert types.count("step_retrying") == 2 and types.count("step_completed") == 1
    steps = await run.steps()
    assert steps[0].attempt == 3
    row = await _queue_row(worker_env, "gpu")
    assert row is not None and row["length"] == 0 and row["pending"] == 0


async def test_one_worker_serves_default_and_gpu_with_parallel_steps(
    world: RedisWorld, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """`--queues default,gpu` in one process with a small concurrency: a run gathering more gpu
    steps than the concurrency completes, every step in that process."""
    both = start_worker(MODULE, concurrency=2, queues="default,gpu", POOL_MARKER="both")
    run = await start(pw.pool_parallel, 6)
    assert await run.result(timeout=60) == [0, 2, 4, 6, 8, 10]
    wait_for(lambda: both.output().count("pool_step_done") == 6, 20, what="six pool steps")


async def test_concurrency_one_shares_its_slot_between_runs_and_pool_steps(
    world: RedisWorld, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """`--concurrency 1 --queues default,gpu`: the one slot goes to the run and to its gpu steps
    in turn (neither reader starves the other), and the runs complete."""
    start_worker(MODULE, concurrency=1, queues="default,gpu", POOL_MARKER="one")
    runs = [await start(pw.pool_parallel, 3), await start(pw.pool_basic, 5)]
    assert await runs[0].result(timeout=60) == [0, 2, 4]
    assert (await runs[1].result(timeout=60))["gpu"]["x"] == 10


async def test_pools_over_partitions(
    world_with_partitions: Callable[[int], RedisWorld], start_worker
) -> None:  # type: ignore[no-untyped-def]
    """With 4 partitions, runs of every partition get their gpu steps run by one gpu worker."""
    client = world_with_partitions(4)
    start_worker(MODULE, WORKFLOW_PARTITIONS="4")
    gpu = start_worker(MODULE, queues="gpu", WORKFLOW_PARTITIONS="4", POOL_MARKER="gpu")
    runs = [await start(pw.pool_basic, i, world=client) for i in range(8)]
    assert {client.keys.partition(r.run_id) for r in runs} != {0}
    for i, run in enumerate(runs):
        out = await run.result(timeout=60)
        assert out["gpu"] == {"pid": gpu.proc.pid, "marker": "gpu", "x": 2 * i}


def test_invalid_queue_name_is_refused(worker_env: dict[str, str]) -> None:
    """`wf worker --queues` with an invalid name exits 2 naming it, before connecting."""
    for bad in ("gpu,bad name", "gpu,,cpu", "x" * 65, "-gpu"):
        done = subprocess.run(
            [WF, "worker", MODULE, f"--queues={bad}"],
            env=worker_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (bad, done.stderr)
        assert "--queues: invalid queue name" in done.stderr, done.stderr


async def test_workflow_queue_routes_the_replay(
    world: RedisWorld, start_worker, worker_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """`@workflow(queue="wfq")`: a default worker only forwards the run's wake-ups to the wfq
    stream; the run waits (visible) until a --queues wfq worker starts, which replays it and
    runs its steps without a queue, while its gpu step runs in the gpu pool."""
    default = start_worker(MODULE, POOL_MARKER="default")
    run = await start(pw.routed_workflow, 4)

    async def waiting() -> dict[str, Any] | None:
        row = await _queue_row(worker_env, "wfq")
        return row if row is not None and row["lag"] == 1 else None

    await eventually(waiting, 20, what="the run's wake-up to wait in the wfq stream")
    shown = await wf_json(worker_env, "inspect", "run", run.run_id)
    assert isinstance(shown, dict) and shown["status"] == "pending"
    assert shown["waiting_on"][0]["queue"] == "wfq" and shown["waiting_on"][0]["step_id"] == ""

    wfq = start_worker(MODULE, queues="wfq", POOL_MARKER="wfq")
    gpu = start_worker(MODULE, queues="gpu", POOL_MARKER="gpu")
    out = await run.result(timeout=60)
    assert out["default_step"] == {"pid": wfq.proc.pid, "marker": "wfq"}
    assert out["gpu"] == {"pid": gpu.proc.pid, "marker": "gpu", "x": 8}
    wait_for(lambda: "run_completed" in wfq.output(), 20, what="the wfq worker's log line")
    assert "run_forwarded" in default.output() and "run_completed" not in default.output()


async def test_workflow_queue_worker_killed_another_takes_the_run(
    world: RedisWorld, start_worker, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The wfq worker holding a run dies mid-step: another wfq worker reclaims the forwarded
    wake-up from the queue's stream after the lease and finishes the run (one step_completed)."""
    marker = tmp_path / "m"
    start_worker(MODULE, **FAST_LEASE)
    first = start_worker(MODULE, queues="wfq", POOL_MARKER="first", **FAST_LEASE)
    run = await start(pw.routed_slow, str(marker))
    wait_for((tmp_path / f"m.{first.proc.pid}").exists, 20, what="the step to start")
    first.kill()
    second = start_worker(MODULE, queues="wfq", POOL_MARKER="second", **FAST_LEASE)
    again = tmp_path / f"m.{second.proc.pid}"
    wait_for(again.exists, 30, what="the second wfq worker to take the run over")
    (tmp_path / "m.go").touch()
    assert await run.result(timeout=30) == {"pid": second.proc.pid, "marker": "second"}
    types = _types(await run.events())
    assert types.count("step_started") == 2 and types.count("step_completed") == 1
