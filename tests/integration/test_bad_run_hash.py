"""A run hash with garbage in its fields: readers report the bad fields and go on."""

from __future__ import annotations

import pytest

from worker import SerializationError, get_run
from world_redis import RedisWorld

from .helpers import new_run_id


async def corrupt_run(world: RedisWorld, **fields: str) -> str:
    """A new run whose hash then gets ``fields`` written over with HSET; its id."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "alpha", "[1]")
    await world.redis.hset(world.keys.run(run_id), mapping=fields)
    return run_id


async def test_get_run_reports_bad_fields(world: RedisWorld) -> None:
    """get_run() on garbage integers, status and JSON fields returns the run naming each bad field."""
    run_id = await corrupt_run(
        world,
        created_at="garbage",
        seq="1.5",
        completed_at="x",
        status="exploded",
        input="[1,",
        output="{not json",
        error="nope",
    )
    info = await world.get_run(run_id)
    assert info is not None and info.run_id == run_id and info.workflow == "alpha"
    assert set(info.corrupt_fields) == {
        "created_at",
        "seq",
        "completed_at",
        "status",
        "input",
        "output",
        "error",
    }
    assert info.updated_at is not None and info.updated_at > 0  # the good fields are read
    assert info.output == "{not json"  # a bad text field keeps what was stored


async def test_good_run_has_no_corrupt_fields(world: RedisWorld) -> None:
    """A run written by the engine reads with no corrupt field."""
    run_id = new_run_id()
    assert await world.create_run(run_id, "alpha", '[{"a": 1}]')
    info = await world.get_run(run_id)
    assert info is not None and info.corrupt_fields == () and info.created_at > 0


async def test_list_runs_goes_past_a_bad_run(world: RedisWorld) -> None:
    """list_runs() lists a run with a bad created_at among the good ones instead of raising."""
    good = new_run_id()
    assert await world.create_run(good, "alpha", "[1]")
    bad = await corrupt_run(world, created_at="garbage")
    runs, _ = await world.list_runs()
    by_id = {r.run_id: r for r in runs}
    assert set(by_id) == {good, bad}
    assert by_id[bad].corrupt_fields == ("created_at",) and by_id[good].corrupt_fields == ()


async def test_result_names_the_bad_output(world: RedisWorld) -> None:
    """Run.result() of a completed run whose output is not JSON raises SerializationError naming it."""
    run_id = await corrupt_run(world, status="completed", output="{not json")
    with pytest.raises(SerializationError) as err:
        await get_run(run_id).result(timeout=5)
    assert "output" in str(err.value) and run_id in str(err.value)
