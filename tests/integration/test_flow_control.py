"""Flow control on a real Redis: concurrency limits (per key too), rate windows, priority order,
lapsed holds, workflow concurrency; the limits measured from the steps' own start/end times."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from tests.e2e import flow_workflows as fw
from tests.support import all_keys, eventually, running_worker
from worker import FlowControlError, Run, WorkflowRunFailedError, start
from worker._worker import Worker, WorkerConfig
from world_redis import RedisWorld


def _worker(world: RedisWorld, **config: Any) -> Worker:
    options: dict[str, Any] = {"lease_ms": 3000, "heartbeat_ms": 300, "drain_timeout_s": 5}
    return Worker(world, WorkerConfig(**{**options, **config}))


async def _log(world: RedisWorld, label: str) -> list[str]:
    return list(await world.redis.lrange(fw.log_key(label), 0, -1))


async def _all_done(runs: Sequence[Run]) -> list[Any]:
    return [await r.result(timeout=60) for r in runs]


async def _acquire(world: RedisWorld, limit: str, member: str, **opts: Any) -> Any:
    args: dict[str, Any] = {
        "kind": "step",
        "concurrency": 1,
        "hold_ms": 60_000,
        "rate": 0,
        "window_ms": 0,
        "priority": 0,
        "tag": member,
        "reserve_ms": 60_000,
    }
    return await world.flow.acquire(limit, member, **{**args, **opts})


async def test_step_concurrency_is_never_exceeded(world: RedisWorld) -> None:
    """12 runs of a step limited to 2 (and 3 runs calling it twice at once): at most 2 executions
    overlap, every run completes, and no slot or waiter is left behind."""
    async with running_worker(_worker(world, concurrency=50)):
        runs = [await start(fw.run_limited, "lim", f"r{i}", 80) for i in range(12)]
        runs += [await start(fw.run_limited_pair, "lim", f"p{i}", 80) for i in range(3)]
        await _all_done(runs)
    spans = fw.intervals(await _log(world, "lim"))
    assert len(spans) == 18
    assert fw.max_overlap([(s, e) for s, e in spans.values()]) <= 2
    holders, waiting, _, _ = world.keys.flow_keys("s:tests.e2e.flow_workflows:limited")
    assert await world.redis.zcard(holders) == 0
    assert await world.redis.zcard(waiting) == 0


async def test_per_key_limits(world: RedisWorld) -> None:
    """concurrency_key: one execution at a time per customer; the customers' limits are apart."""
    async with running_worker(_worker(world)):
        runs = [
            await start(fw.run_per_customer, c, "cust", f"{c}{i}", 60)
            for i in range(4)
            for c in ("acme", "bolt")
        ]
        await _all_done(runs)
    spans = fw.intervals(await _log(world, "cust"))
    for customer in ("acme", "bolt"):
        mine = [(s, e) for tag, (s, e) in spans.items() if tag.startswith(customer)]
        assert len(mine) == 4
        assert fw.max_overlap(mine) == 1
    first = await _acquire(world, "s:x|acme", "wrun_a|s1")
    second = await _acquire(world, "s:x|acme", "wrun_b|s1")
    other = await _acquire(world, "s:x|bolt", "wrun_c|s1")
    assert (first.code, second.code, other.code) == ("ok", "wait", "ok")


async def test_rate_window_holds(world: RedisWorld) -> None:
    """rate="3/2s": 8 runs all complete, and no window holds more than 3 starts.

    The windows checked are 1.5 s long: a step records its start some ms after the server
    admitted it, so a 2 s window of recorded times can hold a start admitted just outside it."""
    async with running_worker(_worker(world)):
        runs = [await start(fw.run_rated, "rate", f"r{i}") for i in range(8)]
        await _all_done(runs)
    starts = sorted(json.loads(e)["t"] for e in await _log(world, "rate"))
    assert len(starts) == 8
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + 1.5) <= 3, starts


