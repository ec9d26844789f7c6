"""Deployments as a user runs them: worker processes on two versions of the ``shipping`` module
(``tests/e2e/versions``, one directory each on ``PYTHONPATH``), each its own deployment. Runs in
flight stay on the code that started them; new runs go to the newest deployment."""

from __future__ import annotations

import subprocess
from typing import Any, cast

import pytest

from tests.e2e import pool_workflows as pw
from tests.e2e.test_versioning import VERSIONS, WORKFLOW, paused_run
from tests.support import WF, WorkerProcess, eventually, hook_ready, wf_json
from worker import (
    InvalidDeploymentIdError,
    Run,
    UnknownDeploymentError,
    get_run,
    resume_hook,
    start,
)
from worker._deployments import resolve_deployment
from worker._events import RunFailed
from world_redis import RedisWorld


def deploy(start_worker: Any, version: str, deployment: str | None = None) -> WorkerProcess:
    """A worker on one version of ``shipping``; its deployment id the default (the source's
    hash) unless given."""
    worker: WorkerProcess = start_worker(
        "shipping", PYTHONPATH=str(VERSIONS / version), deployment=deployment
    )
    return worker


async def deployments(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    rows = cast(list[dict[str, Any]], await wf_json(env, "inspect", "deployments"))
    return {r["deployment_id"]: r for r in rows}


async def newest_is(world: RedisWorld, deployment: str) -> bool:
    return await resolve_deployment(world, WORKFLOW, None) == deployment


async def registered(world: RedisWorld, count: int) -> list[str]:
    """The live deployment ids serving the workflow, once there are ``count`` of them."""
    found = await world.deployments.registry(15_000)
    live = [d.deployment_id for d in found if d.live and WORKFLOW in d.workflows]
    return live if len(live) == count else []


def wf(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WF, *args], env=env, capture_output=True, text=True, check=False)


async def not_failed(run: Run) -> bool:
    return not any(isinstance(e, RunFailed) for e in await run.events())


async def test_runs_in_flight_finish_on_their_deployment(
    world: RedisWorld, start_worker: Any, worker_env: dict[str, str]
) -> None:
    """A v1 run is not replayed by v2 (the unguarded change that would fail it): it waits,
    visibly, while new runs are pinned to v2 and finish there; a v1 worker started again
    finishes it on v1's code."""
    v1 = deploy(start_worker, "v1")
    old = await paused_run("A-1")
    (dep1,) = cast(list[str], await eventually(lambda: registered(world, 1), what="v1"))
    assert (await old.info()).deployment == dep1 and dep1.startswith("dpl_")

    v2 = deploy(start_worker, "v2_unguarded")
    await eventually(lambda: registered(world, 2), what="v2 registered")
    dep2 = next(d for d in cast(list[str], await registered(world, 2)) if d != dep1)
    await eventually(lambda: newest_is(world, dep2), what="v2 the newest deployment")
    new = await paused_run("B-2")
    assert (await new.info()).deployment == dep2

    v1.stop()
    await resume_hook("shipped-A-1", "monday")

    async def waits_on_v1() -> dict[str, Any] | None:
        row = (await deployments(worker_env)).get(dep1)
        return row if row and row["waiting"] >= 1 and not row["workers"] else None

    row = cast(dict[str, Any], await eventually(waits_on_v1, 30, what="the run waiting on v1"))
    assert row["runs_pinned"] == 1 and WORKFLOW in row["workflows"] and row["live"] is False
    assert "run_forwarded_to_deployment" in v2.output()
    assert "NondeterminismError" not in v2.output()
    assert await old.status() == "running" and await not_failed(old)

    # v1's only worker left the registry when it stopped: the run waits for v1
    async def waits_for_v1() -> dict[str, Any] | None:
        shown = cast(dict[str, Any], await wf_json(worker_env, "inspect", "run", old.run_id))
        return shown if shown["waiting_for_deployment"] else None

    shown = cast(dict[str, Any], await eventually(waits_for_v1, 30, what="v1 gone"))
    assert shown["deployment"] == dep1 and shown["deployment_live"] is False
    table = wf(worker_env, "inspect", "deployments")
    assert table.returncode == 0 and dep1 in table.stdout and dep2 in table.stdout

    await resume_hook("shipped-B-2", "tuesday")
    assert await new.result(timeout=30) == {"receipt": "charged B-2 with tax", "shipped": "tuesday"}

    deploy(start_worker, "v1")
    assert await old.result(timeout=30) == {"receipt": "charged A-1", "shipped": "monday"}
    assert (await old.info()).deployment == dep1


