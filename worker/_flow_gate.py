"""Flow control, the worker's side: steps and runs admitted to their limits' slots, or parked.

Steps. The holder of a run starts a step declared with ``concurrency=`` or ``rate=`` only once its
limit admits it (``FlowGate.admit``, one script call per such step, in the limit's own slot): the
step's ``step_started`` goes out in the same commit as usual. A step without a free slot is
*parked*: it stays ``pending`` in the log, its member waits in the limit's waiting zset, and the
run is let go like a run waiting for anything else; no worker slot, no task, no polling. When a
slot frees (the step that held it ended, or the sweeper found its hold lapsed), the slot is handed
to the first waiter (reserved for it for one lease) and a wake-up is added for its run; the
worker that takes the run replays it and finds the slot its own. A step over its ``rate`` is
deferred to the time the window lets it in through the run's timers. The slot is held while the
step runs (renewed every heartbeat) and given back when its attempt ends.

Runs. A workflow with ``concurrency=`` gates the *start* of its runs (``admit_run``, before
``run_started``): a run holds its slot from its start to its end, sleeps included. Its hold is
not a worker's lease: the sweeper checks lapsed holds against the run's status, frees those of
ended runs, renews the others (and wakes a run not started yet, in case its wake-up was lost).

Steps and workflows without these options never reach this module's Redis calls; the duties run
only in a worker whose modules registered flow-controlled functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol

from . import _serde
from ._flow import FlowGrant, FlowSpec
from ._registry import get_workflow, registered_steps, registered_workflows
from ._replay import StepCall, WorkflowInstance
from ._supervisor import Duty

if TYPE_CHECKING:
    from ._worker import Worker

REGISTER_EVERY_S = 60.0  # a limit in use is put on the sweepers' list again this often
FORGET_IDLE_MS = 3_600_000  # an empty limit unused for an hour leaves the list
TERMINAL = ("completed", "failed", "cancelled")


class FlowStore(Protocol):
    """What a World offers flow control (``RedisWorld.flow``: world_redis/_flow.py)."""

    async def register(self, limit: str) -> None: ...
    async def acquire(
        self,
        limit: str,
        member: str,
        *,
        kind: str,
        concurrency: int,
        hold_ms: int,
        rate: int,
        window_ms: int,
        priority: int,
        tag: str,
        reserve_ms: int,
        clock_offset_ms: int = 0,
    ) -> FlowGrant: ...
    async def release(self, limit: str, member: str) -> list[str]: ...
    async def renew(self, limit: str, members: Sequence[str], hold_ms: int) -> int: ...
    async def sweep(
        self, owner: str, every_ms: int, idle_ms: int
    ) -> list[tuple[str, list[str], list[str]]]: ...
    async def wake(self, run_ids: Sequence[str], reason: str) -> None: ...
    async def arm_timer(self, run_id: str, corr: str, due_ms: int) -> None: ...


def run_of(member: str) -> str:
    return member.split("|", 1)[0]


class FlowGate:
    """The flow control of one worker: admissions, the slots its steps hold, parked steps."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.store: FlowStore | None = getattr(worker.world, "flow", None)
        self.admitted: dict[tuple[str, str], str] = {}  # (run, step) -> limit of its slot
        self.running: dict[str, set[str]] = {}  # limit -> members whose steps run here
        self.parked: dict[str, set[str]] = {}  # run -> its steps waiting for a slot or the rate
        self._registered: dict[str, float] = {}  # limit -> when this process last registered it

    @property
    def lease_ms(self) -> int:
        return self.worker.config.lease_ms

    @property
    def run_hold_ms(self) -> int:
        """How long a run's hold goes unchecked (it is renewed while the run lives)."""
        return 4 * self.lease_ms

    def supervise(self) -> None:
        """The renewal and sweeper duties, when this process registered flow-controlled code."""
        used = any(s.flow for s in registered_steps()) or any(
            w.flow for w in registered_workflows()
        )
        if self.store is None or not used:
            return
        sup = self.worker.supervisor
        quiet_s = self.worker.config.duty_quiet_s
        lease_s = self.lease_ms / 1000.0
        sup.add("flow-renew", self.renew_loop, stale_after_s=max(lease_s, 5.0))
        sup.add("flow-sweep", self.sweep_loop, stale_after_s=quiet_s + 3 * lease_s)

    # -- steps ---------------------------------------------------------------------------------

    def gated(self, calls: list[StepCall]) -> bool:
        """Whether any of ``calls`` is flow-controlled (no I/O: the common case costs nothing)."""
        for c in calls:
            if c.fn.flow is not None:
                return self.store is not None
        return False

    async def admit(
        self, run_id: str, inst: WorkflowInstance, calls: list[StepCall]
    ) -> list[StepCall]:
        """The calls that may start now: those without flow control, and those their limits
        admit; the others are parked (woken when a slot is theirs, or when the rate allows)."""
        store = self.store
        if store is None or not self.gated(calls):
            return calls
        out: list[StepCall] = []
        for call in calls:
            spec: FlowSpec | None = getattr(call.fn, "flow", None)
            if spec is None:
                out.append(call)
                continue
            limit = spec.limit_id(self._step_key(spec, call))
            member = f"{run_id}|{call.corr}"
            await self._register(limit)
            rate = spec.rate
            grant = await store.acquire(
                limit,
                member,
                kind="step",
                concurrency=spec.concurrency,
                hold_ms=self.lease_ms,
                rate=rate.limit if rate else 0,
                window_ms=rate.window_ms if rate else 0,
                priority=inst.priority,
                tag=f"{member}|{call.attempt}",
                reserve_ms=self.lease_ms,
                clock_offset_ms=self.worker.skipped_ms,
            )
            await self._wake(grant.woken)
            log = self.worker.log.bind(run_id=run_id, step_id=call.corr, limit=limit)
            if grant.code == "ok":
                self._unpark(run_id, call.corr)
                if spec.concurrency:
                    self.admitted[(run_id, call.corr)] = limit
                out.append(call)
            elif grant.code == "later":
                self.parked.setdefault(run_id, set()).add(call.corr)
                await store.arm_timer(run_id, call.corr, grant.retry_at_ms)
                log.info("step_deferred_by_rate", retry_at=grant.retry_at_ms)
            else:
                self.parked.setdefault(run_id, set()).add(call.corr)
                log.info("step_waiting_for_slot")
        return out

    def _step_key(self, spec: FlowSpec, call: StepCall) -> str | None:
        if spec.key is None:
            return None
        try:
            raw = _serde.loads(call.input)
            args, kwargs = call.fn.argspec.convert(
                raw.get("args", []), raw.get("kwargs") or {}, call.fn.label
            )
            return spec.key_of(args, kwargs)
        except Exception as exc:
            # the workflow checked the key when it called the step (StepFunction._check_key):
            # a key that fails only here still gets a limit, one shared by such failures
            self.worker.log.warning("concurrency_key_failed", step=spec.name, error=repr(exc))
            return f"!{type(exc).__name__}"

    @contextlib.asynccontextmanager
    async def holding(self, run_id: str, corr: str) -> AsyncIterator[None]:
        """While a step admitted here runs: its slot renewed; given back when it ends."""
        limit = self.admitted.pop((run_id, corr), None)
        if limit is None or self.store is None:
            yield
            return
        member = f"{run_id}|{corr}"
        self.running.setdefault(limit, set()).add(member)
        try:
            yield
        finally:
            members = self.running.get(limit)
            if members is not None:
                members.discard(member)
                if not members:
                    del self.running[limit]
            await self._release(limit, member)

    # -- runs ----------------------------------------------------------------------------------

    def _workflow_spec(self, inst: WorkflowInstance) -> FlowSpec | None:
        if self.store is None:
            return None
        try:
            return get_workflow(inst.workflow_name).flow
        except Exception:
            return None

    def _run_limit(self, spec: FlowSpec, inst: WorkflowInstance) -> str:
        key: str | None = None
        if spec.key is not None:
            try:
                args, kwargs = get_workflow(inst.workflow_name).decode_args(inst.run_input)
                key = spec.key_of(args, kwargs)
            except Exception as exc:
                self.worker.log.warning(
                    "concurrency_key_failed", workflow=spec.name, error=repr(exc)
                )
                key = f"!{type(exc).__name__}"
        return spec.limit_id(key)

    async def admit_run(self, inst: WorkflowInstance) -> bool:
        """Whether a run not started yet may start (a slot of its workflow's limit is its own);
        False: it is parked, and woken when a slot is handed to it."""
        spec = self._workflow_spec(inst)
        if spec is None or self.store is None:
            return True
        limit = self._run_limit(spec, inst)
        await self._register(limit)
        grant = await self.store.acquire(
            limit,
            inst.run_id,
            kind="workflow",
            concurrency=spec.concurrency,
            hold_ms=self.run_hold_ms,
            rate=0,
            window_ms=0,
            priority=inst.priority,
            tag=inst.run_id,
            reserve_ms=self.lease_ms,
        )
        await self._wake(grant.woken)
        if grant.code != "ok":
            self.worker.log.info("run_waiting_for_slot", run_id=inst.run_id, limit=limit)
            return False
        return True

    async def run_ended(self, inst: WorkflowInstance) -> None:
        """A run of a flow-controlled workflow ended: its slot goes to the next waiter."""
        spec = self._workflow_spec(inst)
        if spec is not None:
            await self._release(self._run_limit(spec, inst), inst.run_id)

    # -- duties --------------------------------------------------------------------------------

    async def renew_loop(self, duty: Duty) -> None:
        """Every heartbeat: the holds of the steps running here are renewed for one lease."""
        assert self.store is not None
        interval = self.worker.config.heartbeat_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            for limit, members in list(self.running.items()):
                await self.store.renew(limit, sorted(members), self.lease_ms)
            duty.ok()

    async def sweep_loop(self, duty: Duty) -> None:
        """Every third of a lease: every limit swept (lapsed holds freed, free slots handed to
        waiters, their runs woken); runs' lapsed holds checked against the runs' status."""
        assert self.store is not None
        interval = max(0.2, self.lease_ms / 3000.0)
        every_ms = int(interval * 1000)
        while True:
            await asyncio.sleep(interval)
            swept = await self.store.sweep(self.worker.name, every_ms, FORGET_IDLE_MS)
            for limit, woken, lapsed in swept:
                await self._wake(woken)
                for run_id in lapsed:
                    await self._check_run_hold(limit, run_id)
            held = self.worker.held
            for run_id in [r for r in self.parked if r not in held]:
                del self.parked[run_id]
            for admitted in [a for a in self.admitted if a[0] not in held]:
                del self.admitted[admitted]  # admitted, never run here (its slot lapses)
            duty.ok()

    async def _check_run_hold(self, limit: str, run_id: str) -> None:
        assert self.store is not None
        info = await self.worker.world.get_run(run_id)
        if info is None or info.status in TERMINAL:
            await self._release(limit, run_id)
            return
        await self.store.renew(limit, [run_id], self.run_hold_ms)
        if info.status == "pending":  # handed a slot but not started: its wake-up may be lost
            await self._wake([run_id])

    # -- helpers -------------------------------------------------------------------------------

    async def _register(self, limit: str) -> None:
        assert self.store is not None
        now = time.monotonic()
        if now - self._registered.get(limit, -REGISTER_EVERY_S) >= REGISTER_EVERY_S:
            await self.store.register(limit)
            self._registered[limit] = now

    async def _release(self, limit: str, member: str) -> None:
        assert self.store is not None
        try:
            await self._wake(await self.store.release(limit, member))
        except Exception as exc:
            # never the step's failure (it ran): an unreleased hold lapses after one lease, and a
            # slot handed to a waiter not woken lapses too; the sweeper frees both and wakes
            self.worker.log.warning("flow_release_failed", limit=limit, error=str(exc))

    async def _wake(self, members: Sequence[str]) -> None:
        # the run being driven here may be among them: its wake-up nudges its holder (another
        # of its steps was handed a slot)
        runs = [run_of(m) for m in members]
        if runs and self.store is not None:
            await self.store.wake(runs, "flow")

    def _unpark(self, run_id: str, corr: str) -> None:
        parked = self.parked.get(run_id)
        if parked is not None:
            parked.discard(corr)
            if not parked:
                del self.parked[run_id]
