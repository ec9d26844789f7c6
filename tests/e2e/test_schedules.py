"""Schedules with real worker processes, and ``wf schedule`` as a user runs it."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest

from tests.e2e import schedule_workflows as sw
from tests.support import WF, all_keys, eventually, wf_json
from worker import ScheduleNotFoundError, create_schedule, get_run, get_schedule
from worker._schedule_spec import schedule_run_id
from world_redis import RedisWorld

MODULE = "tests.e2e.schedule_workflows"


async def fired(schedule_id: str) -> list[Any]:
    """The schedule's recorded ticks that started a run, oldest first."""
    d = await (await get_schedule(schedule_id)).describe()
    return [t for t in reversed(d.recent) if t.action == "fired"]


async def fired_at_least(schedule_id: str, count: int) -> list[Any]:
    async def enough() -> list[Any] | None:
        ticks = await fired(schedule_id)
        return ticks if len(ticks) >= count else None

    found = await eventually(enough, 60, what=f"{count} ticks of {schedule_id} fired")
    assert isinstance(found, list)
    return found


async def schedule_keys(world: RedisWorld) -> list[str]:
    return await all_keys(world, f"{world.keys.prefix}:{{sched}}*")


async def test_every_second_with_two_workers_starts_one_run_per_tick(
    world: RedisWorld, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """Two workers fire an every="1s" schedule: one run per tick (its id derived from the tick),
    each tick decided by one worker only, and every run completes."""
    workers = [start_worker(MODULE), start_worker(MODULE)]
    s = await create_schedule(
        "per-second", sw.scheduled_report, "tick", every="1s", overlap="allow"
    )
    await fired_at_least("per-second", 3)
    await s.pause()
    ticks = await fired("per-second")
    assert len({t.tick_ms for t in ticks}) == len(ticks)
    assert all(t.run_id == schedule_run_id("per-second", t.tick_ms) for t in ticks)
    for t in ticks:
        assert await get_run(t.run_id).result(timeout=60) == "done:tick"
    runs, _ = await world.list_runs(workflow="scheduled_report", limit=100)
    recorded = {t.run_id for t in ticks}
    # a tick being decided when the pause came may have made its run without its record
    assert len({r.run_id for r in runs} - recorded) <= 1
    assert recorded <= {r.run_id for r in runs}
    logged = [w.output().count('"schedule_tick_fired"') for w in workers]
    assert sum(logged) == len(ticks)  # each tick fired by one worker of the two


async def test_pause_stops_ticks_and_delete_removes_the_schedule(
    world: RedisWorld, start_worker
) -> None:  # type: ignore[no-untyped-def]
    """After pause, a paused schedule records no tick while another one fires twice; after
    delete, nothing of it is left."""
    worker = start_worker(MODULE)
    paused = await create_schedule("paused", sw.scheduled_report, "p", every="1s")
    await fired_at_least("paused", 1)
    await paused.pause()
    before = (await paused.describe()).recent
    await create_schedule("sentinel", sw.scheduled_report, "s", every="1s")
    await fired_at_least("sentinel", 2)
    after = await paused.describe()
    assert after.paused and after.recent == before
    for schedule_id in ("paused", "sentinel"):
        await (await get_schedule(schedule_id)).delete()
        with pytest.raises(ScheduleNotFoundError):
            await get_schedule(schedule_id)
    assert await schedule_keys(world) == []
    assert "schedule_tick_failed" not in worker.output()


async def wf(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [WF, "schedule", *args], env=env, capture_output=True, text=True
    )


async def test_wf_schedule_commands(
    world: RedisWorld, start_worker, worker_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    """create (by short name, with JSON arguments), list, describe, pause, resume, delete."""
    start_worker(MODULE)
    made = await wf(
        worker_env, "create", "cli-report", "scheduled_report", '"cli"', "--every", "1s",
        "--import", MODULE,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "cli-report"
    (listed,) = await wf_json(worker_env, "schedule", "list")  # type: ignore[misc]
    assert listed["schedule_id"] == "cli-report" and listed["every_ms"] == 1000
    await fired_at_least("cli-report", 1)
    assert (await wf(worker_env, "pause", "cli-report")).returncode == 0
    described: Any = await wf_json(worker_env, "schedule", "describe", "cli-report")
    assert described["paused"] is True and described["next_fire_times"] == []
    assert described["recent"][0]["action"] == "fired"
    assert (await wf(worker_env, "resume", "cli-report")).returncode == 0
    described = await wf_json(worker_env, "schedule", "describe", "cli-report")
    assert described["paused"] is False and len(described["next_fire_times"]) == 5
    table = await wf(worker_env, "list")
    assert "cli-report" in table.stdout and "every 1s" in table.stdout
    assert (await wf(worker_env, "delete", "cli-report")).returncode == 0
    assert await wf_json(worker_env, "schedule", "list") == []


async def test_wf_schedule_refusals_are_one_line_and_store_nothing(
    world: RedisWorld, worker_env: dict[str, str]
) -> None:
    """A cron that does not parse, an existing id, an unknown schedule: exit code 1, one line on
    stderr, nothing stored."""
    bad = await wf(worker_env, "create", "x", "scheduled_report", '"a"', "--cron", "61 * * * *")
    assert bad.returncode == 1
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith("wf schedule: cron='61 * * * *' does not parse")
    assert await schedule_keys(world) == []
    args = ["create", "x", "scheduled_report", '"a"', "--every", "1h"]
    assert (await wf(worker_env, *args)).returncode == 0
    again = await wf(worker_env, *args)
    assert again.returncode == 1 and "exists already" in again.stderr
    missing = await wf(worker_env, "pause", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "wf schedule: schedule 'nope' not found"
    assert json.loads(json.dumps(await wf_json(worker_env, "schedule", "list")))[0]["cron"] is None
