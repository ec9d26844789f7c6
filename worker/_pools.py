"""Worker pools: the worker's side of steps declared with a queue (``@step(queue="gpu")``).

Routing. The worker that holds a run (a ``default`` worker replaying it) never executes a step
whose queue is not ``default``: when such a step is due (just created, or its retry delay passed)
it hands it to the queue through ``PoolQueues.route_steps`` (one task entry per attempt count, in
the run's partition) and lets the run go as it would for any step it is not running itself. It
holds no lease for the pool's sake and keeps nothing the pool worker needs.

Executing. A worker started with ``--queues gpu`` (or ``default,gpu``) runs a :class:`PoolRunner`:
one reader for all its queues and partitions (one XREADGROUP per partition: no command spans slots), which
reads only while the worker has room (held runs + pool tasks + reads in flight never exceed
``--concurrency``). For each task it reads the step's name and input from the run's log, commits
``step_started`` with a fresh claim token and the task's entry id, runs the attempt, and commits
the outcome with the claim (``step_completed`` / ``step_retrying`` / ``step_failed``) and a
wake-up of the run. commit.lua refuses an outcome whose claim is no longer the step's (a zombie
whose task another pool worker reclaimed) and the zombie then leaves the entry alone, as it is the
new claimant's. Nothing polls: readers block on their stream, and a retry is routed again by the
holder when the run's retry timer wakes it.

Recovery mirrors the wake-ups': the entries of running tasks are heartbeated; entries of a dead
worker are reclaimed after the lease; one delivered more than ``max_deliveries`` times is
dead-lettered and its step failed, with the reason (see world_redis/_pools.py).

Workflows. ``@workflow(queue="q")`` routes the replay of the workflow's runs: every wake-up still
arrives on the partition's ready stream, and a ``default`` worker that takes one for a run of
such a workflow (its module imported, as every default worker imports every workflow) gives the
lease up at once and forwards the wake-up to the queue's stream (``PoolQueues.forward_wakeup``:
copy, note the run's queue, ack, in one transaction). A worker serving ``q`` reads it there beside
its step tasks and holds the run like any other; the wake-up's heartbeat, release and requeue act
on that stream. Steps without a queue run where the run is held, i.e. in the ``q`` worker.

Deployments. Every hand-over targets the *lane* of the run's deployment (``gpu@dpl_x``, a queue
stream like any other; see _deployments.py): the holder routes a step to ``<queue>@<its
deployment>`` and forwards a workflow's wake-up to ``<workflow queue>@<its deployment>``, and a
runner reads the lanes of its worker's deployment beside its queues' plain streams. So a pool
worker of another deployment never runs a pinned run's step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._context import StepContext
from ._errors import StepNotRegisteredError
from ._events import NewEvent, RunCreated, RunStarted, StepCreated
from ._ids import new_id
from ._pool_world import DEFAULT_QUEUE, PoolQueues, PoolTask, pool_queues
from ._registry import StepFunction, revive_step_ref
from ._replay import error_json
from ._supervisor import Duty
from ._worker_loops import dead_letter
from ._world import Commit, CommitResult, Wakeup

if TYPE_CHECKING:
    from ._worker import Worker

READ_BLOCK_MS = 1000  # a reader's blocking read; it wakes at once when an entry arrives
# a reader of a deployment's replay lane blocks as briefly as the read of the ready stream: with
# a concurrency of 1 the two take turns, and a long block would delay every wake-up behind it
LANE_BLOCK_MS = 200
TURN_S = 0.05  # how long a reader waits for the other to take its turn (see give_turn)


def step_queue(fn: Any) -> str | None:
    """The queue of a step function when it is not ``default`` (the step is routed), else None."""
    queue = getattr(fn, "queue", None)
    return queue if queue and queue != DEFAULT_QUEUE else None


class PoolRunner:
    """The pool duties of one worker: read, reclaim and heartbeat the tasks of its queues."""

    def __init__(self, worker: Worker, queues: tuple[str, ...]) -> None:
        self.worker = worker
        self.queues = tuple(q for q in queues if q != DEFAULT_QUEUE)
        self.store: PoolQueues = pool_queues(worker.world)
        self.running: dict[str, PoolTask] = {}  # message id -> task being executed
        self.reading = 0  # reads in flight: each may bring one task
        self.room = asyncio.Event()
        self.waiting_for_room = False  # the reader waits for room (see give_turn)
        self.read_turn = asyncio.Event()  # set when the reader starts a read

    @property
    def load(self) -> int:
        """Slots of the worker's concurrency taken by pool work (tasks and reads in flight)."""
        return len(self.running) + self.reading

    def _has_room(self) -> bool:
        w = self.worker
        return w.config.concurrency - len(w.held) - w.reading_wakeups - self.load > 0

    def supervise(self) -> None:
        sup = self.worker.supervisor
        quiet_s = self.worker.config.duty_quiet_s
        lease_s = self.worker.config.lease_ms / 1000.0
        if self.queues:
            sup.add("pool-read", self.read_loop, stale_after_s=quiet_s)
        sup.add("pool-reclaim", self.reclaim_loop, stale_after_s=quiet_s + 3 * lease_s)
        sup.add("pool-heartbeat", self.heartbeat_loop, stale_after_s=max(lease_s, 5.0))

    async def start(self) -> None:
        await self.store.ensure_queue_groups(self.queues)

    # -- duties --------------------------------------------------------------------------------

    async def read_loop(self, duty: Duty) -> None:
        """One reader for every queue and partition of this runner (``PoolQueues.read_queues``).

        A read reserves the slots it may fill (``reading``) while it is on the wire: at most half
        of the room, so that neither this reader, the wake-up reader nor the reclaim starves the
        others while a read waits on idle streams; a busy stream answers at once, and the
        reservation ends."""
        w = self.worker
        lanes = any(q.startswith(f"{DEFAULT_QUEUE}@") for q in self.queues)
        block = LANE_BLOCK_MS if lanes else READ_BLOCK_MS
        while not w.stopping.is_set():
            room = w.config.concurrency - len(w.held) - w.reading_wakeups - self.load
            if room <= 0:
                self.room.clear()
                self.waiting_for_room = True
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self.room.wait()
                finally:
                    self.waiting_for_room = False
                duty.ok()
                continue
            share = max(1, room // 2)
            self.read_turn.set()
            self.reading += share
            try:
                tasks = await self.store.read_queues(w.name, self.queues, share, block)
            finally:
                self.reading -= share
            duty.ok()
            for task in tasks:
                self._start(task)
            await self._hand_over(w._room, lambda: w.waiting_for_room, w.read_turn)

    async def give_turn(self) -> None:
        """Called by the wake-up reader after each read: when this reader waits for room, it
        gets to start its read before the wake-up reader reads again (with a concurrency of 1,
        the two would otherwise race for the one slot, and the faster loop would always win)."""
        await self._hand_over(self.room, lambda: self.waiting_for_room, self.read_turn)

    @staticmethod
    async def _hand_over(
        room: asyncio.Event, waiting: Callable[[], bool], turn: asyncio.Event
    ) -> None:
        """Wake the other reader (``room``) and, when it waits, give it the time to start a read
        (``turn``), at most TURN_S; else just yield once."""
        room.set()
        if not waiting():
            await asyncio.sleep(0)
            return
        turn.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TURN_S):
                await turn.wait()

    async def reclaim_loop(self, duty: Duty) -> None:
        w = self.worker
        interval = max(0.2, w.config.lease_ms / 3000.0)
        while not w.stopping.is_set():
            await asyncio.sleep(interval)
            for queue in self.queues:
                for p in range(self.store.partitions):
                    room = w.config.concurrency - len(w.held) - w.reading_wakeups - self.load
                    room = min(room, 50)
                    if room <= 0:
                        break
                    claimed = await self.store.reclaim_tasks(
                        w.name, queue, p, w.config.lease_ms, room
                    )
                    for entry in claimed:
                        await self._reclaimed(entry)
            duty.ok()

    async def _reclaimed(self, entry: PoolTask | Wakeup) -> None:
        w = self.worker
        if isinstance(entry, Wakeup):  # a run's wake-up: the same rules as on the ready stream
            if entry.deliveries > w.config.max_deliveries:
                await dead_letter(w, entry)
            else:
                w.log.info("wakeup_reclaimed", run_id=entry.run_id, queue=entry.queue)
                w._dispatch(entry)
        elif entry.message_id not in self.running:
            w.log.info(
                "pool_task_reclaimed",
                run_id=entry.run_id,
                step_id=entry.step_id,
                deliveries=entry.deliveries,
            )
            self._start(entry)

    async def heartbeat_loop(self, duty: Duty) -> None:
        interval = self.worker.config.heartbeat_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            if self.running:
                await self.store.heartbeat_tasks(self.worker.name, list(self.running.values()))
            duty.ok()

    # -- one task ------------------------------------------------------------------------------

    def _start(self, task: PoolTask | Wakeup) -> None:
        if isinstance(task, Wakeup):  # a run of a workflow of this queue: held like any other
            self.worker._dispatch(task)
            return
        self.running[task.message_id] = task
        self.worker._spawn(self._run(task))

    async def _run(self, task: PoolTask) -> None:
        log = self.worker.log.bind(
            run_id=task.run_id, step_id=task.step_id, queue=task.queue, task=task.message_id
        )
        try:
            await self._handle(task, log)
        except Exception as exc:
            # the entry stays pending: reclaimed after the lease (and dead-lettered in the end)
            log.error("pool_task_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
        finally:
            self.running.pop(task.message_id, None)
            self.room.set()
            self.worker._room.set()

    async def _handle(self, task: PoolTask, log: Any) -> None:
        """Claim the task's step, run one attempt, commit its outcome under the claim, ack."""
        prepared = await self._prepare(task, log)
        if prepared is None:
            return
        fn, created, workflow = prepared
        claim = new_id("clm")
        started = await self._commit(task, [self._claimed("step_started", task, claim)], "")
        status = started.results[0].status if started.results else started.code
        if started.code != "ok" or status != "ok":
            # "exists": another live claimant holds the step for another entry; "terminal": it is
            # finished; "too_early": its retry is not due (the holder routes it again when it
            # is): in every case this entry has nothing left to do
            log.info("pool_task_skipped", status=status)
            await self.store.ack_tasks([task])
            return
        attempt = started.results[0].extra
        if attempt > fn.max_retries + 1:
            await self._exhausted(task, claim, fn, attempt, log)
            return
        ctx = StepContext(
            step_id=task.step_id,
            step_name=fn.name,
            attempt=attempt,
            started_ms=self.worker.now_ms(),
            run_id=task.run_id,
            workflow_name=workflow[0],
            workflow_started_ms=workflow[1],
        )
        outcome = await self.worker.steps.run_task(fn, task.step_id, created.input, ctx)
        fields = {**outcome.fields, "claim": claim}
        res = await self._commit(task, [NewEvent(outcome.type, task.step_id, fields)], "step")
        status = res.results[0].status if res.results else res.code
        if status == "stale":
            # fenced out: another pool worker reclaimed the task and claimed the step since; the
            # entry is its own now, so it is left alone
            log.warning("pool_step_result_refused", attempt=attempt)
            return
        log.info("pool_step_done", outcome=outcome.type, attempt=attempt, status=status)
        await self.store.ack_tasks([task])

    async def _prepare(
        self, task: PoolTask, log: Any
    ) -> tuple[StepFunction, StepCreated, tuple[str, int]] | None:
        """The step function, its creation event and (workflow name, run start ms); None when
        the task was settled here instead (malformed, delivered too often, step gone) or is
        left for another worker (a step this worker does not import)."""
        if not task.run_id.startswith("wrun_") or not task.step_id:
            log.warning("malformed_pool_task")
            await self.store.dead_letter_task(task, "malformed pool task: no valid 'run'/'step'")
            return None
        if task.deliveries > self.worker.config.max_deliveries:
            await self._give_up(task, new_id("clm"), log)
            return None
        found = await self._step_of(task)
        if found is None:
            log.warning("pool_task_without_step")  # the run expired, or its log was removed
            await self.store.ack_tasks([task])
            return None
        created, workflow = found
        try:
            return revive_step_ref(created.name, {}), created, workflow
        except StepNotRegisteredError:
            # left pending: another pool worker (one that imports the step) reclaims it after
            # the lease; dead-lettered with its step failed if none ever does
            log.error("pool_step_not_registered", step=created.name)
            return None

    async def _exhausted(
        self, task: PoolTask, claim: str, fn: StepFunction, attempt: int, log: Any
    ) -> None:
        """Reclaimed once more after the last attempt allowed: pool workers died running the step
        every time. It fails without running (the holder's rule for steps it runs itself)."""
        error = RuntimeError(
            f'Step "{fn.name}" exceeded max retries ({fn.max_retries} retries): its pool '
            f"worker stopped during each of its {attempt - 1} attempts"
        )
        failed = {"error": error_json(error), "claim": claim}
        await self._commit(task, [NewEvent("step_failed", task.step_id, failed)], "step")
        log.error("pool_step_exhausted", attempt=attempt)
        await self.store.ack_tasks([task])

    def _claimed(self, etype: str, task: PoolTask, claim: str) -> NewEvent:
        return NewEvent(etype, task.step_id, {"claim": claim, "task": task.message_id})

    async def _commit(self, task: PoolTask, events: list[NewEvent], wake: str) -> CommitResult:
        return await self.worker.committer.submit(
            Commit(run_id=task.run_id, events=events, wake=wake)
        )

    async def _step_of(self, task: PoolTask) -> tuple[StepCreated, tuple[str, int]] | None:
        """The step's creation event and (workflow name, run start ms), from the run's log."""
        created: StepCreated | None = None
        workflow, started_ms = "", 0
        for ev in await self.worker.world.read_events(task.run_id):
            if isinstance(ev, RunCreated):
                workflow, started_ms = ev.workflow, ev.ts
            elif isinstance(ev, RunStarted):
                started_ms = ev.ts
            elif isinstance(ev, StepCreated) and ev.corr == task.step_id:
                created = ev
                break
        return (created, (workflow, started_ms)) if created is not None else None

    async def _give_up(self, task: PoolTask, claim: str, log: Any) -> None:
        """A task delivered too often: its step failed (under a claim of its own), then the
        entry dead-lettered."""
        reason = (
            f"pool task of step {task.step_name or task.step_id} on queue {task.queue!r} "
            f"delivered {task.deliveries} times without finishing (max "
            f"{self.worker.config.max_deliveries}); pool workers running it crashed or stalled"
        )
        log.error("pool_task_dead_lettered", deliveries=task.deliveries)
        error = error_json(RuntimeError(reason))
        failed = NewEvent("step_failed", task.step_id, {"error": error, "claim": claim})
        await self._commit(task, [self._claimed("step_started", task, claim), failed], "step")
        await self.store.dead_letter_task(task, reason)
