"""A run whose stored log goes back below what its worker has seen (a failed-over replica that
was behind) is replayed from what Redis holds: the worker's next commit no longer matches, and
the run goes on from the stored log instead of staying held by a worker whose commits fail."""

from __future__ import annotations

from pathlib import Path

from tests.integration import rollback_workflows as rw
from tests.support import eventually, running_worker
from worker import start
from worker._worker import Worker, WorkerConfig
from world_redis import RedisWorld


def _touch(path: str) -> None:
    Path(path).touch()


async def _dump(world: RedisWorld, run_id: str) -> dict[str, bytes]:
    """The run's keys as DUMP payloads (a client without decoding: DUMP is binary)."""
    raw = world.redis  # decoded client: DUMP goes through a plain connection instead
    keys = world.keys.run_keys(run_id)
    import redis.asyncio as aioredis

    pool = raw.connection_pool  # type: ignore[attr-defined]
    kwargs = pool.connection_kwargs
    plain = aioredis.Redis(host=kwargs["host"], port=kwargs["port"])
    try:
        return {k: v for k in keys if (v := await plain.dump(k)) is not None}
    finally:
        await plain.aclose()


async def _restore(world: RedisWorld, dumped: dict[str, bytes]) -> None:
    import redis.asyncio as aioredis

    kwargs = world.redis.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    plain = aioredis.Redis(host=kwargs["host"], port=kwargs["port"])
    try:
        for key, payload in dumped.items():
            await plain.restore(key, 0, payload, replace=True)
    finally:
        await plain.aclose()


async def test_a_worker_gives_up_a_run_whose_log_went_back(
    world: RedisWorld, tmp_path: Path
) -> None:
    """Snapshot the run while its first step runs, let it go on to its second step, put the
    snapshot back: the run, replayed from the snapshot, runs its first step again (a second
    attempt) and completes once."""
    first, second = str(tmp_path / "one"), str(tmp_path / "two")
    worker = Worker(world, WorkerConfig(lease_ms=1500, heartbeat_ms=200, drain_timeout_s=5))
    async with running_worker(worker):
        run = await start(rw.two_blocks, first, second)
        await eventually(lambda: Path(f"{first}.started").exists(), 20, what="the first step")
        snapshot = await _dump(world, run.run_id)
        _touch(f"{first}.go")
        await eventually(lambda: Path(f"{second}.started").exists(), 20, what="the second step")
        await _restore(world, snapshot)  # the log is back at the first step
        _touch(f"{second}.go")
        assert await run.result(timeout=30) == ["one", "two"]
        types = [e.__struct_config__.tag for e in await run.events()]
        assert types.count("run_completed") == 1
        assert types.count("step_completed") == 2


async def test_a_run_whose_log_went_back_to_before_its_start_is_started_again(
    world: RedisWorld, tmp_path: Path
) -> None:
    """The log goes back to its run_created alone while the worker that holds the run runs its
    second step, with that worker's lease kept (the acquire reached the replica, the commits did
    not): the run is started again from its first step and completes once."""
    first, second = str(tmp_path / "one"), str(tmp_path / "two")
    worker = Worker(world, WorkerConfig(lease_ms=1500, heartbeat_ms=200, drain_timeout_s=5))
    async with running_worker(worker):
        run = await start(rw.two_blocks, first, second)
        created = await _dump(world, run.run_id)  # run_created alone, no lease yet
        await eventually(lambda: Path(f"{first}.started").exists(), 20, what="the first step")
        _touch(f"{first}.go")
        await eventually(lambda: Path(f"{second}.started").exists(), 20, what="the second step")
        await world.redis.delete(*world.keys.run_keys(run.run_id))  # as the replica had them
        await _restore(world, created)
        run_key = world.keys.run(run.run_id)
        await world.redis.hset(
            run_key, mapping={"lease_owner": worker.token, "lease_until": "9999999999999"}
        )
        _touch(f"{second}.go")
        assert await run.result(timeout=30) == ["one", "two"]
        types = [e.__struct_config__.tag for e in await run.events()]
        assert types.count("run_completed") == 1 and types.count("run_started") == 1


async def test_a_run_held_for_a_timer_whose_log_went_back_is_replayed(
    world: RedisWorld, tmp_path: Path
) -> None:
    """The log goes back to its run_created alone (the worker's lease kept) while the worker
    holds the run for a sleep due in under a second: the worker sees the stored log below what
    it has seen, replays the run from it (its step runs again) instead of committing the sleep's
    end against a log that no longer has it, and the run completes once."""
    marker = str(tmp_path / "count")
    worker = Worker(world, WorkerConfig(lease_ms=1500, heartbeat_ms=200, drain_timeout_s=5))
    async with running_worker(worker):
        run = await start(rw.step_then_short_sleep, marker)
        created = await _dump(world, run.run_id)

        async def sleeping() -> bool:
            return any(e.__struct_config__.tag == "wait_created" for e in await run.events())

        await eventually(sleeping, 20, what="the sleep")
        await world.redis.delete(*world.keys.run_keys(run.run_id))
        await _restore(world, created)
        await world.redis.hset(
            world.keys.run(run.run_id),
            mapping={"lease_owner": worker.token, "lease_until": "9999999999999"},
        )
        assert await run.result(timeout=20) == 2  # the step's committed result was lost
        types = [e.__struct_config__.tag for e in await run.events()]
        assert types.count("run_completed") == 1 and types.count("step_completed") == 1