async def test_rate_refusal_names_the_window_end(world: RedisWorld) -> None:
    """Over the rate: "later" with the time the oldest start leaves the window; nothing parked."""
    opts = {"concurrency": 0, "rate": 2, "window_ms": 60_000}
    a = await _acquire(world, "s:r", "wrun_a|s", **opts)
    b = await _acquire(world, "s:r", "wrun_b|s", **opts)
    again = await _acquire(world, "s:r", "wrun_a|s", **opts)  # the same start counts once
    c = await _acquire(world, "s:r", "wrun_c|s", **opts)
    assert (a.code, b.code, again.code, c.code) == ("ok", "ok", "ok", "later")
    first_ms = float(
        (await world.redis.zrange(world.keys.flow_keys("s:r")[2], 0, 0, withscores=True))[0][1]
    )
    assert c.retry_at_ms == int(first_ms) + 60_000
    assert await world.redis.zcard(world.keys.flow_keys("s:r")[1]) == 0


async def test_priority_order_when_work_queues_up(world: RedisWorld) -> None:
    """With the one slot taken, parked steps get it by priority, then in arrival order."""
    label = "prio"
    waiting = world.keys.flow_keys("s:tests.e2e.flow_workflows:single")[1]
    async with running_worker(_worker(world)):
        blocker = await start(fw.run_single, label, "block", 0)
        await eventually(lambda: _log(world, label), what="the blocker to start")
        low = []
        for i in range(3):  # one after the other: their arrival order is the order they park
            low.append(await start(fw.run_single, label, f"low{i}", 10, priority=-5))
            await eventually(lambda n=i + 1: _zcard_is(world, waiting, n), what=f"low{i} to park")
        high = await start(fw.run_single, label, "high", 10, priority=10)
        await eventually(lambda: _zcard_is(world, waiting, 4), what="the high one to park")
        await world.redis.set(fw.gate_key(label), "1")
        await _all_done([blocker, *low, high])
    order = [json.loads(e)["tag"] for e in await _log(world, label) if '"start"' in e]
    assert order == ["block", "high", "low0", "low1", "low2"]


async def _zcard_is(world: RedisWorld, key: str, n: int) -> bool:
    return bool(await world.redis.zcard(key) == n)


async def test_waiting_steps_hold_no_worker_slot(world: RedisWorld) -> None:
    """A worker with room for 2 runs: one holds the limit's slot, 3 steps wait for it, and another
    run still completes meanwhile (parked runs are let go, not held)."""
    label = "room"
    waiting = world.keys.flow_keys("s:tests.e2e.flow_workflows:single")[1]
    async with running_worker(_worker(world, concurrency=2)):
        blocker = await start(fw.run_single, label, "block", 0)
        await eventually(lambda: _log(world, label), what="the blocker to start")
        parked = [await start(fw.run_single, label, f"w{i}", 1) for i in range(3)]
        await eventually(lambda: _zcard_is(world, waiting, 3), what="3 steps to wait")
        free = await start(fw.run_limited, "room-free", "f", 1)
        assert await free.result(timeout=30) == "f"
        await world.redis.set(fw.gate_key(label), "1")
        await _all_done([blocker, *parked])


async def test_waiters_keep_their_place_by_priority(world: RedisWorld) -> None:
    """flow_acquire.lua: a waiter asking again keeps its place; a freed slot goes to the highest
    priority, reserved for it (others asking meanwhile wait); a rate refusal gives a reserved
    slot up to the next waiter."""
    limit = "s:order"
    assert (await _acquire(world, limit, "wrun_a|s")).code == "ok"
    assert (await _acquire(world, limit, "wrun_b|s")).code == "wait"
    assert (await _acquire(world, limit, "wrun_c|s", priority=5)).code == "wait"
    assert (await _acquire(world, limit, "wrun_b|s")).code == "wait"
    assert await world.flow.release(limit, "wrun_a|s") == ["wrun_c|s"]
    assert (await _acquire(world, limit, "wrun_d|s", priority=9)).code == "wait"
    assert (await _acquire(world, limit, "wrun_c|s", priority=5)).code == "ok"
    holders, waiting, _, _ = world.keys.flow_keys(limit)
    assert await world.redis.zrange(waiting, 0, -1) == ["wrun_d|s", "wrun_b|s"]
    # with a rate too: the reserved slot of a refused start goes on to the next waiter
    both = {"concurrency": 2, "rate": 3, "window_ms": 60_000}
    assert (await _acquire(world, "s:both", "wrun_x|s", **both)).code == "ok"
    assert (await _acquire(world, "s:both", "wrun_w|s", **both)).code == "ok"
    assert (await _acquire(world, "s:both", "wrun_y|s", **both)).code == "wait"
    assert await world.flow.release("s:both", "wrun_x|s") == ["wrun_y|s"]
    assert (await _acquire(world, "s:both", "wrun_v|s", **both)).code == "wait"
    retried = await _acquire(world, "s:both", "wrun_w|s", tag="wrun_w|s|2", **both)
    assert retried.code == "ok"  # its own slot; its retry is the window's third start
    refused = await _acquire(world, "s:both", "wrun_y|s", **both)
    assert refused.code == "later" and refused.retry_at_ms > 0
    assert refused.woken == ("wrun_v|s",)
    assert await world.redis.zcard(holders) == 1


