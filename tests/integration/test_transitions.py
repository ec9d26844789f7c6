"""The transition rules of DESIGN.md 4, enforced by commit.lua on a real Redis (no mocks).

Every refused event is checked to have written nothing: a snapshot of every key of the test's
prefix (hash contents, stream entries and lengths, sorted sets, TTL presence) is equal before and
after the refused commit.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from tests.conftest import RedisServer
from worker import get_run
from worker._world import Commit
from world_redis import RedisWorld

from .helpers import commit1, ev, new_id, new_run_id, run_with_steps, snapshot, statuses

TERMINAL_EVENTS = {
    "completed": [ev("run_completed", output="42")],
    "failed": [ev("run_failed", error='"boom"')],
    "cancelled": [ev("run_cancelled", reason="by test")],
}


async def test_run_started_moves_pending_to_running_once(world: RedisWorld) -> None:
    """run_started turns pending into running and sets started_at; a second one is "exists" and writes nothing."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[1]")
    info = await world.get_run(run_id)
    assert info is not None and info.status == "pending" and info.started_at is None

    res = await commit1(world, run_id, ev("run_started"))
    assert (res.code, res.seq, statuses(res)) == ("ok", 2, [("ok", 0)])
    info = await world.get_run(run_id)
    assert info is not None and info.status == "running" and info.seq == 2
    assert info.started_at == res.now_ms
    r, k = world.redis, world.keys
    assert await r.zscore(k.idx_status(0, "pending"), run_id) is None
    assert await r.zscore(k.idx_status(0, "running"), run_id) == info.created_at

    before = await snapshot(world)
    again = await commit1(world, run_id, ev("run_started"), wake="again")
    assert (again.code, again.seq, statuses(again), again.appended) == (
        "ok",
        2,
        [("exists", 0)],
        [],
    )
    assert await snapshot(world) == before


@pytest.mark.parametrize("terminal", ["completed", "failed", "cancelled"])
async def test_terminal_run_refuses_new_work_and_second_terminal(
    world: RedisWorld, terminal: str
) -> None:
    """A terminal run answers "terminal" to run_started/completed/failed, step_created, wait_created (and run_cancelled unless cancelled), writing nothing."""
    run_id = await run_with_steps(world)
    res = await commit1(world, run_id, *TERMINAL_EVENTS[terminal])
    assert (res.code, statuses(res)) == ("ok", [("ok", 0)])
    info = await world.get_run(run_id)
    assert info is not None and info.status == terminal

    refused = [
        ev("run_started"),
        ev("run_completed", output="1"),
        ev("run_failed", error='"again"'),
        ev("step_created", new_id("step"), name="add", input="[1]"),
        ev("wait_created", new_id("wait"), delay_ms=0),
    ]
    if terminal != "cancelled":
        refused.append(ev("run_cancelled"))
    for event in refused:
        before = await snapshot(world)
        res = await commit1(world, run_id, event, wake="should_not_enqueue")
        assert (res.code, res.seq, statuses(res)) == ("rejected", 3, [("terminal", 0)]), event.type
        assert res.appended == []
        assert await snapshot(world) == before, f"{event.type} on a {terminal} run wrote something"
    info = await world.get_run(run_id)
    assert info is not None and info.status == terminal and info.seq == 3


async def test_run_cancelled_on_cancelled_run_is_idempotent(world: RedisWorld) -> None:
    """run_cancelled on a cancelled run is "exists" (code ok, no second event, nothing written); Run.cancel() twice raises nothing."""
    run_id = await run_with_steps(world)
    handle = get_run(run_id, world=world)
    await handle.cancel()
    assert await handle.status() == "cancelled"

    before = await snapshot(world)
    res = await commit1(world, run_id, ev("run_cancelled"), wake="cancelled")
    assert (res.code, res.seq, statuses(res), res.appended) == ("ok", 3, [("exists", 0)], [])
    await handle.cancel()  # the client API: a no-op, no error
    assert await snapshot(world) == before
    types = [e.__struct_config__.tag for e in await world.read_events(run_id)]
    assert types == ["run_created", "run_started", "run_cancelled"]


async def test_run_cancelled_on_completed_run_is_terminal(world: RedisWorld) -> None:
    """run_cancelled on a completed run is refused ("terminal") and writes nothing."""
    run_id = await run_with_steps(world)
    assert (await commit1(world, run_id, ev("run_completed", output="1"))).code == "ok"
    before = await snapshot(world)
    res = await commit1(world, run_id, ev("run_cancelled"), wake="cancelled")
    assert (res.code, statuses(res)) == ("rejected", [("terminal", 0)])
    assert await snapshot(world) == before


