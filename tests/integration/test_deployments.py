"""Deployments on a real Redis: acquire.lua's pin check, migrate.lua, the registry."""

from __future__ import annotations

import json

import pytest

from tests.support import running_worker
from worker import RunNotFoundError
from worker._deployments import MigrateError, lane
from worker._worker import Worker, WorkerConfig
from worker._world import Acquired, Wakeup
from world_redis import RedisWorld

from .helpers import commit1, ev, eventually, new_id, new_run_id, run_with_steps, snapshot


async def test_acquire_pins_an_unpinned_run_to_the_callers_deployment(world: RedisWorld) -> None:
    """An unpinned run is pinned by the first worker that takes its lease, atomically."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[]")
    info = await world.get_run(run_id)
    assert info is not None and info.deployment == ""
    got = await world.acquire(run_id, "w1#a", 10_000, deployment="dpl_one")
    assert got == Acquired("ok", 1, "pending", False, [], "dpl_one")
    assert await world.redis.hget(world.keys.run(run_id), "deployment") == "dpl_one"


async def test_acquire_of_a_run_pinned_elsewhere_answers_pinned_and_writes_nothing(
    world: RedisWorld,
) -> None:
    """A worker of another deployment gets "pinned" with the run's deployment, even while the
    lease is free, and nothing changes; a worker of the run's deployment gets the lease."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[]", "dpl_one")
    before = await snapshot(world)
    got = await world.acquire(run_id, "w2#b", 10_000, after_seq=0, deployment="dpl_two")
    assert got == Acquired("pinned", 1, "pending", False, [], "dpl_one")
    assert await snapshot(world) == before
    assert (await world.acquire(run_id, "w1#a", 10_000, deployment="dpl_one")).code == "ok"
    # a caller without a deployment is not checked (and pins nothing)
    assert (await world.acquire(run_id, "w1#a", 10_000)).code == "ok"