async def test_extreme_priorities_keep_their_order(world: RedisWorld) -> None:
    """Waiting scores stay exact at the ends of the priority range: 1000 before 999 before
    -1000, and equal priorities in arrival order."""
    limit = "s:extremes"
    assert (await _acquire(world, limit, "wrun_holder|s")).code == "ok"
    for member, priority in [("wrun_low|s", -1000), ("wrun_top1|s", 1000), ("wrun_mid|s", 999)]:
        assert (await _acquire(world, limit, member, priority=priority)).code == "wait"
    parked_ms = await world.server_time_ms()

    async def later() -> bool:
        return bool(await world.server_time_ms() > parked_ms)

    await eventually(later, what="the server clock to move on")
    assert (await _acquire(world, limit, "wrun_top2|s", priority=1000)).code == "wait"
    waiting = world.keys.flow_keys(limit)[1]
    assert await world.redis.zrange(waiting, 0, -1) == [
        "wrun_top1|s",
        "wrun_top2|s",
        "wrun_mid|s",
        "wrun_low|s",
    ]


async def test_lapsed_hold_frees_its_slot(world: RedisWorld) -> None:
    """A holder that stops renewing (its worker died) loses the slot once its hold lapses: the
    sweep hands it to the waiter and names the waiter to wake."""
    held = await _acquire(world, "s:lapse", "wrun_dead|s", hold_ms=300)
    parked = await _acquire(world, "s:lapse", "wrun_next|s")
    assert (held.code, parked.code) == ("ok", "wait")
    await world.flow.register("s:lapse")

    async def handed_on() -> bool:
        for limit, woken, _ in await world.flow.sweep("test", 1, 3_600_000):
            if limit == "s:lapse" and "wrun_next|s" in woken:
                return True
        return False

    await eventually(handed_on, 10, what="the lapsed hold to be handed on")
    again = await _acquire(world, "s:lapse", "wrun_next|s")
    assert again.code == "ok"  # the reservation is its own
    late = await _acquire(world, "s:lapse", "wrun_dead|s")
    assert late.code == "wait"


async def test_workflow_concurrency(world: RedisWorld) -> None:
    """@workflow(concurrency=1): runs do not overlap from their first step to their last, durable
    sleeps included; the slot is given back when each run ends."""
    async with running_worker(_worker(world)):
        runs = [await start(fw.one_at_a_time, "wfc", f"w{i}") for i in range(4)]
        await _all_done(runs)
    spans = fw.intervals(await _log(world, "wfc"))
    assert len(spans) == 4
    assert fw.max_overlap([(s, e) for s, e in spans.values()]) == 1
    holders = world.keys.flow_keys("w:tests.e2e.flow_workflows:one_at_a_time")[0]
    assert await world.redis.zcard(holders) == 0


