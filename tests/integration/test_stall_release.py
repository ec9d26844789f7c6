"""Wake-ups of a run whose holder stalled past its lease (its heartbeats and replies held up, as
when Redis is paused) are not lost: neither one the stalled holder reads after another worker took
the run over and let it go, nor the holder's own one that another worker reclaimed meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from tests.e2e import fault_workflows as fw
from tests.support import RedisServer, eventually, running_worker
from worker import create_hook, get_step_metadata, resume_hook, sleep, start, step, workflow
from worker._worker import Worker, WorkerConfig
from worker._world import Acquired, Wakeup
from world_redis import RedisWorld

# per run: the first attempt of ``gated`` waits for the test to open its gate
ENTERED: dict[str, asyncio.Event] = {}
GATES: dict[str, asyncio.Event] = {}


@step(name="stall.gated")
async def gated(label: str) -> str:
    if get_step_metadata().attempt == 1:
        ENTERED[label].set()
        await GATES[label].wait()
    return f"attempt {get_step_metadata().attempt}"


@workflow(name="stall.step_beside_hook")
async def step_beside_hook(label: str, token: str) -> list[object]:
    hook = create_hook(token=token)
    first = await gated(label)
    return [first, await hook]


class ReadRecorder(RedisWorld):
    """A real RedisWorld that remembers the ids of the wake-ups its worker read."""

    read: set[str]

    async def read_wakeups(self, consumer: str, count: int, block_ms: int) -> list[Wakeup]:
        got = await super().read_wakeups(consumer, count, block_ms)
        self.read.update(w.message_id for w in got)
        return got


async def work_left_unclaimed(world: RedisWorld, run_id: str) -> str:
    """Why nothing would ever advance ``run_id``, or "" when something will: it ended, a live
    lease holds it, or a wake-up of it is in the ready stream (read or not, it is not
    acknowledged: acknowledged ones are deleted). One atomic snapshot."""
    keys = world.keys
    pipe = world.redis.pipeline(transaction=True)
    pipe.hmget(keys.run(run_id), ["status", "seq", "lease_owner", "lease_until"])
    pipe.time()
    for band in keys.ready_bands(keys.partition(run_id)):
        pipe.xrange(band, "-", "+")
    (status, seq, owner, until), (sec, usec), *streams = await pipe.execute()
    if status in ("completed", "failed", "cancelled"):
        return ""
    if owner and int(until or 0) > int(sec) * 1000 + int(usec) // 1000:
        return ""
    if any(fields.get("run") == run_id for rows in streams for _, fields in rows):
        return ""
    return f"run {status} at seq {seq}, lease owner {owner!r}, and no wake-up of it queued"


def fast_worker(world: RedisWorld, lease_ms: int, heartbeat_ms: int) -> Worker:
    config = WorkerConfig(
        concurrency=10,
        lease_ms=lease_ms,
        heartbeat_ms=heartbeat_ms,
        max_deliveries=1000,  # reclaims of the stalled worker's wake-ups are not its run's fault
        drain_timeout_s=1,
    )
    return Worker(world, config)


async def test_wakeup_for_a_run_taken_over_and_let_go_under_its_stalled_holder(
    redis_server: RedisServer, prefix: str
) -> None:
    """Worker X runs a step of a run whose lease lapses meanwhile (its heartbeats stalled);
    worker Y takes the run over, runs the step again and lets the run go, parked on its hook.
    The hook's payload then arrives and X, still holding the run in its own view, reads the
    wake-up. When X's step ends, its commit finds the lease gone and X drops the run: the
    wake-up must still be pending (it used to be acknowledged as a nudge to X, and the run,
    with no lease and no wake-up, waited for good), and the run completes."""
    label, token = f"gate-{prefix}", f"tok-{prefix}"
    ENTERED[label], GATES[label] = asyncio.Event(), asyncio.Event()
    world_x = ReadRecorder.from_url(redis_server.url, prefix=prefix)
    world_x.read = set()
    world_y = RedisWorld.from_url(redis_server.url, prefix=prefix)
    # X: a lease of 1 s that its heartbeat, stalled for the test's length, never renews
    x = fast_worker(world_x, lease_ms=1000, heartbeat_ms=600_000)
    try:
        async with running_worker(x):
            await world_x.ensure_groups()
            await world_y.check_config()
            run_id = "wrun_01JSTALLRELEASE0000000001"
            run = await start(step_beside_hook, label, token, world=world_x, run_id=run_id)
            await asyncio.wait_for(ENTERED[label].wait(), 20)
            assert run_id in x.held

            async def lapsed() -> bool:
                until = await world_x.redis.hget(world_x.keys.run(run_id), "lease_until")
                return int(until or 0) < await world_x.server_time_ms()

            await eventually(lapsed, 20, what="X's lease to lapse")

            # Y takes the orphaned step over, runs it again, and lets the run go
            async with running_worker(fast_worker(world_y, lease_ms=500, heartbeat_ms=100)):

                async def let_go() -> bool:
                    owner, status = await world_y.redis.hmget(
                        world_y.keys.run(run_id), ["lease_owner", "status"]
                    )
                    steps = await run.steps()
                    return status == "running" and not owner and steps[0].status == "completed"

                await eventually(let_go, 20, what="Y to run the step and let the run go")

            before = set(world_x.read)
            await resume_hook(token, "late", world_x, request_id="r1")
            await eventually(lambda: world_x.read - before, 20, what="X to read the wake-up")
            held = x.held[run_id]
            await eventually(held.nudge.is_set, 20, what="X to take the wake-up as a nudge")

            GATES[label].set()  # X's first attempt ends; its commit finds the lease gone
            await eventually(lambda: run_id not in x.held, 20, what="X to drop the run")
            stranded = await work_left_unclaimed(world_x, run_id)
            assert not stranded, stranded
            assert await run.result(timeout=20) == ["attempt 2", "late"]
    finally:
        await world_x.close()
        await world_y.close()
        ENTERED.pop(label, None)
        GATES.pop(label, None)


class LateHeartbeat(RedisWorld):
    """A real RedisWorld whose worker reclaims the wake-up of ``victim`` and, before it
    dispatches it, lets ``late`` run: the holder's heartbeat, held up in a stall, landing
    between the reclaim and the acquire that follows it."""

    victim = ""
    late: Callable[[], Awaitable[object]]
    fired: asyncio.Event

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Wakeup]:
        got = await super().reclaim(consumer, min_idle_ms, count)
        if any(w.run_id == self.victim for w in got) and not self.fired.is_set():
            await self.late()
            self.fired.set()  # the worker dispatches ``got`` as this returns, with no await
        return got


async def queued_wakeups(world: RedisWorld, run_id: str) -> set[str]:
    """Ids of the wake-ups of ``run_id`` in its ready streams (read or not: not acknowledged)."""
    keys = world.keys
    found: set[str] = set()
    for band in keys.ready_bands(keys.partition(run_id)):
        rows = await world.redis.xrange(band, "-", "+")
        found.update(mid for mid, fields in rows if fields.get("run") == run_id)
    return found


async def test_reclaimed_wakeup_of_a_holder_renewed_late_stays_pending(
    redis_server: RedisServer, prefix: str
) -> None:
    """Worker X runs a step of a run whose lease lapses meanwhile (its heartbeats stalled); worker
    Y reclaims the run's wake-up, and X's late heartbeat renews the lease before Y's acquire, which
    answers "busy". The wake-up is X's own, the one that lets any worker reclaim the run should X
    die or fail to hand it over: Y leaves it pending (it used to acknowledge it, and the run then
    hung on X alone), and the run completes."""
    label, token = f"gate-{prefix}", f"tok-{prefix}"
    ENTERED[label], GATES[label] = asyncio.Event(), asyncio.Event()
    world_x = RedisWorld.from_url(redis_server.url, prefix=prefix)
    world_y = LateHeartbeat.from_url(redis_server.url, prefix=prefix)
    world_y.fired = asyncio.Event()
    x = fast_worker(world_x, lease_ms=1000, heartbeat_ms=600_000)
    try:
        async with running_worker(x):
            await world_x.ensure_groups()
            await world_y.check_config()
            run_id = world_y.victim = "wrun_01JSTALLRELEASE0000000002"
            run = await start(step_beside_hook, label, token, world=world_x, run_id=run_id)
            await asyncio.wait_for(ENTERED[label].wait(), 20)
            own = x.held[run_id].wakeup

            async def x_heartbeat_late() -> object:
                return await world_x.heartbeat(x.token, [run_id], [own], 60_000)

            world_y.late = x_heartbeat_late
            y = fast_worker(world_y, lease_ms=500, heartbeat_ms=100)
            async with running_worker(y):
                await asyncio.wait_for(world_y.fired.wait(), 20)
                await eventually(lambda: run_id not in y.held, 20, what="Y to drop the wake-up")
                assert own.message_id in await queued_wakeups(world_x, run_id)
            GATES[label].set()
            await resume_hook(token, "late", world_x, request_id="r1")
            assert await run.result(timeout=20) == ["attempt 1", "late"]
    finally:
        await world_x.close()
        await world_y.close()
        ENTERED.pop(label, None)
        GATES.pop(label, None)


@workflow(name="stall.naps")
async def naps(count: int) -> int:
    for _ in range(count):
        await sleep(0.1)
    return count


class AckRecorder(RedisWorld):
    """A real RedisWorld that records the wake-ups of ``victim`` acknowledged while it runs."""

    victim = ""
    while_running: list[str]

    async def ack(self, wakeups: Sequence[Wakeup]) -> None:
        mine = [w.message_id for w in wakeups if w.run_id == self.victim]
        if mine and await self.redis.hget(self.keys.run(self.victim), "status") == "running":
            self.while_running += mine
        await super().ack(wakeups)


async def test_wakeups_of_a_run_held_across_timers_do_not_pile_up(
    redis_server: RedisServer, prefix: str
) -> None:
    """A run whose worker holds it from one short sleep to the next gets a wake-up per timer
    while held: each is acknowledged once a commit of the holder proves its event seen, not
    kept pending (and renewed) until the run ends."""
    world = AckRecorder.from_url(redis_server.url, prefix=prefix)
    world.while_running = []
    try:
        async with running_worker(fast_worker(world, lease_ms=5000, heartbeat_ms=200)):
            await world.ensure_groups()
            run_id = world.victim = "wrun_01JSTALLRELEASE0000000003"
            run = await start(naps, 10, world=world, run_id=run_id)
            assert await run.result(timeout=20) == 10
            await eventually(lambda: world.while_running, 20, what="a timer's wake-up acked")

            async def none_queued() -> bool:  # a timer due as the run ended is dropped after it
                return not await queued_wakeups(world, run_id)

            await eventually(none_queued, 20, what="the run's wake-ups all acknowledged")
    finally:
        await world.close()


class ResumeDuringBusyAcquire(RedisWorld):
    """A real RedisWorld whose worker's acquire of ``victim``, once ``armed``, answers "busy" (a
    holder has the run) and, before that answer reaches the worker, the holder lets the run go,
    the run's hook is resumed and the worker reads that wake-up: a reply held up (a stall, a
    loaded loop) while the holder and the hook's sender move on."""

    victim = ""
    hook_token = ""
    holder = ""
    armed = False
    worker: Worker
    read: set[str]

    async def read_wakeups(self, consumer: str, count: int, block_ms: int) -> list[Wakeup]:
        got = await super().read_wakeups(consumer, count, block_ms)
        self.read.update(w.message_id for w in got if w.run_id == self.victim)
        return got

    async def acquire_many(
        self, token: str, lease_ms: int, runs: Sequence[tuple[str, int]], deployment: str = ""
    ) -> list[Acquired]:
        replies = await super().acquire_many(token, lease_ms, runs, deployment)
        for (run_id, _), acq in zip(runs, replies, strict=True):
            if run_id == self.victim and self.armed and acq.code == "busy":
                self.armed = False
                await self._holder_moves_on(acq.seq)
        return replies

    async def _holder_moves_on(self, seq: int) -> None:
        assert (await self.release(self.victim, self.holder, seq))[0] == "ok"
        seen = len(self.read)
        await resume_hook(self.hook_token, "late", self, request_id="r1")
        await eventually(lambda: len(self.read) > seen, 10, what="the hook's wake-up read")
        held = self.worker.held[self.victim]  # it went to the run held here, being acquired
        await eventually(held.nudge.is_set, 10, what="the wake-up dispatched")


