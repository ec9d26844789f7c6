"""The work queue (ready stream + consumer group), dead letters and durable timers on a real Redis."""

from __future__ import annotations

from worker._world import Wakeup
from world_redis import RedisWorld

from .helpers import commit1, ev, new_id, new_run_id, run_with_steps, snapshot

GROUP = "workers"
# reclaim's minimum idle time in these tests: far longer than any test runs, so a wake-up is idle
# that long only when a test says so (set_idle), never because the machine was slow
IDLE_MS = 60_000
IDLE_LONG_AGO_MS = 3_600_000


async def pending(world: RedisWorld) -> list[dict[str, object]]:
    return await world.redis.xpending_range(world.keys.ready(0), GROUP, "-", "+", 100)


async def test_created_run_enqueues_one_wakeup_delivered_then_acked(world: RedisWorld) -> None:
    """create_run enqueues exactly one wake-up; read_wakeups delivers it once; ack removes it from stream and PEL."""
    ready = world.keys.ready(0)
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[]")
    rows = await world.redis.xrange(ready, "-", "+")
    ((_, fields),) = rows
    # the wake-up carries the run_created entry (a small input): see create_run.lua
    (_, logged), *_ = await world.redis.xrange(world.keys.events(run_id), "-", "+")
    assert fields == {"run": run_id, "reason": "created", **logged}

    (w,) = await world.read_wakeups("c1", 10, 0)
    assert (w.partition, w.message_id, w.run_id, w.reason, w.deliveries) == (
        0,
        rows[0][0],
        run_id,
        "created",
        1,
    )
    assert w.created == (await world.read_events(run_id))[0]  # read as the log is
    assert await world.read_wakeups("c1", 10, 0) == []  # not delivered twice
    (p,) = await pending(world)
    assert (p["message_id"], p["consumer"], p["times_delivered"]) == (w.message_id, "c1", 1)

    await world.ack([w])
    assert await world.redis.xlen(ready) == 0
    assert (await world.redis.xpending(ready, GROUP))["pending"] == 0


async def test_wake_is_enqueued_only_when_something_was_appended(world: RedisWorld) -> None:
    """A commit with a wake reason enqueues one wake-up if it appended events and none if all were duplicates."""
    run_id = await run_with_steps(world)
    ready = world.keys.ready(0)
    await world.redis.delete(ready)
    res = await commit1(world, run_id, ev("run_started"), wake="again")
    assert res.results[0].status == "exists"
    assert await world.redis.xlen(ready) == 0
    step = new_id("step")
    await commit1(
        world, run_id, ev("step_created", step, name="a"), ev("step_created", step), wake="steps"
    )
    assert [f for _, f in await world.redis.xrange(ready, "-", "+")] == [
        {"run": run_id, "reason": "steps"}
    ]


async def set_idle(world: RedisWorld, w: Wakeup, idle_ms: int) -> None:
    """Make the pending wake-up look idle for ``idle_ms`` (XCLAIM IDLE, same consumer, no count
    bump), so tests need not wait for real time to pass."""
    consumer = (await pending(world))[0]["consumer"]
    ready = world.keys.ready(w.partition)
    await world.redis.xclaim(ready, GROUP, consumer, 0, [w.message_id], idle=idle_ms, justid=True)


async def test_unacked_wakeup_is_reclaimed_after_idle(world: RedisWorld) -> None:
    """A wake-up read by c1 and never acked is reclaimed by c2 once idle ≥ min_idle_ms, deliveries + 1."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[]")
    (w1,) = await world.read_wakeups("c1", 10, 0)
    assert await world.reclaim("c2", IDLE_MS, 10) == []  # not idle long enough yet
    await set_idle(world, w1, IDLE_LONG_AGO_MS)

    (w2,) = await world.reclaim("c2", IDLE_MS, 10)
    assert (w2.message_id, w2.run_id, w2.reason, w2.deliveries) == (
        w1.message_id,
        run_id,
        "created",
        2,
    )
    (p,) = await pending(world)
    assert (p["consumer"], p["times_delivered"]) == ("c2", 2)
    assert await world.reclaim("c3", IDLE_MS, 10) == []  # the claim reset its idle time


async def test_heartbeat_keeps_a_wakeup_from_being_reclaimed(world: RedisWorld) -> None:
    """heartbeat() with the held wake-up resets its idle time (delivery count unchanged), so reclaim skips it."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[]")
    (w,) = await world.read_wakeups("c1", 10, 0)
    assert (await world.acquire(run_id, "c1#n1", 10_000)).code == "ok"
    await set_idle(world, w, IDLE_LONG_AGO_MS)
    (p,) = await pending(world)
    assert p["time_since_delivered"] >= IDLE_LONG_AGO_MS

    assert await world.heartbeat("c1#n1", [run_id], [w], 10_000) == {run_id: 1}
    (p,) = await pending(world)
    assert (p["consumer"], p["times_delivered"]) == ("c1", 1)
    assert p["time_since_delivered"] < IDLE_MS
    assert await world.reclaim("c2", IDLE_MS, 10) == []