async def test_cancelled_run_frees_its_workflow_slot(world: RedisWorld) -> None:
    """A run holding its workflow's one slot (per key) is cancelled: the run waiting for that
    slot starts and completes; a run of another key never waited."""
    waiting = world.keys.flow_keys("w:tests.e2e.flow_workflows:holds_slot|c")[1]
    async with running_worker(_worker(world)):
        first = await start(fw.holds_slot, "c", "a", 3600)
        await eventually(lambda: _log(world, "c"), what="the first run to start")
        second = await start(fw.holds_slot, "c", "b", 0)
        other = await start(fw.holds_slot, "d", "x", 0)
        assert await other.result(timeout=30) == "x"
        await eventually(lambda: _zcard_is(world, waiting, 1), what="the second run to park")
        await first.cancel()
        assert await second.result(timeout=30) == "b"


async def test_failing_concurrency_key_fails_the_call(world: RedisWorld) -> None:
    """A concurrency_key that raises on the call's arguments raises FlowControlError in the
    workflow code that called the step: the run fails, naming the step and the key's error."""
    async with running_worker(_worker(world)):
        run = await start(fw.order_without_customer)
        with pytest.raises(WorkflowRunFailedError) as err:
            await run.result(timeout=30)
    assert "concurrency_key" in str(err.value.__cause__)
    assert "KeyError" in str(err.value.__cause__)


async def test_start_request_priority(world: RedisWorld) -> None:
    """A start request on <prefix>:start may carry a priority: stored with the run (its hash and
    run_created); one that is not an int in range is rejected with FlowControlError."""
    stream = world.keys.start_stream()
    async with running_worker(_worker(world)):
        await world.redis.xadd(
            stream,
            {
                "workflow": fw.run_rated.name,
                "args": '["req", "t"]',
                "run_id": "wrun_prio_req",
                "priority": "7",
            },
        )
        await world.redis.xadd(
            stream, {"workflow": fw.run_rated.name, "args": '["req", "u"]', "priority": "high"}
        )
        await eventually(lambda: world.get_run("wrun_prio_req"), what="the run to be created")
        assert await Run("wrun_prio_req", world=world).result(timeout=30) == "t"

        async def rejected() -> list[Any]:
            return list(await world.redis.xrange(world.keys.rejected(stream)))

        (entry,) = await eventually(rejected, what="the bad priority to be rejected")  # type: ignore[misc]
    assert "FlowControlError" in entry[1]["reason"] and "priority='high'" in entry[1]["reason"]
    assert await world.redis.hget(world.keys.run("wrun_prio_req"), "priority") == "7"
    (created, *_) = await Run("wrun_prio_req", world=world).events()
    assert getattr(created, "priority", None) == 7


async def test_dashboard_shows_the_limits(world: RedisWorld) -> None:
    """The dashboard's /queues page lists each limit in use: slots in use of N, waiting."""
    import httpx

    from worker import create_dashboard_app

    assert (await _acquire(world, "s:shown|acme", "wrun_a|s", concurrency=3)).code == "ok"
    await world.flow.register("s:shown|acme")
    transport = httpx.ASGITransport(app=create_dashboard_app(world, token="t"))
    headers = {"authorization": "Bearer t"}
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
        page = (await client.get("/queues?live=0", headers=headers)).text
    assert 'id="flow-limits"' in page and "s:shown|acme" in page and "1 / 3" in page


async def test_workflow_key_that_fails_is_refused_at_start(world: RedisWorld) -> None:
    """A workflow's concurrency_key that raises on the arguments: start() raises
    FlowControlError naming it, and no run (no key) is created."""
    before = await all_keys(world, f"{world.keys.prefix}*")
    with pytest.raises(FlowControlError, match=r"concurrency_key.*KeyError"):
        await start(fw.keyed_run, {"item": "book"})
    assert await all_keys(world, f"{world.keys.prefix}*") == before


@pytest.mark.parametrize("priority", [1001, -1001, 1.5, "high", True])
async def test_bad_priority_creates_nothing(world: RedisWorld, priority: Any) -> None:
    """start(..., priority=<not an int in -1000..1000>): FlowControlError naming it; no key."""
    before = await all_keys(world, f"{world.keys.prefix}*")
    with pytest.raises(FlowControlError, match="priority"):
        await start(fw.run_limited, "x", "y", 1, priority=priority)
    assert await all_keys(world, f"{world.keys.prefix}*") == before
