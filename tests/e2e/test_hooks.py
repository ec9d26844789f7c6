"""Hooks end to end: real workers, resumes from the client, from redis-cli, token rules."""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e import hook_workflows as hw
from tests.support import eventually, hook_ready, redis_cli_binary, wf_json
from worker import (
    HookNotFoundError,
    Run,
    SerializationError,
    WorkflowRunFailedError,
    get_hook_by_token,
    resume_hook,
    start,
)
from world_redis import RedisWorld

MODULE = "tests.e2e.hook_workflows"


async def test_hook_workflow_three_resumes(world: RedisWorld, start_worker, worker_env) -> None:  # type: ignore[no-untyped-def]
    """hookWorkflow: three resumes arrive in order with the hook's metadata; unknown tokens are not found."""
    start_worker(MODULE)
    token = "order-42-approval"
    run = await start(hw.hook_workflow, token, "my-custom-data")
    hook = await hook_ready(token)
    assert hook.run_id == run.run_id and hook.metadata == {"customData": "my-custom-data"}
    listed = await wf_json(worker_env, "inspect", "hooks", run.run_id)
    assert [(h["token"], h["hook_id"]) for h in listed] == [(token, hook.hook_id)]  # type: ignore[union-attr]
    await resume_hook(token, {"message": "one"})
    await resume_hook(token, {"message": "two"})
    await resume_hook(token, {"message": "three", "done": True})
    with pytest.raises(HookNotFoundError, match="not found"):
        await get_hook_by_token("invalid")
    result = await run.result(timeout=20)
    assert [r["message"] for r in result] == ["one", "two", "three"]
    assert all(r["customData"] == "my-custom-data" for r in result)
    assert [r.get("done", False) for r in result] == [False, False, True]
    types = [e.__struct_config__.tag for e in await run.events()]
    assert types.count("hook_received") == 3 and types.count("hook_created") == 1
    with pytest.raises(HookNotFoundError):  # the run ended: its hooks are gone
        await get_hook_by_token(token)


