"""Run leases (acquire.lua, release.lua, heartbeat.lua) on a real Redis."""

from __future__ import annotations

from worker._world import Acquired
from world_redis import RedisWorld

from .helpers import commit1, ev, eventually, new_run_id, run_with_steps, snapshot


async def test_acquire_is_exclusive_while_the_lease_lives(world: RedisWorld) -> None:
    """The first token gets the lease; a second token is "busy" and changes nothing but the
    timer that wakes the run when the lease lapses (ghost_lease tests why); the holder may
    renew."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[]")
    assert await world.acquire(run_id, "w1#a", 10_000) == Acquired("ok", 1, "pending", False)
    assert await world.redis.hget(world.keys.run(run_id), "lease_owner") == "w1#a"
    until = int(await world.redis.hget(world.keys.run(run_id), "lease_until"))

    before = await snapshot(world)
    assert await world.acquire(run_id, "w2#b", 10_000) == Acquired("busy", 1, "pending", False)
    timers = world.keys.timers(world.keys.partition(run_id))
    assert await world.redis.zrange(timers, 0, -1, withscores=True) == [
        (f"{run_id}|lease", until + 1)
    ]
    await world.redis.delete(timers)
    assert await snapshot(world) == before

    assert await world.acquire(run_id, "w1#a", 10_000) == Acquired("ok", 1, "pending", False)


async def test_acquire_missing_run_is_no_run(world: RedisWorld) -> None:
    """acquire on a run that does not exist answers "no_run" and creates nothing."""
    before = await snapshot(world)
    acquired = await world.acquire(new_run_id(), "w1#a", 10_000)
    assert (acquired.code, acquired.seq, acquired.taken_over) == ("no_run", 0, False)
    assert await snapshot(world) == before


async def test_lapsed_lease_is_taken_over(world: RedisWorld) -> None:
    """After the holder's lease (200 ms) lapses another token gets it with taken_over; the old holder's heartbeat says -1."""
    run_id = await run_with_steps(world)  # seq 2, running
    assert (await world.acquire(run_id, "w1#a", 200)).code == "ok"
    assert (await world.acquire(run_id, "w2#b", 10_000)).code == "busy"

    async def take() -> Acquired | None:
        got = await world.acquire(run_id, "w2#b", 10_000)
        return got if got.code == "ok" else None

    acquired = await eventually(take, timeout=3, interval=0.05, what="lease lapse")
    assert acquired == Acquired("ok", 2, "running", True)
    assert await world.redis.hget(world.keys.run(run_id), "lease_owner") == "w2#b"

    assert await world.heartbeat("w1#a", [run_id], [], 10_000) == {run_id: -1}
    assert await world.heartbeat("w2#b", [run_id], [], 10_000) == {run_id: 2}
    # the old holder can no longer write either
    res = await commit1(world, run_id, ev("run_completed", output="1"), token="w1#a")
    assert res.code == "lease"


async def test_heartbeat_extends_held_leases_and_reports_seq(world: RedisWorld) -> None:
    """heartbeat returns each held run's seq and pushes lease_until forward; -1 for runs not held or gone."""
    held = await run_with_steps(world)
    other = await run_with_steps(world)
    missing = new_run_id()
    assert (await world.acquire(held, "w1#a", 1_000)).code == "ok"
    assert (await world.acquire(other, "w2#b", 10_000)).code == "ok"
    until_before = int(await world.redis.hget(world.keys.run(held), "lease_until"))

    await commit1(world, held, ev("run_cancelled"))  # an external writer moves seq to 3
    seqs = await world.heartbeat("w1#a", [held, other, missing], [], 60_000)
    assert seqs == {held: 3, other: -1, missing: -1}
    until_after = int(await world.redis.hget(world.keys.run(held), "lease_until"))
    assert until_after >= until_before + 59_000
    assert await world.redis.hget(world.keys.run(other), "lease_owner") == "w2#b"


async def test_release_rules(world: RedisWorld) -> None:
    """release: "changed" when the log grew past the caller's seq (lease kept), "lease" for a non-holder, else ok."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[]")
    assert (await world.acquire(run_id, "w1#a", 10_000)).code == "ok"
    res = await commit1(world, run_id, ev("run_started"), token="w1#a", expected_seq=1)
    assert (res.code, res.seq) == ("ok", 2)

    before = await snapshot(world)
    assert await world.release(run_id, "w2#b", 2) == ("lease", 2)
    assert await world.release(run_id, "w1#a", 1) == ("changed", 2)
    assert await snapshot(world) == before  # still held by w1
    assert await world.redis.hget(world.keys.run(run_id), "lease_owner") == "w1#a"

    assert await world.release(run_id, "w1#a", 2) == ("ok", 2)
    run = await world.redis.hgetall(world.keys.run(run_id))
    assert (run["lease_owner"], run["lease_until"]) == ("", "0")
    # free again: any token may take it, not a takeover
    assert await world.acquire(run_id, "w2#b", 10_000) == Acquired("ok", 2, "running", False)