async def test_step_started_on_unknown_step_is_not_found(world: RedisWorld) -> None:
    """step_started (and step_completed) for a step that was never created is "not_found"; nothing written."""
    run_id = await run_with_steps(world, new_id("step"))
    for etype in ("step_started", "step_completed", "step_failed", "step_retrying"):
        before = await snapshot(world)
        res = await commit1(world, run_id, ev(etype, new_id("step")), wake="x")
        assert (res.code, res.seq, statuses(res)) == ("rejected", 3, [("not_found", 0)]), etype
        assert await snapshot(world) == before


async def test_duplicate_step_created_is_exists_and_batch_continues(world: RedisWorld) -> None:
    """A redelivered step_created (same corr) answers "exists" without writing, and the batch goes on."""
    step = new_id("step")
    run_id = await run_with_steps(world, step)  # seq 3: created, started, step_created
    res = await commit1(
        world, run_id, ev("step_created", step, name="other", input="[9]"), ev("step_started", step)
    )
    assert (res.code, res.seq, statuses(res)) == ("ok", 4, [("exists", 0), ("ok", 1)])
    assert [(e.seq, e.__struct_config__.tag) for e in res.appended] == [(4, "step_started")]
    types = [e.__struct_config__.tag for e in await world.read_events(run_id)]
    assert types == ["run_created", "run_started", "step_created", "step_started"]
    (info,) = await world.list_steps(run_id)
    assert (info.name, info.input, info.status, info.attempt) == ("add", "[1, 2]", "running", 1)


async def test_refused_event_skips_the_rest_of_its_batch(world: RedisWorld) -> None:
    """In one commit, events before a refused one are appended, the refused one and later ones are not."""
    run_id = await run_with_steps(world)
    step, ghost, later = new_id("step"), new_id("step"), new_id("step")
    res = await commit1(
        world,
        run_id,
        ev("step_created", step, name="a"),
        ev("step_started", ghost),
        ev("step_created", later, name="b"),
    )
    assert (res.code, res.seq) == ("rejected", 3)
    assert statuses(res) == [("ok", 0), ("not_found", 0)]
    types = [e.__struct_config__.tag for e in await world.read_events(run_id)]
    assert types == ["run_created", "run_started", "step_created"]
    assert [s.step_id for s in await world.list_steps(run_id)] == [step]


async def test_terminal_step_accepts_no_more_step_events(world: RedisWorld) -> None:
    """A completed (or failed) step answers "terminal" to every further step event; nothing written."""
    done, failed = new_id("step"), new_id("step")
    run_id = await run_with_steps(world, done, failed)
    res = await commit1(
        world,
        run_id,
        ev("step_started", done),
        ev("step_completed", done, attempt=1, result="3"),
        ev("step_started", failed),
        ev("step_failed", failed, attempt=1, error='"x"'),
    )
    assert (res.code, statuses(res)) == ("ok", [("ok", 1), ("ok", 0), ("ok", 1), ("ok", 0)])
    for step in (done, failed):
        for event in (
            ev("step_completed", step, attempt=1, result="4"),
            ev("step_started", step),
            ev("step_failed", step, attempt=1, error='"y"'),
            ev("step_retrying", step, attempt=1, error='"y"', retry_after=0),
        ):
            before = await snapshot(world)
            res = await commit1(world, run_id, event, wake="x")
            assert (res.code, statuses(res)) == ("rejected", [("terminal", 0)]), event.type
            assert await snapshot(world) == before
    steps = {s.step_id: s for s in await world.list_steps(run_id)}
    assert (steps[done].status, steps[done].output) == ("completed", "3")
    assert (steps[failed].status, steps[failed].error) == ("failed", '"x"')


