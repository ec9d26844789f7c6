"""Worker pools on a real Redis: routing (route.lua), pool task streams, and the step-level claim
that commit.lua checks, so a zombie pool worker cannot commit over the step's new claimant."""

from __future__ import annotations

from typing import Any

from tests.support import eventually, running_worker
from worker._worker import Worker, WorkerConfig
from worker._world import Wakeup
from world_redis import RedisWorld

from .helpers import commit1, ev, new_id, run_with_steps, statuses

GROUP = "workers"
IDLE_MS = 60_000
IDLE_LONG_AGO_MS = 3_600_000


async def _make_idle(world: RedisWorld, queue: str, message_id: str) -> None:
    """Make a pending task look idle for an hour (XCLAIM IDLE to its own consumer, no count bump)."""
    stream = world.keys.queue_stream(0, queue)
    (row,) = await world.redis.xpending_range(stream, GROUP, message_id, message_id, 1)
    await world.redis.xclaim(
        stream, GROUP, row["consumer"], 0, [message_id], idle=IDLE_LONG_AGO_MS, justid=True
    )


async def test_route_is_idempotent_per_attempt(world: RedisWorld) -> None:
    """route.lua adds one task per attempt count: again for the same attempt is "exists", a running
    step is "running", a retry not yet due "too_early", a due retry a second task."""
    step = new_id("step")
    run_id = await run_with_steps(world, step)
    pools = world.pools
    assert await pools.route_steps(run_id, [(step, "add", "gpu")]) == ["queued"]
    assert await pools.route_steps(run_id, [(step, "add", "gpu")]) == ["exists"]
    stream = world.keys.queue_stream(0, "gpu")
    assert await world.redis.xlen(stream) == 1
    assert await world.redis.smembers(world.keys.queue_names(0)) == {"gpu"}
    assert await pools.waiting_on(run_id) == [(step, "gpu", 0)]

    await commit1(world, run_id, ev("step_started", step))
    assert await pools.route_steps(run_id, [(step, "add", "gpu")]) == ["running"]
    await commit1(world, run_id, ev("step_retrying", step, retry_after=4_000_000_000_000))
    assert await pools.route_steps(run_id, [(step, "add", "gpu")]) == ["too_early"]
    await commit1(world, run_id, ev("step_started", step))  # refused: too early
    other = new_id("step")
    await commit1(world, run_id, ev("step_created", other, name="add", input="[]"))
    await commit1(world, run_id, ev("step_started", other))
    await commit1(world, run_id, ev("step_retrying", other, retry_after=1))
    assert await pools.route_steps(run_id, [(other, "add", "gpu")]) == ["queued"]
    assert await world.redis.xlen(stream) == 2
    await commit1(world, run_id, ev("step_started", other), ev("step_completed", other, result=1))
    assert await pools.route_steps(run_id, [(other, "add", "gpu"), ("step_x", "add", "gpu")]) == [
        "done",
        "not_found",
    ]
    await commit1(world, run_id, ev("run_cancelled"))
    assert await pools.route_steps(run_id, [(step, "add", "gpu")]) == ["terminal"]


