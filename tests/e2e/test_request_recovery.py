"""Requests and wake-ups survive dead workers and undecodable entries: real workers, real bytes."""

from __future__ import annotations

import base64
import signal
from pathlib import Path

import redis

from tests.e2e import fault_workflows as fw
from tests.support import RedisClusterNodes, RedisServer, wait_for
from worker import start
from world_redis import RedisWorld

FAST_LEASE = {"WORKFLOW_LEASE_MS": "1500", "WORKFLOW_HEARTBEAT_MS": "300"}
BAD = b"\xff\xfe"


# the runs these tests count are all in partition 0 (one partition, on a cluster too)
ONE_PARTITION = {"WORKFLOW_PARTITIONS": "1"}


def raw_client(server: RedisServer | RedisClusterNodes) -> redis.Redis:
    """A client that sends and returns bytes: the only way to write invalid UTF-8 on purpose."""
    return server.client(decode_responses=False)  # type: ignore[no-any-return]


def pending_count(r: redis.Redis, stream: str) -> int:
    summary = r.xpending(stream, "workers")
    return int(summary["pending"])


def test_start_requests_of_a_killed_worker_all_become_runs(  # type: ignore[no-untyped-def]
    redis_server, prefix, start_worker
) -> None:
    """A worker SIGKILLed while it consumes 3,000 start requests: another worker reclaims the rest, and every request becomes exactly one run."""
    r = raw_client(redis_server)
    stream = f"{prefix}:start"
    total = 3000
    pipe = r.pipeline(transaction=False)
    for i in range(total):
        pipe.xadd(stream, {"workflow": "noop", "args": f"[{i}]"})
    pipe.execute()
    runs_key = f"{prefix}:{{p0}}:idx:wf:noop"  # every run of the workflow, whatever its status

    first = start_worker("tests.e2e.request_workflows", **ONE_PARTITION, **FAST_LEASE)
    wait_for(lambda: r.zcard(runs_key) >= 300, 30, what="the first worker to create runs")

    def frozen_holding_requests() -> bool:
        """Freeze the worker; keep it frozen only when it holds requests it has not acknowledged."""
        first.proc.send_signal(signal.SIGSTOP)
        if pending_count(r, stream) > 0:
            return True
        first.proc.send_signal(signal.SIGCONT)  # between two batches: let it take the next one
        return False

    wait_for(frozen_holding_requests, 30, 0.01, what="the worker to hold unacknowledged requests")
    first.kill()
    assert r.zcard(runs_key) < total, "the first worker finished before it was killed"

    start_worker("tests.e2e.request_workflows", **ONE_PARTITION, **FAST_LEASE)
    wait_for(
        lambda: r.xlen(stream) == 0 and pending_count(r, stream) == 0,
        60,
        what="every request handled and acknowledged",
    )
    assert r.zcard(runs_key) == total
    assert r.xlen(f"{stream}:rejected") == 0
    inputs = sorted(int(r.hget(f"{prefix}:{{p0}}:run:{m.decode()}", "input")[1:-1]) for m in
                    r.zrange(runs_key, 0, -1))  # fmt: skip
    assert inputs == list(range(total))


def test_undecodable_start_request_is_set_aside_and_the_batch_goes_on(  # type: ignore[no-untyped-def]
    redis_server, prefix, start_worker
) -> None:
    """One non-UTF-8 start request among 40 valid ones: 40 runs start, the bad one is rejected with its raw bytes in base64."""
    r = raw_client(redis_server)
    stream = f"{prefix}:start"
    for i in range(20):
        r.xadd(stream, {"workflow": "noop", "args": f"[{i}]"})
    bad_id = r.xadd(stream, {"workflow": BAD + b"noop", "args": b"[1]"}).decode()
    for i in range(20, 40):
        r.xadd(stream, {"workflow": "noop", "args": f"[{i}]"})
    worker = start_worker("tests.e2e.request_workflows", **ONE_PARTITION)
    runs_key = f"{prefix}:{{p0}}:idx:wf:noop"

    wait_for(lambda: r.zcard(runs_key) == 40, 20, what="40 runs")
    wait_for(lambda: r.xlen(f"{stream}:rejected") == 1, 20, what="the rejection")
    ((_, fields),) = redis_server.client(decode_responses=True).xrange(f"{stream}:rejected")
    assert fields["message_id"] == bad_id
    assert "UTF-8" in fields["reason"]
    assert base64.b64decode(fields["workflow:b64"]) == BAD + b"noop"
    assert base64.b64decode(fields["args:b64"]) == b"[1]"
    wait_for(lambda: r.xlen(stream) == 0 and pending_count(r, stream) == 0, 20, what="all acked")

    # a bad wake-up read from the queue goes to the dead letters, and the worker goes on
    ready = f"{prefix}:{{p0}}:ready"
    bad_wakeup = r.xadd(ready, {"run": BAD, "reason": "x"}).decode()
    dlq = f"{prefix}:{{p0}}:dlq"
    wait_for(lambda: r.xlen(dlq) == 1, 20, what="the bad wake-up dead-lettered")
    ((_, dead),) = r.xrange(dlq)
    assert dead[b"message_id"].decode() == bad_wakeup
    assert base64.b64decode(dead[b"run:b64"]) == BAD
    r.xadd(stream, {"workflow": "noop", "args": "[99]"})
    wait_for(lambda: r.zcard(runs_key) == 41, 20, what="a run after that")
    assert "read_wakeups_failed" not in worker.output()


async def test_wakeups_are_reclaimed_past_an_undecodable_entry(  # type: ignore[no-untyped-def]
    world: RedisWorld, redis_server, prefix, start_worker, tmp_path: Path
) -> None:
    """A non-UTF-8 wake-up left pending by a dead consumer: reclaiming still recovers the run of a SIGKILLed worker, and the bad entry is dead-lettered."""
    r = raw_client(redis_server)
    ready = f"{prefix}:{{p0}}:ready"
    await world.ensure_groups()
    bad_id = r.xadd(ready, {"run": BAD, "reason": "x"}).decode()
    r.xreadgroup("workers", "gone-consumer", {ready: ">"}, count=10)  # now pending, never acked

    marker = tmp_path / "started"
    first = start_worker("tests.e2e.fault_workflows", **FAST_LEASE)
    run = await start(fw.killable, str(marker), 1.0)
    wait_for(marker.exists, 20, what="the step to start in the first worker")
    first.kill()
    second = start_worker("tests.e2e.fault_workflows", **FAST_LEASE)
    assert await run.result(timeout=30) == "finished: done"

    dlq = f"{prefix}:{{p0}}:dlq"
    wait_for(lambda: r.xlen(dlq) == 1, 20, what="the bad wake-up dead-lettered")
    ((_, dead),) = r.xrange(dlq)
    assert dead[b"message_id"].decode() == bad_id
    assert base64.b64decode(dead[b"run:b64"]) == BAD
    assert "reclaim_failed" not in second.output()
