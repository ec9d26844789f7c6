"""The replay core: a workflow instance driven by its event log, with no I/O.

A workflow runs on a private asyncio loop that has no selector and no real timers. The runtime feeds
the instance the run's events in log order and asks it to advance; the instance runs user code until
every task is blocked (an *idle point*), then consumes events from the head of the log:

- creation events (``step_created``, ``wait_created``, ``step_started``...) are matched against the
  calls the code has made and checked (same kind, same step name, same input), then consumed;
- a resolving event (``step_completed``, ``step_failed``, ``wait_completed``) resumes the code that
  awaits it; exactly one is delivered per idle point, so interleavings on replay equal those of the
  first execution;
- an event whose correlation id no call owns while the code is idle can never be consumed: the log
  and the code diverged, and the run fails with ``NondeterminismError`` naming the event.

When the log is exhausted and the code still waits, ``advance`` returns the creation events for the
calls not yet in the log: the runtime appends them and feeds them back. Instances are kept alive
between advances, so each new event costs the same however long the log is.

``patched(change_id)`` is answered at once, from the log: the code is *replaying* at a call when
the log, past the events consumed so far, already holds something the code at this point has not
caused yet (see :meth:`WorkflowInstance._replaying`). A ``patch_recorded`` marker of the change
found there first answers True; other evidence first answers False (the run was recorded by code
that did not take the new path here); neither means the code runs here for the first time: True,
and the marker goes out first in the next commit, so on replay it lies ahead of everything that
commit holds and is found before any evidence. A marker no call asked for is a divergence (one
recorded by ``deprecate_patch`` is ignored, as Temporal does).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import random
import sys
import time
import traceback
import weakref
from _thread import get_ident
from asyncio import Future as _Future
from asyncio import coroutines as _aio_coroutines
from asyncio import format_helpers as _format_helpers
from asyncio.events import _get_running_loop, _set_running_loop
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from . import _serde
from ._children import child_end_error, child_run_id
from ._errors import (
    ChangeIdReusedError,
    CorruptEventError,
    HookConflictError,
    HookDisposedError,
    NondeterminismError,
    SerializationError,
)
from ._events import (
    ChildCancelled,
    ChildCompleted,
    ChildFailed,
    ChildStarted,
    Event,
    HookConflict,
    HookCreated,
    HookDisposed,
    HookReceived,
    NewEvent,
    PatchRecorded,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepCreated,
    StepFailed,
    StepRetrying,
    StepStarted,
    WaitCompleted,
    WaitCreated,
    event_name,
)
from ._ids import DeterministicIds, hook_token

DROP_CONSUMED_AFTER = 64  # consumed events an instance keeps at most before dropping them

current_instance: contextvars.ContextVar[WorkflowInstance | None] = contextvars.ContextVar(
    "wf_instance", default=None
)


class StepCall(msgspec.Struct):
    """A step the workflow called: its future, and what the log says about it so far (a
    Struct: made once per step, and a Struct's ``__init__`` is msgspec's C, a dataclass's is
    Python)."""

    corr: str
    name: str
    input: str
    fn: Any
    future: asyncio.Future[Any]
    # the arguments themselves when loading ``input`` gives them back as they are (JSON
    # scalars, see _serde.encode_args): run by this process, the step skips the load
    args: tuple[Any, ...] | None = None
    created: bool = False
    status: str = "new"  # new | pending | running | completed | failed
    attempt: int = 0
    retry_after: int = 0


@dataclass
class WaitCall:
    corr: str
    delay_ms: int
    handle: asyncio.TimerHandle | None
    created: bool = False
    resume_at: int = 0
    done: bool = False
    cancelled: bool = False


@dataclass
class HookCall:
    """A hook the workflow created: payloads not yet taken, and the code waiting for one."""

    corr: str
    token: str
    metadata: str
    created: bool = False
    conflict: bool = False
    dispose_requested: bool = False
    disposed: bool = False
    buffer: deque[Any] = field(default_factory=deque)
    awaiters: deque[asyncio.Future[Any]] = field(default_factory=deque)


@dataclass
class ChildCall:
    """A child run the workflow started: what the log says of it, and the code awaiting its end."""

    corr: str
    run_id: str
    workflow: str
    input: str
    parent_close: str
    priority: int = 0  # the child run's: the code's on the first run, the log's on a replay
    created: bool = False
    ended: Event | None = None
    awaiters: deque[asyncio.Future[Any]] = field(default_factory=deque)


class Outcome(msgspec.Struct, gc=False):
    """What an advance ended with.

    ``kind`` is completed | failed | suspended, or the tag of a terminal event already in the log
    (run_completed | run_failed | run_cancelled) when the run ended before the code did.
    ``commands``: the events to append (when completed or failed: the ``patch_recorded`` markers
    to append before the run's end).
    """

    kind: str
    output: str = "null"
    error: str = "null"
    commands: list[NewEvent] = []  # (msgspec copies an empty default for each instance)


class _NullSelector:
    def select(self, timeout: float | None = None) -> list[Any]:
        return []

    def close(self) -> None:
        pass


_NULL_SELECTOR = _NullSelector()  # it keeps nothing: one serves every loop


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _ignore_error(_loop: asyncio.AbstractEventLoop, _context: dict[str, Any]) -> None:
    """The replay loop's exception handler: errors of tasks nobody awaits (a race's losers) are
    part of the workflow's semantics, not something to print on the worker's stderr."""


_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution  # a constant of the platform
_ENVIRON_DATA = getattr(os.environ, "_data", None)  # the mapping os.environ keeps, encoded
_DEBUG_KEY = os.environ.encodekey("PYTHONASYNCIODEBUG") if _ENVIRON_DATA is not None else None


def _asyncio_debug() -> bool:
    """asyncio.coroutines._is_debug_mode(), which BaseEventLoop.__init__ asks for each loop: the
    same test, with PYTHONASYNCIODEBUG read from os.environ's own mapping (os.environ.get()
    raises and catches a KeyError when the variable is unset, the usual case)."""
    if _ENVIRON_DATA is None or os.environ._data is not _ENVIRON_DATA:  # type: ignore[attr-defined]
        return bool(_aio_coroutines._is_debug_mode())  # type: ignore[attr-defined]
    return sys.flags.dev_mode or (
        not sys.flags.ignore_environment and bool(_ENVIRON_DATA.get(_DEBUG_KEY))
    )


_new_handle = asyncio.Handle.__new__


class ReplayLoop(asyncio.BaseEventLoop):
    """An event loop with no I/O whose timers are durable waits and whose clock is the workflow's."""

    def __init__(self, instance: WorkflowInstance) -> None:
        # BaseEventLoop.__init__'s attributes, set directly: one loop is made per run, and the
        # base asks the platform for its clock resolution each time (a constant, read once
        # above). A test holds this list to the base's, so a Python that adds one is noticed.
        self._timer_cancelled_count = 0
        self._closed = False
        self._stopping = False
        self._ready: deque[asyncio.Handle] = deque()
        self._scheduled: list[asyncio.TimerHandle] = []
        self._default_executor = None
        self._internal_fds = 0
        self._thread_id = None
        self._clock_resolution = _CLOCK_RESOLUTION
        self._exception_handler = _ignore_error  # what set_exception_handler() would store
        self._debug = _asyncio_debug()
        # every future made on this loop asks it get_debug() (once per step): answered by a
        # C method of the flag (set_debug() keeps it current), not by the base's Python method
        self.get_debug = self._debug.__bool__  # type: ignore[method-assign]
        self.slow_callback_duration = 0.1
        self._current_handle = None
        self._task_factory = None
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._executor_shutdown_called = False
        self._selector = _NULL_SELECTOR
        self._instance = instance

    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        """BaseEventLoop.call_soon, lighter (a future's set_result wakes its task through here:
        once per step). Its checks but the closed loop's are made in debug mode only: both go
        to the base. The handle is the one Handle.__init__ makes outside debug mode: the
        context given, else a copy of the current one, and no source traceback."""
        if self._debug or self._closed:
            return super().call_soon(callback, *args, context=context)  # its checks and errors
        handle: Any = _new_handle(asyncio.Handle)
        handle._context = contextvars.copy_context() if context is None else context
        handle._loop = self
        handle._callback = callback
        handle._args = args
        handle._cancelled = False
        handle._repr = None
        handle._source_traceback = None
        self._ready.append(handle)
        return handle  # type: ignore[no-any-return]

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        self.get_debug = self._debug.__bool__  # type: ignore[method-assign]

    def time(self) -> float:
        return self._instance.clock_ms / 1000.0

    def call_at(  # type: ignore[override]
        self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self, context)
        self._instance._register_wait(max(0, round((when - self.time()) * 1000)), handle)
        return handle

    def call_later(  # type: ignore[override]
        self, delay: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        return self.call_at(self.time() + delay, callback, *args, context=context)

    def create_task(  # type: ignore[override]
        self, coro: Any, *, name: str | None = None, context: Any = None
    ) -> asyncio.Task[Any]:
        """A task of workflow code; it may also be made of what a step call or a hook gives
        (a future, an awaitable), so that ``asyncio.create_task(my_step(x))`` and
        ``TaskGroup.create_task(my_step(x))`` work as they do with coroutines."""
        if not asyncio.iscoroutine(coro) and inspect.isawaitable(coro):
            coro = _awaited(coro)
        return super().create_task(coro, name=name, context=context)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        self._instance._cancel_wait(handle)

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass

    def run_ready(self) -> None:
        """Run every ready callback. SystemExit and KeyboardInterrupt raised by workflow code
        are kept by the task that raised them (asyncio stores them, then re-raises): that task
        fails, as it would with any error, and the worker's own process goes on."""
        ready: deque[Any] = self._ready
        while ready:
            handle = ready.popleft()
            if handle._cancelled:
                continue
            # Handle._run, inlined (one frame less per callback); its error path is kept whole
            try:
                handle._context.run(handle._callback, *handle._args)
            except (SystemExit, KeyboardInterrupt):
                continue
            except BaseException as exc:
                self._callback_failed(handle, exc)

    def _callback_failed(self, handle: Any, exc: BaseException) -> None:
        """What Handle._run does when its callback raises: report to the exception handler."""
        cb = _format_helpers._format_callback_source(handle._callback, handle._args)
        context: dict[str, Any] = {
            "message": f"Exception in callback {cb}",
            "exception": exc,
            "handle": handle,
        }
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)