async def test_zombie_claim_is_refused(world: RedisWorld) -> None:
    """A pool worker whose task was reclaimed by another (it paused past the lease) commits its
    result under its old claim: "stale", nothing appended; the new claimant's result is accepted,
    and a duplicate entry of the finished step is "terminal"."""
    step = new_id("step")
    run_id = await run_with_steps(world, step)
    pools = world.pools
    await pools.ensure_queue_groups(["gpu"])
    await pools.route_steps(run_id, [(step, "add", "gpu")])
    (task,) = await pools.read_tasks("zombie", "gpu", 0, 10, 0)
    assert (task.run_id, task.step_id, task.step_name, task.deliveries) == (run_id, step, "add", 1)
    first = await commit1(
        world, run_id, ev("step_started", step, claim="clm_a", task=task.message_id)
    )
    assert statuses(first) == [("ok", 1)]
    assert await world.redis.hget(world.keys.entities(run_id), f"{step}|claim") == (
        f"clm_a|{task.message_id}"
    )

    await _make_idle(world, "gpu", task.message_id)
    (again,) = await pools.reclaim_tasks("b", "gpu", 0, IDLE_MS, 10)
    assert (again.message_id, again.deliveries) == (task.message_id, 2)
    second = await commit1(
        world, run_id, ev("step_started", step, claim="clm_b", task=task.message_id)
    )
    assert statuses(second) == [("ok", 2)]  # the same entry reclaimed: a new attempt

    seq = second.seq
    zombie = await commit1(
        world, run_id, ev("step_completed", step, result=1, claim="clm_a"), wake="step"
    )
    assert (zombie.code, statuses(zombie), zombie.seq) == ("rejected", [("stale", 0)], seq)
    assert await world.redis.xlen(world.keys.ready(0)) == 1  # only create_run's wake-up

    dup = await commit1(world, run_id, ev("step_started", step, claim="clm_c", task="9-0"))
    assert (dup.code, statuses(dup), dup.seq) == ("ok", [("exists", 0)], seq)

    done = await commit1(
        world, run_id, ev("step_completed", step, result=2, claim="clm_b"), wake="step"
    )
    assert statuses(done) == [("ok", 0)]
    assert await world.redis.hget(world.keys.entities(run_id), f"{step}|claim") is None
    assert await world.redis.xlen(world.keys.ready(0)) == 2  # the run was woken
    late = await commit1(world, run_id, ev("step_started", step, claim="clm_d", task="9-0"))
    assert statuses(late) == [("terminal", 0)]
    types = [e.__struct_config__.tag for e in await world.read_events(run_id)]
    assert types.count("step_completed") == 1 and types.count("step_started") == 2


async def test_claimed_results_need_the_recorded_claim(world: RedisWorld) -> None:
    """step_retrying and step_failed under a claim are fenced like step_completed; a holder's
    unclaimed step_started ends the claim, fencing the pool worker out too."""
    step = new_id("step")
    run_id = await run_with_steps(world, step)
    await commit1(world, run_id, ev("step_started", step, claim="clm_a", task="1-0"))
    for etype in ("step_retrying", "step_failed"):
        res = await commit1(world, run_id, ev(etype, step, claim="clm_x", error='"no"'))
        assert statuses(res) == [("stale", 0)], etype
    await commit1(world, run_id, ev("step_started", step))  # a takeover without a claim
    assert await world.redis.hget(world.keys.entities(run_id), f"{step}|claim") is None
    res = await commit1(world, run_id, ev("step_completed", step, result=1, claim="clm_a"))
    assert statuses(res) == [("stale", 0)]


async def test_undecodable_task_is_set_aside(world: RedisWorld) -> None:
    """A task entry whose bytes are not UTF-8 goes to the partition's dead letters with its raw
    bytes and the reason; the read goes on with the next entry."""
    step = new_id("step")
    run_id = await run_with_steps(world, step)
    pools = world.pools
    await pools.ensure_queue_groups(["gpu"])
    stream = world.keys.queue_stream(0, "gpu")
    await world.redis.xadd(stream, {"run": b"\xff\xfe", "step": "x"})
    await pools.route_steps(run_id, [(step, "add", "gpu")])
    assert [t.step_id for t in await pools.read_tasks("c", "gpu", 0, 10, 0)] == [step]
    (dead,) = await world.redis.xrange(world.keys.dlq(0), "-", "+")
    assert "not UTF-8" in dead[1]["reason"] and dead[1]["run:b64"] == "//4="
    (row,) = await world.redis.xpending_range(stream, GROUP, "-", "+", 10)
    assert row["message_id"] != dead[1]["message_id"]


async def test_queue_stats(world: RedisWorld) -> None:
    """queue_stats: per partition, the ready stream as queue default and each queue used, with
    length, lag, pending and the oldest entry's age."""
    steps = [new_id("step"), new_id("step")]
    run_id = await run_with_steps(world, *steps)
    pools = world.pools
    await pools.ensure_queue_groups(["gpu"])
    await pools.route_steps(run_id, [(s, "add", "gpu") for s in steps])
    await pools.read_tasks("c", "gpu", 0, 1, 0)
    by_queue = {s.queue: s for s in await pools.queue_stats()}
    assert set(by_queue) == {"default", "gpu"}
    gpu = by_queue["gpu"]
    assert (gpu.partition, gpu.length, gpu.lag, gpu.pending) == (0, 2, 1, 1)
    assert gpu.oldest_age_ms is not None and gpu.oldest_age_ms >= 0
    assert by_queue["default"].length == 1  # create_run's wake-up