async def test_concurrent_token_conflict(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """A second run asking for a live token fails with "already in use"; the first completes."""
    start_worker(MODULE)
    token = "shared-token"
    first = await start(hw.hook_cleanup, token, "first")
    await hook_ready(token)
    second = await start(hw.hook_cleanup, token, "second")
    with pytest.raises(WorkflowRunFailedError) as err:
        await second.result(timeout=20)
    assert "already in use by another workflow" in str(err.value.__cause__)
    assert await second.status() == "failed"
    assert [e.__struct_config__.tag for e in await second.events()].count("hook_conflict") == 1
    await resume_hook(token, {"message": "hello", "customData": "first"})
    result = await first.result(timeout=20)
    assert result == {
        "message": "hello",
        "customData": "first",
        "hookCleanupTestData": "workflow_completed",
    }


async def test_token_reusable_after_completion(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """hookCleanup: once the first run completes, a second run can take the same token."""
    start_worker(MODULE)
    token = "reusable-token"
    first = await start(hw.hook_cleanup, token, "a")
    await hook_ready(token)
    await resume_hook(token, {"message": "m1"})
    await first.result(timeout=20)
    second = await start(hw.hook_cleanup, token, "b")

    async def owned_by_second() -> bool:
        try:
            return (await get_hook_by_token(token)).run_id == second.run_id
        except HookNotFoundError:
            return False

    await eventually(owned_by_second, 20, what="the second run to hold the token")
    await resume_hook(token, {"message": "m2"})
    assert (await second.result(timeout=20))["message"] == "m2"


async def test_token_reusable_after_dispose(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """hookDispose: after the `with` block disposes the hook, another run takes the token while the
    first still sleeps; both complete."""
    start_worker(MODULE)
    token = "dispose-token"
    first = await start(hw.hook_dispose, token, 2.0)
    await hook_ready(token)
    await resume_hook(token, "p1")

    async def freed() -> bool:
        try:
            await get_hook_by_token(token)
        except HookNotFoundError:
            return True
        return False

    await eventually(freed, 20, what="the first hook to be disposed")
    assert await first.status() == "running"
    second = await start(hw.hook_dispose, token, 0.1)
    hook = await hook_ready(token)
    assert hook.run_id == second.run_id
    await resume_hook(token, "p2")
    assert await second.result(timeout=20) == {"received": "p2", "disposed": True}
    assert await first.result(timeout=20) == {"received": "p1", "disposed": True}
    types = [e.__struct_config__.tag for e in await first.events()]
    assert "hook_disposed" in types


async def test_hook_with_pending_sleep(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """hookWithSleep: a pending one-day sleep does not hold back hook deliveries."""
    start_worker(MODULE)
    token = "with-sleep"
    run = await start(hw.hook_with_sleep, token)
    await hook_ready(token)
    for i, kind in enumerate(["a", "b"]):
        await resume_hook(token, {"type": kind, "id": i})
    await resume_hook(token, {"type": "c", "id": 2, "done": True})
    result = await run.result(timeout=20)
    assert result == [
        {"processed": True, "type": "a", "id": 0},
        {"processed": True, "type": "b", "id": 1},
        {"processed": True, "type": "c", "id": 2},
    ]


async def test_world_testing_hooks(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """world-testing hooks: three payloads collected with metadata, the last one `done`."""
    start_worker(MODULE)
    token = "collect-token"
    run = await start(hw.collect_with_hook, token, "custom")
    await hook_ready(token)
    payloads = [{"text": "first payload"}, {"text": "second payload"}]
    payloads.append({"text": "third payload", "done": True})
    for p in payloads:
        await resume_hook(token, p)
    result = await run.result(timeout=20)
    assert result == {
        "collected": [{"data": p, "metadata": {"customData": "custom"}} for p in payloads]
    }


async def test_default_token_is_random_and_stable(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """A default token carries 160 random bits, is the same on replay, and differs between runs."""
    start_worker(MODULE)
    runs = [await start(hw.default_token) for _ in range(2)]

    async def tokens() -> list[str] | None:
        out = []
        for run in runs:
            created = [e for e in await run.events() if e.__struct_config__.tag == "hook_created"]
            if not created:
                return None
            out.append(created[0].token)  # type: ignore[attr-defined]
        return out

    toks = await eventually(tokens, 20, what="both hooks")
    assert isinstance(toks, list) and len(set(toks)) == 2 and all(len(t) == 32 for t in toks)
    for run, tok in zip(runs, toks, strict=True):
        await resume_hook(tok, "x")
        assert await run.result(timeout=20) == {"token": tok, "payload": "x"}


async def test_resume_with_redis_cli(world: RedisWorld, start_worker, redis_server) -> None:  # type: ignore[no-untyped-def]
    """Any service resumes a hook with one XADD (here the redis-cli binary); bad requests are rejected."""
    cli = redis_cli_binary()
    if cli is None:
        pytest.skip("redis-cli is not installed")
    start_worker(MODULE)
    token = "cli-token"
    run = await start(hw.hook_cleanup, token, "cli")
    await hook_ready(token)
    stream = f"{world.keys.prefix}:hooks:resume"

    def xadd(*fields: str) -> None:
        subprocess.run(
            [cli, *redis_server.cli_args(), "XADD", stream, "*", *fields],
            check=True,
            capture_output=True,
        )

    xadd("token", "nope", "payload", "1")
    xadd("token", token, "payload", "{not json")
    xadd("token", token, "payload", '{"message": "from redis-cli"}')
    result = await run.result(timeout=20)
    assert result["message"] == "from redis-cli"
    rejected = await world.redis.xrange(f"{stream}:rejected")
    reasons = sorted(f["reason"] for _, f in rejected)
    assert len(reasons) == 2
    assert "HookNotFoundError" in reasons[0] and "MalformedMessageError" in reasons[1]


async def test_bad_resumes(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """Resuming an unknown or disposed token raises HookNotFoundError; an unserializable payload
    raises SerializationError naming its path; nothing reaches the run."""
    start_worker(MODULE)
    with pytest.raises(HookNotFoundError):
        await resume_hook("never-created", 1)
    token = "bad-resume"
    run: Run = await start(hw.hook_dispose, token, 0.5)
    await hook_ready(token)
    with pytest.raises(SerializationError, match=r'\$\["conn"\]'):
        await resume_hook(token, {"conn": object()})
    await resume_hook(token, "ok")
    await run.result(timeout=20)
    with pytest.raises(HookNotFoundError):
        await resume_hook(token, "late")
    types = [e.__struct_config__.tag for e in await run.events()]
    assert types.count("hook_received") == 1


async def test_a_hook_a_step_and_a_sleep_in_tasks(world: RedisWorld, start_worker) -> None:  # type: ignore[no-untyped-def]
    """asyncio.create_task(hook) and TaskGroup.create_task(step call | sleep()) work in workflow
    code run by a real worker: the payload, the step's value and the sleep all come back."""
    start_worker(MODULE)
    token = "forms-in-tasks"
    run = await start(hw.hook_in_tasks, token)
    await hook_ready(token)
    await resume_hook(token, {"ok": True})
    assert await run.result(timeout=20) == [{"ok": True}, 42, None]
