"""Starting runs and following them from any process: ``start``, ``get_run``, ``Run``, ``sleep``."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from . import _serde
from . import _tracing as tracing
from ._children import check_parent_close
from ._context import current_step, ms_to_datetime
from ._deployments import resolve_deployment
from ._duration import Duration, to_seconds
from ._errors import (
    PayloadTooLargeError,
    RunNotFoundError,
    WorkflowError,
    WorkflowNotRegisteredError,
    WorkflowRunCancelledError,
    WorkflowRunFailedError,
    WorkflowTimeoutError,
)
from ._events import Event, NewEvent, RunCancelled, RunCompleted, RunFailed
from ._flow import check_priority
from ._ids import check_run_id, new_run_id
from ._registry import WorkflowFunction, get_workflow, has_workflow
from ._replay import ChildCall, WorkflowInstance, current_instance
from ._streams import read_stream
from ._world import Commit, RunInfo, StepInfo, World

_world: World | None = None
_world_pid: int | None = None

TERMINAL = ("completed", "failed", "cancelled")


def set_world(world: World | None) -> None:
    """Use ``world`` for this process (``None`` goes back to the default)."""
    global _world, _world_pid
    _world, _world_pid = world, os.getpid()


def get_world() -> World:
    """The process's World: ``WORKFLOW_REDIS_URL``, else the embedded Redis under ``.workflow/``."""
    global _world, _world_pid
    if _world is None or _world_pid != os.getpid():
        # imported here, not at the top: world_redis imports worker.world, so a top-level import
        # would be a cycle; the engine itself only knows the World protocol
        import world_redis

        url = os.environ.get("WORKFLOW_REDIS_URL") or world_redis.ensure_embedded(
            os.environ.get("WORKFLOW_DATA_DIR", ".workflow")
        )
        kwargs: dict[str, Any] = {}
        if os.environ.get("WORKFLOW_PREFIX"):
            kwargs["prefix"] = os.environ["WORKFLOW_PREFIX"]
        if os.environ.get("WORKFLOW_PARTITIONS"):
            kwargs["partitions"] = int(os.environ["WORKFLOW_PARTITIONS"])
        if os.environ.get("WORKFLOW_REDIS_CA_CERTS"):
            kwargs["ssl_ca_certs"] = os.environ["WORKFLOW_REDIS_CA_CERTS"]
        _world, _world_pid = world_redis.RedisWorld.from_url(url, **kwargs), os.getpid()
    return _world


def check_payload(world: World, text: str, what: str) -> None:
    size = len(text.encode())
    if size > world.max_payload_bytes:
        raise PayloadTooLargeError(what, size, world.max_payload_bytes)