async def test_reclaim_drops_pending_entries_deleted_from_the_stream(world: RedisWorld) -> None:
    """A pending id whose stream entry is gone is acknowledged by reclaim and not returned."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[]")
    (w,) = await world.read_wakeups("c1", 10, 0)
    await set_idle(world, w, IDLE_LONG_AGO_MS)
    await world.redis.xdel(world.keys.ready(0), w.message_id)
    assert len(await pending(world)) == 1
    assert await world.reclaim("c2", IDLE_MS, 10) == []
    assert await pending(world) == []


async def test_dead_letter_copies_then_acks(world: RedisWorld) -> None:
    """dead_letter writes the wake-up and the reason to the dlq stream, then acks it off the ready queue."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[]")
    (w,) = await world.read_wakeups("c1", 10, 0)
    bumped = Wakeup(
        partition=w.partition,
        message_id=w.message_id,
        run_id=w.run_id,
        reason=w.reason,
        deliveries=6,
    )
    await world.dead_letter(bumped, "delivered 6 times (max 5)")

    (entry,) = await world.redis.xrange(world.keys.dlq(0), "-", "+")
    fields = entry[1]
    assert (fields["run"], fields["reason"], fields["message_id"], fields["deliveries"]) == (
        run_id,
        "delivered 6 times (max 5)",
        w.message_id,
        "6",
    )
    assert fields["host"]
    ready = world.keys.ready(0)
    assert await world.redis.xlen(ready) == 0
    assert (await world.redis.xpending(ready, GROUP))["pending"] == 0


async def test_promote_timers_moves_due_timers_and_reports_next(world: RedisWorld) -> None:
    """promote_timers moves due timers to ready (reason timer:<corr>) and returns the next due ms, or None."""
    assert await world.promote_timers() is None
    run_id = await run_with_steps(world)
    ready, timers = world.keys.ready(0), world.keys.timers(0)
    await world.redis.delete(ready)  # drop the "created" wake-up: only timer wake-ups remain
    due, late = new_id("wait"), new_id("wait")
    res = await commit1(
        world,
        run_id,
        ev("wait_created", due, delay_ms=0),
        ev("wait_created", late, delay_ms=60_000),
    )
    late_at = res.results[1].extra
    assert late_at == res.now_ms + 60_000
    assert await world.redis.zcard(timers) == 2

    assert await world.promote_timers() == late_at
    assert [f for _, f in await world.redis.xrange(ready, "-", "+")] == [
        {"run": run_id, "reason": f"timer:{due}"}
    ]
    assert await world.redis.zrange(timers, 0, -1) == [f"{run_id}|{late}"]

    before = await snapshot(world)
    assert await world.promote_timers() == late_at  # nothing due: nothing moves
    assert await snapshot(world) == before

    await world.redis.zadd(timers, {f"{run_id}|{late}": 1})  # make it due
    assert await world.promote_timers() is None
    assert await world.redis.xlen(ready) == 2
    assert await world.redis.zcard(timers) == 0


async def test_retry_delay_is_a_durable_timer(world: RedisWorld) -> None:
    """step_retrying arms a timer at retry_after that promote_timers turns into a wake-up when due."""
    step = new_id("step")
    run_id = await run_with_steps(world, step)
    await world.redis.delete(world.keys.ready(0))
    await commit1(world, run_id, ev("step_started", step))
    res = await commit1(
        world, run_id, ev("step_retrying", step, attempt=1, error='"e"', retry_after=0)
    )
    assert await world.redis.zscore(world.keys.timers(0), f"{run_id}|{step}") == res.now_ms
    assert await world.promote_timers() is None
    assert [f for _, f in await world.redis.xrange(world.keys.ready(0), "-", "+")] == [
        {"run": run_id, "reason": f"timer:{step}"}
    ]


async def test_server_warnings_name_risky_settings(world: RedisWorld) -> None:
    """A server without AOF, or with an evicting policy, is reported; the defaults we ship are not."""
    r = world.redis
    before = await r.config_get("maxmemory-policy")
    try:
        await r.config_set("maxmemory-policy", "allkeys-lru")
        warnings = await world.server_warnings()
        assert any("allkeys-lru" in w and "noeviction" in w for w in warnings)
        assert any("appendonly" in w for w in warnings)  # the test server runs without AOF
        await r.config_set("maxmemory-policy", "noeviction")
        assert not any("maxmemory-policy" in w for w in await world.server_warnings())
    finally:
        await r.config_set("maxmemory-policy", before["maxmemory-policy"])