async def test_step_started_before_retry_after_is_too_early(world: RedisWorld) -> None:
    """After step_retrying with retry_after = now + 10 s, step_started is "too_early" (extra = retry_after)."""
    step = new_id("step")
    run_id = await run_with_steps(world, step)
    started = await commit1(world, run_id, ev("step_started", step))
    retry_after = started.now_ms + 10_000
    res = await commit1(
        world,
        run_id,
        ev("step_retrying", step, attempt=1, error='"flaky"', retry_after=retry_after),
    )
    assert (res.code, statuses(res)) == ("ok", [("ok", retry_after)])
    assert await world.redis.zscore(world.keys.timers(0), f"{run_id}|{step}") == retry_after
    (info,) = await world.list_steps(run_id)
    assert (info.status, info.retry_after, info.attempt) == ("pending", retry_after, 1)

    before = await snapshot(world)
    res = await commit1(world, run_id, ev("step_started", step), wake="x")
    assert (res.code, statuses(res)) == ("rejected", [("too_early", retry_after)])
    assert await snapshot(world) == before


async def test_step_completed_with_wrong_attempt_is_stale(world: RedisWorld) -> None:
    """step_completed carrying an attempt other than the step's current one is "stale"; nothing written."""
    step = new_id("step")
    run_id = await run_with_steps(world, step)
    assert statuses(await commit1(world, run_id, ev("step_started", step))) == [("ok", 1)]
    assert statuses(await commit1(world, run_id, ev("step_started", step))) == [("ok", 2)]
    for wrong in (1, 3):
        before = await snapshot(world)
        res = await commit1(world, run_id, ev("step_completed", step, attempt=wrong, result="1"))
        assert (res.code, statuses(res)) == ("rejected", [("stale", 0)]), wrong
        assert await snapshot(world) == before
    res = await commit1(world, run_id, ev("step_completed", step, attempt=2, result="1"))
    assert (res.code, statuses(res)) == ("ok", [("ok", 0)])


async def test_step_attempts_count_up_and_first_started_at_is_kept(world: RedisWorld) -> None:
    """step_started increments attempt (extra = attempt) and started_at stays the first attempt's time."""
    step = new_id("step")
    run_id = await run_with_steps(world, step)
    first = await commit1(world, run_id, ev("step_started", step))
    assert statuses(first) == [("ok", 1)]
    assert first.appended[0].attempt == 1  # type: ignore[attr-defined]
    await asyncio.sleep(0.01)
    retry = await commit1(
        world, run_id, ev("step_retrying", step, attempt=1, error='"e"', retry_after=0)
    )
    assert retry.code == "ok"
    await asyncio.sleep(0.01)
    second = await commit1(world, run_id, ev("step_started", step))
    assert statuses(second) == [("ok", 2)] and second.now_ms > first.now_ms
    (info,) = await world.list_steps(run_id)
    assert (info.status, info.attempt, info.started_at) == ("running", 2, first.now_ms)
    log = await world.read_events(run_id)
    assert [
        getattr(e, "attempt", None) for e in log if e.__struct_config__.tag == "step_started"
    ] == [
        1,
        2,
    ]


async def test_terminal_run_lets_running_step_finish_but_not_pending_start(
    world: RedisWorld,
) -> None:
    """On a cancelled run a step already running may still complete; a pending one may not start."""
    running, pending = new_id("step"), new_id("step")
    run_id = await run_with_steps(world, running, pending)
    assert (await commit1(world, run_id, ev("step_started", running))).code == "ok"
    assert (await commit1(world, run_id, ev("run_cancelled"))).code == "ok"

    before = await snapshot(world)
    res = await commit1(world, run_id, ev("step_started", pending), wake="x")
    assert (res.code, statuses(res)) == ("rejected", [("terminal", 0)])
    assert await snapshot(world) == before

    res = await commit1(world, run_id, ev("step_completed", running, attempt=1, result="7"))
    assert (res.code, res.seq, statuses(res)) == ("ok", 7, [("ok", 0)])
    steps = {s.step_id: s for s in await world.list_steps(run_id)}
    assert (steps[running].status, steps[running].output) == ("completed", "7")
    assert steps[pending].status == "pending"
    info = await world.get_run(run_id)
    assert info is not None and info.status == "cancelled"


async def test_expected_seq_mismatch_is_conflict(world: RedisWorld) -> None:
    """A commit fenced on a seq other than the run's answers "conflict" and writes nothing."""
    run_id = await run_with_steps(world)  # seq 2
    for stale in (1, 3):
        before = await snapshot(world)
        res = await commit1(
            world,
            run_id,
            ev("step_created", new_id("step"), name="a"),
            expected_seq=stale,
            wake="x",
        )
        assert (res.code, res.seq, res.results, res.appended) == ("conflict", 2, [], [])
        assert await snapshot(world) == before
    res = await commit1(world, run_id, ev("step_created", new_id("step"), name="a"), expected_seq=2)
    assert (res.code, res.seq) == ("ok", 3)


