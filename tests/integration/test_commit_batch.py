"""The batch commit.lua reads (one flat array, see its header) on a real Redis: runs refused or
stopped at a refused event leave the runs after them in the same call intact, every field of an
event reaches its entry as given, and an event's ts is its entry's time, never a field of it."""

from __future__ import annotations

from worker._events import NewEvent
from worker._world import Commit
from world_redis import RedisWorld

from .helpers import ev, new_run_id, run_with_steps, statuses


async def same_partition_runs(world: RedisWorld, n: int) -> list[str]:
    """``n`` started runs of one partition: their commits go in one script call."""
    first = await run_with_steps(world)
    runs = [first]
    p = world.keys.partition(first)
    while len(runs) < n:
        run_id = new_run_id()
        if world.keys.partition(run_id) != p:
            continue
        assert await world.create_run(run_id, "wf_test", "[1]")
        (res,) = await world.commit([Commit(run_id=run_id, events=[ev("run_started")])])
        assert res.code == "ok", res
        runs.append(run_id)
    return runs


async def entries(world: RedisWorld, run_id: str) -> list[dict[str, str]]:
    rows = await world.redis.xrange(world.keys.events(run_id))
    return [dict(fields) for _, fields in rows]


async def test_runs_after_a_refused_run_or_event_commit_as_if_alone(world: RedisWorld) -> None:
    """A run refused whole (conflict, no run) or at one of its events (the later ones skipped)
    in the middle of a call: the runs after it get their own events, and only theirs."""
    a, b, c, d = await same_partition_runs(world, 4)
    missing = new_run_id()
    while world.keys.partition(missing) != world.keys.partition(a):
        missing = new_run_id()
    many = {f"f{i}": f"value {i}" for i in range(7)}  # more fields than a step's
    commits = [
        Commit(run_id=a, events=[ev("step_created", "s1", name="add", input="[1]", **many)]),
        # refused whole: its events (with fields) are skipped, not read as the next run
        Commit(
            run_id=b,
            expected_seq=99,
            events=[ev("step_created", "s1", name="x", input="[]", ts="1700000000000")],
        ),
        Commit(run_id=missing, events=[ev("step_created", "s1", name="x", input="[]")]),
        # refused at its second event: the third is not looked at
        Commit(
            run_id=c,
            events=[
                ev("step_created", "s1", name="add", input="[2]"),
                ev("step_completed", "nope", result="1"),
                ev("step_created", "s2", name="add", input="[3]"),
            ],
        ),
        Commit(
            run_id=d,
            events=[
                ev("step_created", "s1", name="add", input="[4]", ts="1700000000123"),
                ev("step_started", "s1", claim="k1", task="1-0"),
                ev("step_completed", "s1", result='{"v": 4}', attempt="1", ts="1700000000456"),
            ],
        ),
    ]
    got = await world.commit(commits)
    assert [r.code for r in got] == ["ok", "conflict", "no_run", "rejected", "ok"]
    assert statuses(got[0]) == [("ok", 0)]
    assert statuses(got[1]) == statuses(got[2]) == []
    assert statuses(got[3]) == [("ok", 0), ("not_found", 0)]
    assert statuses(got[4]) == [("ok", 0), ("ok", 1), ("ok", 0)]
    assert [r.seq for r in got] == [3, 2, 0, 3, 5]

    (created_a,) = (await entries(world, a))[2:]
    assert created_a == {
        "type": "step_created",
        "ts": str(got[0].now_ms),
        "corr": "s1",
        "name": "add",
        "input": "[1]",
        **many,
    }
    assert len(await entries(world, b)) == 2  # run_created, run_started
    assert [e["type"] for e in await entries(world, c)] == [
        "run_created",
        "run_started",
        "step_created",
    ]
    created, started, completed = (await entries(world, d))[2:]
    assert created == {
        "type": "step_created",
        "ts": "1700000000123",
        "corr": "s1",
        "name": "add",
        "input": "[4]",
    }
    assert started == {
        "type": "step_started",
        "ts": str(got[4].now_ms),
        "corr": "s1",
        "claim": "k1",
        "task": "1-0",
        "attempt": "1",
    }
    assert completed == {
        "type": "step_completed",
        "ts": "1700000000456",
        "corr": "s1",
        "result": '{"v": 4}',
        "attempt": "1",
    }
    # what the commit answered it appended is what the log holds
    assert [e.ts for e in got[4].appended] == [1700000000123, got[4].now_ms, 1700000000456]
    assert got[4].appended == await world.read_events(d, 2)
    ent = await world.redis.hgetall(world.keys.entities(d))
    assert ent["s1"].startswith("completed|1|0|") and "s1|claim" not in ent


