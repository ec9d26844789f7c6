"""Request ingestion in one process against real Redis: outages, payload limits, duplicate resumes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

import tests.e2e.request_workflows  # noqa: F401 -- registers the workflows the requests name
from tests.integration.helpers import commit1, ev, new_run_id
from tests.support import RedisServer, eventually
from worker import _requests as requests
from worker import resume_hook
from worker._errors import WorldUnavailableError
from worker._supervisor import Duty
from worker._worker import Worker, WorkerConfig
from worker._world import Commit, CommitResult
from world_redis import RedisWorld


class UnreachableOnCreate(RedisWorld):
    """A real RedisWorld whose run creation fails as it does when Redis stays down too long."""

    attempts = 0

    async def create_run(self, *args: Any, **kwargs: Any) -> bool:
        self.attempts += 1
        raise WorldUnavailableError("Redis unavailable: connection refused (test)")


async def run_loop_until(worker: Worker, condition: Any, what: str) -> None:
    """Run the request loop (as the worker's supervisor would) until ``condition()`` holds."""
    duty = Duty("requests", lambda d: requests.request_loop(worker, d), stale_after_s=60.0)
    loop = asyncio.create_task(duty.body(duty))
    try:
        await eventually(condition, 20, what=what)
    finally:
        worker.stop()
        await asyncio.wait_for(loop, 10)


async def test_outage_while_creating_a_run_leaves_the_request_pending(
    redis_server: RedisServer, prefix: str
) -> None:
    """WorldUnavailableError while creating a valid run: that request is neither rejected nor acknowledged and no run is recorded, while a malformed one before it is rejected and acknowledged."""
    w = UnreachableOnCreate.from_url(redis_server.url, prefix=prefix)
    try:
        worker = Worker(w, WorkerConfig(lease_ms=60_000))
        await w.ensure_groups()
        run_id = new_run_id()
        stream = w.keys.start_stream()
        malformed = await w.redis.xadd(stream, {"args": "[1]"})
        valid = await w.redis.xadd(stream, {"workflow": "noop", "args": "[1]", "run_id": run_id})
        got = await w.read_start_requests(worker.name, 10, 0)
        assert [r.message_id for r in got] == [malformed, valid]
        with pytest.raises(WorldUnavailableError):
            await requests.handle_requests(worker, got)
        assert w.attempts == 1
        rejected = await w.redis.xrange(w.keys.rejected(stream))
        assert [fields["message_id"] for _, fields in rejected] == [malformed]
        assert [mid for mid, _ in await w.redis.xrange(stream)] == [valid]
        pending = await w.redis.xpending_range(stream, "workers", "-", "+", 10)
        assert [p["message_id"] for p in pending] == [valid]
        assert await w.get_run(run_id) is None
    finally:
        await w.close()


async def test_oversize_requests_are_rejected_with_a_truncated_copy(world: RedisWorld) -> None:
    """Start args and resume payloads over max_payload_bytes are rejected with PayloadTooLargeError; the rejected copy keeps 1 KB and the length."""
    world.max_payload_bytes = 10_000
    worker = Worker(world, WorkerConfig(lease_ms=60_000))
    await world.ensure_groups()
    big = json.dumps(["x" * 200_000])
    start, resume = world.keys.start_stream(), world.keys.resume_stream()
    await world.redis.xadd(start, {"workflow": "text_length", "args": big})
    await world.redis.xadd(resume, {"token": "anything", "payload": big})

    async def both_rejected() -> bool:
        counts = [await world.redis.xlen(world.keys.rejected(s)) for s in (start, resume)]
        return counts == [1, 1]

    await run_loop_until(worker, both_rejected, "both requests rejected")
    for stream, field in ((start, "args"), (resume, "payload")):
        ((_, fields),) = await world.redis.xrange(world.keys.rejected(stream))
        assert "PayloadTooLargeError" in fields["reason"] and "10000" in fields["reason"]
        assert len(fields[field]) == 1024 and big.startswith(fields[field])
        assert fields[f"{field}:length"] == str(len(big))
        assert await world.redis.xlen(stream) == 0
    assert (await world.list_runs())[0] == []


async def live_hook(world: RedisWorld, token: str) -> str:
    run_id = new_run_id()
    await world.create_run(run_id, "noop", "[1]")
    res = await commit1(world, run_id, ev("run_started"), ev("hook_created", "hook_1", token=token))
    assert res.code == "ok", res
    return run_id


async def hook_received(world: RedisWorld, run_id: str) -> list[dict[str, str]]:
    rows = await world.redis.xrange(world.keys.events(run_id))
    return [fields for _, fields in rows if fields["type"] == "hook_received"]


async def test_resume_with_the_same_request_id_is_received_once(world: RedisWorld) -> None:
    """resume_hook twice with one request id (a retried commit): one hook_received event, carrying that id."""
    run_id = await live_hook(world, "tok-once")
    await resume_hook("tok-once", {"n": 1}, world, request_id="1700000000000-0")
    await resume_hook("tok-once", {"n": 1}, world, request_id="1700000000000-0")
    await resume_hook("tok-once", {"n": 2}, world, request_id="1700000000000-1")
    received = await hook_received(world, run_id)
    assert [(e["payload"], e["request_id"]) for e in received] == [
        ('{"n":1}', "1700000000000-0"),
        ('{"n":2}', "1700000000000-1"),
    ]


async def test_redelivered_resume_request_is_received_once(world: RedisWorld) -> None:
    """A resume request from wf:hooks:resume handled twice (redelivered after a crash before its ack): one hook_received."""
    run_id = await live_hook(world, "tok-redelivered")
    worker = Worker(world, WorkerConfig(lease_ms=60_000))
    await world.ensure_groups()
    mid = await world.redis.xadd(
        world.keys.resume_stream(), {"token": "tok-redelivered", "payload": '{"n": 1}'}
    )
    (req,) = await world.read_start_requests(worker.name, 10, 0)
    assert req.message_id == mid
    await requests.handle_resume_request(worker, req)
    await requests.handle_resume_request(worker, req)
    received = await hook_received(world, run_id)
    assert len(received) == 1
    assert received[0]["request_id"] == mid


async def test_request_stream_deleted_under_the_reader_gets_its_group_back(
    world: RedisWorld,
) -> None:
    """DEL of the start stream (an operator clearing a backlog): the next read recreates the group instead of failing with NOGROUP for ever."""
    await world.ensure_groups()
    await world.redis.delete(world.keys.start_stream())
    assert await world.read_start_requests("c1", 10, 0) == []
    mid = await world.redis.xadd(world.keys.start_stream(), {"workflow": "noop", "args": "[1]"})
    (req,) = await world.read_start_requests("c1", 10, 0)
    assert req.message_id == mid and req.source == world.keys.start_stream()


class LostReplies(RedisWorld):
    """A real RedisWorld whose every commit reaches Redis twice, as when a commit's reply is lost
    on the way back and the call is repeated (``with_retry`` does that on a connection error)."""

    async def commit(self, commits: Sequence[Commit]) -> list[CommitResult]:
        await super().commit(commits)
        return await super().commit(commits)


async def test_resume_repeated_after_a_lost_reply_is_received_once(
    redis_server: RedisServer, prefix: str
) -> None:
    """resume_hook without a request id, its commit repeated after a lost reply: one hook_received
    (the payload used to be delivered twice)."""
    world = LostReplies.from_url(redis_server.url, prefix=prefix)
    try:
        run_id = await live_hook(world, "tok-lost-reply")
        await resume_hook("tok-lost-reply", {"n": 1}, world)
        received = await hook_received(world, run_id)
        assert [e["payload"] for e in received] == ['{"n":1}']
    finally:
        await world.close()


async def test_start_requests_pin_to_a_named_deployment_or_are_rejected(
    world: RedisWorld,
) -> None:
    """A start request's "deployment" field pins the run when a worker registered that id; an
    unknown or invalid one rejects the request with the reason, and no run is created."""
    worker = Worker(world, WorkerConfig(lease_ms=60_000))
    await world.ensure_groups()
    await world.deployments.register("dpl_known", "w1", ["text_length"], 60_000)
    start = world.keys.start_stream()
    for run_id, deployment in (
        ("wrun_pinned_by_request", "dpl_known"),
        ("", "dpl_unknown"),
        ("", "not valid"),
    ):
        fields = {"workflow": "text_length", "args": '["abc"]', "deployment": deployment}
        await world.redis.xadd(start, {**fields, **({"run_id": run_id} if run_id else {})})

    async def decided() -> bool:
        return await world.redis.xlen(start) == 0

    await run_loop_until(worker, decided, "the three requests decided")
    info = await world.get_run("wrun_pinned_by_request")
    assert info is not None and info.deployment == "dpl_known"
    rejected = [f for _, f in await world.redis.xrange(world.keys.rejected(start))]
    reasons = [(f["deployment"], f["reason"].split(":")[0]) for f in rejected]
    assert sorted(reasons) == [  # start requests of a batch are decided concurrently
        ("dpl_unknown", "UnknownDeploymentError"),
        ("not valid", "InvalidDeploymentIdError"),
    ]
    assert len((await world.list_runs())[0]) == 1
