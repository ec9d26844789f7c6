"""Schedules on a real Redis: creation and its refusals, the fire script, pause/resume/delete."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from tests.support import all_keys
from worker import (
    InvalidScheduleError,
    ScheduleExistsError,
    ScheduleNotFoundError,
    SerializationError,
    WorkflowNotRegisteredError,
    create_schedule,
    get_schedule,
    list_schedules,
    workflow,
)
from worker._schedule_firing import fire_one
from worker._schedule_spec import ScheduleTick, schedule_run_id
from worker._schedules import schedule_store
from world_redis import RedisWorld

LOG = structlog.get_logger("test")


@workflow(name="schedule_it_greet")
async def greet(name: str, times: int = 1) -> str:
    return name * times


async def not_a_workflow(name: str) -> str:
    return name


async def schedule_keys(world: RedisWorld) -> list[str]:
    return await all_keys(world, f"{world.keys.prefix}:{{sched}}*")


async def due_now(world: RedisWorld, schedule_id: str) -> tuple[int, int]:
    """(its due ms, a now 1 ms after it): the moment a worker would decide its tick."""
    record = await schedule_store(world).get(schedule_id)
    assert record is not None
    return record.next_due_ms, record.next_due_ms + 1


async def test_create_describe_and_list(world: RedisWorld) -> None:
    """A created schedule is described with its spec and next fire times, and listed."""
    s = await create_schedule("hourly", greet, "ada", times=2, cron="0 * * * *", timezone="UTC")
    d = await s.describe()
    assert (d.workflow, d.cron, d.every_ms, d.overlap, d.catchup) == (
        "schedule_it_greet",
        "0 * * * *",
        None,
        "skip",
        "none",
    )
    assert len(d.next_fire_times) == 5
    assert all(t.minute == 0 and t.second == 0 for t in d.next_fire_times)
    assert d.recent == [] and d.last_run == "" and not d.paused
    assert [x.schedule_id for x in await list_schedules()] == ["hourly"]
    assert (await get_schedule("hourly")).schedule_id == "hourly"


async def test_an_existing_id_is_refused_unless_replaced(world: RedisWorld) -> None:
    """A second create with the id raises ScheduleExistsError; replace=True replaces it."""
    await create_schedule("dup", greet, "a", every="10s")
    with pytest.raises(ScheduleExistsError):
        await create_schedule("dup", greet, "b", every="20s")
    assert (await (await get_schedule("dup")).describe()).every_ms == 10_000
    await create_schedule("dup", greet, "b", every="20s", replace=True)
    assert (await (await get_schedule("dup")).describe()).every_ms == 20_000


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: create_schedule("s", greet, "a", cron="61 * * * *"), InvalidScheduleError),
        (lambda: create_schedule("s", greet, "a", every="0s"), InvalidScheduleError),
        (lambda: create_schedule("s", greet, "a", every="x"), InvalidScheduleError),
        (lambda: create_schedule("s", greet, "a", every="1s", timezone="No/Where"), ValueError),
        (lambda: create_schedule("s", greet, "a", every="1s", overlap="x"), ValueError),
        (lambda: create_schedule("s", greet, "a", every="1s", catchup="x"), ValueError),
        (lambda: create_schedule("bad id", greet, "a", every="1s"), InvalidScheduleError),
        (lambda: create_schedule("s", not_a_workflow, "a", every="1s"), WorkflowNotRegisteredError),
        (lambda: create_schedule("s", greet, every="1s"), SerializationError),
        (lambda: create_schedule("s", greet, "a", "b", "c", every="1s"), SerializationError),
        (lambda: create_schedule("s", greet, 5, every="1s"), SerializationError),
    ],
)
async def test_bad_input_is_refused_with_nothing_stored(
    world: RedisWorld, call: object, error: type[Exception]
) -> None:
    """Each unusable schedule raises its typed error and leaves no schedule key in Redis."""
    with pytest.raises(error):
        await call()  # type: ignore[operator]
    assert await schedule_keys(world) == []


async def test_a_workflow_given_by_name_is_accepted_unchecked(world: RedisWorld) -> None:
    """A name registered only in the workers' code is stored as start() would store it."""
    s = await create_schedule("by-name", "elsewhere:flow", 1, 2, every="5s")
    assert (await s.describe()).workflow == "elsewhere:flow"


async def test_a_due_tick_starts_one_run_and_is_recorded_once(world: RedisWorld) -> None:
    """Deciding a due tick creates the tick's run and moves the schedule; deciding it again
    (the same due time) is stale and creates nothing."""
    await create_schedule("tick", greet, "x", every="10s")
    store = schedule_store(world)
    due, now = await due_now(world, "tick")
    assert await fire_one(world, store, "tick", due, now, LOG) == "ok"
    assert await fire_one(world, store, "tick", due, now, LOG) == "stale"
    d = await (await get_schedule("tick")).describe()
    run_id = schedule_run_id("tick", due)
    assert [(t.tick_ms, t.action, t.run_id) for t in d.recent] == [(due, "fired", run_id)]
    assert d.last_run == run_id
    assert d.next_fire_times[0].timestamp() * 1000 == due + 10_000
    runs, _ = await world.list_runs()
    assert [r.run_id for r in runs] == [run_id]
    assert runs[0].input == '["x"]'