async def test_a_ts_that_is_not_digits_is_the_servers_time(world: RedisWorld) -> None:
    """As before the batch was flat: only digits are taken as the event's time."""
    (run_id,) = await same_partition_runs(world, 1)
    (res,) = await world.commit(
        [
            Commit(
                run_id=run_id,
                events=[
                    ev("step_created", "s1", name="add", input="[1]", ts="12ab"),
                    ev("step_created", "s2", name="add", input="[1]", ts=""),
                ],
            )
        ]
    )
    assert res.code == "ok", res
    for entry in (await entries(world, run_id))[2:]:
        assert entry["ts"] == str(res.now_ms) and list(entry).count("ts") == 1


async def test_an_event_without_fields_and_one_with_ts_only(world: RedisWorld) -> None:
    """Zero values after an event's head, and a ts that was its only field."""
    (run_id,) = await same_partition_runs(world, 1)
    (res,) = await world.commit(
        [
            Commit(
                run_id=run_id,
                events=[
                    ev("wait_created", "w1", ts="1700000000001"),
                    ev("step_created", "s1", name="add", input="[1]"),
                    ev("step_started", "s1"),
                ],
            )
        ]
    )
    assert res.code == "ok", res
    wait, created, started = (await entries(world, run_id))[2:]
    assert wait["ts"] == "1700000000001" and wait["corr"] == "w1"
    assert set(wait) == {"type", "ts", "corr", "resume_at"}
    assert created["name"] == "add" and started == {
        "type": "step_started",
        "ts": str(res.now_ms),
        "corr": "s1",
        "attempt": "1",
    }


async def test_field_text_reaches_the_entry_byte_for_byte(world: RedisWorld) -> None:
    """Non-ASCII, quotes, newlines, NUL and long values are copied, never reinterpreted."""
    (run_id,) = await same_partition_runs(world, 1)
    text = 'ünï "cødé"\n\t\\ \x00 ☃ ' + "x" * 70_000
    (res,) = await world.commit(
        [Commit(run_id=run_id, events=[ev("step_created", "s☃", name="näme", input=text)])]
    )
    assert res.code == "ok", res
    (created,) = (await entries(world, run_id))[2:]
    assert (created["corr"], created["name"], created["input"]) == ("s☃", "näme", text)
    assert res.appended == await world.read_events(run_id, 2)


async def test_a_run_with_options_then_a_plain_one(world: RedisWorld) -> None:
    """A run whose commit takes its lease (options follow its head) and one without options:
    each reads its own values."""
    a, b = await same_partition_runs(world, 2)
    got = await world.commit(
        [
            Commit(
                run_id=a,
                token="tok-a",
                acquire=(30_000, ""),
                events=[ev("step_created", "s1", name="add", input="[1]")],
            ),
            Commit(run_id=b, events=[ev("step_created", "s1", name="mul", input="[2]")]),
        ]
    )
    assert [(r.code, statuses(r)) for r in got] == [("ok", [("ok", 0)]), ("ok", [("ok", 0)])]
    assert await world.redis.hget(world.keys.run(a), "lease_owner") == "tok-a"
    assert not await world.redis.hget(world.keys.run(b), "lease_owner")
    assert (await entries(world, a))[2]["name"] == "add"
    assert (await entries(world, b))[2]["name"] == "mul"


async def test_a_run_without_events_between_two_others(world: RedisWorld) -> None:
    """No events: the run's count is 0 and the next run's head follows at once."""
    a, b, c = await same_partition_runs(world, 3)
    got = await world.commit(
        [
            Commit(run_id=a, events=[ev("step_created", "s1", name="add", input="[1]")]),
            Commit(run_id=b, events=[], wake="nothing"),
            Commit(run_id=c, events=[ev("step_created", "s1", name="mul", input="[3]")]),
        ]
    )
    assert [(r.code, r.seq, statuses(r)) for r in got] == [
        ("ok", 3, [("ok", 0)]),
        ("ok", 2, []),
        ("ok", 3, [("ok", 0)]),
    ]
    assert len(await entries(world, b)) == 2
    assert (await entries(world, c))[2]["name"] == "mul"