class WorkflowInstance:
    """One run's workflow code, advanced by its events. Pure: no I/O, no wall clock, no logging."""

    def __init__(
        self,
        run_id: str,
        workflow_name: str,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        decode_args: Callable[[str], tuple[Sequence[Any], dict[str, Any]]],
    ) -> None:
        self.run_id = run_id
        self.workflow_name = workflow_name
        self._fn = fn
        self._decode_args = decode_args
        # the log from position _base on (absolute positions: _pos, _marker_at): the events
        # consumed are dropped now and then, so a long run's instance keeps only what is ahead
        self.log: list[Event] = []
        self._base = 0
        self._pos = 0
        self.clock_ms = 0
        self.started_at_ms = 0
        self.seq = 0
        self.steps: dict[str, StepCall] = {}
        self.waits: dict[str, WaitCall] = {}
        self._waits_by_handle: dict[int, WaitCall] = {}
        self._open: dict[str, None] = {}  # calls whose creation is not in the log yet, in order
        self.active_steps: dict[str, StepCall] = {}  # created, not yet completed or failed
        self._active_waits: dict[str, WaitCall] = {}  # created, not yet completed or cancelled
        self.hooks: dict[str, HookCall] = {}
        self._active_hooks: dict[str, HookCall] = {}  # created, not yet disposed
        self.children: dict[str, ChildCall] = {}  # child runs started, not ended, by corr
        self.unensured: dict[str, ChildCall] = {}  # children the worker has not created yet
        self._seed = ""
        self._hook_count = 0
        self._ids: DeterministicIds | None = None
        self._random: random.Random | None = None
        self._loop = ReplayLoop(self)
        # the thread whose running loop _loop is (set by advance and close while they run it):
        # "loop_thread == get_ident()" says what "get_running_loop() is _loop" says, without the
        # getpid() system call asyncio makes on each get_running_loop() (see StepFunction)
        self.loop_thread: int | None = None
        self._task: asyncio.Task[Any] | None = None
        self.finished: Outcome | None = None
        self.terminal_event: str | None = None
        self.ended: str | None = None  # a terminal event is in the log (consumed or not)
        self.has_started = False
        self.trace = ""  # the stored trace context of the code that started the run
        self.priority = 0  # start(..., priority=): the order of its place in flow-control lines
        self.run_input = "[]"  # the run's arguments (JSON): a workflow's concurrency_key reads them
        self._waits_completed: set[str] = set()  # wait_completed is in the log (maybe unconsumed)
        self._log_open: dict[str, str] = {}  # calls the log opened and did not finish: corr -> kind
        self.patches: dict[str, bool] = {}  # patched()/deprecate_patch() answers, by change id
        self._markers_open: dict[str, bool] = {}  # markers to record: change id -> deprecated
        self._marker_at: dict[str, int] = {}  # markers in the log: change id -> index in log

    @property
    def random(self) -> random.Random:
        """The workflow's random generator, seeded by the run id (made when first asked for)."""
        if self._random is None:
            self._random = random.Random(f"{self.run_id}:random")
        return self._random

    # -- API used by the runtime -------------------------------------------------------------

    def feed(self, events: list[Event]) -> None:
        """Append events read from (or just written to) the log; they must follow on ``seq``.

        The log must also fold: raises CorruptEventError naming the first entry that does not
        (a gap, a log not opened by one run_created, an event of a call no earlier event opened).
        """
        for ev in events:
            if ev.seq <= self.seq:
                continue
            if ev.seq != self.seq + 1:
                raise CorruptEventError(
                    f"run {self.run_id}: {event_name(ev)} does not follow log entry "
                    f"{self.seq}-0 (gap in log: entries are missing)"
                )
            t = type(ev)
            if t is StepCompleted and self._log_open.get(ev.corr) == "step" and ev.seq != 1:
                # the commonest event: what _fold and the lines below do with it, inlined
                del self._log_open[ev.corr]
                self.seq = ev.seq
                self.log.append(ev)
                continue
            self._fold(ev)
            self.seq = ev.seq
            if t is PatchRecorded:
                self._marker_at[ev.corr] = self.log_length
            self.log.append(ev)
            if t in _STEP_EVENTS:  # the common case: nothing more to note
                continue
            if t in _RUN_ENDS:
                self.ended = _tag(ev)
            elif t is RunStarted:
                self.has_started = True
            elif t is WaitCompleted:
                self._waits_completed.add(ev.corr)
            elif isinstance(ev, RunCreated):
                self.trace = ev.trace
                self.priority = ev.priority
                self.run_input = ev.input

    def append_own(
        self, events: Sequence[NewEvent], first_seq: int, ts: int, attempts: Sequence[int]
    ) -> bool:
        """Record step_created / step_started events this instance's own suspension asked for,
        just appended at ``first_seq`` on (time ``ts``; ``attempts``: each event's attempt, as
        the commit answered it) with nothing unconsumed before them: their effect is applied
        as consuming them would, without building Event objects. Anything else (another type,
        a call the code did not make, events not consumed yet): False, nothing recorded, and the
        caller feeds the events instead."""
        if self._pos - self._base != len(self.log) or first_seq != self.seq + 1:
            return False
        if len(events) == 2 and len(attempts) == 2:
            created, started = events
            corr = created.corr
            if (
                created.type == "step_created"
                and started.type == "step_started"
                and started.corr == corr
            ):
                # the inline path's commit: one step's creation and start. The same checks and
                # effects as the loops of _append_steps make for this pair, without them
                call = self.steps.get(corr)
                if call is None or call.created or call.future.done():
                    return False
                self._log_open[corr] = "step"
                call.created = True
                call.status = "running"
                call.attempt = attempts[1]
                call.retry_after = 0
                self._open.pop(corr, None)
                self.active_steps[corr] = call
            elif not self._append_steps(events, attempts):
                return False
        elif not self._append_steps(events, attempts):
            return False
        n = len(events)
        self.seq += n
        self._pos += n
        self._base += n  # consumed, and never kept: positions stay absolute
        if ts > self.clock_ms:
            self.clock_ms = ts
        return True

    def _append_steps(self, events: Sequence[NewEvent], attempts: Sequence[int]) -> bool:
        """append_own's checks and effects on the instance's calls, for any events."""
        steps = self.steps
        created: list[str] = []  # a commit creates few steps: a list is the cheaper check
        for new in events:
            call = steps.get(new.corr)
            if call is None or call.future.done():
                return False
            if new.type == "step_created":
                if call.created or new.corr in created:
                    return False
                created.append(new.corr)
            elif new.type != "step_started" or not (call.created or new.corr in created):
                return False
        log_open, active = self._log_open, self.active_steps
        for new, attempt in zip(events, attempts, strict=True):
            call = steps[new.corr]
            if new.type == "step_created":
                log_open[call.corr] = "step"
                call.created, call.status = True, "pending"
                self._open.pop(call.corr, None)
                active[call.corr] = call
            else:
                call.status, call.attempt, call.retry_after = "running", attempt, 0
        return True

    def complete_own(self, corr: str, result: str, seq: int, ts: int) -> bool:
        """Record the step_completed (``result``: the step's JSON value) of a step this
        instance's code awaits, just appended at ``seq`` (the next position) with time ``ts``,
        with nothing unconsumed before it: its effect is what feeding
        ``StepCompleted(seq=seq, id=entry_id(seq), ts=ts, corr=corr, result=result)`` and
        consuming it at the next ``advance()`` would have, without building the event (the
        code resumes at that advance). Anything else (another position, a step the code does
        not await, a result that does not load, a callback ready to run before the step's):
        False, nothing recorded, and the caller feeds the event instead."""
        call = self.steps.get(corr)
        task = self._task
        if (
            call is None
            or seq != self.seq + 1
            or self.finished is not None
            or self._pos - self._base != len(self.log)
            or self._log_open.get(corr) != "step"  # else feed() raises CorruptEventError
            or call.future.done()
            or task is None
            or task.done()  # advance() would end the run without consuming the event
            or self._loop._ready  # advance() would run these before consuming the event
        ):
            return False
        try:
            value = _serde.loads(result, what="field 'result'")
        except SerializationError:
            return False  # feed() and advance() fail the run with CorruptEventError
        # feed(): the step closes in the log (_fold), the log moves on
        del self._log_open[corr]
        self.seq = seq
        self._pos += 1
        self._base += 1  # consumed, and never kept: positions stay absolute
        # advance(): _consume_step and _consume_until_resolution consume it
        call.status = "completed"
        self.active_steps.pop(corr, None)
        del self.steps[corr]
        call.future.set_result(value)  # wakes the code: its task runs at advance()
        if ts > self.clock_ms:
            self.clock_ms = ts
        return True

    def _fold(self, ev: Event) -> None:
        """Check that ``ev`` can follow the log so far; track the calls the log holds open.

        The commit script refuses such events, so one in the log means the log was altered.
        """
        problem = None
        t = type(ev)  # event classes have no subclasses: identity is the type test
        if (t is RunCreated) != (ev.seq == 1):
            problem = "a log holds exactly one run_created, as its first entry"
        elif t is PatchRecorded:
            if not ev.corr or ev.corr in self._marker_at:
                problem = f"a change is recorded once per run, by its id (here {ev.corr!r})"
        else:
            opens, closes = _OPENS.get(t), _NEEDS.get(t)
            kind = self._log_open.get(ev.corr)
            if opens is not None:
                if not ev.corr or kind is not None:
                    problem = f"it opens {opens} {ev.corr!r}, which is already open or unnamed"
                elif t is not HookConflict:  # a conflict is the hook's last event
                    self._log_open[ev.corr] = opens
            elif closes is not None:
                needed, final = closes
                if kind != needed:
                    problem = (
                        f"no {needed}_created opened {needed} {ev.corr!r} before it (it was never "
                        f"created, or is already finished)"
                    )
                elif final:
                    del self._log_open[ev.corr]
        if problem is not None:
            raise CorruptEventError(
                f"run {self.run_id}: {event_name(ev)} is inconsistent: {problem}"
            )

    @property
    def log_length(self) -> int:
        """How many events were fed (consumed ones included)."""
        return self._base + len(self.log)

    def advance(self, running: asyncio.AbstractEventLoop | None = None) -> Outcome:
        """Run the code and consume events until the code needs events the log does not hold.

        ``running``: the event loop running the caller, when the caller knows it (asking costs
        a system call on Python 3.11: asyncio checks the process id); it is the running loop
        again when this returns."""
        if self.finished is not None:
            return self.finished
        previous = running if running is not None else _get_running_loop()
        _set_running_loop(self._loop)
        self.loop_thread = get_ident()
        try:
            return self._advance()
        finally:
            self.loop_thread = None
            _set_running_loop(previous)
            consumed = self._pos - self._base
            if consumed >= DROP_CONSUMED_AFTER:
                del self.log[:consumed]
                self._base = self._pos

    def close(self) -> BaseException | None:
        """Tear the instance down; pending coroutines are closed without running further.

        What the workflow code raised while its task was cancelled (its ``finally`` blocks run
        then) is returned for the runtime to report, never raised: not even SystemExit may end
        the worker from there. The replay core does not log.
        """
        error: BaseException | None = None
        task = self._task
        if task is not None and not task.done():
            previous = _get_running_loop()
            _set_running_loop(self._loop)
            self.loop_thread = get_ident()
            try:
                for pending in asyncio.all_tasks(self._loop):
                    pending.cancel()
                self._loop.run_ready()
            finally:
                self.loop_thread = None
                _set_running_loop(previous)
            if task.done() and not task.cancelled():
                error = task.exception()
        self._loop._ready.clear()
        self._loop.close()
        return error

    def pending_steps(self) -> list[StepCall]:
        """Steps in the log that have not completed or failed yet (cost: the open ones only)."""
        return list(self.active_steps.values())

    def pending_waits(self) -> list[WaitCall]:
        """Sleeps in the log whose wait_completed is not in the log yet."""
        return [w for w in self._active_waits.values() if w.corr not in self._waits_completed]

    # -- calls made by workflow code ---------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        if self._ids is None:
            self._ids = DeterministicIds(self.run_id, self.started_at_ms)
        return self._ids.next(prefix)

    def call_step(
        self, name: str, input_json: str, fn: Any, args: tuple[Any, ...] | None = None
    ) -> asyncio.Future[Any]:
        ids = self._ids  # _next_id("step"), inlined: once per step
        if ids is None:
            ids = self._ids = DeterministicIds(self.run_id, self.started_at_ms)
        corr = ids.next("step")
        fut: asyncio.Future[Any] = _Future(loop=self._loop)  # what loop.create_future() makes
        self.steps[corr] = StepCall(corr, name, input_json, fn, fut, args)
        self._open[corr] = None
        return fut

    def create_hook(self, token: str | None, metadata: str) -> HookCall:
        corr = self._next_id("hook")
        self._hook_count += 1
        call = HookCall(
            corr, token or hook_token(self.run_id, self._seed, self._hook_count), metadata
        )
        self.hooks[corr] = call
        self._open[corr] = None
        return call

    def hook_next(self, call: HookCall) -> asyncio.Future[Any]:
        """A future for the hook's next payload (payloads that arrived earlier come first)."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        if call.buffer:
            fut.set_result(call.buffer.popleft())
        elif call.conflict:
            fut.set_exception(HookConflictError(call.token))
        elif call.dispose_requested or call.disposed:
            fut.set_exception(HookDisposedError(f"hook {call.token!r} was disposed"))
        else:
            call.awaiters.append(fut)
        return fut

    def dispose_hook(self, call: HookCall) -> None:
        """Free the token now (hook_disposed is appended at the next suspension)."""
        if call.dispose_requested:
            return
        call.dispose_requested = True
        for fut in call.awaiters:
            if not fut.done():
                fut.set_exception(HookDisposedError(f"hook {call.token!r} was disposed"))
        call.awaiters.clear()
        if not call.created:
            self._open.pop(call.corr, None)  # never created: nothing to dispose in the World

    def start_child(
        self,
        workflow: str,
        input_json: str,
        run_id: str | None,
        parent_close: str,
        priority: int | None = None,
    ) -> ChildCall:
        """Record a child run's start (``child_started`` goes out at the next commit); without
        a ``priority`` the child has this run's."""
        corr = self._next_id("chld")
        rid = run_id or child_run_id(self.run_id, corr, self.started_at_ms)
        level = self.priority if priority is None else priority
        call = ChildCall(corr, rid, workflow, input_json, parent_close, level)
        self.children[corr] = call
        self.unensured[corr] = call
        self._open[corr] = None
        return call

    def child_result(self, call: ChildCall) -> asyncio.Future[Any]:
        """A future for the child run's end, as recorded in this run's log."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        if call.ended is not None:
            _settle(fut, call, call.ended)
        else:
            call.awaiters.append(fut)
        return fut

    def _consume_child(self, call: ChildCall, ev: Event) -> bool:
        if isinstance(ev, ChildStarted):
            if ev.workflow != call.workflow or ev.run_id != call.run_id:
                raise NondeterminismError(
                    f"run {self.run_id}: event {ev.seq} child_started ({ev.corr}) recorded run "
                    f"{ev.run_id} of workflow {ev.workflow!r}, but the workflow code now starts "
                    f"run {call.run_id} of workflow {call.workflow!r} at this point"
                )
            call.created = True
            call.priority = ev.priority  # as the log recorded it: the child was created so
            self._open.pop(call.corr, None)
            return False
        if isinstance(ev, ChildCompleted | ChildFailed | ChildCancelled):
            call.ended = ev
            del self.children[call.corr]  # no event follows its end (the handle keeps the call)
            self.unensured.pop(call.corr, None)
            for fut in call.awaiters:
                if not fut.done():
                    _settle(fut, call, ev)
            call.awaiters.clear()
            return True
        raise NondeterminismError(
            f"run {self.run_id}: event {ev.seq} {_tag(ev)} ({ev.corr}) belongs to a child run "
            "in the current code, but is not a child event"
        )

    def open_children(self) -> list[ChildCall]:
        """Child runs whose start is in the log and whose end is not consumed yet."""
        return [c for c in self.children.values() if c.created and c.ended is None]

    def _child_commands(self) -> list[NewEvent]:
        """child_started of the children started since the last commit, in call order."""
        out = []
        for corr in self._open:
            call = self.children.get(corr)
            if call is not None:
                fields = {
                    "run_id": call.run_id,
                    "workflow": call.workflow,
                    "input": call.input,
                    "parent_close": call.parent_close,
                }
                if call.priority:
                    fields["priority"] = str(call.priority)
                out.append(NewEvent("child_started", corr, fields))
        return out

    def _register_wait(self, delay_ms: int, handle: asyncio.TimerHandle) -> None:
        corr = self._next_id("wait")
        wait = WaitCall(corr, delay_ms, handle)
        self.waits[corr] = wait
        self._waits_by_handle[id(handle)] = wait
        self._open[corr] = None

    def _cancel_wait(self, handle: asyncio.TimerHandle) -> None:
        wait = self._waits_by_handle.pop(id(handle), None)
        if wait is not None and not wait.done:
            wait.cancelled = True
            self._open.pop(wait.corr, None)
            self._active_waits.pop(wait.corr, None)

    def patch(self, change_id: str, deprecated: bool) -> bool:
        """Answer ``patched(change_id)``: the same answer for a change all run long.

        True when the log records the change (a marker ahead of any evidence of replay, or one
        already consumed), False when the code is replaying a history recorded without it, and
        True in a first execution, which records the marker at the next commit.
        """
        known = self.patches.get(change_id)
        if known is not None:
            return known
        at = self._marker_at.get(change_id)
        if at is not None and at < self._pos:
            # a deprecated marker consumed before anything asked for it: deprecate_patch() there
            # (deleted since) took the new path; patched() here would branch on a change this
            # point of the run never saw
            if not deprecated:
                raise ChangeIdReusedError(
                    f"run {self.run_id}: patched({change_id!r}) is asked here for the first time "
                    "in this run, but the change's marker was recorded by deprecate_patch() at an earlier point, where the code no "
                    "longer asks about it. A change id names one change: give a new change a new "
                    f"id, or keep deprecate_patch({change_id!r}) where the marker was recorded"
                )
            answer = True
        else:
            found = self._replaying(change_id)
            answer = found != "replaying"
            if found == "new":
                self._markers_open[change_id] = deprecated
        self.patches[change_id] = answer
        return answer

    def _replaying(self, change_id: str) -> str:
        """What the log past the consumed events says about a call made now.

        "marker": the marker of ``change_id`` comes before any evidence of replay. "replaying":
        an event the code at this point has not caused yet comes first: the creation of a step,
        sleep or hook it has not called (or the disposal of a hook it has not disposed), the
        marker of a change it has not asked about, or the end of the run; the log then holds
        what the code did past this point, and without this change. "new": neither, the code
        runs here for the first time. Events of calls already made and events of the world
        (results, payloads, run_started) are no evidence: they can already be in the log when
        the code runs somewhere for the first time.
        """
        for ev in self.log[self._pos - self._base :]:
            if isinstance(ev, PatchRecorded):
                if ev.corr == change_id:
                    return "marker"
                if ev.corr not in self.patches:
                    return "replaying"
            elif isinstance(
                ev, StepCreated | WaitCreated | HookCreated | HookConflict | ChildStarted
            ):
                if not self._called(ev.corr):
                    return "replaying"
            elif isinstance(ev, HookDisposed):
                hook = self.hooks.get(ev.corr)
                if hook is None or not hook.dispose_requested:
                    return "replaying"
            elif isinstance(ev, RunCompleted | RunFailed | RunCancelled):
                return "replaying"
        return "new"

    def _called(self, corr: str) -> bool:
        return (
            corr in self.steps or corr in self.waits or corr in self.hooks or corr in self.children
        )

    def _marker_commands(self) -> list[NewEvent]:
        if not self._markers_open:
            return []
        return [
            NewEvent("patch_recorded", change_id, {"deprecated": "true" if deprecated else "false"})
            for change_id, deprecated in self._markers_open.items()
        ]

    # -- the driver ----------------------------------------------------------------------------

    def _start(self, run_created: RunCreated) -> None:
        try:
            args, kwargs = self._decode_args(run_created.input)
        except SerializationError:
            self._payload(run_created, "input")  # CorruptEventError when the text is no value
            raise  # a value that does not fit the parameters: the run fails with this error
        ctx = contextvars.copy_context()
        ctx.run(current_instance.set, self)
        self._task = self._loop.create_task(self._fn(*args, **kwargs), context=ctx)

    def _advance(self) -> Outcome:
        loop = self._loop
        while True:
            if loop._ready:  # (run_ready() of nothing ready does nothing)
                loop.run_ready()
            task = self._task
            if task is not None and task.done():
                return self._finish()
            if self._pos - self._base >= len(self.log):
                # the log is consumed (as after the code's wake-up, once per step): what the
                # lines below end with, as _consume_until_resolution() answers False at once
                # (terminal_event is None here: once set, advance() returns before this loop)
                return self._suspend()
            try:
                delivered = self._consume_until_resolution()
            except (NondeterminismError, CorruptEventError, SerializationError) as exc:
                return self._fail(exc)
            if self.terminal_event is not None:
                self.finished = Outcome(kind=self.terminal_event)
                return self.finished
            if not delivered:
                return self._suspend()

    def _consume_until_resolution(self) -> bool:
        """Consume head events; stop after one that resumes code. False at the end of the log."""
        log, base, steps = self.log, self._base, self.steps
        while self._pos - base < len(log):
            ev = log[self._pos - base]
            call = steps.get(ev.corr)
            if call is not None and type(ev) is StepCompleted:
                # _consume(ev) for the commonest event, inlined: _consume_step's first case
                call.status = "completed"
                self.active_steps.pop(ev.corr, None)
                del steps[ev.corr]  # no event follows a terminal one: keep memory flat
                if not call.future.done():
                    call.future.set_result(self._result(ev))
                resolved = True
            else:
                resolved = self._consume(ev)
            self._pos += 1
            if ev.ts > self.clock_ms:
                self.clock_ms = ev.ts
            if resolved or self.terminal_event is not None:
                return True
        return False

    def _consume(self, ev: Event) -> bool:
        step = self.steps.get(ev.corr)  # the common case first (run events have no corr)
        if step is not None:
            return self._consume_step(step, ev)
        if isinstance(ev, RunCreated):
            if self._task is None:
                at = self._pos + 1 - self._base
                nxt = self.log[at] if at < len(self.log) else None
                self.started_at_ms = nxt.ts if isinstance(nxt, RunStarted) else ev.ts
                self.clock_ms = self.started_at_ms
                self._seed = ev.seed
                self._start(ev)
                return True
            return False
        if isinstance(ev, RunStarted):
            return False
        if isinstance(ev, RunCompleted | RunFailed | RunCancelled):
            self.terminal_event = ev.__struct_config__.tag  # type: ignore[assignment]
            return True
        if isinstance(ev, PatchRecorded):
            return self._consume_marker(ev)
        if ev.corr in self.waits:
            return self._consume_wait(self.waits[ev.corr], ev)
        if ev.corr in self.hooks:
            return self._consume_hook(self.hooks[ev.corr], ev)
        if ev.corr in self.children:
            return self._consume_child(self.children[ev.corr], ev)
        raise NondeterminismError(
            f"run {self.run_id}: event {ev.seq} {_tag(ev)} ({ev.corr}) matches no call the "
            "workflow code made at this point; the code changed since the run started, or it "
            "depends on something other than its inputs, steps and sleeps"
        )

    def _consume_marker(self, ev: PatchRecorded) -> bool:
        answer = self.patches.get(ev.corr)
        if answer:
            self._markers_open.pop(ev.corr, None)
            return False
        if answer is None and ev.deprecated:
            return False  # the change's old path is gone from the code: nothing asks any more
        asked = "was not asked about" if answer is None else "answered False"
        raise NondeterminismError(
            f"run {self.run_id}: event {ev.seq} patch_recorded ({ev.corr}) recorded that the run "
            f"took the new path of change {ev.corr!r}, but the workflow code {asked} before this "
            "point; remove patched() only through deprecate_patch(), and keep it where it was"
        )

    def _consume_step(self, call: StepCall, ev: Event) -> bool:
        if type(ev) is StepCompleted:  # the commonest first
            call.status = "completed"
            self.active_steps.pop(call.corr, None)
            del self.steps[call.corr]  # no event follows a terminal one: keep memory flat
            if not call.future.done():
                call.future.set_result(self._result(ev))
            return True
        if type(ev) is StepStarted:
            call.status, call.attempt, call.retry_after = "running", ev.attempt, 0
            return False
        if type(ev) is StepCreated:
            if ev.name != call.name:
                raise NondeterminismError(
                    f"run {self.run_id}: event {ev.seq} step_created ({ev.corr}) recorded step "
                    f"{ev.name!r}, but the workflow code now calls {call.name!r} at this point"
                )
            if ev.input != call.input:
                raise NondeterminismError(
                    f"run {self.run_id}: event {ev.seq} step_created ({ev.corr}) of step "
                    f"{ev.name!r} recorded input {ev.input}, but the workflow code now passes "
                    f"{call.input}"
                )
            call.created, call.status = True, "pending"
            self._open.pop(call.corr, None)
            self.active_steps[call.corr] = call
            return False
        if type(ev) is StepRetrying:
            call.status, call.retry_after = "pending", ev.retry_after
            return False
        if type(ev) is StepFailed:
            call.status = "failed"
            self.active_steps.pop(call.corr, None)
            del self.steps[call.corr]
            if not call.future.done():
                call.future.set_exception(_as_error(self._payload(ev, "error")))
            return True
        raise NondeterminismError(
            f"run {self.run_id}: event {ev.seq} {_tag(ev)} ({ev.corr}) belongs to a step call "
            "in the current code, but is not a step event"
        )

    def _result(self, ev: StepCompleted) -> Any:
        """_payload(ev, "result"), its error message spelled once rather than per step."""
        try:
            return _serde.loads(ev.result, what="field 'result'")
        except SerializationError as exc:
            raise CorruptEventError(f"run {self.run_id}: {event_name(ev)}: {exc}") from None

    def _payload(self, ev: Event, field_name: str) -> Any:
        """The value of a payload field of ``ev``; CorruptEventError when it does not load."""
        try:
            return _serde.loads(getattr(ev, field_name), what=f"field {field_name!r}")
        except SerializationError as exc:
            raise CorruptEventError(f"run {self.run_id}: {event_name(ev)}: {exc}") from None

    def _consume_hook(self, call: HookCall, ev: Event) -> bool:
        if isinstance(ev, HookCreated):
            if ev.token != call.token:
                raise NondeterminismError(
                    f"run {self.run_id}: event {ev.seq} hook_created ({ev.corr}) recorded token "
                    f"{ev.token!r}, but the workflow code now asks for {call.token!r}"
                )
            call.created = True
            self._open.pop(call.corr, None)
            if not call.dispose_requested:
                self._active_hooks[call.corr] = call
            return False
        if isinstance(ev, HookConflict):
            call.conflict = True
            self._open.pop(call.corr, None)
            for fut in call.awaiters:
                if not fut.done():
                    fut.set_exception(HookConflictError(call.token))
            call.awaiters.clear()
            return True
        if isinstance(ev, HookReceived):
            payload = self._payload(ev, "payload")
            while call.awaiters:
                fut = call.awaiters.popleft()
                if not fut.done():
                    fut.set_result(payload)
                    return True
            call.buffer.append(payload)
            return True
        if isinstance(ev, HookDisposed):
            call.disposed = True
            self._active_hooks.pop(call.corr, None)
            for fut in call.awaiters:
                if not fut.done():
                    fut.set_exception(HookDisposedError(f"hook {call.token!r} was disposed"))
            call.awaiters.clear()
            return True
        raise NondeterminismError(
            f"run {self.run_id}: event {ev.seq} {_tag(ev)} ({ev.corr}) belongs to a hook in the "
            "current code, but is not a hook event"
        )

    def _consume_wait(self, call: WaitCall, ev: Event) -> bool:
        if isinstance(ev, WaitCreated):
            call.created, call.resume_at = True, ev.resume_at
            self._open.pop(call.corr, None)
            if not call.cancelled:
                self._active_waits[call.corr] = call
            return False
        if isinstance(ev, WaitCompleted):
            call.done = True
            self._active_waits.pop(call.corr, None)
            # no event follows a wait's end: forget it, so a run of many sleeps stays small
            del self.waits[call.corr]
            self._waits_completed.discard(call.corr)
            handle = call.handle
            if handle is not None and not handle.cancelled():
                self._waits_by_handle.pop(id(handle), None)
                handle._run()
            return True
        raise NondeterminismError(
            f"run {self.run_id}: event {ev.seq} {_tag(ev)} ({ev.corr}) belongs to a sleep in the "
            "current code, but is not a wait event"
        )

    def _suspend(self) -> Outcome:
        if len(self._open) == 1 and not self._active_hooks and not self._markers_open:
            # the common case: one step called since the last commit, nothing else to say (no
            # hook to dispose, no marker): its creation is the whole answer, as below
            step = self.steps.get(next(iter(self._open)))
            if step is not None and not step.future.done():
                fields = {"name": step.name, "input": step.input}
                return Outcome("suspended", commands=[NewEvent("step_created", step.corr, fields)])
        return self._suspend_all()

    def _suspend_all(self) -> Outcome:
        hooks: list[NewEvent] = []
        commands: list[NewEvent] = []
        for corr in self._open:
            if corr in self.children:
                continue  # see _child_commands
            hook = self.hooks.get(corr)
            if hook is not None:
                fields = {"token": hook.token, "metadata": hook.metadata}
                hooks.append(NewEvent("hook_created", corr, fields))
                continue
            step = self.steps.get(corr)
            if step is not None:
                if not step.future.done():
                    commands.append(
                        NewEvent("step_created", corr, {"name": step.name, "input": step.input})
                    )
                continue
            wait = self.waits[corr]
            if not wait.cancelled:
                commands.append(NewEvent("wait_created", corr, {"delay_ms": str(wait.delay_ms)}))
        if self._active_hooks:
            for hook in list(self._active_hooks.values()):
                if hook.dispose_requested:
                    hooks.append(NewEvent("hook_disposed", hook.corr))
        children = self._child_commands() if self.children else []
        if not hooks and not children and not self._markers_open:
            return Outcome(kind="suspended", commands=commands)
        # hooks first: whoever a step tells about a hook must find it; markers before them, so
        # that a replay meets a marker before the creations this commit holds (see _replaying)
        return Outcome(
            kind="suspended", commands=self._marker_commands() + hooks + children + commands
        )

    def is_stuck(self) -> bool:
        """True when the code waits but has nothing durable outstanding to wait for."""
        return (
            not self._open
            and not self.active_steps
            and not self._active_waits
            and not self._active_hooks
            and not self.open_children()
        )

    def _finish(self) -> Outcome:
        """The code's end, with the markers its last stretch decided (recorded before the end)."""
        outcome = self._ending()
        # a child started just before the end is started all the same (parent_close decides)
        outcome.commands = self._marker_commands() + self._child_commands()
        return outcome

    def _ending(self) -> Outcome:
        assert self._task is not None
        if self._task.cancelled():
            self.finished = Outcome(
                kind="failed", error=_serde.dumps(asyncio.CancelledError("workflow cancelled"))
            )
            return self.finished
        exc = self._task.exception()
        if exc is not None:
            return self._fail(exc)
        divergence = self._unreached_creation()
        if divergence is not None:
            return self._fail(divergence)
        try:
            output = _serde.dumps(
                self._task.result(), what=f"result of workflow {self.workflow_name}"
            )
        except Exception as err:
            return self._fail(err)
        self.finished = Outcome(kind="completed", output=output)
        return self.finished

    def _unreached_creation(self) -> NondeterminismError | None:
        """A step or sleep recorded in the log that the code finished without calling."""
        for ev in self.log[self._pos - self._base :]:
            if isinstance(ev, PatchRecorded):
                answer = self.patches.get(ev.corr)
                if answer is False or (answer is None and not ev.deprecated):
                    return NondeterminismError(
                        f"run {self.run_id}: event {ev.seq} patch_recorded ({ev.corr}) was "
                        f"recorded, but the workflow code now finishes without taking the new "
                        f"path of change {ev.corr!r}"
                    )
                continue
            if (
                isinstance(ev, StepCreated | WaitCreated | HookCreated | ChildStarted)
                and ev.corr not in self.steps
            ):
                if ev.corr in self.waits or ev.corr in self.hooks or ev.corr in self.children:
                    continue
                return NondeterminismError(
                    f"run {self.run_id}: event {ev.seq} {_tag(ev)} ({ev.corr}) was recorded, but "
                    "the workflow code now finishes without making that call"
                )
        return None

    def _fail(self, exc: BaseException) -> Outcome:
        self.finished = Outcome(kind="failed", error=error_json(exc))
        return self.finished


