"""End-to-end: a `wf worker` with WORKFLOW_COMPACT_AFTER_S=0 compacts the runs it finishes, and
every reader (client, `wf inspect`, a late wake-up) treats them as any finished run."""

from __future__ import annotations

from typing import Any, cast

import httpx

from tests.e2e.test_http import API, AUTH, TOKEN, serving
from tests.support import RedisServer, eventually, wf_json
from worker import get_run, start
from world_redis import RedisWorld


async def test_worker_compacts_finished_runs_and_readers_still_see_them(
    world: RedisWorld,
    start_worker: Any,
    worker_env: dict[str, str],
    redis_server: RedisServer,
    prefix: str,
) -> None:
    """Runs finished by a worker are compacted by it; result, events, steps, listing, `wf inspect
    run|events|steps|runs` and the HTTP API read them; a wake-up for one is acknowledged and
    ignored."""
    start_worker("tests.e2e.workflows", WORKFLOW_COMPACT_AFTER_S="0")
    runs = [await start("add_ten", i) for i in range(3)]
    assert [await r.result(timeout=30) for r in runs] == [10, 11, 12]
    k, r = world.keys, world.redis

    async def compacted() -> bool:
        return all([await r.exists(k.log(run.run_id)) == 1 for run in runs])

    await eventually(compacted, timeout=30, what="the worker compacts the finished runs")
    for i, run in enumerate(runs):
        assert await r.exists(k.events(run.run_id), k.entities(run.run_id)) == 0
        assert await get_run(run.run_id).result(timeout=5) == 10 + i
        types = [e.__struct_config__.tag for e in await run.events()]
        assert types[0] == "run_created" and types[-1] == "run_completed"
        assert types.count("step_completed") == 3 and len(await run.steps()) == 3
    shown = cast(
        list[dict[str, Any]], await wf_json(worker_env, "inspect", "events", runs[0].run_id)
    )
    assert [e["type"] for e in shown] == types
    shown_run = cast(dict[str, Any], await wf_json(worker_env, "inspect", "run", runs[0].run_id))
    assert shown_run["status"] == "completed" and shown_run["output"] == "10"
    steps = cast(
        list[dict[str, Any]], await wf_json(worker_env, "inspect", "steps", runs[0].run_id)
    )
    assert [s["status"] for s in steps] == ["completed"] * 3
    listed = cast(list[dict[str, Any]], await wf_json(worker_env, "inspect", "runs"))
    assert {row["run_id"] for row in listed} >= {run.run_id for run in runs}
    with serving(redis_server, prefix, token=TOKEN) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            res = await client.get(f"{API}/runs/{runs[1].run_id}", headers=AUTH)
    assert res.status_code == 200 and res.json()["status"] == "completed"
    assert res.json()["output"] == 11

    # a late wake-up of a compacted run is handled as for any finished run: acknowledged
    p = k.partition(runs[0].run_id)
    await r.xadd(k.ready(p), {"run": runs[0].run_id, "reason": "late"})

    async def drained() -> bool:
        pending = await r.xpending(k.ready(p), "workers")
        return int(pending["pending"]) == 0 and int(await r.xlen(k.ready(p))) == 0

    await eventually(drained, timeout=30, what="the late wake-up acknowledged")
    assert await runs[0].status() == "completed"
    assert await r.exists(k.events(runs[0].run_id)) == 0