async def test_commit_with_a_lease_not_held_is_refused(world: RedisWorld) -> None:
    """A commit with a lease token that does not hold the run's lease answers "lease", writes nothing."""
    run_id = await run_with_steps(world)
    before = await snapshot(world)
    res = await commit1(world, run_id, ev("run_completed", output="1"), token="w9#nobody")
    assert (res.code, res.results) == ("lease", [])
    assert await snapshot(world) == before  # nobody holds the lease: still refused

    assert (await world.acquire(run_id, "w1#a", 10_000)).code == "ok"
    before = await snapshot(world)
    res = await commit1(world, run_id, ev("run_completed", output="1"), token="w2#b", wake="x")
    assert (res.code, res.seq, res.results) == ("lease", 2, [])
    assert await snapshot(world) == before

    res = await commit1(world, run_id, ev("run_completed", output="1"), token="w1#a")
    assert (res.code, res.seq, statuses(res)) == ("ok", 3, [("ok", 0)])


async def test_commit_to_missing_run_is_no_run(world: RedisWorld) -> None:
    """A commit for a run that does not exist answers "no_run" and creates no key."""
    before = await snapshot(world)
    res = await commit1(world, new_run_id(), ev("run_started"), ev("run_completed"), wake="x")
    assert (res.code, res.seq, res.results, res.appended) == ("no_run", 0, [], [])
    assert await snapshot(world) == before


async def test_runs_of_one_batch_are_judged_separately(world: RedisWorld) -> None:
    """In a multi-run commit, one run's refusal (conflict, no_run) does not stop the others."""
    a = await run_with_steps(world)
    b = await run_with_steps(world)
    missing = new_run_id()
    ra, rm, rb = await world.commit(
        [
            Commit(run_id=a, events=[ev("run_completed", output="1")], expected_seq=1),
            Commit(run_id=missing, events=[ev("run_started")]),
            Commit(run_id=b, events=[ev("run_completed", output="2")], expected_seq=2),
        ]
    )
    assert (ra.code, rm.code, rb.code) == ("conflict", "no_run", "ok")
    info_a, info_b = await world.get_run(a), await world.get_run(b)
    assert info_a is not None and info_b is not None
    assert (info_a.status, info_b.status, info_b.output) == ("running", "completed", "2")


async def test_wait_timer_is_armed_too_early_then_completes_once(world: RedisWorld) -> None:
    """wait_created arms a timer; wait_completed is "too_early" before resume_at, ok after, then "exists"."""
    late, due = new_id("wait"), new_id("wait")
    run_id = await run_with_steps(world)
    res = await commit1(world, run_id, ev("wait_created", late, delay_ms=60_000))
    resume_at = res.now_ms + 60_000
    assert (res.code, statuses(res)) == ("ok", [("ok", resume_at)])
    assert res.appended[0].resume_at == resume_at  # type: ignore[attr-defined]
    timers = world.keys.timers(0)
    assert await world.redis.zrange(timers, 0, -1, withscores=True) == [
        (f"{run_id}|{late}", float(resume_at))
    ]
    (entry,) = await world.redis.xrange(world.keys.events(run_id), "3-0", "3-0")
    assert entry[1]["resume_at"] == str(resume_at) and entry[1]["delay_ms"] == "60000"

    before = await snapshot(world)
    res = await commit1(world, run_id, ev("wait_completed", late), wake="x")
    assert (res.code, statuses(res)) == ("rejected", [("too_early", resume_at)])
    assert await snapshot(world) == before

    res = await commit1(world, run_id, ev("wait_created", due, delay_ms=0))
    assert statuses(res) == [("ok", res.now_ms)]
    res = await commit1(world, run_id, ev("wait_completed", due))
    assert (res.code, res.seq, statuses(res)) == ("ok", 5, [("ok", 0)])
    ent = await world.redis.hgetall(world.keys.entities(run_id))
    assert (ent[due].split("|")[0], ent[late].split("|")[0]) == ("completed", "waiting")

    before = await snapshot(world)
    res = await commit1(world, run_id, ev("wait_completed", due), wake="x")
    assert (res.code, res.seq, statuses(res)) == ("ok", 5, [("exists", 0)])
    assert await snapshot(world) == before

    res = await commit1(world, run_id, ev("wait_completed", new_id("wait")))
    assert (res.code, statuses(res)) == ("rejected", [("not_found", 0)])

    before = await snapshot(world)  # a redelivered wait_created is harmless too
    res = await commit1(world, run_id, ev("wait_created", late, delay_ms=5), wake="x")
    assert (res.code, statuses(res)) == ("ok", [("exists", 0)])
    assert await snapshot(world) == before


