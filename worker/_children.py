"""Child runs: workflow code starts other workflows' runs and awaits their ends durably.

``run = await start(child, ...)`` in workflow code records ``child_started`` in the parent's log
(at the next commit, with the child's run id: derived from the parent's id and the call's
correlation id, or the ``run_id=`` given) and returns at once; replay returns the same id and
starts nothing. The child has the ``priority=`` given, else its parent's; ``child_started``
records it (field ``priority``, absent for 0), and a replay takes it from there. A parent and its
child usually live in different partitions, so nothing touches
both at once; every cross-partition step is idempotent and retried until done:

1. After a commit holding ``child_started`` (and again when a fresh worker replays the parent), the
   parent's worker creates the child run (idempotent by run id) and links it: the child's slot
   records who awaits it (link_child.lua). Until then the parent's wake-up stays unacknowledged,
   so a worker that dies in between leaves the parent to be reclaimed and this done again.
2. When a linked run (or a run that started children) ends, commit.lua enqueues a wake-up with
   reason ``ended``. The worker that takes it appends ``child_completed`` / ``child_failed`` /
   ``child_cancelled`` to each awaiting parent's log (a duplicate is answered "exists") and, for
   children started with ``parent_close="cancel"``, cancels those still running. Only then is
   the wake-up acknowledged; a worker that dies leaves it to be reclaimed.

In the parent, ``await run.result()`` resolves when the child's end is consumed from its log:
the child's value, or ``WorkflowRunFailedError`` (the child's error as ``__cause__``) or
``WorkflowRunCancelledError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from . import _serde
from ._deployments import resolve_deployment
from ._errors import (
    InvalidParentCloseError,
    WorkflowError,
    WorkflowRunCancelledError,
    WorkflowRunFailedError,
)
from ._events import (
    ChildCancelled,
    ChildCompleted,
    ChildFailed,
    ChildStarted,
    Event,
    NewEvent,
    RunCreated,
)
from ._ids import _ulid_text
from ._world import Commit, RunInfo, Wakeup, World

if TYPE_CHECKING:
    from ._replay import ChildCall, WorkflowInstance

PARENT_CLOSE = ("cancel", "abandon")
TERMINAL = ("completed", "failed", "cancelled")
END_EVENT = {
    "completed": "child_completed",
    "failed": "child_failed",
    "cancelled": "child_cancelled",
}


def check_parent_close(value: object) -> str:
    if not isinstance(value, str) or value not in PARENT_CLOSE:
        raise InvalidParentCloseError(value)
    return value


def child_run_id(parent_run_id: str, corr: str, started_at_ms: int) -> str:
    """The id of a child run started without ``run_id=``: the same on every replay."""
    digest = hashlib.sha256(f"{parent_run_id}|{corr}".encode()).digest()
    ms = started_at_ms & ((1 << 48) - 1)
    return f"wrun_{_ulid_text(ms << 80 | int.from_bytes(digest[:10], 'big'))}"


def child_end_error(run_id: str, ev: Event) -> BaseException:
    """What ``await run.result()`` raises in the parent for a child that did not complete."""
    if isinstance(ev, ChildCancelled):
        return WorkflowRunCancelledError(run_id)
    cause: Any = None
    if isinstance(ev, ChildFailed):
        cause = _serde.loads(ev.error or "null", what=f"the error of run {run_id}")
    err = WorkflowRunFailedError(run_id, str(cause))
    if isinstance(cause, BaseException):
        err.__cause__ = cause
    return err


# -- the World's part -----------------------------------------------------------------------------


@runtime_checkable
class ChildLinks(Protocol):
    """Where a World keeps who awaits a run's end (RedisWorld: ``world.children``)."""

    async def link_child(self, run_id: str, parent_run_id: str, corr: str) -> tuple[str, str]: ...
    async def child_watchers(self, run_id: str) -> list[tuple[str, str]]: ...


def child_links(world: object) -> ChildLinks:
    """The child-run links of ``world``; WorkflowError when its class keeps none."""
    links = getattr(world, "children", None)
    if not isinstance(links, ChildLinks):
        raise WorkflowError(f"{type(world).__name__} cannot run child workflows")
    return links


# -- the parent's worker: create and link the children its log started ----------------------


async def ensure_children(world: World, inst: WorkflowInstance, committed: Collection[str]) -> None:
    """Create and link each child run the log started that this instance did not yet.

    ``committed``: correlation ids of events just committed (a child_started among them is in
    the log, though the code has not consumed it yet).
    """
    for call in list(inst.unensured.values()):
        if call.created or call.corr in committed:
            await ensure_child(world, inst.run_id, call, inst.trace)
            inst.unensured.pop(call.corr, None)