async def test_concurrent_firers_create_one_run(world: RedisWorld, redis_server) -> None:  # type: ignore[no-untyped-def]
    """Two Worlds (as two workers) deciding the same tick at once: one run, one record."""
    await create_schedule("race", greet, "x", every="10s", overlap="allow")
    due, now = await due_now(world, "race")
    other = RedisWorld.from_url(redis_server.url, prefix=world.keys.prefix)
    try:
        codes = await asyncio.gather(
            *(fire_one(w, schedule_store(w), "race", due, now, LOG) for w in (world, other) * 3)
        )
    finally:
        await other.close()
    assert sorted(codes).count("ok") == 1
    assert len((await world.list_runs())[0]) == 1
    assert len((await (await get_schedule("race")).describe()).recent) == 1


async def test_a_firer_that_died_after_creating_the_run_leaves_the_tick_to_the_next(
    world: RedisWorld,
) -> None:
    """The run of a tick exists but the tick was not recorded (its worker died): the next
    decision records it with that same run, and creates no second one."""
    await create_schedule("crash", greet, "x", every="10s")
    due, now = await due_now(world, "crash")
    run_id = schedule_run_id("crash", due)
    assert await world.create_run(run_id, "schedule_it_greet", '["x"]')
    assert await fire_one(world, schedule_store(world), "crash", due, now, LOG) == "ok"
    assert [r.run_id for r in (await world.list_runs())[0]] == [run_id]


async def test_the_fire_script_refuses_a_paused_or_deleted_schedule(world: RedisWorld) -> None:
    """fire on a paused schedule answers "paused", on a deleted one "no_schedule"."""
    await create_schedule("p", greet, "x", every="10s")
    store = schedule_store(world)
    due, _ = await due_now(world, "p")
    tick = ScheduleTick(tick_ms=due, action="fired", run_id=schedule_run_id("p", due))
    await (await get_schedule("p")).pause()
    assert await store.fire("p", due, due + 10_000, tick) == "paused"
    await (await get_schedule("p")).delete()
    assert await store.fire("p", due, due + 10_000, tick) == "no_schedule"


async def test_overlap_skip_records_a_tick_whose_previous_run_is_active(
    world: RedisWorld,
) -> None:
    """With its previous run still pending (no worker here), the next tick is skipped; with
    overlap="allow" it fires."""
    store = schedule_store(world)
    for sid, overlap, second in (("sk", "skip", "skipped"), ("al", "allow", "fired")):
        await create_schedule(sid, greet, "x", every="10s", overlap=overlap)
        due, now = await due_now(world, sid)
        assert await fire_one(world, store, sid, due, now, LOG) == "ok"
        due, now = await due_now(world, sid)
        assert await fire_one(world, store, sid, due, now, LOG) == "ok"
        recent = (await (await get_schedule(sid)).describe()).recent
        assert [t.action for t in recent] == [second, "fired"]


async def test_missed_ticks_follow_catchup(world: RedisWorld) -> None:
    """Decided an hour late: catchup="none" records the ticks missed and starts nothing;
    "one" starts one run in their place."""
    store = schedule_store(world)
    for sid, catchup in (("none", "none"), ("one", "one")):
        await create_schedule(sid, greet, "x", every="60s", catchup=catchup)
        due, _ = await due_now(world, sid)
        assert await fire_one(world, store, sid, due, due + 3_600_000 + 30_000, LOG) == "ok"
    (none,) = (await (await get_schedule("none")).describe()).recent
    (one,) = (await (await get_schedule("one")).describe()).recent
    assert (none.action, none.missed, none.run_id) == ("missed", 61, "")
    assert (one.action, one.missed, one.tick_ms) == ("fired", 60, due + 3_600_000)
    assert [r.run_id for r in (await world.list_runs())[0]] == [one.run_id]


async def test_pause_resume_and_delete(world: RedisWorld) -> None:
    """Paused: out of the due index, no next fire times; resumed: due at a future tick;
    deleted: every key gone, and the handle raises ScheduleNotFoundError."""
    s = await create_schedule("prd", greet, "x", every="10s")
    store = schedule_store(world)
    await s.pause()
    await s.pause()  # idempotent
    d = await s.describe()
    assert d.paused and d.next_fire_times == []
    assert await store.due(2**62, 10) == []
    await s.resume()
    d = await s.describe()
    assert not d.paused
    assert d.next_fire_times[0].timestamp() * 1000 > await world.server_time_ms()
    assert [sid for sid, _ in await store.due(2**62, 10)] == ["prd"]
    await s.delete()
    assert await schedule_keys(world) == []
    with pytest.raises(ScheduleNotFoundError):
        await s.describe()
    with pytest.raises(ScheduleNotFoundError):
        await get_schedule("prd")
    with pytest.raises(ScheduleNotFoundError):
        await s.delete()
