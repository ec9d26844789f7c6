"""Deploying changed workflow code while runs are in flight, as a user does it: worker processes
started with ``wf worker shipping``, each on one version of the module (``tests/e2e/versions``) via
``PYTHONPATH``. ``patched()`` keeps each run on the path it was recorded with; the same change
without it fails the run in flight."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from tests.e2e import patch_workflows as pw
from tests.support import WorkerProcess, hook_ready, wf_json
from worker import Run, WorkflowRunFailedError, resume_hook, start
from worker._events import PatchRecorded, StepCompleted
from worker._replay import WorkflowInstance
from world_redis import RedisWorld

VERSIONS = Path(__file__).parent / "versions"
WORKFLOW = "shipping:ship_order"


def deploy(start_worker: Any, version: str) -> WorkerProcess:
    """A worker process serving one version of the ``shipping`` module, every version under one
    deployment id: the change is carried in place by patched() (a new deployment id would keep
    the runs in flight on the old code instead: see test_deployments.py)."""
    worker: WorkerProcess = start_worker(
        "shipping", PYTHONPATH=str(VERSIONS / version), WORKFLOW_DEPLOYMENT_ID="shipping"
    )
    return worker


async def paused_run(order_id: str) -> Run:
    """A run of the workflow for ``order_id``, once it waits for its parcel to ship."""
    run = await start(WORKFLOW, order_id)
    await hook_ready(f"shipped-{order_id}")
    return run


async def markers(run: Run) -> list[tuple[str, bool]]:
    return [(e.corr, e.deprecated) for e in await run.events() if isinstance(e, PatchRecorded)]


async def test_patched_keeps_runs_in_flight_on_their_path(
    world: RedisWorld, start_worker: Any, worker_env: dict[str, str]
) -> None:
    """A v1 run finishes on the old path under v2 while a new run takes the new one, which v3
    (the old branch deleted, deprecate_patch() in place of patched()) then finishes."""
    v1 = deploy(start_worker, "v1")
    old = await paused_run("A-1")
    v1.stop()

    v2 = deploy(start_worker, "v2")
    new = await paused_run("B-2")
    await resume_hook("shipped-A-1", "monday")
    assert await old.result(timeout=30) == {"receipt": "charged A-1", "shipped": "monday"}
    assert await markers(old) == []
    assert await markers(new) == [("tax", False)]
    shown = cast(list[dict[str, Any]], await wf_json(worker_env, "inspect", "events", new.run_id))
    assert [(e["type"], e["corr"], e["deprecated"]) for e in shown if "deprecated" in e] == [
        ("patch_recorded", "tax", False)
    ]
    v2.stop()

    deploy(start_worker, "v3")
    await resume_hook("shipped-B-2", "tuesday")
    assert await new.result(timeout=30) == {"receipt": "charged B-2 with tax", "shipped": "tuesday"}
    newest = await paused_run("C-3")
    await resume_hook("shipped-C-3", "wednesday")
    assert await newest.result(timeout=30) == {
        "receipt": "charged C-3 with tax",
        "shipped": "wednesday",
    }
    assert await markers(newest) == [("tax", True)]


async def test_the_same_change_without_patched_fails_the_run_in_flight(
    world: RedisWorld, start_worker: Any
) -> None:
    """The v2 change deployed unguarded: the v1 run fails with NondeterminismError, new runs work."""
    v1 = deploy(start_worker, "v1")
    old = await paused_run("D-4")
    v1.stop()

    deploy(start_worker, "v2_unguarded")
    await resume_hook("shipped-D-4", "thursday")
    with pytest.raises(WorkflowRunFailedError) as err:
        await old.result(timeout=30)
    cause = err.value.__cause__
    assert "NondeterminismError" in f"{getattr(cause, 'type_name', '')} {type(cause).__name__}"
    assert "'shipping:charge'" in str(cause) and "'shipping:charge_with_tax'" in str(cause)
    new = await paused_run("E-5")
    await resume_hook("shipped-E-5", "friday")
    assert await new.result(timeout=30) == {"receipt": "charged E-5 with tax", "shipped": "friday"}


async def test_markers_go_out_with_an_inline_step_result_and_with_the_run_end(
    world: RedisWorld, start_worker: Any
) -> None:
    """A marker decided after a step (which a worker runs inline) follows that step's result and
    precedes the next creation; one decided at the end precedes run_completed; the recorded log
    replays to the same result."""
    start_worker("tests.e2e.patch_workflows")
    run = await start(pw.patched_between_steps_and_at_the_end)
    assert await run.result(timeout=30) == ["first", "second", "end"]
    events = await run.events()
    shown = [(str(e.__struct_config__.tag), getattr(e, "name", e.corr)) for e in events]
    first_done = next(i for i, e in enumerate(events) if isinstance(e, StepCompleted))
    assert shown[first_done + 1 : first_done + 3] == [
        ("patch_recorded", "second-step"),
        ("step_created", "tests.e2e.patch_workflows:second"),
    ]
    assert shown[-2:] == [("patch_recorded", "at-end"), ("run_completed", "")]
    inst = WorkflowInstance(
        run.run_id,
        pw.patched_between_steps_and_at_the_end.name,
        pw.patched_between_steps_and_at_the_end.fn,
        pw.patched_between_steps_and_at_the_end.decode_args,
    )
    inst.feed(events)
    out = inst.advance()
    assert (out.kind, out.commands) == ("completed", [])
    assert inst.patches == {"second-step": True, "at-end": True}