def _tag(ev: Event) -> str:
    return str(ev.__struct_config__.tag)


def error_json(exc: BaseException) -> str:
    """Serialize an error; never fails (falls back to type, message and traceback only)."""
    try:
        return _serde.dumps(exc, what="error")
    except Exception:
        tb = "".join(traceback.format_exception(exc))
        return _serde.dumps(
            {
                "type": f"{type(exc).__module__}:{type(exc).__qualname__}",
                "message": str(exc),
                "tb": tb,
            }
        )


def _settle(fut: asyncio.Future[Any], call: ChildCall, ev: Event) -> None:
    """Resolve ``fut`` with a child run's end: its value, or the error its parent sees."""
    if isinstance(ev, ChildCompleted):
        fut.set_result(_serde.loads(ev.output, what=f"the output of run {call.run_id}"))
    else:
        fut.set_exception(child_end_error(call.run_id, ev))


def _as_error(value: Any) -> BaseException:
    """A stored step error as the exception raised where the workflow awaits the step."""
    if isinstance(value, StopIteration):  # a future refuses it: raised into one, it is a TypeError
        name = f"{type(value).__module__}:{type(value).__qualname__}"
        return _serde.RemoteError(str(value), name, getattr(value, "__wf_traceback__", ""))
    if isinstance(value, BaseException):
        return value
    if isinstance(value, dict):
        return RuntimeError(str(value.get("message", value)))
    return RuntimeError(str(value))


_STEP_EVENTS = frozenset({StepCreated, StepStarted, StepCompleted, StepFailed, StepRetrying})
_RUN_ENDS = frozenset({RunCompleted, RunFailed, RunCancelled})

_OPENS: dict[type[Event], str] = {
    StepCreated: "step",
    WaitCreated: "wait",
    HookCreated: "hook",
    HookConflict: "hook",
    ChildStarted: "child",
}
_NEEDS: dict[type[Event], tuple[str, bool]] = {  # event -> (kind it needs open, does it close it)
    StepStarted: ("step", False),
    StepRetrying: ("step", False),
    StepCompleted: ("step", True),
    StepFailed: ("step", True),
    WaitCompleted: ("wait", True),
    HookReceived: ("hook", False),
    HookDisposed: ("hook", True),
    ChildCompleted: ("child", True),
    ChildFailed: ("child", True),
    ChildCancelled: ("child", True),
}


def clock_now(instance: WorkflowInstance) -> datetime:
    return datetime.fromtimestamp(instance.clock_ms / 1000.0, UTC)
