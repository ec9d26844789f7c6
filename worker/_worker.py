"""The worker: reads wake-ups, holds runs under a lease, replays them and executes their steps.

A run is advanced by one worker at a time (its lease holder). The holder keeps the run's workflow
instance in memory, executes steps inline as soon as the code calls them, and commits every
transition through one batching committer, so under load one script call carries commits of many
runs. The wake-up message that brought a run in stays pending (its idle time reset by heartbeats)
until the holder lets the run go; if the worker dies, another one reclaims the message once the lease
lapses and restarts the steps that were in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _health_http
from . import _tracing as tracing
from . import _worker_loops as duties
from ._batcher import Batcher
from ._children import ensure_children, settle_ended
from ._deployments import lane, worker_deployment_id, worker_lanes
from ._errors import (
    CorruptEventError,
    PayloadTooLargeError,
    WorkflowNotRegisteredError,
)
from ._events import Event, NewEvent, RunCreated, appended_events, make_event
from ._flow_gate import FlowGate
from ._health import answer_health_check, health_check_id
from ._ids import lease_token
from ._logging import get_logger
from ._pool_world import DEFAULT_QUEUE, pool_queues
from ._pools import PoolRunner, step_queue
from ._registry import StepFunction, get_workflow
from ._replay import Outcome, StepCall, WorkflowInstance, error_json
from ._step_exec import StepExecutor
from ._supervisor import Duty, Supervisor
from ._world import Acquired, Commit, CommitResult, Wakeup, World

if TYPE_CHECKING:
    from ._metrics import WorkerMetrics

TERMINAL = ("completed", "failed", "cancelled")
HOLD_FOR_TIMER_S = 1.0  # a run whose next timer is due sooner than this stays with its worker


def _env_int(name: str, default: int) -> Any:
    """An int field whose default is read from the environment when the config is built."""
    return field(default_factory=lambda: int(os.environ.get(name) or default))


def _env_float(name: str, default: float) -> Any:
    """A float field whose default is read from the environment when the config is built."""
    return field(default_factory=lambda: float(os.environ.get(name) or default))


@dataclass
class WorkerConfig:
    concurrency: int = 100
    lease_ms: int = _env_int("WORKFLOW_LEASE_MS", 15000)
    heartbeat_ms: int = _env_int("WORKFLOW_HEARTBEAT_MS", 1000)
    max_deliveries: int = _env_int("WORKFLOW_MAX_DELIVERIES", 10)
    block_threshold_s: float = _env_float("WORKFLOW_BLOCK_WARN_SECONDS", 1.0)
    cache_size: int = 10_000
    batch: int = 200
    drain_timeout_s: float = 30.0
    # a duty without a success for this long is reported by health checks (see _worker_loops)
    duty_quiet_s: float = _env_float("WORKFLOW_DUTY_QUIET_SECONDS", 60.0)
    health_host: str = "127.0.0.1"
    health_port: int | None = None  # serve GET /healthz there (see _health_http)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # count, and serve GET /metrics there (see _metrics)
    # the queues this worker serves: "default" replays runs and runs their steps without a queue;
    # any other name runs the steps declared with it (see _pools.py)
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    # the deployment id (see _deployments.py): None takes WORKFLOW_DEPLOYMENT_ID, else the hash
    # of the imported workflow modules' source, when the worker is built
    deployment: str | None = None


@dataclass
class Held:
    """A run this worker took a wake-up for, and (once ``leased``) holds the lease on."""

    run_id: str
    wakeup: Wakeup
    nudge: asyncio.Event = field(default_factory=asyncio.Event)
    known_seq: int = 0
    local: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    leased: bool = False  # heartbeats renew only leases actually taken
    lost: bool = False
    # the seq Redis answered when it was below what this worker has seen: the stored log went
    # back (a failover to a replica that was behind), and the instance is rebuilt from it. Only
    # answers to the run's own loop count, with no step of it running here: nothing else of
    # this worker writes to the run then, so the answer is not older than what the instance
    # holds (a heartbeat's answer can be: it runs beside the commits)
    behind: int | None = None
    released: bool = False  # the commit that ended the run gave up its lease (Commit.done)
    # started from its wake-up's run_created (Wakeup.created): the first commit takes the lease
    # (Commit.acquire); refused: it did not (taken, pinned elsewhere, or not new any more), and
    # the run is taken the usual way, with an acquire
    acquiring: bool = False
    refused: bool = False
    failed: bool = False  # processing failed: the run is being handed over
    releasing: bool = False  # a release of the lease is on the wire
    # wake-ups that came in while a release was on the wire: they stay pending and are dispatched
    # again once the run is let go, as the release may have passed before their events were written
    deferred: list[Wakeup] = field(default_factory=list)
    # wake-ups that came in while this worker held the run otherwise: a nudge to re-read the log.
    # They stay pending (renewed with the lease) until the run is let go with the log seen past
    # them (a release answered "ok", or the commit of its end), and are dispatched again when it
    # is let go otherwise: a holder whose lease lapsed under it (a stall) drops the run, and the
    # worker that took it over may have let it go before their events were written
    merged: list[Wakeup] = field(default_factory=list)


class Worker:
    def __init__(self, world: World, config: WorkerConfig | None = None) -> None:
        self.world = world
        self.config = config or WorkerConfig()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.token = lease_token(self.name)
        self.deployment = worker_deployment_id(self.config.deployment)
        self.log = get_logger(worker=self.name, deployment=self.deployment)
        self.held: dict[str, Held] = {}
        self.cache: OrderedDict[str, WorkflowInstance] = OrderedDict()
        self.committer: Batcher[Commit, CommitResult] = Batcher(self._commits, self.config.batch)
        self.acquirer: Batcher[tuple[str, int], Acquired] = Batcher(
            lambda runs: world.acquire_many(
                self.token, self.config.lease_ms, runs, self.deployment
            ),
            self.config.batch,
        )
        self.releaser: Batcher[tuple[str, int, Wakeup | None], tuple[str, int]] = Batcher(
            lambda runs: world.release_many(self.token, runs), self.config.batch
        )
        self.metrics: WorkerMetrics | None = None
        if self.config.metrics_port is not None:  # prometheus-client is imported only then
            from ._metrics import WorkerMetrics

            self.metrics = WorkerMetrics(world, lambda: len(self.held))
        self.steps = StepExecutor(
            world, self.config.concurrency, self.now_ms, self.log, self.metrics
        )
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._room = asyncio.Event()
        # turn-taking with the pool reader (see PoolRunner.give_turn): the wake-up reader waits
        # for room, and has started a read since it was last given a turn
        self.waiting_for_room = False
        self.read_turn = asyncio.Event()
        # the loop running run(), while it runs: an instance's advance() puts it back as the
        # running loop without asking which it is (asking costs a system call on Python 3.11)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._advancing: str | None = None
        self._advance_started = 0.0
        self._main_thread = threading.get_ident()
        self._clock_offset_ms = 0
        self.skipped_ms = 0  # how far a test environment moved the world's clock (skip_clock)
        self.health_socket: socket.socket | None = None
        self.metrics_socket: socket.socket | None = None
        self.supervisor = Supervisor(self.log)
        self.serves_default = DEFAULT_QUEUE in self.config.queues
        self.reading_wakeups = 0  # slots a read of wake-ups in flight may fill
        # the queue streams this worker reads: its queues' (not default: the ready stream) and
        # its deployment's lanes of each of its queues (see _deployments.py)
        lanes = worker_lanes(self.deployment, self.config.queues)
        self.pools = PoolRunner(self, (*self.config.queues, *lanes))
        self.flow = FlowGate(self)  # concurrency= / rate= of steps and workflows (_flow_gate.py)
        self.steps.flow = self.flow

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Process runs until ``stop()``; then drain in-flight steps and hand runs over.

        Raises :class:`DutyFailedError` when a background duty keeps failing: the process should
        exit non-zero and be replaced rather than live on half-dead.
        """
        await self.world.check_config()  # PartitionCountMismatchError before anything is read
        self._loop = asyncio.get_running_loop()  # see _advance
        self.steps.tracing = tracing.enabled()  # a tracer provider is configured by now
        await self.world.ensure_groups()
        await self.pools.start()
        for warning in await self.world.server_warnings():
            self.log.warning("redis_configuration_risk", problem=warning)
        await self.sync_clock()
        if self.config.health_port is not None:
            self.health_socket = _health_http.bind(self.config.health_host, self.config.health_port)
        if self.config.metrics_port is not None:
            self.metrics_socket = _health_http.bind(
                self.config.metrics_host, self.config.metrics_port
            )
        self.log.info(
            "worker_started",
            concurrency=self.config.concurrency,
            queues=list(self.config.queues),
            deployment=self.deployment,
        )
        duties.start_watchdog(self)
        duties.supervise(self)
        supervised = asyncio.create_task(self.supervisor.run())
        stopping = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({supervised, stopping}, return_when=asyncio.FIRST_COMPLETED)
        failure = supervised.exception() if supervised.done() else None
        if failure is not None:
            self.log.critical("worker_failed", error=str(failure), held=len(self.held))
            self.stopping.set()
        else:
            self.log.info("worker_draining", held=len(self.held))
            deadline = time.monotonic() + self.config.drain_timeout_s
            while self._tasks and time.monotonic() < deadline:
                await asyncio.wait(list(self._tasks), timeout=0.2)
        supervised.cancel()
        stopping.cancel()
        await asyncio.gather(supervised, stopping, return_exceptions=True)
        self.steps.shutdown()
        await duties.forget_self(self)
        self._loop = None
        if failure is not None:
            raise failure
        self.log.info("worker_stopped")

    def stop(self) -> None:
        self.stopping.set()

    @property
    def pool_load(self) -> int:
        """Slots of the concurrency taken by pool tasks this worker executes (see _pools.py)."""
        return self.pools.load

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._spawned_done)
        return task

    def _spawned_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error("task_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    # -- the server's clock --------------------------------------------------------------------

    def now_ms(self) -> int:
        """The Redis server's clock as this worker best knows it: timers are due by that clock."""
        return int(time.time() * 1000) + self._clock_offset_ms

    def skip_clock(self, ms: int) -> None:
        """The world's clock moved ``ms`` ahead of the server's (a test environment skipping
        time, see worker/testing.py): timers are due by the moved clock, and rate windows count
        on it (``skipped_ms``)."""
        self._clock_offset_ms += ms
        self.skipped_ms += ms

    def _saw_server_time(self, server_ms: int) -> None:
        if server_ms > 0:
            self._clock_offset_ms = server_ms - int(time.time() * 1000)

    async def _commits(self, commits: list[Commit]) -> list[CommitResult]:
        began = time.perf_counter()
        results = await self.world.commit(commits)
        if self.metrics is not None:
            self.metrics.commit_done(time.perf_counter() - began)
        if results:
            self._saw_server_time(results[-1].now_ms)
        return results

    async def sync_clock(self) -> None:
        self._saw_server_time(await self.world.server_time_ms())

    # -- reading wake-ups ----------------------------------------------------------------------

    async def read_loop(self, duty: Duty) -> None:
        while not self.stopping.is_set():
            room = self.config.concurrency - len(self.held) - self.pool_load
            if room <= 0:
                self._room.clear()
                self.waiting_for_room = True
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._room.wait()
                finally:
                    self.waiting_for_room = False
                duty.ok()  # waiting for room is this duty's work too
                continue
            self.read_turn.set()
            wakeups = await self._read_beside_pools(min(room, self.config.batch))
            duty.ok()
            for w in wakeups:
                self._dispatch(w)

    async def _read_beside_pools(self, count: int) -> list[Wakeup]:
        """Read wake-ups while pool readers share the concurrency: the slots this read may fill
        are taken for its duration (so the two never bring more work than there is room for), and
        given back with a turn for the pool readers before the next read."""
        self.reading_wakeups = count
        try:
            return await self.world.read_wakeups(self.name, count, 200)
        finally:
            self.reading_wakeups = 0
            await self.pools.give_turn()

    def _dispatch(self, w: Wakeup) -> None:
        check_id = health_check_id(w)
        if check_id is not None:  # a health check from an older client, on the ready stream
            self._spawn(self._answer_legacy_health_check(w, check_id))
            return
        if not w.run_id.startswith("wrun_"):
            self.log.warning("malformed_wakeup", message_id=w.message_id, run_id=w.run_id)
            self._spawn(self.world.dead_letter(w, "malformed wake-up: no valid 'run' field"))
            return
        if w.reason == "ended":  # an ended run's parents and children (see _children.py)
            self._spawn(settle_ended(self.world, w, self.log))
            return
        held = self.held.get(w.run_id)
        if held is None:
            self.held[w.run_id] = Held(w.run_id, w)
            self._spawn(self._process(self.held[w.run_id]))
        elif held.releasing:
            held.deferred.append(w)
        elif held.failed or w.message_id == held.wakeup.message_id:
            # the run's processing failed and its hand-over is under way, or this is the run's
            # own wake-up coming back: either way the message must stay pending, so that it is
            # reclaimed (by any worker) once this worker lets the run go
            self.log.info("wakeup_left_pending", run_id=w.run_id, message_id=w.message_id)
        else:
            held.nudge.set()  # the holder re-reads the log before it lets the run go
            if all(m.message_id != w.message_id for m in held.merged):
                held.merged.append(w)

    async def _answer_legacy_health_check(self, w: Wakeup, check_id: str) -> None:
        try:
            await answer_health_check(self.world, check_id, duties.report(self))
        finally:
            await self.world.ack([w])

    async def _process(self, held: Held) -> None:
        run_id = held.run_id
        log = self.log.bind(run_id=run_id)
        try:
            created = self._creation(held)
            if created is not None:
                held.acquiring, held.known_seq = True, 1
                await self._drive(held, log, created)
                if not held.refused:
                    return
                held.refused, held.known_seq = False, 0
            cached = self._instance(run_id)
            acq = await self.acquirer.submit((run_id, cached.seq if cached else 0))
            if acq.code == "pinned" and acq.status in TERMINAL:
                await self.world.ack([held.wakeup])  # a finished run: nothing left to replay
                return
            if acq.code == "pinned":  # another deployment's run: never replayed by this code
                self._evict(run_id)
                target = lane(held.wakeup.queue, acq.deployment)
                await pool_queues(self.world).forward_wakeup(held.wakeup, target)
                log.info("run_forwarded_to_deployment", deployment=acq.deployment, lane=target)
                return
            if acq.code != "ok":
                # a reclaimed wake-up may be the live holder's own (its lease renewed since the
                # claim), which must stay pending until it lets the run go: left as it is
                if acq.code != "busy" or held.wakeup.deliveries <= 1:
                    await self.world.ack([held.wakeup])
                return
            held.known_seq = acq.seq
            held.leased = True
            if acq.taken_over:
                log.info("run_taken_over")
            await self._drive(held, log, acq.events)
        except Exception as exc:
            log.error("run_processing_failed", error=str(exc), exc_info=True)
            held.failed = True
            self._evict(run_id)
            await self._hand_over_failed(held, log)
        finally:
            if self.held.get(run_id) is held:
                del self.held[run_id]
            self._room.set()
            self.pools.room.set()
            for w in (*held.deferred, *held.merged):
                self._dispatch(w)

    def _creation(self, held: Held) -> list[Event] | None:
        """A new run's run_created, from its wake-up (Wakeup.created), when this worker may
        start the run with no acquire: its first commit takes the lease. None: the usual way,
        which also reports whatever is wrong with the run."""
        ev = held.wakeup.created
        if not isinstance(ev, RunCreated) or held.run_id in self.cache:
            return None
        try:
            wf = get_workflow(ev.workflow)
        except WorkflowNotRegisteredError:
            return None
        if wf.queue not in self.config.queues or wf.flow is not None:
            return None  # forwarded, or its start waits for a slot: both want the lease first
        if ev.deployment not in ("", self.deployment):
            return None
        return [ev]

    async def _hand_over_failed(self, held: Held, log: Any) -> None:
        """After a failure: the lease given up and a fresh wake-up for any worker.

        While this goes on, wake-ups of the run stay pending (see ``_dispatch``). When Redis
        cannot take even this, the run's wake-up stays pending and unacknowledged, so the reclaim
        of any worker picks the run up again once the lease lapses.
        """
        try:
            if not held.lost:
                await self.world.release(held.run_id, self.token, -1)
            del self.held[held.run_id]
            await self.world.requeue(held.wakeup, "retry")
        except Exception as exc:
            log.warning("run_hand_over_failed", error=str(exc), wakeup=held.wakeup.message_id)

    async def _safe_release(self, held: Held, *, requeue: bool) -> None:
        try:
            await self.world.release(held.run_id, self.token, -1)
            if requeue:
                await self.world.requeue(held.wakeup, "handoff")
        except Exception as exc:
            self.log.warning("run_release_failed", run_id=held.run_id, error=str(exc))

    # -- driving one run -----------------------------------------------------------------------

    def _instance(self, run_id: str) -> WorkflowInstance | None:
        inst = self.cache.get(run_id)
        if inst is not None:
            self.cache.move_to_end(run_id)
        return inst

    def _evict(self, run_id: str) -> None:
        inst = self.cache.pop(run_id, None)
        if inst is not None:
            self._close(inst)

    def _close(self, inst: WorkflowInstance) -> None:
        error = inst.close()
        if error is not None:  # raised by the workflow's own cleanup code: it ends nothing here
            self.log.warning("workflow_cleanup_failed", run_id=inst.run_id, error=repr(error))

    def _remember(self, inst: WorkflowInstance) -> None:
        self.cache[inst.run_id] = inst
        self.cache.move_to_end(inst.run_id)
        while len(self.cache) > self.config.cache_size:
            old_id, old = self.cache.popitem(last=False)
            if old_id in self.held:
                self.cache[old_id] = old
                break
            self._close(old)

    async def _load(self, held: Held, fresh: list[Event]) -> WorkflowInstance | None:
        """The run's instance, caught up with the log (``fresh``: events already read)."""
        if held.behind is not None:
            gone = self.cache.get(held.run_id)
            self.log.warning(
                "run_log_went_back",
                run_id=held.run_id,
                seen_seq=gone.seq if gone is not None else held.known_seq,
                stored_seq=held.behind,
            )
            held.behind = None
            self._evict(held.run_id)
            held.known_seq = 0
            fresh = []
        inst = self._instance(held.run_id)
        if inst is None:
            events = fresh if fresh and fresh[0].seq == 1 else None
            if events is None:
                events = await self.world.read_events(held.run_id)
            if not events:
                return None
            workflow = getattr(events[0], "workflow", "")
            wf = get_workflow(workflow)
            inst = WorkflowInstance(held.run_id, wf.name, wf.fn, wf.decode_args)
            inst.feed(events)
            self._remember(inst)
        else:
            if fresh and fresh[0].seq == inst.seq + 1:
                inst.feed(fresh)
            if held.known_seq > inst.seq:
                inst.feed(await self.world.read_events(held.run_id, inst.seq))
        held.known_seq = max(held.known_seq, inst.seq)
        return inst

    async def _commit(
        self, held: Held, inst: WorkflowInstance, events: list[NewEvent], *, fenced: bool = True
    ) -> CommitResult:
        # the wake-ups merged so far: their events are in the log, and in the instance if the
        # log is where the instance is (a fenced commit answered "ok"), under this worker's lease
        covered = len(held.merged) if fenced else 0
        res = await self.committer.submit(
            Commit(
                run_id=held.run_id,
                events=events,
                token=self.token,
                expected_seq=inst.seq if fenced else -1,
            )
        )
        held.known_seq = max(held.known_seq, res.seq)
        if res.code == "lease":
            held.lost = True
        elif res.code != "ok" and res.seq < inst.seq and not held.local:
            held.behind = res.seq
        elif res.appended and res.appended[0].seq <= inst.seq + 1:
            inst.feed(res.appended)
        if covered and res.code == "ok":  # a run held across many timers keeps few pending
            self._ack_merged(held, covered)
        return res

    async def _drive(self, held: Held, log: Any, fresh: list[Event]) -> None:
        while True:
            held.nudge.clear()
            try:
                inst = await self._load(held, fresh)
                fresh = []
            except (WorkflowNotRegisteredError, CorruptEventError) as exc:
                await self._fail_unloadable(held, exc, log)
                return
            if inst is None:
                await self.world.ack([held.wakeup])
                return
            queue = get_workflow(inst.workflow_name).queue
            if queue not in self.config.queues:
                await self._forward(held, queue, log)
                return
            if held.lost:
                break
            try:
                progressed = await self._step_run(held, inst, log)
            except CorruptEventError as exc:  # events fed after a commit do not fold either
                await self._fail_unloadable(held, exc, log)
                return
            if held.refused:  # its first commit did not take the lease: see Held.acquiring
                return
            if held.lost:
                log.warning("lease_lost")
                self._evict(held.run_id)
                return
            if progressed:
                continue
            due_in = self._next_due_in(inst)
            if held.local or (due_in is not None and due_in <= HOLD_FOR_TIMER_S):
                # steps in flight, or a sleep / retry due very soon: keep the run and wait here
                # rather than hand it to the timer queue and back
                await self._wait_nudge(held, due_in)
                continue
            if held.released:  # the commit of its end gave the run up (Commit.done)
                self._evict(held.run_id)
                self._ack_merged(held)
                return
            if self.stopping.is_set() and inst.finished is None and inst.ended is None:
                await self._safe_release(held, requeue=True)
                return
            held.releasing = True
            try:
                code, seq = await self.releaser.submit((held.run_id, inst.seq, held.wakeup))
            finally:
                held.releasing = False
            if code == "changed":
                if seq < inst.seq and not held.local:
                    held.behind = seq
                held.known_seq = max(held.known_seq, seq)
                continue
            if code == "ok":
                self._ack_merged(held)
            if inst.finished is not None or inst.ended is not None:
                if inst.ended == "run_cancelled":
                    await self.flow.run_ended(inst)  # its workflow's slot, or its place in line
                self._evict(held.run_id)
            return
        self._evict(held.run_id)

    def _ack_merged(self, held: Held, count: int | None = None) -> None:
        """The log seen past the first ``count`` (default: all) merged wake-ups, by the run's
        holder under its lease, or as it let the run go: they are done with."""
        done = held.merged[:count]
        if done:
            self._spawn(self.world.ack(done))
            del held.merged[: len(done)]

    async def _forward(self, held: Held, queue: str, log: Any) -> None:
        """A run of a workflow declared with a queue this worker does not serve: its lease given
        up and its wake-up handed to that queue's stream, where a worker serving it picks the
        run up (see _pools.py). Until the hand-over is written the wake-up stays pending here."""
        self._evict(held.run_id)
        await self.world.release(held.run_id, self.token, -1)
        # the run is pinned to this worker's deployment (acquire.lua): its lane of that queue
        target = lane(queue, self.deployment)
        await pool_queues(self.world).forward_wakeup(held.wakeup, target)
        log.info("run_forwarded", queue=queue, lane=target)

    async def _wait_nudge(self, held: Held, delay: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await held.nudge.wait()

    def _next_due_in(self, inst: WorkflowInstance) -> float | None:
        dues = [w.resume_at for w in inst.pending_waits()]
        now_ms = self.now_ms()
        parked = self.flow.parked.get(inst.run_id, ())  # steps waiting for a flow slot
        dues += [
            s.retry_after
            for s in inst.pending_steps()
            # a routed step already due waits in its queue, not here; a parked one for its slot
            if s.status == "pending"
            and not (step_queue(s.fn) and s.retry_after <= now_ms)
            and s.corr not in parked
        ]
        if not dues:
            return None
        return max(0.01, (min(dues) - self.now_ms()) / 1000.0)

    async def _step_run(self, held: Held, inst: WorkflowInstance, log: Any) -> bool:
        """One pass: start the run, complete due waits, advance the code, commit, start steps.

        Returns True when the log changed so another pass should follow at once.
        """
        if inst.finished is not None or inst.ended is not None:
            return False
        # a run not started yet: run_started goes out in the commit of what the code does first
        head = None if inst.has_started else NewEvent("run_started")
        if head is not None and not await self.flow.admit_run(inst):
            return False  # parked until a slot of its workflow's limit is handed to it
        now_ms = self.now_ms()
        due = [w for w in inst.pending_waits() if w.resume_at <= now_ms]
        if due:
            res = await self._commit(held, inst, [NewEvent("wait_completed", w.corr) for w in due])
            if res.code == "ok" or res.code == "conflict":
                return True
        while True:
            progressed, inline = await self._advance_and_commit(held, inst, log, head)
            if inline is None:
                return progressed
            call, attempt = inline
            head = await self.steps.run(inst, call, attempt)
            if head.type == "step_retrying":
                await self._commit(held, inst, [head], fenced=False)
                return True

    async def _advance_and_commit(
        self, held: Held, inst: WorkflowInstance, log: Any, head: NewEvent | None
    ) -> tuple[bool, tuple[StepCall, int] | None]:
        """Advance the code and commit what it decided, in one fenced commit.

        ``head`` is the result of a step this worker just ran inline, or the run_started of a run
        this worker starts: it is fed to the workflow before it is in the log (with the time it
        is given, which the log keeps), so that it and the next steps' creation and start go out
        in ONE commit. If that commit is refused, the instance has seen an event the log does
        not hold: it is dropped (rebuilt from the log) and the head committed alone.
        Returns (log changed, the one step to run inline next, if any).
        """
        base = inst.seq
        if head is not None:
            ts = self.now_ms()
            if ts < inst.clock_ms:  # (max() costs a call of its own: once per step)
                ts = inst.clock_ms
            fields = head.fields
            fields["ts"] = str(ts)  # the head is this worker's own: its fields dict too
            # a step's result is recorded without building its event (as feed() would)
            if head.type != "step_completed" or not inst.complete_own(
                head.corr, fields.get("result", "null"), base + 1, ts
            ):
                inst.feed([make_event(head, base + 1, ts, 0)])
        # the code advanced, timed: the watchdog reads _advancing (see start_watchdog)
        self._advancing = inst.run_id
        self._advance_started = began = time.monotonic()
        try:
            outcome = inst.advance(self._loop)
        finally:
            self._advancing = None
            took = time.monotonic() - began
            if took > self.config.block_threshold_s:
                self._blocked(inst, took, log)
        if inst.unensured:  # a fresh replay meets children its log started: create them if need be
            await ensure_children(self.world, inst, ())
        elif head is not None and outcome.kind == "suspended" and len(outcome.commands) == 1:
            call = self._next_in_sequence(held, inst, outcome.commands[0])
            if call is not None:  # the commonest pass: the general path below, minus its searches
                first = outcome.commands[0]
                started = NewEvent("step_started", first.corr)
                trio = [head, first, started]
                res = await self.committer.enqueue(
                    Commit(
                        run_id=held.run_id,
                        events=trio,
                        token=self.token,
                        expected_seq=base,
                        fed=3,
                    )
                )
                if res.code == "ok":
                    r = res.results
                    if r[0].status == "ok" and r[1].status == "ok" and r[2].status == "ok":
                        if res.seq > held.known_seq:
                            held.known_seq = res.seq
                        extras = (r[1].extra, r[2].extra)
                        if inst.append_own(trio[1:], base + 2, res.now_ms, extras):
                            return True, (call, r[2].extra)
                return await self._committed(
                    held, inst, log, head, base, outcome, trio, res, [call], []
                )
        now_ms = self.now_ms()
        events: list[NewEvent] = []
        start: list[StepCall] = []
        routed: list[StepCall] = []
        done = held.wakeup if outcome.kind in ("completed", "failed") else None  # see Commit.done
        if outcome.kind == "completed":  # commands: the markers patched() decided at the end
            events = [*outcome.commands, NewEvent("run_completed", "", {"output": outcome.output})]
        elif outcome.kind == "failed":
            events = [*outcome.commands, NewEvent("run_failed", "", {"error": outcome.error})]
        elif outcome.kind == "suspended":
            created = self._creation_events(inst, outcome, log)
            if created is not None:
                start, exhausted, routed = self._startable(held, inst, outcome, now_ms)
                if held.acquiring and self.flow.gated(start):  # slots are taken under a lease
                    held.refused, held.acquiring = True, False
                    self._evict(held.run_id)
                    return False, None
                if self.flow.gated(start):
                    start = await self.flow.admit(held.run_id, inst, start)
                events = created + [NewEvent("step_started", c.corr) for c in start]
                events += [self._exhausted(c) for c in exhausted]
        if head is not None:
            events.insert(0, head)
        if not events:
            await self._route(held, routed, log, inst.priority)
            return False, None
        commit = Commit(
            run_id=held.run_id,
            events=events,
            token=self.token,
            expected_seq=base,
            fed=len(events),  # the worker feeds its instance itself, below
            done=done,
            acquire=(self.config.lease_ms, self.deployment) if held.acquiring else None,
        )
        if self.steps.tracing:
            attributes = {"workflow.run_id": held.run_id, "workflow.events": len(events)}
            with tracing.span("workflow.commit", inst.trace, attributes):
                res = await self.committer.submit(commit)
        else:
            res = await self.committer.enqueue(commit)
        if held.acquiring:
            held.acquiring = False
            if res.code != "ok":  # see Held.acquiring
                held.refused = True
                self._evict(held.run_id)
                return False, None
            held.leased = True
        return await self._committed(
            held, inst, log, head, base, outcome, events, res, start, routed
        )

    def _next_in_sequence(
        self, held: Held, inst: WorkflowInstance, created: NewEvent
    ) -> StepCall | None:
        """The step of the commonest pass, when this is one: the step this worker just ran is
        done, and the code asked for exactly one new step, which this worker runs next, inline
        (no other step of the run open or running here, no flow control, no queue of its own,
        no trace spans, an input within bounds). None: the general path decides, the same way
        (_startable finds that one step alone, and the commit is the same)."""
        if created.type != "step_created" or held.local or held.acquiring or self.steps.tracing:
            return None
        call = inst.steps.get(created.corr)
        if call is None or call.created or inst.active_steps:
            return None
        fn = call.fn
        if fn.flow is not None or fn.routed is not None:  # (step_queue(fn), as the fn knows it)
            return None
        payload = created.fields.get("input", "")
        limit = self.world.max_payload_bytes
        if len(payload) * 4 > limit and len(payload.encode()) > limit:
            return None  # the general path fails the run with PayloadTooLargeError
        return call

    async def _committed(
        self,
        held: Held,
        inst: WorkflowInstance,
        log: Any,
        head: NewEvent | None,
        base: int,
        outcome: Outcome,
        events: list[NewEvent],
        res: CommitResult,
        start: list[StepCall],
        routed: list[StepCall],
    ) -> tuple[bool, tuple[StepCall, int] | None]:
        """What a commit of _advance_and_commit's answer does to the run and this worker."""
        done = outcome.kind in ("completed", "failed")
        held.known_seq = max(held.known_seq, res.seq)
        if res.code == "lease":
            held.lost = True
            return False, None
        if res.code != "ok" and res.seq < base and not held.local:
            held.behind = res.seq
        if res.code != "ok":
            if head is not None:
                self._evict(held.run_id)
                solo = await self.committer.submit(
                    Commit(run_id=held.run_id, events=[head], token=self.token)
                )
                held.known_seq = max(held.known_seq, solo.seq)
                held.lost = solo.code == "lease"
            return res.code in ("conflict", "rejected") or head is not None, None
        # the end appended (its status changed here): the lease was given up with it
        if done and res.results[-1].status == "ok":
            held.released, held.leased = True, False  # no heartbeat for a lease given up
        own = 0 if head is None else 1
        if (
            held.released
            and len(events) == own + 1
            and res.results[0].status == "ok"
            and not inst.unensured
        ):
            # the run's end (and the step result before it), with its lease given up: the
            # instance is let go at once (see _drive), so the events are not fed to it
            inst.seq = res.seq
        elif any(r.status != "ok" for r in res.results) or not inst.append_own(
            events[own:], base + own + 1, res.now_ms, [r.extra for r in res.results[own:]]
        ):
            inst.feed(appended_events(events, res.results, res.seq, res.now_ms, own))
        if inst.unensured:  # the children this commit started: created now
            await ensure_children(self.world, inst, {e.corr for e in events})
        if outcome.kind in ("completed", "failed"):
            log.info(f"run_{outcome.kind}")
            await self.flow.run_ended(inst)
            if self.metrics is not None:
                took = (self.now_ms() - inst.started_at_ms) / 1000.0
                self.metrics.run_done(inst.workflow_name, outcome.kind, took)
            if self.steps.tracing:
                tracing.run_ended(
                    inst.trace, inst.workflow_name, inst.run_id, inst.started_at_ms, outcome.kind
                )
            return False, None
        await self._route(held, routed, log, inst.priority)
        # the attempts of the steps just started, as their step_started recorded them
        attempts = {
            ev.corr: r.extra
            for ev, r in zip(events, res.results, strict=False)
            if ev.type == "step_started" and r.status == "ok"
        }
        if len(start) == 1 and not held.local:
            # the common sequential case: run the step right here, no task, no wake-up
            return True, (start[0], attempts.get(start[0].corr, start[0].attempt))
        for call in start:
            self._launch(held, inst, call, attempts.get(call.corr, call.attempt))
        return True, None

    def _creation_events(
        self, inst: WorkflowInstance, outcome: Outcome, log: Any
    ) -> list[NewEvent] | None:
        events = list(outcome.commands)
        limit = self.world.max_payload_bytes
        for ev in events:
            payload = ev.fields.get("input", "")
            if len(payload) * 4 > limit and len(payload.encode()) > limit:
                inst.finished = Outcome(
                    kind="failed",
                    error=error_json(
                        PayloadTooLargeError(
                            f"input of workflow {ev.fields.get('workflow')!r} (a child run)"
                            if ev.type == "child_started"
                            else f"input of step {ev.fields.get('name')!r}",
                            len(payload.encode()),
                            self.world.max_payload_bytes,
                        )
                    ),
                )
                return None
        if not events and inst.is_stuck():
            log.warning("workflow_stuck")
        return events

    def _startable(
        self, held: Held, inst: WorkflowInstance, outcome: Outcome, now_ms: int
    ) -> tuple[list[StepCall], list[StepCall], list[StepCall]]:
        """Steps to start now: the ones just created, pending ones whose retry delay has passed,
        and running ones no task of this worker runs (their previous worker is gone); apart,
        orphaned ones that have used up their attempts (workers died running them every time);
        and apart, the due steps of a queue other than default, which their pool runs (a running
        one is its pool's: a dead pool worker's task is reclaimed by the pool)."""
        out: list[StepCall] = []
        routed: list[StepCall] = []
        for e in outcome.commands:
            if e.type == "step_created":
                call = inst.steps[e.corr]
                (routed if step_queue(call.fn) else out).append(call)
        exhausted = []
        for call in inst.pending_steps():  # only the open steps: cost does not grow with history
            if call.corr in held.local or call.future.done() or call.retry_after > now_ms:
                continue
            if step_queue(call.fn):
                if call.status == "pending" and all(c.corr != call.corr for c in routed):
                    routed.append(call)
            elif call.status == "running" and call.attempt >= call.fn.max_retries + 1:
                exhausted.append(call)
            else:
                out.append(call)
        return out, exhausted, routed

    async def _route(self, held: Held, calls: list[StepCall], log: Any, priority: int) -> None:
        """Hand due steps of a queue other than default to their queues (idempotent), in the
        run's priority band."""
        if not calls:
            return
        # the lane of the run's deployment (this worker's): pool workers of another one never
        # see the task
        steps = [
            (c.corr, c.name, lane(step_queue(c.fn) or DEFAULT_QUEUE, self.deployment))
            for c in calls
        ]
        codes = await pool_queues(self.world).route_steps(held.run_id, steps, priority)
        for (corr, name, queue), code in zip(steps, codes, strict=False):
            if code == "queued":
                log.info("step_routed", step_id=corr, step=name, queue=queue)

    @staticmethod
    def _exhausted(call: StepCall) -> NewEvent:
        fn: StepFunction = call.fn
        error = RuntimeError(
            f'Step "{fn.name}" exceeded max retries ({fn.max_retries} retries): its worker '
            f"stopped during each of its {call.attempt} attempts"
        )
        return NewEvent("step_failed", call.corr, {"error": error_json(error)})

    def _blocked(self, inst: WorkflowInstance, took: float, log: Any) -> None:
        """Workflow code held the event loop for ``took`` seconds in one advance: reported."""
        log.warning(
            "workflow_blocked_loop",
            workflow=inst.workflow_name,
            seconds=round(took, 3),
            hint="workflow code ran synchronously without awaiting; move blocking work into a step",
        )

    async def _fail_unloadable(self, held: Held, exc: Exception, log: Any) -> None:
        log.error("run_unloadable", error=str(exc), error_type=type(exc).__name__)
        self._evict(held.run_id)  # an instance fed part of a log that does not fold is useless
        res = await self.committer.submit(
            Commit(
                run_id=held.run_id,
                token=self.token,
                events=[NewEvent("run_failed", "", {"error": error_json(exc)})],
            )
        )
        if res.code != "ok":
            log.warning("run_failure_not_recorded", code=res.code)
        await self.world.release(held.run_id, self.token, -1, held.wakeup)

    # -- executing steps -----------------------------------------------------------------------

    def _launch(self, held: Held, inst: WorkflowInstance, call: StepCall, attempt: int) -> None:
        task = asyncio.create_task(self._execute(held, inst, call, attempt))
        held.local[call.corr] = task

        def done(_: asyncio.Task[None]) -> None:
            held.local.pop(call.corr, None)
            held.nudge.set()

        task.add_done_callback(done)

    async def _execute(
        self, held: Held, inst: WorkflowInstance, call: StepCall, attempt: int
    ) -> None:
        """Run a step concurrently with others of its run and commit its result on its own."""
        event = await self.steps.run(inst, call, attempt)
        res = await self._commit(held, inst, [event], fenced=False)
        if res.code != "ok":
            self.log.info(
                "step_result_discarded", run_id=held.run_id, step_id=call.corr, code=res.code
            )