async def test_a_batch_reserves_the_tokens_its_hooks_ask_for_and_only_then(
    world: RedisWorld,
) -> None:
    """A hook_created anywhere in a batch has its token reserved before the script runs (the
    second asker of a token in the same batch gets a hook_conflict); a field that merely holds
    the word "hook_created" (a step of that name) reserves nothing and commits as any other."""
    a, b, c = await same_partition_runs(world, 3)
    token = f"tok-{new_run_id()}"
    commits = [
        Commit(run_id=a, events=[ev("step_created", "s1", name="hook_created", input="[]")]),
        Commit(run_id=b, events=[ev("hook_created", "h1", token=token, metadata="null")]),
        Commit(run_id=c, events=[ev("hook_created", "h1", token=token, metadata="null")]),
    ]
    ra, rb, rc = await world.commit(commits)
    assert (ra.code, [r.status for r in ra.results]) == ("ok", ["ok"])
    assert (await entries(world, a))[-1]["name"] == "hook_created"
    assert rb.code == "ok" and [e.__struct_config__.tag for e in rb.appended] == ["hook_created"]
    assert rc.code == "ok" and [e.__struct_config__.tag for e in rc.appended] == ["hook_conflict"]
    assert await world.find_hook(token) == (b, "h1", "null")
    # nothing reserved for the step named after the event
    assert await world.redis.get(world.keys.hook_token("hook_created")) is None


async def test_the_inline_trio_and_its_near_misses_write_the_same_entries(
    world: RedisWorld,
) -> None:
    """A step's result (with its time), the next step's creation and its start: the shape the
    inline path commits, flattened on its own fast path. The same events with an extra field,
    without a time or with the fields in another order take the general path; every run gets
    exactly the entries the events say, each batch value where it belongs."""
    runs = await same_partition_runs(world, 5)
    for run_id in runs:
        (res,) = await world.commit(
            [
                Commit(
                    run_id=run_id,
                    events=[
                        ev("step_created", "s1", name="add", input="[1]"),
                        ev("step_started", "s1"),
                    ],
                )
            ]
        )
        assert res.code == "ok", res

    def trio(head: dict[str, str]) -> list[NewEvent]:
        return [
            NewEvent("step_completed", "s1", head),
            NewEvent("step_created", "s2", {"name": "mul", "input": '{"args":[2]}'}),
            NewEvent("step_started", "s2"),
        ]

    heads = [
        {"result": "3", "attempt": "1", "ts": "1700000000001"},  # the inline path's own
        {"result": "4", "attempt": "1", "ts": "1700000000002", "extra": "x"},
        {"result": "5", "attempt": "1"},  # no time: the server's
        {"ts": "1700000000004", "attempt": "1", "result": "6"},  # another order
        {"result": "7", "ts": "1700000000005", "attempt": "1"},
    ]
    flat, hooked = world._commit_batch(
        [
            Commit(run_id=r, events=trio(h), expected_seq=4)
            for r, h in zip(runs, heads, strict=True)
        ],
        None,
    )
    assert flat[:26] == [
        runs[0], "", 4, "", 0, 3,
        "step_completed", "s1", "1700000000001", 4, "result", "3", "attempt", "1",
        "step_created", "s2", "", 4, "name", "mul", "input", '{"args":[2]}',
        "step_started", "s2", "", 0,
    ]  # fmt: skip
    assert not hooked
    got = await world.commit(
        [Commit(run_id=r, events=trio(h), expected_seq=4) for r, h in zip(runs, heads, strict=True)]
    )
    assert [(r.code, r.seq, statuses(r)) for r in got] == [
        ("ok", 7, [("ok", 0), ("ok", 0), ("ok", 1)])
    ] * 5
    for run_id, head, res in zip(runs, heads, got, strict=True):
        done, created, started = (await entries(world, run_id))[4:]
        fields = {k: v for k, v in head.items() if k != "ts"}
        assert done == {
            "type": "step_completed",
            "ts": head.get("ts", str(res.now_ms)),
            "corr": "s1",
            **fields,
        }
        assert created == {
            "type": "step_created",
            "ts": str(res.now_ms),
            "corr": "s2",
            "name": "mul",
            "input": '{"args":[2]}',
        }
        assert started == {
            "type": "step_started",
            "ts": str(res.now_ms),
            "corr": "s2",
            "attempt": "1",
        }