async def ensure_child(world: World, parent_run_id: str, call: ChildCall, trace: str = "") -> None:
    """Create the child run (idempotent), with the parent's trace context, and link it."""
    deployment = await resolve_deployment(world, call.workflow, None)
    await world.create_run(
        call.run_id,
        call.workflow,
        call.input,
        deployment,
        trace,
        parent=parent_run_id,
        priority=call.priority,
    )
    code, _status = await child_links(world).link_child(call.run_id, parent_run_id, call.corr)
    if code != "linked":  # ended already (or compacted): its end goes to the parent now
        info = await world.get_run(call.run_id)
        if info is None:
            raise WorkflowError(f"child run {call.run_id} of run {parent_run_id} does not exist")
        await deliver_end(world, info, parent_run_id, call.corr)


async def deliver_end(world: World, child: RunInfo, parent_run_id: str, corr: str) -> None:
    """Append the child's end to the parent's log and wake the parent (idempotent)."""
    etype = END_EVENT.get(child.status)
    if etype is None:
        return
    fields: dict[str, str] = {}
    if etype == "child_completed":
        fields["output"] = child.output or "null"
    elif etype == "child_failed":
        fields["error"] = child.error or "null"
    # every answer is final: ok, exists (delivered before), terminal (the parent ended), no_run
    await world.commit(
        [Commit(run_id=parent_run_id, events=[NewEvent(etype, corr, fields)], wake="child")]
    )


# -- an ended run: tell its parents, close its children -----------------------------------------


async def settle_ended(world: World, wakeup: Wakeup, log: Any) -> None:
    """Handle a wake-up with reason ``ended`` (see the module docstring); ack it once done."""
    run_id = wakeup.run_id
    try:
        info = await world.get_run(run_id)
        if info is not None and info.status in TERMINAL:
            for parent_run_id, corr in await child_links(world).child_watchers(run_id):
                await deliver_end(world, info, parent_run_id, corr)
            await close_children(world, run_id, log)
    except Exception as exc:  # left pending: reclaimed and handled again after a lease
        log.error("child_run_end_failed", run_id=run_id, error=repr(exc), exc_info=True)
        return
    await world.ack([wakeup])


async def close_children(world: World, run_id: str, log: Any) -> None:
    """Apply ``parent_close`` to the children an ended run started and did not see end."""
    events = await world.read_events(run_id)
    if not events or not isinstance(events[0], RunCreated):
        return
    open_children: dict[str, ChildStarted] = {}
    for ev in events:
        if isinstance(ev, ChildStarted):
            open_children[ev.corr] = ev
        elif isinstance(ev, ChildCompleted | ChildFailed | ChildCancelled):
            open_children.pop(ev.corr, None)
    for ev in open_children.values():
        child = await world.get_run(ev.run_id)
        if child is None:  # the parent ended before its worker created the child: create it now
            await world.create_run(ev.run_id, ev.workflow, ev.input, parent=run_id)
            child = await world.get_run(ev.run_id)
        if ev.parent_close != "cancel" or child is None or child.parent_run_id != run_id:
            continue  # abandoned, or a run the parent did not create (run_id= of an existing run)
        if child.status not in TERMINAL:
            reason = f"parent run {run_id} ended"
            await world.commit(
                [
                    Commit(
                        run_id=ev.run_id,
                        events=[NewEvent("run_cancelled", "", {"reason": reason})],
                        wake="cancelled",
                    )
                ]
            )
            log.info("child_run_cancelled", run_id=ev.run_id, parent_run_id=run_id)


def children_of(events: list[Event]) -> list[dict[str, str]]:
    """The child runs a run's log started, in order: run id, workflow, correlation id,
    parent_close, and state (started, or the end the log recorded: completed | failed |
    cancelled)."""
    children: dict[str, dict[str, str]] = {}
    for ev in events:
        if isinstance(ev, ChildStarted):
            children[ev.corr] = {
                "run_id": ev.run_id,
                "workflow": ev.workflow,
                "corr": ev.corr,
                "parent_close": ev.parent_close,
                "state": "started",
            }
        elif isinstance(ev, ChildCompleted | ChildFailed | ChildCancelled) and ev.corr in children:
            children[ev.corr]["state"] = str(ev.__struct_config__.tag).removeprefix("child_")
    return list(children.values())
