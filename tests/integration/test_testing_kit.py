"""worker.testing: users' tests get an isolated world, an in-process worker and durable time
that skips ahead; the pytest plugin's fixture gives the same."""

from __future__ import annotations

from typing import Any

from tests.integration import kit_workflows as kw
from tests.support import eventually, hook_is_live
from worker import get_world, resume_hook
from worker.testing import workflow_env
from world_redis import RedisWorld

MODULE = "tests.integration.kit_workflows"


async def test_a_thirty_day_sleep_completes_and_the_workflow_clock_moved_thirty_days(
    redis_server: Any,
) -> None:
    """The run sleeps 30 days: the environment skips the time, the run completes, and now()
    inside it advanced by (at least) the 30 days."""
    async with workflow_env(MODULE, redis_url=redis_server.url) as env:
        run = await env.start(kw.month_later)
        days = await run.result(timeout=20)
        assert 30 <= days < 31
        assert env.skipped_ms >= 30 * 86_400_000 - 1000
        types = [e.__struct_config__.tag for e in await run.events()]
        assert types.count("wait_completed") == 1 and types[-1] == "run_completed"


async def test_a_retry_delay_is_skipped_too(redis_server: Any) -> None:
    """A step that asks to be retried in an hour runs its second attempt at once."""
    async with workflow_env(MODULE, redis_url=redis_server.url) as env:
        run = await env.start(kw.retry_in_an_hour)
        assert await run.result(timeout=20) == 2


async def test_a_run_waiting_on_a_hook_waits_for_the_test(redis_server: Any) -> None:
    """No timer, a hook: nothing is skipped until the test resumes the hook; then the sleep
    after it is skipped."""
    async with workflow_env(MODULE, redis_url=redis_server.url) as env:
        run = await env.start(kw.hook_then_sleep, "kit-token")
        await eventually(lambda: hook_is_live("kit-token"), 20, what="the hook is live")
        assert env.skipped_ms == 0 and await run.status() == "running"
        await resume_hook("kit-token", "hello")
        assert await run.result(timeout=20) == "hello"
        assert env.skipped_ms >= 2 * 86_400_000 - 1000


async def test_the_environment_is_the_process_world_and_leaves_no_key(redis_server: Any) -> None:
    """Inside the block the env's world is the process's world; after it, its keys are gone
    and the previous world is back."""
    before = get_world()
    async with workflow_env(MODULE, redis_url=redis_server.url) as env:
        assert get_world() is env.world
        run = await env.start(kw.retry_in_an_hour)
        assert await run.result(timeout=20) == 2
        prefix = env.world.keys.prefix
    assert get_world() is before
    check = RedisWorld.from_url(redis_server.url, prefix=prefix)
    try:
        assert await check.redis.keys(f"{prefix}:*") == []
    finally:
        await check.close()


async def test_the_pytest_plugin_offers_the_fixture(workflow_env: Any, redis_server: Any) -> None:
    """The `workflow_env` fixture of the `workflows` pytest plugin (entry point pytest11)."""
    async with workflow_env(MODULE, redis_url=redis_server.url) as env:
        run = await env.start(kw.month_later)
        assert 30 <= await run.result(timeout=20) < 31


async def test_rate_windows_follow_the_skipped_clock(redis_server: Any) -> None:
    """A step allowed once an hour, called three times: its rate window is counted on the
    workflow clock, so skipping time lets the calls in; the run finishes at once with the clock
    two hours on (the first call goes at once, the next two an hour apart each)."""
    async with workflow_env(MODULE, redis_url=redis_server.url) as env:
        run = await env.start(kw.rate_limited)
        hours = await run.result(timeout=20)
    assert 2 <= hours < 2.1
