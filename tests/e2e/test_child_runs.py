"""Child runs with `wf worker` processes: parents and children across workers, a killed worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e import child_workflows as cw
from tests.support import wait_for, wf_json
from worker import start
from worker._events import ChildCompleted, ChildStarted, RunCreated
from world_redis import RedisWorld

FAST_LEASE = {"WORKFLOW_LEASE_MS": "1500", "WORKFLOW_HEARTBEAT_MS": "300"}


async def test_children_across_worker_processes(
    world: RedisWorld, start_worker: Any, worker_env: dict[str, str]
) -> None:
    """Two workers run a parent and its three children; `wf inspect` shows parent and children."""
    start_worker("tests.e2e.child_workflows")
    start_worker("tests.e2e.child_workflows")
    run = await start(cw.parent_gather, 3)
    assert await run.result(timeout=30) == [0, 2, 4]
    shown: Any = await wf_json(worker_env, "inspect", "run", run.run_id)
    children = shown["children"]
    assert [c["workflow"] for c in children] == ["child_double"] * 3
    assert {c["state"] for c in children} == {"completed"}
    child: Any = await wf_json(worker_env, "inspect", "run", children[0]["run_id"])
    assert child["parent_run_id"] == run.run_id and child["status"] == "completed"
    listed: Any = await wf_json(worker_env, "inspect", "runs", "--workflow", "child_double")
    assert {r["parent_run_id"] for r in listed} == {run.run_id}


async def test_worker_killed_while_child_runs(
    world: RedisWorld, start_worker: Any, tmp_path: Path
) -> None:
    """SIGKILL the worker after the parent recorded its child and while the child's step runs:
    a fresh worker finishes both, with one child run and one end delivered to the parent."""
    marker = tmp_path / "child_step"
    first = start_worker("tests.e2e.child_workflows", **FAST_LEASE)
    run = await start(cw.parent_slow, str(marker), 1.0)
    wait_for(marker.exists, 20, what="the child's step to start in the first worker")
    assert marker.read_text() == str(first.proc.pid)
    first.kill()
    marker.unlink()
    second = start_worker("tests.e2e.child_workflows", **FAST_LEASE)
    assert await run.result(timeout=30) == "parent got slow done"
    assert marker.read_text() == str(second.proc.pid)
    events = await run.events()
    started = [e for e in events if isinstance(e, ChildStarted)]
    assert len(started) == 1
    assert len([e for e in events if isinstance(e, ChildCompleted)]) == 1
    child_events = await world.read_events(started[0].run_id)
    assert isinstance(child_events[0], RunCreated) and child_events[0].parent == run.run_id
    assert [type(e).__name__ for e in child_events].count("RunCreated") == 1
    runs, _ = await world.list_runs(workflow="child_slow", limit=10)
    assert [r.run_id for r in runs] == [started[0].run_id]
    assert runs[0].status == "completed"