async def test_dead_letter_task_copies_then_acks(world: RedisWorld) -> None:
    """dead_letter_task copies the task with the reason to the dead letters, then acknowledges it."""
    step = new_id("step")
    run_id = await run_with_steps(world, step)
    pools = world.pools
    await pools.ensure_queue_groups(["gpu"])
    await pools.route_steps(run_id, [(step, "add", "gpu")])
    (task,) = await pools.read_tasks("c", "gpu", 0, 1, 0)
    await pools.dead_letter_task(task, "too many deliveries")
    (dead,) = await world.redis.xrange(world.keys.dlq(0), "-", "+")
    assert dead[1]["reason"] == "too many deliveries" and dead[1]["step"] == step
    assert await world.redis.xlen(world.keys.queue_stream(0, "gpu")) == 0
    assert (
        await world.redis.xpending_range(world.keys.queue_stream(0, "gpu"), GROUP, "-", "+", 9)
        == []
    )


GPU_STEP = "tests.e2e.pool_workflows:on_gpu"


def _pool_worker(world: RedisWorld, **config: Any) -> Worker:
    import tests.e2e.pool_workflows  # noqa: F401 -- registers the gpu steps

    return Worker(world, WorkerConfig(queues=("gpu",), drain_timeout_s=5, **config))


async def _gpu_run(world: RedisWorld) -> tuple[str, str]:
    step = new_id("step")
    run_id = await run_with_steps(world)
    await commit1(world, run_id, ev("step_created", step, name=GPU_STEP, input='{"args": [4]}'))
    return run_id, step


async def test_task_delivered_too_often_fails_its_step(world: RedisWorld) -> None:
    """A task whose pool workers kept dying is dead-lettered with the reason and its step failed
    (under a claim of its own), and the run is woken to see it."""
    run_id, step = await _gpu_run(world)
    pools = world.pools
    await pools.ensure_queue_groups(["gpu"])
    await pools.route_steps(run_id, [(step, GPU_STEP, "gpu")])
    (task,) = await pools.read_tasks("dead-1", "gpu", 0, 1, 0)
    await _make_idle(world, "gpu", task.message_id)
    await pools.reclaim_tasks("dead-2", "gpu", 0, IDLE_MS, 1)
    await _make_idle(world, "gpu", task.message_id)
    async with running_worker(_pool_worker(world, max_deliveries=2, lease_ms=600)):

        async def failed() -> bool:
            return any(s.status == "failed" for s in await world.list_steps(run_id))

        await eventually(failed, 20, what="the step to fail")
    (info,) = await world.list_steps(run_id)
    assert "delivered 3 times" in (info.error or "")
    (dead,) = await world.redis.xrange(world.keys.dlq(0), "-", "+")
    assert dead[1]["step"] == step and "delivered 3 times" in dead[1]["reason"]
    assert await world.redis.xlen(world.keys.queue_stream(0, "gpu")) == 0


async def test_task_of_finished_step_is_acked_without_running(world: RedisWorld) -> None:
    """A task entry for a step that already completed is acknowledged; nothing is appended."""
    run_id, step = await _gpu_run(world)
    await commit1(world, run_id, ev("step_started", step), ev("step_completed", step, result=8))
    seq = (await world.get_run(run_id)).seq  # type: ignore[union-attr]
    stream = world.keys.queue_stream(0, "gpu")
    await world.pools.ensure_queue_groups(["gpu"])
    await world.redis.xadd(stream, {"run": run_id, "step": step, "name": GPU_STEP, "queue": "gpu"})
    async with running_worker(_pool_worker(world)):

        async def drained() -> bool:
            return await world.redis.xlen(stream) == 0

        await eventually(drained, 20, what="the task to be acknowledged")
    assert await world.redis.xpending_range(stream, GROUP, "-", "+", 9) == []
    assert (await world.get_run(run_id)).seq == seq  # type: ignore[union-attr]


async def test_pool_worker_runs_a_task_and_wakes_the_run(world: RedisWorld) -> None:
    """An in-process gpu worker takes a routed task, commits step_started and step_completed
    under its claim, acknowledges the entry and wakes the run."""
    run_id, step = await _gpu_run(world)
    await world.pools.route_steps(run_id, [(step, GPU_STEP, "gpu")])
    async with running_worker(_pool_worker(world)):

        async def completed() -> bool:
            return any(s.status == "completed" for s in await world.list_steps(run_id))

        await eventually(completed, 20, what="the step to complete")
    (info,) = await world.list_steps(run_id)
    assert info.output is not None and '"x":8' in info.output.replace(" ", "")
    assert await world.redis.xlen(world.keys.queue_stream(0, "gpu")) == 0
    reasons = [f["reason"] for _, f in await world.redis.xrange(world.keys.ready(0), "-", "+")]
    assert "step" in reasons