async def test_event_stream_ids_are_seq_and_fields_are_text(
    world: RedisWorld, redis_server: RedisServer
) -> None:
    """The log's entry ids are <seq>-0 contiguous from 1 and are the events' ids (no second id is
    stored); fields are text: type, ts, corr, JSON payloads."""
    step = new_id("step")
    run_id = await run_with_steps(world, step)
    await commit1(world, run_id, ev("step_started", step))
    await commit1(world, run_id, ev("step_completed", step, attempt=1, result='{"sum": 3}'))
    await commit1(world, run_id, ev("run_completed", output='{"sum": 3}'))

    rows = await world.redis.xrange(world.keys.events(run_id), "-", "+")
    assert [eid for eid, _ in rows] == [f"{n}-0" for n in range(1, 7)]
    types = [f["type"] for _, f in rows]
    assert types == [
        "run_created",
        "run_started",
        "step_created",
        "step_started",
        "step_completed",
        "run_completed",
    ]
    assert all("id" not in f for _, f in rows)
    assert [e.id for e in await world.read_events(run_id)] == [f"{n}-0" for n in range(1, 7)]
    assert all(int(f["ts"]) > 1_600_000_000_000 for _, f in rows)
    assert [f.get("corr") for _, f in rows] == [None, None, step, step, step, None]
    fields = dict(rows[0][1])
    assert (fields["workflow"], json.loads(fields["input"])) == ("wf_test", [1])
    assert json.loads(rows[2][1]["input"]) == [1, 2] and rows[2][1]["name"] == "add"
    assert rows[3][1]["attempt"] == "1"
    assert json.loads(rows[4][1]["result"]) == {"sum": 3}
    assert json.loads(rows[5][1]["output"]) == {"sum": 3}
    # the raw bytes are UTF-8 text, not pickles: read them with a client that does not decode
    raw_client = aioredis.Redis.from_url(redis_server.url, decode_responses=False)
    try:
        raw = await raw_client.xrange(world.keys.events(run_id).encode(), b"-", b"+")
    finally:
        await raw_client.aclose()
    for _, entry in raw:
        for name, value in entry.items():
            name.decode("utf-8"), value.decode("utf-8")
    assert raw[5][1][b"type"] == b"run_completed" and raw[5][1][b"output"] == b'{"sum": 3}'
    assert [e.seq for e in await world.read_events(run_id)] == list(range(1, 7))
    assert [e.seq for e in await world.read_events(run_id, after_seq=4)] == [5, 6]


async def test_terminal_run_gets_ttl_and_moves_between_status_indexes(
    redis_server: RedisServer, prefix: str
) -> None:
    """Finishing a run sets a TTL (retention) on its hash, log and entities and moves it pending → running → completed."""
    w = RedisWorld.from_url(redis_server.url, prefix=prefix, retention_s=100)
    try:
        k, r = w.keys, w.redis
        step = new_id("step")
        run_id = new_run_id()
        assert await w.create_run(run_id, "wf_ttl", "[]")

        async def where() -> list[str]:
            return [
                s
                for s in ("pending", "running", "completed", "failed", "cancelled")
                if await r.zscore(k.idx_status(0, s), run_id) is not None
            ]

        assert await where() == ["pending"]
        await commit1(w, run_id, ev("run_started"), ev("step_created", step, name="a"))
        assert await where() == ["running"]
        for key in k.run_keys(run_id)[:3]:  # the hooks key exists only while hooks live
            assert await r.ttl(key) == -1, key
        assert await r.zscore(k.idx_done(0), run_id) is None

        res = await commit1(w, run_id, ev("run_completed", output="1"))
        assert res.code == "ok"
        assert await where() == ["completed"]
        created = (await w.get_run(run_id)).created_at  # type: ignore[union-attr]
        assert await r.zscore(k.idx_status(0, "completed"), run_id) == created
        assert await r.zscore(k.idx_done(0), run_id) == res.now_ms
        assert not await r.exists(k.idx_all(0))  # the status indexes list every run
        for key in k.run_keys(run_id)[:3]:  # the hooks key exists only while hooks live
            assert 1 <= await r.ttl(key) <= 100, key
    finally:
        await w.close()


