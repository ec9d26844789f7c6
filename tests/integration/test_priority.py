"""Priority bands on a real Redis: a run's wake-ups go to its band's stream, and readers serve
band hi before priority 0 before band lo (see world_redis/_keys.py, "Priority bands")."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e import priority_workflows as pw
from tests.support import all_keys, eventually, running_worker
from worker import Run, WorkflowRunFailedError, start
from worker._events import ChildStarted, RunCreated
from worker._worker import Worker, WorkerConfig
from world_redis import RedisWorld

from .helpers import commit1, ev, new_run_id

GROUP = "workers"


def _worker(world: RedisWorld, **config: Any) -> Worker:
    options: dict[str, Any] = {"lease_ms": 3000, "heartbeat_ms": 300, "drain_timeout_s": 5}
    return Worker(world, WorkerConfig(**{**options, **config}))


async def _served(world: RedisWorld, label: str) -> list[str]:
    return list(await world.redis.lrange(pw.order_key(label), 0, -1))


async def _backlog_then_worker(world: RedisWorld, label: str, normal: int) -> list[str]:
    """``normal`` runs of priority 0 queued with no worker, then one of 10 and one of -10, then
    a worker of concurrency 1: the order their steps ran in."""
    runs: list[Run] = []
    for i in range(normal):
        runs.append(await start(pw.noted, label, f"n{i}"))
    runs.append(await start(pw.noted, label, "hi", priority=10))
    runs.append(await start(pw.noted, label, "lo", priority=-10))
    async with running_worker(_worker(world, concurrency=1)):
        for run in runs:
            await run.result(timeout=60)
    return await _served(world, label)


async def test_backlog_serves_hi_first_and_lo_last(world: RedisWorld) -> None:
    """Behind a backlog of priority-0 runs, a priority 10 run is served first and a -10 one last."""
    order = await _backlog_then_worker(world, "backlog", 20)
    assert order[0] == "hi"
    assert order[-1] == "lo"
    assert order[1:-1] == [f"n{i}" for i in range(20)]


async def test_backlog_order_with_partitions(
    world_with_partitions: Callable[[int], RedisWorld],
) -> None:
    """The same over four partitions: each read serves the hi bands first, the lo bands last."""
    from worker import set_world

    w4 = world_with_partitions(4)
    set_world(w4)
    try:
        order = await _backlog_then_worker(w4, "parts", 20)
    finally:
        set_world(None)
    assert order[0] == "hi"
    assert order[-1] == "lo"
    assert sorted(order[1:-1]) == sorted(f"n{i}" for i in range(20))


async def test_wakeups_go_to_the_run_band(world: RedisWorld) -> None:
    """create_run, commit's wake-ups and promoted timers of a run use its band's stream, and
    read_wakeups names the band it read from."""
    hi, lo, zero = new_run_id(), new_run_id(), new_run_id()
    await world.create_run(hi, "wf_test", "[]", priority=5)
    await world.create_run(lo, "wf_test", "[]", priority=-1)
    await world.create_run(zero, "wf_test", "[]")
    k = world.keys
    assert await world.redis.xlen(k.ready(k.partition(hi), "hi")) == 1
    assert await world.redis.xlen(k.ready(k.partition(lo), "lo")) == 1
    got = await world.read_wakeups("c1", 10, 0)
    assert [(w.run_id, w.band) for w in got] == [(hi, "hi"), (zero, ""), (lo, "lo")]
    await world.ack(got)
    # a commit that wakes the run, and a timer due now
    await commit1(world, hi, ev("run_started"), wake="again")
    await commit1(world, lo, ev("run_started"), ev("wait_created", "wait_1", resume_at=1))
    await world.promote_timers()
    got = await world.read_wakeups("c1", 10, 0)
    assert [(w.run_id, w.band, w.reason) for w in got] == [
        (hi, "hi", "again"),
        (lo, "lo", "timer:wait_1"),
    ]
    await world.ack(got)
    for p in range(k.partitions):
        for stream in k.ready_bands(p):
            assert await world.redis.xlen(stream) == 0


async def test_reads_never_take_more_than_count(world: RedisWorld) -> None:
    """With entries in every band, a read of count 2 takes hi's then priority 0's, the next
    one lo's."""
    runs = {band: new_run_id() for band in ("hi", "", "lo")}
    for band, run_id in runs.items():
        await world.create_run(run_id, "wf_test", "[]", priority={"hi": 3, "": 0, "lo": -3}[band])
    got = await world.read_wakeups("c1", 2, 0)
    assert [w.band for w in got] == ["hi", ""]
    rest = await world.read_wakeups("c1", 5, 0)
    assert [w.band for w in rest] == ["lo"]
    await world.ack([*got, *rest])


