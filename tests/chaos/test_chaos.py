"""Chaos: workers SIGKILLed and restarted at random while runs flow; nothing is lost or doubled.

Opt-in (``make chaos``): it runs for about a minute.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest

from tests.chaos import chaos_workflows as cw
from tests.support import eventually
from worker import start
from world_redis import RedisWorld

pytestmark = pytest.mark.chaos

ENV = {"WORKFLOW_LEASE_MS": "1000", "WORKFLOW_HEARTBEAT_MS": "250", "WORKFLOW_MAX_DELIVERIES": "50"}
RUNS = 300
CHAOS_SECONDS = 20


def expected(x: int) -> int:
    a = x * 2
    return ((a * 2 + a + 1) + 1) * 2


async def test_random_worker_kills_lose_and_double_nothing(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """With workers killed every ~second, every run completes once with the right value, and the
    log of every step holds exactly one completion."""
    rng = random.Random(7)
    workers = [start_worker("tests.chaos.chaos_workflows", concurrency=50, **ENV) for _ in range(3)]
    runs = [await start(cw.chaos_chain, i) for i in range(RUNS)]
    kills = 0
    deadline = time.monotonic() + CHAOS_SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        victim = rng.randrange(len(workers))
        workers[victim].kill()
        kills += 1
        workers[victim] = start_worker("tests.chaos.chaos_workflows", concurrency=50, **ENV)

    async def all_completed() -> bool:
        done, _ = await world.list_runs(status="completed", limit=RUNS + 1)
        return len(done) == RUNS

    await eventually(all_completed, 120, what="every run to complete")
    assert kills >= 10
    for i, run in enumerate(runs):
        assert await run.result(timeout=5) == expected(i)
        events = await run.events()
        completions = Counter(e.corr for e in events if e.__struct_config__.tag == "step_completed")
        assert len(completions) == 5 and set(completions.values()) == {1}, run.run_id
        types = [e.__struct_config__.tag for e in events]
        assert types.count("run_completed") == 1
