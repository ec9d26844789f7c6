"""End-to-end: real worker processes, real Redis, the client API."""

from __future__ import annotations

from worker import start
from world_redis import RedisWorld


async def test_add_ten(world: RedisWorld, start_worker) -> None:
    """addTen: three sequential steps turn 123 into 133; the log shows each step once."""
    start_worker("tests.e2e.workflows")
    run = await start("add_ten", 123)
    assert await run.result(timeout=30) == 133
    assert await run.status() == "completed"
    info = await run.info()
    assert info.input == "[123]" and info.output == "133"
    types = [e.__struct_config__.tag for e in await run.events()]
    assert types[:2] == ["run_created", "run_started"]
    assert types.count("step_completed") == 3 and types[-1] == "run_completed"
