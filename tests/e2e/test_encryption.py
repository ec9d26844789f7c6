"""Payload encryption end to end: real `wf worker` processes with WORKFLOW_ENCRYPTION_KEY."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from typing import Any

import pytest

from tests.e2e import encryption_workflows as ew
from tests.support import WF, RedisServer, hook_ready, wf_json
from worker import (
    PayloadCodec,
    Run,
    WorkflowRunFailedError,
    get_run,
    resume_hook,
    start,
)
from worker._events import HookReceived
from world_redis import RedisWorld

MODULE = "tests.e2e.encryption_workflows"
KEY_A = "ka:" + base64.b64encode(bytes(range(32))).decode()
KEY_B = "kb:" + base64.b64encode(bytes(range(100, 132))).decode()
MARKER = "zebra-marker-4711"


async def raw_dump(redis_server: RedisServer, world: RedisWorld, run_id: str) -> str:
    """Every key of the run as a plain redis client (no World, no key) reads it."""
    client = redis_server.async_client(decode_responses=True)
    try:
        parts: list[Any] = [await client.hgetall(world.keys.run(run_id))]
        parts.append(await client.xrange(world.keys.events(run_id)))
        for name in await client.smembers(world.keys.streams_index(run_id)):
            parts.append(await client.xrange(world.keys.stream(run_id, name)))
        return repr(parts)
    finally:
        await client.aclose()


async def test_encrypted_run_from_a_plaintext_start_request(  # type: ignore[no-untyped-def]
    world: RedisWorld, redis_server: RedisServer, start_worker, worker_env
) -> None:
    """A run started by a plaintext XADD completes through steps, a hook and a stream; Redis
    holds no payload plaintext (names, statuses, types, step names readable) and the client and
    `wf inspect` show decrypted values with the key, envelopes without it."""
    world.codec = PayloadCodec.parse(KEY_A)
    env = {"WORKFLOW_ENCRYPTION_KEY": KEY_A}
    start_worker(MODULE, **env)
    token, run_id = f"tok-{MARKER[:5]}", "wrun_encrypted_order"
    client = redis_server.async_client(decode_responses=True)
    try:
        args = json.dumps([f"{MARKER}-item", token])
        await client.xadd(
            world.keys.start_stream(), {"workflow": "secret_order", "args": args, "run_id": run_id}
        )
    finally:
        await client.aclose()
    run = get_run(run_id)
    hook = await hook_ready(token)
    assert hook.metadata == {"note": f"approve {MARKER}-item"}
    await resume_hook(token, {"ok": f"{MARKER}-approval"})
    expected = {"receipt": f"charged {MARKER}-item", "approval": {"ok": f"{MARKER}-approval"}}
    assert await run.result(timeout=30) == expected
    chunks = await asyncio.wait_for(_collect(run), 20)
    assert chunks == [{"receipt": f"charged {MARKER}-item"}]

    raw = await raw_dump(redis_server, world, run_id)
    assert MARKER not in raw and "$enc:v1:ka:" in raw
    for readable in ("secret_order", "completed", "hook_received", "step_completed", "charge"):
        assert readable in raw

    events = await run.events()
    received = [e for e in events if isinstance(e, HookReceived)]
    assert len(received) == 1 and MARKER in received[0].payload
    steps = await run.steps()
    assert [s.name for s in steps if s.output and MARKER in s.output] == [
        "tests.e2e.encryption_workflows:charge"
    ]
    shown = json.dumps(await wf_json({**worker_env, **env}, "inspect", "events", run_id))
    assert f"{MARKER}-approval" in shown and "$enc:" not in shown
    keyless = {k: v for k, v in worker_env.items() if k != "WORKFLOW_ENCRYPTION_KEY"}
    hidden = json.dumps(await wf_json(keyless, "inspect", "events", run_id))
    assert MARKER not in hidden and "$enc:v1:ka:" in hidden
    wrong = await asyncio.to_thread(
        subprocess.run,
        [WF, "inspect", "events", run_id, "--json"],
        env={**worker_env, "WORKFLOW_ENCRYPTION_KEY": KEY_B},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 1 and "key id 'ka'" in wrong.stderr and MARKER not in wrong.stderr


async def _collect(run: Run) -> list[Any]:
    return [chunk async for chunk in run.readable()]


@pytest.mark.parametrize("worker_key", ["none", "wrong"])
async def test_worker_without_the_key_fails_the_run_and_lives_on(  # type: ignore[no-untyped-def]
    world: RedisWorld, start_worker, worker_key: str
) -> None:
    """A worker without the run's key fails an encrypted run with an error naming the key id
    (and keeps no plaintext); it goes on serving runs it can read."""
    env = {"WORKFLOW_ENCRYPTION_KEY": KEY_B} if worker_key == "wrong" else {}
    start_worker(MODULE, **env)
    world.codec = PayloadCodec.parse(f"{KEY_A},{KEY_B}")  # an operator holding both keys
    run = await start(ew.echo, f"{MARKER}-secret")
    with pytest.raises(WorkflowRunFailedError) as err:
        await run.result(timeout=30)
    cause = str(err.value.__cause__)
    assert "key id 'ka'" in cause and MARKER not in cause
    assert ("does not hold" if worker_key == "wrong" else "has no key") in cause

    world.codec = None if worker_key == "none" else PayloadCodec.parse(f"{KEY_B},{KEY_A}")
    readable = await start(ew.echo, "plain")
    assert await readable.result(timeout=30) == "plain"


async def test_rotation_worker_with_new_key_first_finishes_old_runs(  # type: ignore[no-untyped-def]
    world: RedisWorld, start_worker
) -> None:
    """A run parked by a worker with key A completes on a worker configured `B,A`: the old
    values decrypt with A, the new ones are written with B."""
    old = start_worker(MODULE, WORKFLOW_ENCRYPTION_KEY=KEY_A)
    world.codec = PayloadCodec.parse(KEY_A)
    run = await start(ew.secret_order, f"{MARKER}-item", "tok-rotation")
    await hook_ready("tok-rotation")
    assert old.stop() == 0
    start_worker(MODULE, WORKFLOW_ENCRYPTION_KEY=f"{KEY_B},{KEY_A}")
    world.codec = PayloadCodec.parse(f"{KEY_B},{KEY_A}")
    await resume_hook("tok-rotation", {"ok": "rotated"})
    result = await run.result(timeout=30)
    assert result == {"receipt": f"charged {MARKER}-item", "approval": {"ok": "rotated"}}
    stored = await world.redis.hmget(world.keys.run(run.run_id), "input", "output")
    assert [s.split(":")[2] for s in stored] == ["ka", "kb"]


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("k1:abc", "key 'k1' is not valid base64"),
        (f"{KEY_A},{KEY_A}", "key id 'ka' is given twice"),
    ],
)
async def test_worker_with_a_malformed_key_exits_naming_the_problem(
    worker_env: dict[str, str], spec: str, complaint: str
) -> None:
    """`wf worker` with a malformed WORKFLOW_ENCRYPTION_KEY exits with status 2 and says why."""
    done = await asyncio.to_thread(
        subprocess.run,
        [WF, "worker", MODULE],
        env={**worker_env, "WORKFLOW_ENCRYPTION_KEY": spec},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"WORKFLOW_ENCRYPTION_KEY: {complaint}" in done.stderr
