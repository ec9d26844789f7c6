"""A worker process under faults of its own duties: health checks name a failing duty, a duty
that cannot recover ends the process non-zero, and a backlog never makes a busy worker look dead."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e import fault_workflows as fw
from tests.e2e.test_health import wf_health
from tests.support import eventually, free_port, wait_for
from worker import WorkflowRunFailedError, check_health, start
from world_redis import RedisWorld

QUICK_DUTIES = {
    "WORKFLOW_DUTY_QUIET_SECONDS": "2",
    "WORKFLOW_DUTY_BACKOFF_CAP_SECONDS": "0.5",
}


async def break_request_stream(world: RedisWorld) -> None:
    """Replace the start-request stream by a string: every read of it fails with WRONGTYPE."""
    key = world.keys.start_stream()
    await world.redis.delete(key)
    await world.redis.set(key, "not a stream")


async def test_health_names_a_duty_that_keeps_failing(
    world: RedisWorld, start_worker, worker_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """`wf health` and the worker's /healthz report the request loop once it stops succeeding
    (it used to end or fail silently while health checks said healthy)."""
    port = free_port()
    start_worker(
        "tests.e2e.fault_workflows",
        WORKFLOW_DUTY_MAX_FAILURES="1000",
        WORKFLOW_HEALTH_PORT=str(port),
        **QUICK_DUTIES,
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

        async def answered() -> httpx.Response | None:
            try:
                return await http.get("/healthz")
            except httpx.TransportError:
                return None  # the endpoint starts with the worker's duties

        ok = await eventually(answered, 20, "the health endpoint to answer")
        assert isinstance(ok, httpx.Response)
        assert ok.status_code == 200 and ok.json()["healthy"] is True
        assert "requests" in ok.json()["duties"]
        code, report = await wf_health(worker_env, 10)
        assert code == 0 and report["allHealthy"] and report["workers"][0]["healthy"]

        await break_request_stream(world)

        async def unhealthy() -> dict[str, Any] | None:
            # the answer to the check is live; the published status follows within seconds
            code, report = await wf_health(worker_env, 10)
            published = report["workers"] and report["workers"][0]["stale"]
            return report if code == 1 and published else None

        report = await eventually(unhealthy, 30, "wf health to report the failing duty")
        assert isinstance(report, dict)
        (worker,) = report["workers"]
        assert worker["stale"] == ["requests"]
        assert "WRONGTYPE" in worker["duties"]["requests"]["last_error"]
        assert any("requests" in r.get("error", "") for r in report["results"])
        bad = await http.get("/healthz")
        assert bad.status_code == 503 and bad.json()["stale"] == ["requests"]


async def test_worker_exits_non_zero_when_a_duty_cannot_recover(
    world: RedisWorld, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """A duty that fails every restart ends the worker process with a non-zero code and a log
    line naming it, so that its orchestrator replaces it."""
    proc = start_worker("tests.e2e.fault_workflows", WORKFLOW_DUTY_MAX_FAILURES="3", **QUICK_DUTIES)
    await break_request_stream(world)
    wait_for(lambda: proc.proc.poll() is not None, 60, what="the worker to give up")
    assert proc.proc.returncode != 0
    lines = [json.loads(x) for x in proc.output().splitlines() if x.startswith("{")]
    failed = [x for x in lines if x.get("event") == "duty_failed"]
    assert len(failed) == 3 and all(x["duty"] == "requests" for x in failed)
    assert any(x.get("event") == "worker_failed" and "requests" in x["error"] for x in lines)


async def test_busy_worker_answers_health_checks_ahead_of_its_backlog(
    world: RedisWorld, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """A worker whose every slot is busy, with a backlog of wake-ups behind, still answers health
    checks at once (they used to queue behind the backlog, and a busy worker looked dead)."""
    start_worker("tests.e2e.fault_workflows", concurrency=1)
    busy = await start(fw.long_running, 60.0)

    async def step_running() -> bool:
        return any(s.status == "running" for s in await busy.steps())

    await eventually(step_running, 20, "the long step to occupy the only slot")
    for i in range(300):
        await start(fw.echo_wf, i)
    report = await check_health(world, timeout=5)
    assert report["allHealthy"], report
    assert [r["healthy"] for r in report["results"]] == [True, True]


async def test_workflow_code_calling_sys_exit_fails_only_its_run(
    world: RedisWorld, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """Workflow code calling sys.exit(5) fails its run with SystemExit; the worker process stays
    up and completes the next run (it used to exit with code 5)."""
    proc = start_worker("tests.e2e.fault_workflows")
    run = await start(fw.exits_the_process)
    with pytest.raises(WorkflowRunFailedError) as err:
        await run.result(timeout=20)
    cause = err.value.__cause__
    assert "SystemExit" in getattr(cause, "type_name", "") and str(cause) == "5"
    assert proc.proc.poll() is None
    assert await (await start(fw.echo_wf, "next")).result(timeout=20) == "next"
