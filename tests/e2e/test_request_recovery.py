"""Requests survive dead workers: real workers, real Redis."""

from __future__ import annotations

import redis

from tests.support import wait_for

FAST_LEASE = {"WORKFLOW_LEASE_MS": "1500", "WORKFLOW_HEARTBEAT_MS": "300"}


def raw_client(port: int) -> redis.Redis:
    """A client that sends and returns bytes."""
    return redis.Redis(port=port, decode_responses=False)


def pending_count(r: redis.Redis, stream: str) -> int:
    summary = r.xpending(stream, "workers")
    return int(summary["pending"])


def test_start_requests_of_a_killed_worker_all_become_runs(  # type: ignore[no-untyped-def]
    redis_server, prefix, start_worker
) -> None:
    """A worker SIGKILLed while it consumes 3,000 start requests: another worker reclaims the rest, and every request becomes exactly one run."""
    r = raw_client(redis_server.port)
    stream = f"{prefix}:start"
    total = 3000
    pipe = r.pipeline(transaction=False)
    for i in range(total):
        pipe.xadd(stream, {"workflow": "noop", "args": f"[{i}]"})
    pipe.execute()
    runs_key = f"{prefix}:{{p0}}:idx:all"

    first = start_worker("tests.e2e.request_workflows", **FAST_LEASE)
    wait_for(lambda: r.zcard(runs_key) >= 300, 30, what="the first worker to create runs")
    first.kill()
    assert r.zcard(runs_key) < total, "the first worker finished before it was killed"
    assert pending_count(r, stream) > 0, "the first worker died holding no request"

    start_worker("tests.e2e.request_workflows", **FAST_LEASE)
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