def encode_workflow_input(
    wf: WorkflowFunction, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    wf.argspec.convert(list(args), kwargs, f"workflow {wf.name!r}")  # convert_args, faster
    payload: Any = list(args) if not kwargs else {"args": list(args), "kwargs": kwargs}
    return _serde.dumps(payload, what=f"arguments of workflow {wf.name!r}")


def workflow_call(
    world: World, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, str]:
    """The workflow's name and its arguments as JSON, checked against its annotations when it is
    registered here (a name registered only in the workers' code: checked by the worker)."""
    if isinstance(fn, WorkflowFunction) or has_workflow(str(fn)):
        wf = fn if isinstance(fn, WorkflowFunction) else get_workflow(str(fn))
        name, input_json = wf.name, encode_workflow_input(wf, args, kwargs)
        if wf.flow is not None and wf.flow.key is not None:  # FlowControlError before any run
            wf.flow.check_key(list(args), kwargs, f"workflow {wf.name!r}")
    else:
        name = str(fn)
        payload: Any = list(args) if not kwargs else {"args": list(args), "kwargs": kwargs}
        input_json = _serde.dumps(payload, what=f"arguments of workflow {name!r}")
    check_payload(world, input_json, f"arguments of workflow {name!r}")
    return name, input_json


async def start(
    fn: Any,
    *args: Any,
    run_id: str | None = None,
    world: World | None = None,
    deployment_id: str | None = None,
    parent_close: str = "cancel",
    priority: int | None = None,
    **kwargs: Any,
) -> Run:
    """Start a run of workflow ``fn`` (a ``@workflow`` function or its registered name).

    Arguments are checked against the workflow's annotations before any run exists. With
    ``run_id`` the call is idempotent: starting the same id again returns the existing run.
    ``deployment_id`` pins the run to that deployment (UnknownDeploymentError when no worker
    ever registered it, and nothing is created); without it the run is pinned to the newest live
    deployment serving the workflow, or left for the first worker that takes it (see
    ``worker._deployments``). ``priority`` (an int from -1000 to 1000, default 0): where work
    waits for a flow-control slot, higher priorities are served first, and where runs queue up
    for workers a priority above 0 is served before 0, below 0 after (FlowControlError for
    anything but an int from -1000 to 1000, before any run exists).

    In workflow code the start is durable (a child run, see ``worker._children``): the returned
    run's ``result()`` is awaited durably, and ``parent_close`` ("cancel", the default, or
    "abandon") says whether the child is cancelled when the parent ends before it; without
    ``priority`` the child has its parent's.
    """
    check_parent_close(parent_close)
    level = check_priority(priority)
    inst = current_instance.get()
    if inst is not None and current_step.get() is None:
        if world is not None or deployment_id is not None:
            raise WorkflowError("start() in workflow code takes no world= or deployment_id=")
        child_priority = None if priority is None else level  # None: the parent's
        return start_child(inst, fn, args, kwargs, run_id, parent_close, child_priority)
    w = world or get_world()
    name, input_json = workflow_call(w, fn, args, kwargs)
    rid = check_run_id(run_id) if run_id is not None else new_run_id()
    deployment = await resolve_deployment(w, name, deployment_id)
    with tracing.start_span(name) as trace:
        created = await w.create_run(rid, name, input_json, deployment, trace, priority=level)
    run = Run(rid, world=w)
    if created:
        run._seen_seq = 1  # its log holds run_created only: result() waits from there
    return run


async def rerun(run_id: str, *, new_id: str | None = None, world: World | None = None) -> Run:
    """Start a new run of ``run_id``'s workflow with the same input, pinned as start() pins a
    new run (to the newest live deployment serving the workflow).

    RunNotFoundError for an unknown run; WorkflowError when ``new_id`` names an existing
    run."""
    w = world or get_world()
    info = await Run(run_id, world=w).info()
    rid = check_run_id(new_id) if new_id else new_run_id()
    deployment = await resolve_deployment(w, info.workflow, None)
    if not await w.create_run(rid, info.workflow, info.input, deployment):
        raise WorkflowError(f"run {rid} exists already: choose another run id")
    return Run(rid, world=w)


def start_child(
    inst: WorkflowInstance,
    fn: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    run_id: str | None,
    parent_close: str,
    priority: int | None = None,
) -> ChildRun:
    """Record a child run's start in the parent's log (see ``worker._children``)."""
    if isinstance(fn, WorkflowFunction) and has_workflow(fn.name):
        wf = fn
    elif isinstance(fn, str) and has_workflow(fn):
        wf = get_workflow(fn)
    else:
        name = fn.name if isinstance(fn, WorkflowFunction) else getattr(fn, "__qualname__", fn)
        raise WorkflowNotRegisteredError(str(name))
    input_json = encode_workflow_input(wf, args, kwargs)
    if run_id is not None:
        check_run_id(run_id)
        if run_id == inst.run_id:
            raise WorkflowError(f"run {run_id} cannot start itself as a child run")
    call = inst.start_child(wf.name, input_json, run_id, parent_close, priority)
    return ChildRun(inst, call)


def get_run(run_id: str, world: World | None = None) -> Run:
    """A handle on an existing run (no I/O until used)."""
    return Run(run_id, world=world)


RUN_ENDS = (RunCompleted, RunFailed, RunCancelled)


class Run:
    """A run seen from outside: status, result, events, steps, cancel."""

    def __init__(self, run_id: str, world: World | None = None) -> None:
        self.run_id = run_id
        self._world = world
        self._seen_seq: int | None = None  # a log position known to be unfinished

    @property
    def world(self) -> World:
        return self._world or get_world()

    def __repr__(self) -> str:
        return f"Run({self.run_id!r})"

    async def info(self) -> RunInfo:
        info = await self.world.get_run(self.run_id)
        if info is None:
            raise RunNotFoundError(self.run_id)
        return info

    async def status(self) -> str:
        return (await self.info()).status

    @property
    def workflow_name(self) -> str:
        raise AttributeError("use (await run.info()).workflow")

    async def created_at(self) -> datetime:
        return ms_to_datetime((await self.info()).created_at)

    async def result(self, timeout: float | None = None, poll_interval: float = 0.05) -> Any:
        """Wait for the run to finish; its value, or WorkflowRunFailedError / CancelledError.

        Blocks on the run's event stream, so the result arrives one round trip after the run ends.
        ``poll_interval`` is accepted for compatibility and unused.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seq = self._seen_seq
        while True:
            if seq is None:
                info = await self.info()
                if info.status == "completed":
                    return self._output(info.output)
                if info.status == "failed":
                    raise run_failed_error(info)
                if info.status == "cancelled":
                    raise WorkflowRunCancelledError(self.run_id)
                seq = info.seq
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                status = (await self.info()).status
                raise WorkflowTimeoutError(f"run {self.run_id} still {status} after {timeout} s")
            # block until the log grows (or a second passes): the run's end is an event of it
            events = await self.world.wait_for_events(
                self.run_id, seq, max(1, int(min(1.0, left or 1.0) * 1000))
            )
            ended = next((e for e in events if isinstance(e, RUN_ENDS)), None)
            if isinstance(ended, RunCompleted):
                return self._output(ended.output)
            # nothing new, or an end other than success (its error is on the run): look again
            seq = events[-1].seq if events and ended is None else None

    def _output(self, text: str | None) -> Any:
        return _serde.loads(text or "null", what=f"the output of run {self.run_id}")

    async def cancel(self) -> None:
        """Cancel a pending, running or sleeping run; cancelling a cancelled run is a no-op."""
        (result,) = await self.world.commit(
            [Commit(run_id=self.run_id, events=[NewEvent("run_cancelled")], wake="cancelled")]
        )
        # "no_run" is also the answer for a finished run whose log was compacted (no run hash)
        ended = result.code == "rejected" and result.results[0].status == "terminal"
        if result.code == "no_run" or ended:
            status = await self.status()  # RunNotFoundError when the run does not exist
            if status != "cancelled":
                raise WorkflowError(
                    f"run {self.run_id} is already {status}; it cannot be cancelled"
                )

    async def events(self) -> list[Event]:
        return await self.world.read_events(self.run_id)

    async def steps(self) -> list[StepInfo]:
        return await self.world.list_steps(self.run_id)

    def readable(self, namespace: str | None = None, start_index: int = 0) -> AsyncIterator[Any]:
        """Chunks of the run's stream (default or ``namespace``) from ``start_index``, live."""
        return read_stream(self.world, self.run_id, namespace, start_index)


async def _child_result_within(fut: asyncio.Future[Any], timeout: float, run_id: str) -> Any:
    """A child's end, or WorkflowTimeoutError after ``timeout`` s of workflow time (a durable
    timer), as ``Run.result(timeout=)`` raises outside workflow code."""
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        raise WorkflowTimeoutError(f"child run {run_id} did not end within {timeout} s") from None


class ChildRun(Run):
    """A child run started by workflow code: ``result()`` is awaited durably there."""

    def __init__(self, instance: WorkflowInstance, call: ChildCall) -> None:
        super().__init__(call.run_id)
        self._instance = instance
        self._call = call

    def __repr__(self) -> str:
        return f"ChildRun({self.run_id!r})"

    def result(self, timeout: float | None = None, poll_interval: float = 0.05) -> Any:
        """In the parent's workflow code: an awaitable of the child's end (a future, so it works
        with gather, wait, create_task...); ``timeout`` is a durable timer there. Elsewhere, as
        :meth:`Run.result`."""
        if current_instance.get() is not self._instance or current_step.get() is not None:
            return Run.result(self, timeout, poll_interval)
        fut = self._instance.child_result(self._call)
        return fut if timeout is None else _child_result_within(fut, timeout, self.run_id)

    def _outside_workflow(self, what: str) -> None:
        if current_instance.get() is self._instance and current_step.get() is None:
            raise WorkflowError(
                f"run.{what}() of a child run reads Redis: call it from a step, not from the "
                "parent's workflow code (there, await run.result())"
            )

    async def info(self) -> RunInfo:
        self._outside_workflow("info")
        return await super().info()

    async def cancel(self) -> None:
        self._outside_workflow("cancel")
        await super().cancel()

    async def events(self) -> list[Event]:
        self._outside_workflow("events")
        return await super().events()

    async def steps(self) -> list[StepInfo]:
        self._outside_workflow("steps")
        return await super().steps()


def run_failed_error(info: RunInfo) -> WorkflowRunFailedError:
    cause = _serde.loads(info.error or "null", what=f"the error of run {info.run_id}")
    message = str(cause)
    err = WorkflowRunFailedError(info.run_id, message)
    if isinstance(cause, BaseException):
        err.__cause__ = cause
    return err


async def sleep(duration: Duration) -> None:
    """Durable sleep in a workflow (survives restarts); a plain ``asyncio.sleep`` elsewhere."""
    inst = current_instance.get()
    in_workflow = inst is not None and current_step.get() is None
    base = inst.clock_ms / 1000.0 if in_workflow and inst is not None else None
    await asyncio.sleep(to_seconds(duration, now=base))
