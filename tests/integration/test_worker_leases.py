"""The worker's lease bookkeeping against a real Redis (no worker process needed)."""

from __future__ import annotations

from typing import Any

from tests.support import eventually, running_worker
from worker import start, step, workflow
from worker._worker import Held, Worker, WorkerConfig
from worker._worker_loops import heartbeat_once
from worker._world import Wakeup
from world_redis import RedisWorld


@step(name="leases.add_one")
def add_one(x: int) -> int:
    return x + 1


@workflow(name="leases.one_step")
async def one_step(x: int) -> int:
    return await add_one(x)


LEASE_MS = 60_000
SHORT_LEASE_MS = 1_000


def wakeup(run_id: str) -> Wakeup:
    return Wakeup(partition=0, message_id="0-1", run_id=run_id, reason="test")


async def test_heartbeat_ignores_runs_whose_lease_is_being_acquired(world: RedisWorld) -> None:
    """A run taken from the queue but not yet leased is not marked lost by a heartbeat
    (it used to be, and the run then waited a whole lease for a takeover), while the same
    heartbeat renews the lease of a leased run and reports its new events."""
    worker = Worker(world, WorkerConfig(lease_ms=LEASE_MS))
    await world.ensure_groups()
    await world.create_run("wrun_pending_acquire", "wf", "[]")
    acquiring = Held("wrun_pending_acquire", wakeup("wrun_pending_acquire"))
    worker.held[acquiring.run_id] = acquiring
    await world.create_run("wrun_leased", "wf", "[]")
    assert (await world.acquire("wrun_leased", worker.token, SHORT_LEASE_MS)).code == "ok"
    leased = Held("wrun_leased", wakeup("wrun_leased"), known_seq=1, leased=True)
    worker.held[leased.run_id] = leased
    lease_until = int(await world.redis.hget(world.keys.run("wrun_leased"), "lease_until"))
    await world.redis.hset(world.keys.run("wrun_leased"), "seq", 3)  # events the holder missed

    await heartbeat_once(worker)

    assert not acquiring.lost and not acquiring.nudge.is_set()
    assert await world.redis.hget(world.keys.run(acquiring.run_id), "lease_owner") in (None, "")
    assert not leased.lost and leased.known_seq == 3 and leased.nudge.is_set()
    renewed = int(await world.redis.hget(world.keys.run("wrun_leased"), "lease_until"))
    assert renewed >= lease_until + LEASE_MS - SHORT_LEASE_MS  # extended by the worker's lease


async def test_heartbeat_flags_leases_taken_by_another_worker(world: RedisWorld) -> None:
    """A leased run whose lease another worker took is flagged lost; a kept one sees new events."""
    worker = Worker(world)
    await world.ensure_groups()
    for run_id in ("wrun_kept", "wrun_taken"):
        await world.create_run(run_id, "wf", "[]")
        assert (await world.acquire(run_id, worker.token, 60_000)).code == "ok"
        worker.held[run_id] = Held(run_id, wakeup(run_id), known_seq=1, leased=True)
    await world.redis.hset(world.keys.run("wrun_taken"), "lease_owner", "someone-else")
    await world.redis.hset(world.keys.run("wrun_kept"), "seq", 5)
    await heartbeat_once(worker)
    assert worker.held["wrun_taken"].lost
    kept = worker.held["wrun_kept"]
    assert not kept.lost and kept.known_seq == 5 and kept.nudge.is_set()


async def test_a_run_is_released_by_the_commit_that_ends_it(world: RedisWorld) -> None:
    """The run's end, its lease given up and its wake-up acknowledged are one write: when the
    result can be read, the lease is already free and the ready stream holds no entry of it."""
    worker = Worker(world, WorkerConfig(lease_ms=5000))
    async with running_worker(worker):
        for i in range(5):
            run = await start(one_step, i)
            assert await run.result(timeout=20) == i + 1
            r, k = world.redis, world.keys
            lease = await r.hmget(k.run(run.run_id), ["lease_owner", "lease_until"])
            assert lease == ["", "0"]
            ready = k.ready(k.partition(run.run_id))
            assert await r.xlen(ready) == 0
            assert int((await r.xpending(ready, "workers"))["pending"]) == 0