async def test_wakeup_read_while_an_acquire_answered_busy_is_on_its_way(
    redis_server: RedisServer, prefix: str
) -> None:
    """A worker takes a timer's wake-up of a run another worker holds; its acquire answers
    "busy", but before that answer arrives the holder lets the run go (parked on its hook), the
    hook is resumed, and the worker reads the hook's wake-up, which goes to the run it is
    acquiring. The worker then drops the timer's wake-up (the holder was live): the hook's must
    still lead to the run being taken (it used to be acknowledged too, and the run, with no lease
    and no wake-up, waited for good: wrun_chaos00360 at its hook_received, make chaos
    redis-sigstop with raw connections without timeouts)."""
    world = ResumeDuringBusyAcquire.from_url(redis_server.url, prefix=prefix)
    world.read = set()
    world.hook_token = f"tok-{prefix}"
    world.holder = f"elsewhere#{prefix}"
    try:
        world.worker = fast_worker(world, lease_ms=5000, heartbeat_ms=200)
        async with running_worker(world.worker):
            await world.ensure_groups()
            run_id = world.victim = "wrun_01JSTALLRELEASE0000000004"
            run = await start(fw.echo_then_hook, world.hook_token, world=world, run_id=run_id)

            async def parked() -> bool:
                owner = await world.redis.hget(world.keys.run(run_id), "lease_owner")
                hook = await world.find_hook(world.hook_token)
                return hook is not None and not owner and run_id not in world.worker.held

            await eventually(parked, 20, what="the run parked on its hook")
            # another worker holds the run, and a timer's wake-up of it comes in
            assert (await world.acquire(run_id, world.holder, 60_000)).code == "ok"
            world.armed = True
            await world.redis.xadd(
                world.keys.ready(world.keys.partition(run_id)),
                {"run": run_id, "reason": "timer:wait_x"},
            )
            try:
                assert await run.result(timeout=20) == ["before", "late"]
            except TimeoutError:
                raise AssertionError(await work_left_unclaimed(world, run_id)) from None
            assert not world.armed
    finally:
        await world.close()
