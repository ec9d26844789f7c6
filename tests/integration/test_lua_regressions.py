"""Rules of commit.lua that the property test of tests/integration/test_lua_properties.py found
missing, each pinned on a real Redis."""

from __future__ import annotations

import pytest

from worker._events import NewEvent
from world_redis import RedisWorld

from .helpers import commit1, ev, run_with_steps, snapshot, statuses


@pytest.mark.parametrize(
    "event",
    [
        ev("step_created", "", name="add", input="[1]"),
        ev("wait_created", "", delay_ms=0),
        ev("hook_created", "", token="tok_regression"),
    ],
    ids=lambda e: e.type,
)
async def test_creation_without_correlation_id_is_invalid(
    world: RedisWorld, event: NewEvent
) -> None:
    """A step, wait or hook created without correlation id is refused as invalid and writes nothing (twice it used to be appended twice)."""
    run_id = await run_with_steps(world)
    for _ in range(2):
        before = await snapshot(world)
        res = await commit1(world, run_id, event, wake="should_not_enqueue")
        assert (res.code, res.seq, statuses(res)) == ("rejected", 2, [("invalid", 0)])
        assert await snapshot(world) == before


@pytest.mark.parametrize(
    "event",
    [ev("step_started", "step_a"), ev("step_retrying", "step_a", attempt="1", error="{}")],
    ids=lambda e: e.type,
)
async def test_no_new_attempt_of_a_running_step_once_its_run_ended(
    world: RedisWorld, event: NewEvent
) -> None:
    """A running step of a cancelled run may still record its result, but gets no new attempt:
    step_started and step_retrying are refused as terminal (they used to start a second attempt
    or arm a retry timer for a run that had ended)."""
    run_id = await run_with_steps(world, "step_a")
    assert (await commit1(world, run_id, ev("step_started", "step_a"))).code == "ok"
    assert (await commit1(world, run_id, ev("run_cancelled"))).code == "ok"
    before = await snapshot(world)
    res = await commit1(world, run_id, event)
    assert (res.code, statuses(res)) == ("rejected", [("terminal", 0)])
    assert await snapshot(world) == before
    done = await commit1(world, run_id, ev("step_completed", "step_a", attempt="1", result="3"))
    assert (done.code, statuses(done)) == ("ok", [("ok", 0)])


@pytest.mark.parametrize(
    ("given", "kept"), [("1700000000123", True), ("1e3", False), ("12.5", False), ("", False)]
)
async def test_a_given_event_time_is_kept_only_when_it_is_integer_text(
    world: RedisWorld, given: str, kept: bool
) -> None:
    """An event's field ts (the inline path's time) is stored as given when it is all digits;
    anything else gets the server's time, as integer text (times are never written as floating
    point, which a reader could not parse as an int)."""
    run_id = await run_with_steps(world, "step_a")
    assert (await commit1(world, run_id, ev("step_started", "step_a"))).code == "ok"
    done = ev("step_completed", "step_a", attempt="1", result="3", ts=given)
    assert (await commit1(world, run_id, done)).code == "ok"
    rows = await world.redis.xrange(world.keys.run(run_id) + ":ev")
    ts = dict(rows[-1][1])["ts"]
    assert ts.isdigit()
    assert (ts == given) == kept
    assert all(f["ts"].isdigit() for _, f in rows)