async def _blocked_reads(world: RedisWorld) -> bool:
    clients = await world.redis.client_list()
    return any(c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "") for c in clients)


async def test_blocking_read_puts_back_what_exceeds_count(world: RedisWorld) -> None:
    """A blocking read of count 1 that wakes to entries in two bands takes one (Redis answers
    a blocked read with the stream that woke it; more would be put back): nothing else is
    pending on the reader, and the next read takes the other."""
    if world.core.cluster:
        pytest.skip("one blocking command over every band: a single server")
    normal, low = new_run_id(), new_run_id()
    k = world.keys
    await world.ensure_groups()
    reading = asyncio.create_task(world.read_wakeups("c1", 1, 5000))
    await eventually(lambda: _blocked_reads(world), what="the read to block")
    pipe = world.redis.pipeline(transaction=True)  # both entries there when the read wakes
    pipe.xadd(k.ready(k.partition(low), "lo"), {"run": low, "reason": "x"})
    pipe.xadd(k.ready(k.partition(normal)), {"run": normal, "reason": "y"})
    await pipe.execute()
    got = await reading
    assert len(got) == 1
    pending = 0
    for p in range(k.partitions):
        for stream in k.ready_bands(p):
            pending += (await world.redis.xpending(stream, GROUP))["pending"]
    assert pending == 1
    await world.ack(got)
    again = await world.read_wakeups("c1", 1, 0)
    assert {w.run_id for w in [*got, *again]} == {normal, low}
    await world.ack(again)


async def test_dead_worker_wakeup_of_band_hi_is_reclaimed(world: RedisWorld) -> None:
    """A hi-band wake-up read by a consumer that never acknowledges it is reclaimed by another
    worker, which completes the run."""
    run = await start(pw.noted, "reclaim", "hi", priority=7)
    (taken,) = await world.read_wakeups("dead-consumer", 1, 0)
    assert (taken.run_id, taken.band) == (run.run_id, "hi")
    async with running_worker(_worker(world, lease_ms=500, heartbeat_ms=100)):
        assert await run.result(timeout=60) == "hi"
    k = world.keys
    stream = k.ready(k.partition(run.run_id), "hi")
    summary = await world.redis.xpending(stream, GROUP)
    assert summary["pending"] == 0


@pytest.mark.parametrize("priority", [1, -1])
async def test_queue_stats_count_the_bands(world: RedisWorld, priority: int) -> None:
    """wf inspect queues (queue_stats) counts a band's waiting wake-ups with its queue's."""
    await world.create_run(new_run_id(), "wf_test", "[]", priority=priority)

    async def waiting() -> bool:
        stats = await world.pools.queue_stats()
        return sum(s.length for s in stats if s.queue == "default") == 1

    await eventually(waiting, what="the run's wake-up counted")


async def test_surplus_of_a_read_is_put_back(world: RedisWorld) -> None:
    """Entries a read took beyond its count are put back at the end of their band (a fresh
    entry, the read one acknowledged), the lowest band's first; the highest are kept."""
    k = world.keys
    await world.ensure_groups()
    p = 0
    hi, lo = k.ready(p, "hi"), k.ready(p, "lo")
    await world.redis.xadd(lo, {"run": "wrun_lo", "reason": "x"})
    await world.redis.xadd(hi, {"run": "wrun_hi", "reason": "y"})
    reply = await world.redis.xreadgroup(GROUP, "c1", {lo: ">", hi: ">"}, count=5)
    pairs = [(stream, [(mid, dict(f)) for mid, f in rows]) for stream, rows in reply]
    kept = await world.queue._within(1, pairs, world.queue._band_of)
    assert [(s, [f["run"] for _, f in rows]) for s, rows in kept] == [(hi, ["wrun_hi"])]
    assert (await world.redis.xpending(lo, GROUP))["pending"] == 0
    assert [f["run"] for _, f in await world.redis.xrange(lo)] == ["wrun_lo"]
    assert (await world.redis.xpending(hi, GROUP))["pending"] == 1


async def _routed(world: RedisWorld, n: int) -> bool:
    stats = await world.pools.queue_stats()
    return sum(s.lag for s in stats if s.queue.startswith("prio_pool")) == n


