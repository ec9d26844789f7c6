"""``wf start`` as a user runs it: a workflow named by its short name, and names that fit none."""

from __future__ import annotations

import asyncio
import json
import subprocess

from tests.support import WF
from worker import get_run
from world_redis import RedisWorld

MODULE = "tests.e2e.patch_workflows"
FULL = "tests.e2e.patch_workflows:patched_between_steps_and_at_the_end"


async def wf(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [WF, *args], env=env, capture_output=True, text=True
    )


async def test_a_short_name_starts_the_one_workflow_it_names(
    world: RedisWorld, start_worker, worker_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """`wf start patched_between_steps_and_at_the_end --import MODULE --wait` starts and waits
    for the workflow registered as MODULE:patched_between_steps_and_at_the_end."""
    start_worker(MODULE)
    done = await wf(
        worker_env,
        "start",
        "patched_between_steps_and_at_the_end",
        "--import",
        MODULE,
        "--wait",
        "--timeout",
        "30",
    )
    assert done.returncode == 0, done.stderr
    run_id, output = done.stdout.splitlines()
    assert json.loads(output) == ["first", "second", "end"]
    assert (await get_run(run_id).info()).workflow == FULL


async def test_a_name_that_fits_no_workflow_is_refused_once_without_a_traceback(
    world: RedisWorld, worker_env: dict[str, str]
) -> None:
    """An unknown name: exit code 1, one line on stderr naming the registered workflows, and no
    run created."""
    done = await wf(worker_env, "start", "no_such_flow", "--import", MODULE)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"wf start: no workflow 'no_such_flow' is registered (registered: {FULL})"
    ]
    assert (await world.list_runs())[0] == []
