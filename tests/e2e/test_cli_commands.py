"""Every ``wf`` command that acts on runs, run as a user runs it: the real command against a real
Redis and a real worker, its output, its exit code, and its errors (one line, no traceback)."""

from __future__ import annotations

import asyncio
import json
import subprocess

from tests.e2e import workflows as w
from tests.support import WF, eventually
from worker import get_run, start
from world_redis import RedisWorld

MODULE = "tests.e2e.workflows"


async def wf(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [WF, *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_cancel_stops_a_sleeping_run_and_refuses_a_finished_one(
    world: RedisWorld, start_worker, worker_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """`wf cancel RUN` cancels a sleeping run (exit 0); cancelling it again when it is finished
    otherwise, or an unknown run, is one line on stderr with exit code 1."""
    start_worker(MODULE)
    run = await start(w.sleep_then_step, 3600)
    await eventually(lambda: sleeping(run.run_id), what="the run sleeps")
    done = await wf(worker_env, "cancel", run.run_id)
    assert (done.returncode, done.stdout.strip()) == (0, f"cancelled {run.run_id}")
    assert await run.status() == "cancelled"
    missing = await wf(worker_env, "cancel", "wrun_no_such_run")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip() == "wf cancel: run 'wrun_no_such_run' not found"


async def sleeping(run_id: str) -> bool:
    return any(e.__struct_config__.tag == "wait_created" for e in await get_run(run_id).events())


async def test_inspect_sleeps_shows_a_run_s_sleeps_as_a_table_and_as_json(
    world: RedisWorld, start_worker, worker_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """`wf inspect sleeps RUN` lists the durable sleeps of a run: due time and status."""
    start_worker(MODULE)
    run = await start(w.sleep_then_step, 3600)
    await eventually(lambda: sleeping(run.run_id), what="the run sleeps")
    shown = await wf(worker_env, "inspect", "sleeps", run.run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    (sleep,) = json.loads(shown.stdout)
    assert sleep["status"] == "waiting" and sleep["completed_at"] is None
    assert sleep["resume_at"] - sleep["created_at"] == 3_600_000
    table = await wf(worker_env, "inspect", "sleeps", run.run_id)
    assert sleep["wait_id"] in table.stdout and "waiting" in table.stdout
    await run.cancel()
    after = json.loads((await wf(worker_env, "inspect", "sleeps", run.run_id, "--json")).stdout)
    assert [s["status"] for s in after] == ["abandoned"]


async def test_rerun_starts_a_new_run_with_the_same_input(
    world: RedisWorld, start_worker, worker_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """`wf runs rerun RUN` starts the run's workflow again with its input; the new run's result
    equals the first's; an unknown run is refused in one line with exit code 1."""
    start_worker(MODULE)
    first = await start(w.add_flow, 2, 3)
    assert await first.result(timeout=30) == 5
    done = await wf(worker_env, "runs", "rerun", first.run_id)
    assert done.returncode == 0, done.stderr
    again = get_run(done.stdout.strip())
    assert again.run_id != first.run_id
    assert await again.result(timeout=30) == 5
    assert (await again.info()).input == (await first.info()).input
    missing = await wf(worker_env, "runs", "rerun", "wrun_no_such_run")
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        "wf runs: run 'wrun_no_such_run' not found",
    )


async def test_inspect_steps_and_events_of_a_finished_run(
    world: RedisWorld, start_worker, worker_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """`wf inspect steps RUN --json` and `wf inspect events RUN` show what the run did."""
    start_worker(MODULE)
    run = await start(w.add_flow, 2, 3)
    assert await run.result(timeout=30) == 5
    steps = json.loads((await wf(worker_env, "inspect", "steps", run.run_id, "--json")).stdout)
    assert [(s["status"], s["attempt"]) for s in steps] == [("completed", 1)] * len(steps)
    events = await wf(worker_env, "inspect", "events", run.run_id)
    assert events.returncode == 0 and "run_completed" in events.stdout


async def test_errors_are_one_line_and_debug_shows_the_traceback(
    world: RedisWorld, worker_env: dict[str, str]
) -> None:
    """A bad argument is a usage error (exit code 2, one line); `--debug` adds the traceback."""
    bad = await wf(worker_env, "start", "add_flow", "not-json", "--import", MODULE)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "wf start: argument 1 ('not-json') is not JSON: pass each workflow argument as a JSON "
        "value, e.g. 42, '\"text\"', '[1, 2]' or '{\"key\": 1}'"
    ]
    debug = await wf(worker_env, "--debug", "start", "add_flow", "not-json", "--import", MODULE)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert (await world.list_runs())[0] == []


async def test_demo_runs_the_example_and_prints_its_result_and_log(
    world: RedisWorld, worker_env: dict[str, str]
) -> None:
    """`wf demo` (what `make run` calls) runs examples.order with an in-process worker and
    prints the result, the event log and the steps."""
    done = await wf(worker_env, "demo")
    assert done.returncode == 0, done.stderr
    assert "result:" in done.stdout and "run_completed" in done.stdout
    assert "step id" in done.stdout
