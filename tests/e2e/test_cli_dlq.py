"""`wf dlq` as an operator runs it: a malformed wake-up set aside by a real worker is listed and
dropped; a dead letter of a live run is replayed (the run is woken), one of an ended run is
refused with what to do instead."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from tests.e2e import workflows as w
from tests.support import WF, eventually
from worker import start
from world_redis import RedisWorld

MODULE = "tests.e2e.workflows"


async def wf(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [WF, *args], env=env, capture_output=True, text=True, timeout=60
    )


async def letters(env: dict[str, str]) -> list[dict[str, Any]]:
    done = await wf(env, "dlq", "list", "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


async def test_list_drop_and_replay_dead_letters(
    world: RedisWorld, start_worker, worker_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    start_worker(MODULE)
    # a wake-up without a run: the worker sets it aside with the reason
    await world.redis.xadd(world.keys.ready(0), {"reason": "created"})
    malformed = (await eventually(lambda: letters(worker_env), 20, what="the letter"))[0]
    assert malformed["run_id"] == "" and "malformed" in malformed["reason"]
    refused = await wf(worker_env, "dlq", "replay", malformed["name"])
    assert refused.returncode == 1 and "names no run" in refused.stderr
    dropped = await wf(worker_env, "dlq", "drop", malformed["name"])
    assert (dropped.returncode, dropped.stdout.strip()) == (0, f"dropped {malformed['name']}")
    assert await letters(worker_env) == []

    # a letter for a run that still sleeps is replayed: a fresh wake-up, the letter gone
    sleeping = await start(w.sleep_then_step, 3600)
    finished = await start(w.add_flow, 1, 2)
    assert await finished.result(timeout=30) == 3
    p_sleep = world.keys.partition(sleeping.run_id)
    p_done = world.keys.partition(finished.run_id)
    live = await world.redis.xadd(world.keys.dlq(p_sleep), {"run": sleeping.run_id, "reason": "t"})
    ended = await world.redis.xadd(world.keys.dlq(p_done), {"run": finished.run_id, "reason": "t"})
    replayed = await wf(worker_env, "dlq", "replay", f"{p_sleep}:{live}")
    assert replayed.returncode == 0, replayed.stderr
    assert sleeping.run_id in replayed.stdout
    too_late = await wf(worker_env, "dlq", "replay", f"{p_done}:{ended}")
    assert too_late.returncode == 1
    assert f"`wf runs rerun {finished.run_id}`" in too_late.stderr
    assert [d["entry_id"] for d in await letters(worker_env)] == [ended]
    assert await sleeping.status() == "running"  # woken, and asleep again: nothing lost