async def test_pool_tasks_are_served_by_band(world: RedisWorld) -> None:
    """Pool tasks of a run's steps go to its band of the queue's lane: with a backlog of
    priority-0 tasks routed and no pool worker yet, a pool worker of concurrency 1 runs the
    priority 10 run's step first and the -10 one's last."""
    label = "pool"
    runs: list[Run] = [await start(pw.pool_noted, label, f"n{i}") for i in range(10)]
    runs.append(await start(pw.pool_noted, label, "hi", priority=10))
    runs.append(await start(pw.pool_noted, label, "lo", priority=-10))
    async with running_worker(_worker(world)):
        await eventually(lambda: _routed(world, len(runs)), what="every step routed")
        prefix = world.keys.prefix
        (hi_lane,) = await all_keys(world, f"{prefix}:*:q:prio_pool@*:hi")
        assert await world.redis.xlen(hi_lane) == 1
        async with running_worker(_worker(world, concurrency=1, queues=("prio_pool",))):
            for run in runs:
                assert await run.result(timeout=60)
    order = await _served(world, label)
    assert order[0] == "hi"
    assert order[-1] == "lo"
    assert sorted(order[1:-1]) == sorted(f"n{i}" for i in range(10))


async def _child_priority(world: RedisWorld, child_id: str) -> tuple[str | None, int]:
    """The child's priority as its run hash stores it, and as its run_created records it."""
    stored = await world.redis.hget(world.keys.run(child_id), "priority")
    created = (await Run(child_id, world=world).events())[0]
    assert isinstance(created, RunCreated)
    return stored, created.priority


async def test_child_run_priority(world: RedisWorld) -> None:
    """start(child, priority=5) in workflow code gives the child priority 5 (its run hash, its
    run_created, its parent's child_started); without priority= a child has its parent's."""
    async with running_worker(_worker(world)):
        given = await start(pw.parent, "kids", 5)
        inherited = await start(pw.parent, "kids", None, priority=-4)
        given_child = await given.result(timeout=60)
        inherited_child = await inherited.result(timeout=60)
    assert await _child_priority(world, given_child) == ("5", 5)
    assert await _child_priority(world, inherited_child) == ("-4", -4)
    infos = [await world.get_run(r) for r in (given_child, inherited_child, given.run_id)]
    assert [i.priority if i else None for i in infos] == [5, -4, 0]  # RunInfo.priority
    (started,) = [e for e in await given.events() if isinstance(e, ChildStarted)]
    assert started.priority == 5


async def test_child_priority_out_of_range_creates_nothing(world: RedisWorld) -> None:
    """A child priority outside -1000..1000 fails the parent with FlowControlError; no child
    run is created."""
    async with running_worker(_worker(world)):
        parent = await start(pw.bad_child, "bad")
        with pytest.raises(WorkflowRunFailedError) as caught:
            await parent.result(timeout=60)
    assert "invalid priority=5000" in str(caught.value)
    assert type(caught.value.__cause__).__name__ == "FlowControlError"
    assert not [e for e in await parent.events() if isinstance(e, ChildStarted)]
    runs = await all_keys(world, f"{world.keys.prefix}:*:run:*")
    assert {k.split(":run:", 1)[1].split(":", 1)[0] for k in runs} == {parent.run_id}


async def test_wakeups_added_outside_scripts_keep_the_band(world: RedisWorld) -> None:
    """A flow-control wake-up, a dead letter replayed and a requeued wake-up of a priority run
    go to its band; a run without priority stays on the priority-0 stream."""
    hi, zero = new_run_id(), new_run_id()
    await world.create_run(hi, "wf_test", "[]", priority=2)
    await world.create_run(zero, "wf_test", "[]")
    created = await world.read_wakeups("c1", 10, 0)
    assert [w.band for w in created] == ["hi", ""]
    await world.flow.wake([hi, zero], "flow")
    flow = await world.read_wakeups("c1", 10, 0)
    assert [(w.run_id, w.band, w.reason) for w in flow] == [(hi, "hi", "flow"), (zero, "", "flow")]
    await world.requeue(flow[0], "retry")
    await world.ack(flow[1:])
    (requeued,) = await world.read_wakeups("c1", 10, 0)
    assert (requeued.run_id, requeued.band, requeued.reason) == (hi, "hi", "retry")
    await world.dead_letter(requeued, "test")
    (letter,) = [d for d in await world.dead_letters.list() if d.run_id == hi]
    await world.dead_letters.requeue(letter)
    (replayed,) = await world.read_wakeups("c1", 10, 0)
    assert (replayed.run_id, replayed.band, replayed.reason) == (hi, "hi", "replayed")
    await world.ack([*created, replayed])