async def test_migrate_moves_a_waiting_run_to_another_deployment(
    world: RedisWorld, start_worker: Any, worker_env: dict[str, str]
) -> None:
    """A run waiting on a stopped deployment moves with `wf runs migrate` to one whose code is
    compatible (v2 guards its change with patched()) and finishes there on the old path; an
    unknown target or a finished run is refused with a clear error."""
    v1 = deploy(start_worker, "v1", "ship-v1")
    old = await paused_run("C-3")
    assert (await old.info()).deployment == "ship-v1"
    v1.stop()
    deploy(start_worker, "v2", "ship-v2")
    await eventually(lambda: newest_is(world, "ship-v2"), what="v2 registered")
    await resume_hook("shipped-C-3", "wednesday")

    async def waiting() -> bool:
        row = (await deployments(worker_env)).get("ship-v1")
        return bool(row and row["waiting"] >= 1)

    await eventually(waiting, 30, what="the run to wait on ship-v1")

    unknown = wf(worker_env, "runs", "migrate", old.run_id, "--to", "ship-v9")
    assert unknown.returncode == 1 and "unknown deployment 'ship-v9'" in unknown.stderr
    bad = wf(worker_env, "runs", "migrate", old.run_id, "--to", "no way")
    assert bad.returncode == 2 and "invalid deployment id 'no way'" in bad.stderr
    await world.deployments.register("billing-v1", "w1", ["billing:charge"], 60_000)
    other = wf(worker_env, "runs", "migrate", old.run_id, "--to", "billing-v1")
    assert other.returncode == 1 and "does not serve workflow 'shipping:ship_order'" in other.stderr
    missing = wf(worker_env, "runs", "migrate", "wrun_missing", "--to", "ship-v2")
    assert missing.returncode == 1 and "wrun_missing" in missing.stderr
    assert (await old.info()).deployment == "ship-v1"

    moved = wf(worker_env, "runs", "migrate", old.run_id, "--to", "ship-v2")
    assert moved.returncode == 0, moved.stderr
    assert "from ship-v1 to ship-v2" in moved.stdout
    assert await old.result(timeout=30) == {"receipt": "charged C-3", "shipped": "wednesday"}
    assert (await old.info()).deployment == "ship-v2"
    row = (await deployments(worker_env))["ship-v1"]
    assert row["waiting"] == 0 and row["runs_pinned"] == 0

    done = wf(worker_env, "runs", "migrate", old.run_id, "--to", "ship-v1")
    assert done.returncode == 1 and "is completed" in done.stderr


async def test_start_pins_explicitly_and_refuses_unknown_deployments(
    world: RedisWorld, start_worker: Any
) -> None:
    """start(deployment_id=...) pins a run to an older live deployment while a newer one takes
    the default; an unknown or invalid id is refused and nothing is created."""
    deploy(start_worker, "v1", "ship-v1")
    deploy(start_worker, "v2_unguarded", "ship-v2")
    await eventually(lambda: newest_is(world, "ship-v2"), what="both registered")

    pinned = await start(WORKFLOW, "D-4", deployment_id="ship-v1")
    assert (await pinned.info()).deployment == "ship-v1"
    by_default = await start(WORKFLOW, "E-5")
    assert (await by_default.info()).deployment == "ship-v2"
    for token in ("shipped-D-4", "shipped-E-5"):
        await hook_ready(token)
    await resume_hook("shipped-D-4", "x")
    await resume_hook("shipped-E-5", "y")
    assert await pinned.result(timeout=30) == {"receipt": "charged D-4", "shipped": "x"}
    assert await by_default.result(timeout=30) == {
        "receipt": "charged E-5 with tax",
        "shipped": "y",
    }

    with pytest.raises(UnknownDeploymentError, match="unknown deployment 'ship-v7'"):
        await start(WORKFLOW, "F-6", run_id="wrun_unknown_deployment", deployment_id="ship-v7")
    with pytest.raises(InvalidDeploymentIdError, match="invalid deployment id 'a b'"):
        await start(WORKFLOW, "F-6", run_id="wrun_invalid_deployment", deployment_id="a b")
    for run_id in ("wrun_unknown_deployment", "wrun_invalid_deployment"):
        assert await world.get_run(run_id) is None
    runs, _ = await world.list_runs(limit=100)
    assert len(runs) == 2


async def test_a_run_started_with_no_live_deployment_is_pinned_by_its_first_worker(
    world: RedisWorld, start_worker: Any
) -> None:
    """No worker yet: the run starts unpinned ("" deployment); the first worker pins it."""
    run = await start(WORKFLOW, "G-7")
    assert (await run.info()).deployment == ""
    deploy(start_worker, "v1", "ship-v1")

    async def pinned() -> bool:
        return (await get_run(run.run_id, world).info()).deployment == "ship-v1"

    await eventually(pinned, 30, what="the run pinned by the worker")
    await hook_ready("shipped-G-7")
    await resume_hook("shipped-G-7", "z")
    assert await run.result(timeout=30) == {"receipt": "charged G-7", "shipped": "z"}


async def test_a_pool_worker_of_another_deployment_never_runs_a_pinned_runs_step(
    world: RedisWorld, start_worker: Any, worker_env: dict[str, str]
) -> None:
    """A gpu step of a run pinned to pool-v1 waits in pool-v1's gpu lane while only a pool-v2 gpu
    worker runs; a pool-v1 gpu worker then runs it."""
    module = "tests.e2e.pool_workflows"
    default = start_worker(module, deployment="pool-v1", POOL_MARKER="default")
    other = start_worker(module, queues="gpu", deployment="pool-v2", POOL_MARKER="other")
    run = await start(pw.pool_basic, 21)

    async def waiting() -> dict[str, Any] | None:
        shown = cast(dict[str, Any], await wf_json(worker_env, "inspect", "run", run.run_id))
        waits = shown.get("waiting_on") or []
        return waits[0] if waits and waits[0].get("lag") == 1 else None

    wait = cast(dict[str, Any], await eventually(waiting, 30, what="the step in its lane"))
    assert (wait["queue"], wait["deployment"]) == ("gpu", "pool-v1")
    assert (await run.info()).deployment == "pool-v1"
    assert "pool_step_done" not in other.output()

    mine = start_worker(module, queues="gpu", deployment="pool-v1", POOL_MARKER="mine")
    out = await run.result(timeout=30)
    assert out["gpu"] == {"pid": mine.proc.pid, "marker": "mine", "x": 42}
    assert out["default"] == {"pid": default.proc.pid, "marker": "default"}
    assert "pool_step_done" not in other.output()
