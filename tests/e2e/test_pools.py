"""Worker pools: steps declared with a queue run only on workers serving it (``--queues``)."""

from __future__ import annotations

from typing import Any

from tests.e2e import pool_workflows as pw
from tests.support import eventually, wf_json
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
    assert await run.status() == "running"

    gpu = start_worker(MODULE, queues="gpu", POOL_MARKER="gpu")
    out = await run.result(timeout=30)
    assert out["gpu"] == {"pid": gpu.proc.pid, "marker": "gpu", "x": 42}
    assert out["default"] == {"pid": default.proc.pid, "marker": "default"}
    row = await _queue_row(worker_env, "gpu")
    assert row is not None and row["length"] == 0 and row["pending"] == 0
    assert "pool_step_done" in gpu.output() and "step_routed" in default.output()
    assert "pool_step_done" not in default.output()
