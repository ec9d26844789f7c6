"""Step execution: a step function called with its converted arguments, in a slot of the
worker's concurrency (sync steps in a thread), its outcome turned into the event to commit.

Nothing here touches leases or the log: the worker decides when a step runs and commits what
this returns (``step_completed``, ``step_retrying`` or ``step_failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from . import _serde
from . import _tracing as tracing
from ._context import StepContext, current_step
from ._duration import to_seconds
from ._errors import FatalError, PayloadTooLargeError, RetryableError
from ._events import NewEvent
from ._registry import StepFunction
from ._replay import StepCall, WorkflowInstance, error_json
from ._streams import capture_stream_result
from ._world import World

if TYPE_CHECKING:
    from ._flow_gate import FlowGate
    from ._metrics import WorkerMetrics

DEFAULT_RETRY_DELAY_S = 1.0


class StepSlots:
    """At most ``n`` steps at once. Taking a free slot costs no await (the common case, run
    once per step); when none is free the caller waits its turn, first come first served."""

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut  # release() hands its slot straight to this waiter
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over as the wait was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)
            raise

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


class StepExecutor:
    """Runs steps for a worker: at most ``concurrency`` at once, ``now_ms`` the server's clock."""

    def __init__(
        self,
        world: World,
        concurrency: int,
        now_ms: Callable[[], int],
        log: Any,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.world = world
        self.now_ms = now_ms
        self.log = log
        self.metrics = metrics
        self.tracing = False  # record spans (see _tracing): set by the worker when it starts
        self.slots = StepSlots(concurrency)
        self.flow: FlowGate | None = None  # set by the worker: slots of flow-controlled steps
        self.pool = ThreadPoolExecutor(max_workers=min(64, concurrency))

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def run(
        self, inst: WorkflowInstance, call: StepCall, attempt: int, gated: bool = True
    ) -> Coroutine[Any, Any, NewEvent]:
        """Run one attempt of ``call``; (a coroutine of) the event that records its outcome.

        The commonest step (no flow control, no trace span, no metrics) is one coroutine:
        ``_call``, which takes and gives back its concurrency slot itself."""
        fn: StepFunction = call.fn
        ctx = StepContext(
            step_id=call.corr,
            step_name=fn.name,
            attempt=attempt,
            started_ms=self.now_ms(),
            run_id=inst.run_id,
            workflow_name=inst.workflow_name,
            workflow_started_ms=inst.started_at_ms,
        )
        if (gated and fn.flow is not None and self.flow is not None) or self.tracing:
            return self._run_general(inst, call, attempt, gated, ctx)
        if self.metrics is not None:
            return self._slotted(fn, call.corr, call.input, ctx, attempt)
        return self._call(fn, call.corr, call.input, ctx, attempt, True, call.args)

    async def _run_general(
        self,
        inst: WorkflowInstance,
        call: StepCall,
        attempt: int,
        gated: bool,
        ctx: StepContext,
    ) -> NewEvent:
        fn: StepFunction = call.fn
        if gated and fn.flow is not None and self.flow is not None:
            # its flow-control slot held (renewed) while it runs, given back when it ends
            async with self.flow.holding(inst.run_id, call.corr):
                return await self.run(inst, call, attempt, False)
        if not self.tracing:
            return await self._slotted(fn, call.corr, call.input, ctx, attempt)
        attributes = {
            "workflow.run_id": inst.run_id,
            "workflow.step_id": call.corr,
            "workflow.step.attempt": attempt,
        }
        await self.slots.take()  # the span covers the attempt, not the wait for a slot
        try:
            with tracing.span(f"workflow.step {fn.name}", inst.trace, attributes) as span:
                event = await self._timed(fn, call.corr, call.input, ctx, attempt)
                tracing.step_outcome(span, event.type)
                return event
        finally:
            self.slots.release()

    async def _slotted(
        self, fn: StepFunction, corr: str, input_json: str, ctx: StepContext, attempt: int
    ) -> NewEvent:
        """One attempt in a slot of the worker's concurrency, timed for the metrics if any."""
        await self.slots.take()
        try:
            return await self._timed(fn, corr, input_json, ctx, attempt)
        finally:
            self.slots.release()

    async def run_task(
        self, fn: StepFunction, step_id: str, input_json: str, ctx: StepContext
    ) -> NewEvent:
        """Run one attempt of a step a pool worker took from its queue (no workflow instance:
        the run is held, if at all, by another worker); the event that records its outcome."""
        return await self._slotted(fn, step_id, input_json, ctx, ctx.attempt)

    async def _timed(
        self, fn: StepFunction, corr: str, input_json: str, ctx: StepContext, attempt: int
    ) -> NewEvent:
        if self.metrics is None:
            return await self._call(fn, corr, input_json, ctx, attempt)
        began = time.perf_counter()
        event = await self._call(fn, corr, input_json, ctx, attempt)
        self.metrics.step_done(fn.name, event.type, time.perf_counter() - began)
        return event

    async def _call(
        self,
        fn: StepFunction,
        corr: str,
        input_json: str,
        ctx: StepContext,
        attempt: int,
        slotted: bool = False,
        plain: tuple[Any, ...] | None = None,
    ) -> NewEvent:
        """One attempt; ``slotted``: in a slot of the worker's concurrency, taken and given
        back here; ``plain``: the arguments ``input_json`` loads as, when the caller holds
        them (StepCall.args)."""
        if slotted:
            slots = self.slots
            if slots.free > 0 and not slots.waiters:  # StepSlots.try_take, inline: per step
                slots.free -= 1
            else:
                await slots.take()
        token = current_step.set(ctx)
        try:
            if plain is not None:
                args, kwargs = fn.argspec.convert(plain, {}, fn.label)
            else:
                raw = _serde.loads(input_json)
                args, kwargs = fn.argspec.convert(
                    raw.get("args", []), raw.get("kwargs") or {}, fn.label
                )
            if fn.is_async:
                result = await fn.fn(*args, **kwargs)
            else:
                loop = asyncio.get_running_loop()
                cv = contextvars.copy_context()
                result = await loop.run_in_executor(
                    self.pool, lambda: cv.run(fn.fn, *args, **kwargs)
                )
            if hasattr(result, "__aiter__"):  # an async iterator: drained into a stream
                result = await capture_stream_result(result, ctx, self.world)
            text = _serde.dumps(result, what=fn.result_label)
            limit = self.world.max_payload_bytes
            if len(text) * 4 > limit:  # (else it fits, whatever its characters: check_size)
                _serde.check_size(text, what=fn.result_label, limit=limit)
            return NewEvent("step_completed", corr, {"result": text, "attempt": str(attempt)})
        # SystemExit, KeyboardInterrupt and GeneratorExit raised by step code are its failure and
        # must not end the worker (a real Ctrl-C stops the worker through its loop's signal
        # handler, never as KeyboardInterrupt here); CancelledError is the worker's own shutdown
        except (Exception, SystemExit, KeyboardInterrupt, GeneratorExit) as exc:
            log = self.log.bind(run_id=ctx.run_id, step_id=corr, step=fn.name)
            return self._error(fn, corr, exc, attempt, log)
        finally:
            current_step.reset(token)
            if slotted:
                slots = self.slots
                if slots.waiters:
                    slots.release()  # handed to the first waiter
                else:
                    slots.free += 1  # StepSlots.release with no waiter, inline: per step

    def _error(
        self, fn: StepFunction, corr: str, exc: BaseException, attempt: int, log: Any
    ) -> NewEvent:
        error = error_json(exc)
        fatal = isinstance(exc, FatalError | _serde.SerializationError | PayloadTooLargeError)
        if fatal or attempt >= fn.max_retries + 1:
            log.info("step_failed", attempt=attempt, error=str(exc))
            return NewEvent("step_failed", corr, {"error": error, "attempt": str(attempt)})
        delay = DEFAULT_RETRY_DELAY_S
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            delay = to_seconds(exc.retry_after)
        retry_at = self.now_ms() + int(delay * 1000)
        log.info("step_retrying", attempt=attempt, error=str(exc), retry_in=delay)
        return NewEvent(
            "step_retrying",
            corr,
            {"error": error, "retry_after": str(retry_at), "attempt": str(attempt)},
        )