def count_acquires(world: RedisWorld) -> list[int]:
    """How many runs went through acquire.lua (the World's own method, wrapped: Redis is real)."""
    calls = [0]
    acquire_many = world.acquire_many

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += len(args[2])
        return await acquire_many(*args, **kwargs)

    world.acquire_many = counted  # type: ignore[method-assign]
    return calls


async def test_a_new_run_is_started_by_its_first_commit_without_an_acquire(
    world: RedisWorld,
) -> None:
    """A created run's wake-up carries its run_created: the worker starts the run from it, and
    its first commit takes the lease (pinned to the worker's deployment), with no acquire."""
    acquired = count_acquires(world)
    worker = Worker(world, WorkerConfig(lease_ms=5000))
    async with running_worker(worker):
        runs = [await start(one_step, i) for i in range(5)]
        assert [await run.result(timeout=20) for run in runs] == [1, 2, 3, 4, 5]
    assert acquired == [0]
    for run in runs:
        info = await world.get_run(run.run_id)
        assert info is not None and info.deployment == worker.deployment
        types = [e.__struct_config__.tag for e in await run.events()]
        assert types == ["run_created", "run_started", "step_created", "step_started",
                         "step_completed", "run_completed"]  # fmt: skip


async def test_a_created_wakeup_of_a_run_that_moved_on_is_taken_the_usual_way(
    world: RedisWorld,
) -> None:
    """A second copy of a finished run's created wake-up (a replayed dead letter, say): the
    first commit is refused (the log is past run_created), the worker falls back to acquire,
    finds the run finished and acknowledges the copy; the run's log is unchanged."""
    worker = Worker(world, WorkerConfig(lease_ms=5000))
    async with running_worker(worker):
        run = await start(one_step, 41)
        assert await run.result(timeout=20) == 42
        before = await run.events()
        acquired = count_acquires(world)
        ready = world.keys.ready(world.keys.partition(run.run_id))
        (_, created), *_ = await world.redis.xrange(world.keys.events(run.run_id), "-", "+")
        await world.redis.xadd(ready, {"run": run.run_id, "reason": "created", **created})

        async def settled() -> bool:
            pending = int((await world.redis.xpending(ready, "workers"))["pending"])
            return acquired[0] == 1 and pending == 0 and await world.redis.xlen(ready) == 0

        await eventually(settled, 20, what="the copy acknowledged after an acquire")
    assert await run.events() == before


async def test_a_created_run_leased_by_a_live_worker_is_left_to_it(world: RedisWorld) -> None:
    """Another live worker's lease on a created run: the first commit takes nothing and appends
    nothing (answered "lease"); the usual acquire finds the run busy and drops the wake-up.
    Once that lease is gone, a wake-up starts the run."""
    await world.ensure_groups()
    run = await start(one_step, 6)
    run_key = world.keys.run(run.run_id)
    await world.redis.hset(run_key, mapping={"lease_owner": "other#1", "lease_until": "9" * 13})
    worker = Worker(world, WorkerConfig(lease_ms=5000))
    async with running_worker(worker):
        ready = world.keys.ready(world.keys.partition(run.run_id))

        async def dropped() -> bool:
            return await world.redis.xlen(ready) == 0

        await eventually(dropped, 20, what="the wake-up dropped")
        assert [e.__struct_config__.tag for e in await run.events()] == ["run_created"]
        assert await world.redis.hget(run_key, "lease_owner") == "other#1"
        await world.redis.hset(run_key, mapping={"lease_owner": "", "lease_until": "0"})
        await world.redis.xadd(ready, {"run": run.run_id, "reason": "test"})
        assert await run.result(timeout=20) == 7


async def test_a_heartbeat_answering_an_older_seq_changes_nothing(world: RedisWorld) -> None:
    """A heartbeat runs beside the run's commits, so its answer can be older than a commit's
    answer the worker already processed: a seq below the one the worker knows neither nudges
    the holder nor marks its log as gone back (only the run's own loop does, see Held.behind)."""
    worker = Worker(world)
    await world.ensure_groups()
    await world.create_run("wrun_older", "wf", "[]")
    assert (await world.acquire("wrun_older", worker.token, 60_000)).code == "ok"
    held = Held("wrun_older", wakeup("wrun_older"), known_seq=5, leased=True)
    worker.held[held.run_id] = held
    await heartbeat_once(worker)  # the stored seq is 1
    assert held.behind is None and not held.nudge.is_set() and not held.lost
    assert held.known_seq == 5