async def test_create_run_twice_changes_nothing(world: RedisWorld) -> None:
    """create_run with an existing id returns False and writes nothing (no second wake-up, same log)."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_a", "[1]") is True
    before = await snapshot(world)
    assert await world.create_run(run_id, "wf_b", "[2]") is False
    assert await snapshot(world) == before
    info = await world.get_run(run_id)
    assert info is not None and (info.workflow, info.input) == ("wf_a", "[1]")
    assert await world.redis.xlen(world.keys.ready(0)) == 1


async def test_unknown_event_type_is_invalid(world: RedisWorld) -> None:
    """An event type commit.lua does not know is "invalid" and writes nothing."""
    run_id = await run_with_steps(world)
    before = await snapshot(world)
    res = await commit1(world, run_id, ev("hook_exploded", new_id("hook")), wake="x")
    assert (res.code, statuses(res)) == ("rejected", [("invalid", 0)])
    assert await snapshot(world) == before


async def test_refused_xadd_leaves_no_timer_behind(world: RedisWorld) -> None:
    """When the log already holds the next position (run hash behind its stream), nothing at all is written."""
    run_id = await run_with_steps(world)  # seq 2, stream 1-0 and 2-0
    await world.redis.hset(world.keys.run(run_id), "seq", 1)  # simulate a stale view of the log
    before = await snapshot(world)
    res = await commit1(world, run_id, ev("wait_created", new_id("wait"), delay_ms=0))
    assert res.code == "rejected"
    assert [r.status for r in res.results] == ["corrupt"]
    assert await snapshot(world) == before


async def test_patch_marker_is_recorded_once_and_only_on_a_running_run(world: RedisWorld) -> None:
    """patch_recorded: refused on a pending or ended run and with a malformed flag; a second
    marker of the same change is "exists"; refusals write nothing."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "wf_test", "[]")
    marker = ev("patch_recorded", "use-new", deprecated="false")
    before = await snapshot(world)
    res = await commit1(world, run_id, marker)
    assert (res.code, statuses(res)) == ("rejected", [("invalid", 0)])
    assert await snapshot(world) == before

    await commit1(world, run_id, ev("run_started"))
    for bad in (ev("patch_recorded", ""), ev("patch_recorded", "x", deprecated="yes")):
        before = await snapshot(world)
        res = await commit1(world, run_id, bad)
        assert (res.code, statuses(res)) == ("rejected", [("invalid", 0)])
        assert await snapshot(world) == before

    res = await commit1(world, run_id, marker, ev("patch_recorded", "other", deprecated="true"))
    assert (res.code, statuses(res)) == ("ok", [("ok", 0), ("ok", 0)])
    (first, second) = res.appended
    assert (first.corr, getattr(first, "deprecated", None)) == ("use-new", False)
    assert (second.corr, getattr(second, "deprecated", None)) == ("other", True)
    assert await world.redis.hget(world.keys.entities(run_id), "patch|use-new") == str(first.seq)
    events = await get_run(run_id, world=world).events()
    assert events[-2:] == res.appended

    before = await snapshot(world)
    again = await commit1(world, run_id, marker)
    assert (again.code, statuses(again), again.appended) == ("ok", [("exists", 0)], [])
    assert await snapshot(world) == before

    await commit1(world, run_id, ev("run_completed", output="1"))
    res = await commit1(world, run_id, ev("patch_recorded", "late"))
    assert (res.code, statuses(res)) == ("rejected", [("terminal", 0)])


async def test_one_commit_creates_and_starts_ten_thousand_steps(world: RedisWorld) -> None:
    """A fan-out commits the creation and start of every step of a gather in ONE commit: 10,000
    steps (20,000 events) are appended and recorded, and all of them complete in a second one."""
    steps = [new_id("step") for _ in range(10_000)]
    run_id = await run_with_steps(world, *steps)
    started = await commit1(world, run_id, *(ev("step_started", s) for s in steps))
    assert started.code == "ok" and len(started.appended) == 10_000
    done = await commit1(
        world, run_id, *(ev("step_completed", s, attempt=1, result="3") for s in steps)
    )
    assert done.code == "ok" and len(done.appended) == 10_000
    states = await world.redis.hgetall(world.keys.entities(run_id))
    assert {v.split("|")[0] for k, v in states.items() if "|" not in k} == {"completed"}
    assert len([k for k in states if "|" not in k]) == 10_000
