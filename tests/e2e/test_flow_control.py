"""Flow control across two `wf worker` processes: limits never exceeded (overlap computed from the
steps' own start/end times), rate windows held, a SIGKILLed holder's slot released."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import Any

from tests.e2e import flow_workflows as fw
from tests.support import WF, eventually, wf_json
from worker import start
from world_redis import RedisWorld

MODULE = "tests.e2e.flow_workflows"
FAST_LEASE = {"WORKFLOW_LEASE_MS": "1500", "WORKFLOW_HEARTBEAT_MS": "300"}


async def _log(world: RedisWorld, label: str) -> list[str]:
    return list(await world.redis.lrange(fw.log_key(label), 0, -1))


async def test_limits_hold_across_two_workers(world: RedisWorld, start_worker: Any) -> None:
    """Two worker processes with room for many steps each: a step limited to 2 never runs more
    than twice at once, one keyed per customer once per customer, and a workflow limited to 1
    never has two runs in progress; every run completes."""
    start_worker(MODULE, concurrency=20)
    start_worker(MODULE, concurrency=20)
    runs = [await start(fw.run_limited, "lim", f"r{i}", 100) for i in range(16)]
    runs += [await start(fw.run_limited_pair, "lim", f"p{i}", 100) for i in range(2)]
    runs += [
        await start(fw.run_per_customer, c, "cust", f"{c}{i}", 50)
        for i in range(4)
        for c in ("acme", "bolt")
    ]
    runs += [await start(fw.one_at_a_time, "wfc", f"w{i}") for i in range(3)]
    for run in runs:
        await run.result(timeout=90)
    limited = fw.intervals(await _log(world, "lim"))
    assert len(limited) == 20
    assert fw.max_overlap(list(map(tuple, limited.values()))) <= 2  # type: ignore[arg-type]
    cust = fw.intervals(await _log(world, "cust"))
    for customer in ("acme", "bolt"):
        mine = [(s, e) for tag, (s, e) in cust.items() if tag.startswith(customer)]
        assert len(mine) == 4 and fw.max_overlap(mine) == 1
    whole = fw.intervals(await _log(world, "wfc"))
    assert len(whole) == 3 and fw.max_overlap([(s, e) for s, e in whole.values()]) == 1


async def test_rate_holds_across_two_workers(world: RedisWorld, start_worker: Any) -> None:
    """rate="3/2s" shared by two workers: every run completes and no window holds more than 3
    starts (windows of 1.5 s: a step records its start some ms after it was admitted)."""
    start_worker(MODULE)
    start_worker(MODULE)
    runs = [await start(fw.run_rated, "rate", f"r{i}") for i in range(7)]
    for run in runs:
        await run.result(timeout=60)
    starts = sorted(json.loads(e)["t"] for e in await _log(world, "rate"))
    assert len(starts) == 7
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + 1.5) <= 3, starts


async def test_killed_holder_frees_its_slot(
    world: RedisWorld, start_worker: Any, worker_env: dict[str, str]
) -> None:
    """The worker running the one allowed execution is SIGKILLed: its slot is freed after its
    lease, the waiting runs and the killed step's retry complete on the other worker, and the
    executions never overlapped (the killed attempt counts until the kill). `wf inspect flow`
    shows the slot in use and the waiters meanwhile."""
    workers = [start_worker(MODULE, **FAST_LEASE), start_worker(MODULE, **FAST_LEASE)]
    label = "kill"
    victim = await start(fw.run_killable, label, "victim", 10)
    await eventually(lambda: _log(world, label), 20, what="the victim's step to start")
    others = [await start(fw.run_killable, label, f"r{i}", 50) for i in range(3)]
    waiting = world.keys.flow_keys(f"s:{MODULE}:killable")[1]

    async def parked() -> bool:
        return bool(await world.redis.zcard(waiting) == 3)

    await eventually(parked, 20, what="the other runs to wait for the slot")
    shown = await wf_json(worker_env, "inspect", "flow")
    assert isinstance(shown, list)
    (limit,) = [lim for lim in shown if lim["limit"] == f"s:{MODULE}:killable"]
    assert (limit["holders"], limit["concurrency"], limit["waiting"]) == (1, 1, 3)
    holder_pid = json.loads((await _log(world, label))[0])["pid"]
    (holder,) = [w for w in workers if w.proc.pid == holder_pid]
    holder.kill()
    killed_at = time.time()
    assert [await r.result(timeout=60) for r in [victim, *others]] == [
        "victim",
        "r0",
        "r1",
        "r2",
    ]
    spans = fw.intervals(await _log(world, label))
    assert spans["victim"][1] == float("inf")  # its first attempt died with its worker
    spans["victim"][1] = killed_at
    assert set(spans) == {"victim", "victim#2", "r0", "r1", "r2"}
    assert fw.max_overlap([(s, e) for s, e in spans.values()]) == 1
    holders = world.keys.flow_keys(f"s:{MODULE}:killable")[0]
    assert await world.redis.zcard(holders) == 0


async def test_wf_start_priority(world: RedisWorld, worker_env: dict[str, str]) -> None:
    """`wf start ... --priority 3` stores the run's priority; `--priority 5000` is refused in
    one line naming the option, with exit code 1 and no run."""
    base = [WF, "start", "run_rated", '"cli"', '"t"', "--import", MODULE]
    ok = await asyncio.to_thread(
        subprocess.run, [*base, "--priority", "3"], env=worker_env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    run_id = ok.stdout.strip()
    assert await world.redis.hget(world.keys.run(run_id), "priority") == "3"
    bad = await asyncio.to_thread(
        subprocess.run,
        [*base, "--priority", "5000"],
        env=worker_env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "invalid priority=5000" in bad.stderr and "Traceback" not in bad.stderr
    assert (await world.list_runs(limit=10))[0] == [await world.get_run(run_id)]