async def test_a_finished_run_is_not_pinned(world: RedisWorld) -> None:
    """acquire on a terminal unpinned run leaves it unpinned (nothing to replay there)."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[]")
    await commit1(world, run_id, ev("run_cancelled"))
    got = await world.acquire(run_id, "w1#a", 10_000, deployment="dpl_one")
    assert (got.code, got.deployment) == ("ok", "")


async def test_migrate_repins_drops_the_old_lane_entries_and_wakes_the_run(
    world: RedisWorld,
) -> None:
    """migrate.lua: the pin moves, the run's wake-ups waiting in the old deployment's lane go
    (other runs' entries stay), one wake-up goes to the ready stream."""
    run_id, other = new_run_id(), new_run_id()
    for r in (run_id, other):
        assert await world.create_run(r, "wf_test", "[]", "dpl_one")
    p = world.keys.partition(run_id)
    ready = world.keys.ready(p)
    await world.ensure_groups()
    for r in (run_id, other):  # each wake-up forwarded to dpl_one's lane by another worker
        ((_, entries),) = await world.redis.xreadgroup("workers", "w2", {ready: ">"}, count=1)
        ((mid, _),) = entries
        w = Wakeup(partition=p, message_id=mid, run_id=r, reason="created")
        await world.pools.forward_wakeup(w, lane("default", "dpl_one"))
    old_lane = world.keys.queue_stream(p, "default@dpl_one")
    assert await world.redis.xlen(old_lane) == 2

    assert await world.deployments.migrate(run_id, "dpl_two") == "dpl_one"
    info = await world.get_run(run_id)
    assert info is not None and info.deployment == "dpl_two"
    assert await world.redis.hget(world.keys.run(run_id), "queue") is None
    left = await world.redis.xrange(old_lane)
    assert [f["run"] for _, f in left] == [other]
    woken = await world.redis.xrange(ready)
    assert [(f["run"], f["reason"]) for _, f in woken] == [(run_id, "migrated")]


async def test_migrate_refuses_finished_and_missing_runs(world: RedisWorld) -> None:
    """A finished run keeps its deployment (MigrateError); a missing run is RunNotFoundError."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[]", "dpl_one")
    await commit1(world, run_id, ev("run_cancelled"))
    before = await snapshot(world)
    with pytest.raises(MigrateError, match="is cancelled"):
        await world.deployments.migrate(run_id, "dpl_two")
    with pytest.raises(RunNotFoundError):
        await world.deployments.migrate(new_run_id(), "dpl_two")
    assert await snapshot(world) == before


async def test_registry_keeps_first_seen_and_tells_live_from_gone(world: RedisWorld) -> None:
    """Renewals keep the first-seen time and join the workflows of the live workers; a
    deployment is live while one of its workers renewed within the window and has not left."""
    reg = world.deployments
    await reg.register("dpl_one", "w1", ["a:wf"], 60_000)
    (first,) = await reg.registry(60_000)
    assert (first.live, first.workers, first.workflows) == (True, ["w1"], ["a:wf"])
    await reg.register("dpl_one", "w2", ["b:wf"], 60_000)
    (again,) = await reg.registry(60_000)
    assert again.first_seen_ms == first.first_seen_ms and again.live
    assert (again.workers, again.workflows) == (["w1", "w2"], ["a:wf", "b:wf"])
    assert again.last_seen_ms >= first.last_seen_ms

    await reg.leave("dpl_one", "w1", 60_000)
    (one_left,) = await reg.registry(60_000)
    assert one_left.live and one_left.workers == ["w2"]
    await reg.leave("dpl_one", "w2", 60_000)
    (gone,) = await reg.registry(60_000)
    assert not gone.live and gone.workers == [] and gone.first_seen_ms == first.first_seen_ms
    assert gone.workflows == ["a:wf", "b:wf"]  # what it served, shown while gone
    await reg.register("dpl_one", "w3", ["c:wf"], 60_000)
    (back,) = await reg.registry(60_000)
    assert back.workflows == ["c:wf"] and back.first_seen_ms == first.first_seen_ms

    # a worker that stopped renewing (died) is not live after the window
    stale = {"workflows": ["a:wf"], "first_seen_ms": 1, "last_seen_ms": 2, "workers": {"w": 2}}
    await world.redis.hset(world.keys.deployments(), "dpl_old", json.dumps(stale))
    await world.redis.hset(world.keys.deployments(), "dpl_bad", "not json")
    shown = {d.deployment_id: d for d in await reg.registry(60_000)}
    assert not shown["dpl_old"].live and shown["dpl_one"].live
    assert shown["dpl_bad"].workflows == [] and not shown["dpl_bad"].live
    await reg.register("dpl_none", "w1", [], 60_000)
    raw = json.loads(await world.redis.hget(world.keys.deployments(), "dpl_none"))
    assert raw["workflows"] == [] and list(raw["workers"]) == ["w1"]
    await reg.leave("dpl_never", "w1", 60_000)  # never registered: nothing recorded
    assert not await world.redis.hexists(world.keys.deployments(), "dpl_never")


async def test_a_migrated_runs_due_step_goes_to_the_lane_of_its_new_deployment(
    world: RedisWorld,
) -> None:
    """route.lua: a step handed to the gpu lane of one deployment is handed again (same attempt)
    to the gpu lane of the deployment the run moved to; twice to one lane stays once."""
    step = new_id("step")
    run_id = await run_with_steps(world, step)
    old, new = lane("gpu", "dpl_one"), lane("gpu", "dpl_two")
    assert await world.pools.route_steps(run_id, [(step, "add", old)]) == ["queued"]
    assert await world.pools.route_steps(run_id, [(step, "add", old)]) == ["exists"]
    assert await world.pools.route_steps(run_id, [(step, "add", new)]) == ["queued"]
    assert await world.pools.route_steps(run_id, [(step, "add", new)]) == ["exists"]
    for name in (old, new):
        assert await world.redis.xlen(world.keys.queue_stream(0, name)) == 1
    assert await world.pools.waiting_on(run_id) == [(step, new, 0)]


async def test_a_worker_forwards_a_run_of_another_deployment_without_replaying_it(
    world: RedisWorld,
) -> None:
    """An in-process worker of dpl_a takes the wake-up of a run pinned to dpl_b (a workflow it
    does not even have, which a replay would fail): the wake-up moves to dpl_b's lane, the run
    and its log stay as they were."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "not_here:wf", "[]", "dpl_b")
    lane_stream = world.keys.queue_stream(0, lane("default", "dpl_b"))
    worker = Worker(world, WorkerConfig(deployment="dpl_a", drain_timeout_s=1))
    async with running_worker(worker):

        async def forwarded() -> bool:
            return bool(await world.redis.xlen(lane_stream))

        await eventually(forwarded, timeout=20, what="the wake-up in dpl_b's lane")
    info = await world.get_run(run_id)
    assert info is not None and (info.status, info.seq, info.deployment) == ("pending", 1, "dpl_b")
    assert info.lease_owner == ""
    assert await world.redis.xlen(world.keys.ready(0)) == 0
    assert [f["run"] for _, f in await world.redis.xrange(lane_stream)] == [run_id]


async def test_a_finished_run_of_another_deployment_is_not_forwarded(world: RedisWorld) -> None:
    """The wake-up of a cancelled run pinned elsewhere is acknowledged where it was read: it
    would only linger in a lane that nobody may serve any more."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "not_here:wf", "[]", "dpl_b")
    await commit1(world, run_id, ev("run_cancelled"), wake="cancelled")
    worker = Worker(world, WorkerConfig(deployment="dpl_a", drain_timeout_s=1))
    async with running_worker(worker):

        async def acknowledged() -> bool:
            groups = await world.redis.xinfo_groups(world.keys.ready(0))
            return await world.redis.xlen(world.keys.ready(0)) == 0 and groups[0]["pending"] == 0

        await eventually(acknowledged, timeout=20, what="both wake-ups acknowledged")
    assert not await world.redis.exists(world.keys.queue_stream(0, lane("default", "dpl_b")))
    info = await world.get_run(run_id)
    assert info is not None and info.status == "cancelled"