async def test_step_whose_pool_workers_died_every_attempt_fails(world: RedisWorld) -> None:
    """A task reclaimed after the step's last allowed attempt (its pool workers died each time)
    fails the step naming the cause, without running it again."""
    run_id, step = await _gpu_run(world)
    pools = world.pools
    await pools.ensure_queue_groups(["gpu"])
    await pools.route_steps(run_id, [(step, GPU_STEP, "gpu")])
    (task,) = await pools.read_tasks("dead", "gpu", 0, 1, 0)
    for _ in range(3):  # attempts 1-3, then attempt 4 (max_retries 3: the last) under a claim
        await commit1(world, run_id, ev("step_started", step))
    claimed = ev("step_started", step, claim="clm_dead", task=task.message_id)
    assert statuses(await commit1(world, run_id, claimed)) == [("ok", 4)]
    await _make_idle(world, "gpu", task.message_id)
    async with running_worker(_pool_worker(world, lease_ms=600)):

        async def failed() -> bool:
            return any(s.status == "failed" for s in await world.list_steps(run_id))

        await eventually(failed, 20, what="the step to fail")
    (info,) = await world.list_steps(run_id)
    assert "exceeded max retries (3 retries)" in (info.error or "")
    assert info.output is None
    assert await world.redis.xlen(world.keys.queue_stream(0, "gpu")) == 0


async def test_forwarded_wakeup_lives_on_its_queue_stream(world: RedisWorld) -> None:
    """A run's wake-up forwarded to its workflow's queue is read there as a wake-up, and its
    heartbeat, requeue and release (with the ack) act on that stream, not the ready stream."""
    run_id = await run_with_steps(world, started=False)
    pools = world.pools
    (w,) = await world.read_wakeups("default-worker", 10, 0)
    await pools.forward_wakeup(w, "wfq")
    ready, wfq = world.keys.ready(0), world.keys.queue_stream(0, "wfq")
    assert await world.redis.xlen(ready) == 0
    assert await world.redis.xpending_range(ready, GROUP, "-", "+", 9) == []
    assert await world.redis.hget(world.keys.run(run_id), "queue") == "wfq"
    assert await pools.waiting_on(run_id) == [("", "wfq", 0)]

    (fw,) = await pools.read_tasks("wfq-worker", "wfq", 0, 10, 0)
    assert isinstance(fw, Wakeup) and (fw.run_id, fw.queue, fw.reason) == (run_id, "wfq", "created")
    token = "wfq-worker#1"
    assert (await world.acquire(run_id, token, 60_000)).code == "ok"
    await world.heartbeat(token, [run_id], [fw], 60_000)
    await world.requeue(fw, "handoff")
    (row,) = await world.redis.xrange(wfq, "-", "+")
    assert row[1] == {"run": run_id, "reason": "handoff"}
    (fw2,) = await pools.read_tasks("wfq-worker", "wfq", 0, 10, 0)
    assert await world.release(run_id, token, -1, fw2) == ("ok", 1)
    assert await world.redis.xlen(wfq) == 0
    assert await world.redis.xpending_range(wfq, GROUP, "-", "+", 9) == []


async def test_wakeup_forwarded_back_to_default(world: RedisWorld) -> None:
    """A wake-up on a queue's stream whose workflow now belongs to "default" (changed code) goes
    back to the ready stream, and the run hash forgets the queue."""
    run_id = await run_with_steps(world, started=False)
    (w,) = await world.read_wakeups("default-worker", 10, 0)
    await world.pools.forward_wakeup(w, "wfq")
    (fw,) = await world.pools.read_tasks("wfq-worker", "wfq", 0, 10, 0)
    assert isinstance(fw, Wakeup)
    await world.pools.forward_wakeup(fw, "default")
    assert await world.redis.xlen(world.keys.queue_stream(0, "wfq")) == 0
    (back,) = await world.read_wakeups("default-worker", 10, 0)
    assert (back.run_id, back.queue) == (run_id, "default")
    assert await world.redis.hget(world.keys.run(run_id), "queue") is None
    assert await world.pools.waiting_on(run_id) == []
