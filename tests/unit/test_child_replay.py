"""Child runs in the replay core: ids, replay, errors and divergence, without Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from worker import (
    FatalError,
    InvalidParentCloseError,
    WorkflowNotRegisteredError,
    WorkflowRunCancelledError,
    WorkflowRunFailedError,
    WorkflowTimeoutError,
    _serde,
    start,
    workflow,
)
from worker._children import child_run_id
from worker._events import Event, NewEvent, RunCreated, RunStarted, make_event
from worker._replay import Outcome, WorkflowInstance

from .replay_support import RUN_ID, START_MS, new_instance


@workflow(name="t_child.kid")
async def kid(x: int) -> int:
    return x


@workflow(name="t_child.other_kid")
async def other_kid(x: int) -> int:
    return x


@workflow(name="t_child.parent")
async def parent(x: int) -> list[Any]:
    run = await start(kid, x)
    return [run.run_id, await run.result()]


@workflow(name="t_child.parent_changed")
async def parent_changed(x: int) -> list[Any]:
    run = await start(other_kid, x)
    return [run.run_id, await run.result()]


@workflow(name="t_child.catcher")
async def catcher() -> str:
    run = await start(kid, 1)
    try:
        await run.result()
    except WorkflowRunFailedError as exc:
        return f"failed {exc.run_id == run.run_id} {type(exc.__cause__).__name__}: {exc.__cause__}"
    except WorkflowRunCancelledError as exc:
        return f"cancelled {exc.run_id == run.run_id}"
    return "completed"


@workflow(name="t_child.forms")
async def forms() -> list[int]:
    runs = [await start(kid, i) for i in range(3)]
    task = asyncio.ensure_future(runs[0].result())
    done, _ = await asyncio.wait([asyncio.create_task(runs[1].result())])
    waited = await asyncio.wait_for(runs[2].result(), 3600)
    gathered = await asyncio.gather(*(r.result() for r in runs))
    return [await task, next(iter(done)).result(), waited, *gathered]


@workflow(name="t_child.impatient")
async def impatient() -> str:
    run = await start(kid, 1)
    try:
        await run.result(timeout=5)
    except WorkflowTimeoutError as exc:
        return f"{type(exc).__name__} {isinstance(exc, TimeoutError)} {run.run_id in str(exc)}"
    return "ended"


@workflow(name="t_child.prioritised")
async def prioritised() -> list[Any]:
    a, b = await start(kid, 1, priority=5), await start(kid, 2)
    return [await a.result(), await b.result()]


@workflow(name="t_child.reprioritised")
async def reprioritised() -> list[Any]:
    """prioritised with other priorities in its code (a changed deployment)."""
    a, b = await start(kid, 1, priority=-3), await start(kid, 2, priority=9)
    return [await a.result(), await b.result()]


@workflow(name="t_child.out_of_range")
async def out_of_range() -> str:
    await start(kid, 1, priority=1001)
    return "started"


@workflow(name="t_child.chosen_id")
async def chosen_id() -> list[str]:
    a = await start(kid, 1, run_id="wrun_CHOSEN")
    b = await start(kid, 2)
    return [a.run_id, b.run_id]


@workflow(name="t_child.unregistered")
async def unregistered() -> str:
    await start("t_child.nope", 1)
    return "started"


@workflow(name="t_child.bad_close")
async def bad_close() -> str:
    await start(kid, 1, parent_close="sometimes")
    return "started"


class Log:
    """A run's log built by hand: the run's opening, then what the code and the world add."""

    def __init__(self, name: str, args: list[Any], priority: int = 0) -> None:
        self.events: list[Event] = [
            RunCreated(
                seq=1, ts=START_MS, workflow=name, input=_serde.dumps(args), priority=priority
            ),
            RunStarted(seq=2, ts=START_MS),
        ]

    def add(self, *new: NewEvent) -> list[Event]:
        added = [
            make_event(n, len(self.events) + 1 + i, START_MS + 1, 0) for i, n in enumerate(new)
        ]
        self.events += added
        return added


def run(
    wf: Any, args: list[Any], world: Any = None, priority: int = 0
) -> tuple[WorkflowInstance, Log, Outcome]:
    """First execution (of a run of ``priority``): advance, append the commands, let
    ``world(commands)`` add resolutions, until the code ends (or a round adds nothing)."""
    inst = new_instance(wf)
    log = Log(inst.workflow_name, args, priority)
    inst.feed(log.events)
    while True:
        out = inst.advance()
        if out.kind != "suspended":
            return inst, log, out
        inst.feed(log.add(*out.commands))
        extra = world(out.commands) if world else []
        if not out.commands and not extra:
            return inst, log, out
        inst.feed(log.add(*extra))


def ends(etype: str, **fields: str) -> Any:
    """A world in which every child started ends with ``etype``."""

    def world(commands: list[NewEvent]) -> list[NewEvent]:
        return [NewEvent(etype, c.corr, fields) for c in commands if c.type == "child_started"]

    return world


def completed(commands: list[NewEvent]) -> list[NewEvent]:
    """A world in which every child (``kid``: its value is its argument) completes."""
    out = []
    for c in commands:
        if c.type == "child_started":
            (x,) = _serde.loads(c.fields["input"])
            out.append(NewEvent("child_completed", c.corr, {"output": _serde.dumps(x)}))
    return out


def replay(wf: Any, events: list[Event]) -> Outcome:
    inst = new_instance(wf)
    inst.feed(events)
    return inst.advance()


def test_child_started_then_value_and_same_id_on_replay() -> None:
    """The start is one child_started with a derived run id; replay returns that id, starts
    nothing new, and the child's value comes from child_completed."""
    _inst, log, out = run(parent, [7], completed)
    assert out.kind == "completed"
    child_id, value = _serde.loads(out.output)
    assert value == 7
    started = [e for e in log.events if e.__struct_config__.tag == "child_started"]
    assert len(started) == 1
    assert started[0].run_id == child_id == child_run_id(RUN_ID, started[0].corr, START_MS)
    assert started[0].workflow == "t_child.kid" and started[0].parent_close == "cancel"
    again = replay(parent, log.events)
    assert again == out and again.commands == []


def test_replay_without_the_end_waits_and_starts_nothing() -> None:
    """Replayed before the child's end, the code waits and asks for no second child."""
    _inst, log, _out = run(parent, [7], completed)
    inst = new_instance(parent)
    inst.feed(log.events[:-1])  # the log up to child_started
    out = inst.advance()
    assert out.kind == "suspended" and out.commands == []
    assert [c.run_id for c in inst.open_children()] == [log.events[-2].run_id]
    assert not inst.is_stuck()


def test_failed_child_raises_with_its_error() -> None:
    """child_failed raises WorkflowRunFailedError carrying the child's error as __cause__."""
    error = _serde.dumps(FatalError("kaput"))
    _inst, _log, out = run(catcher, [], ends("child_failed", error=error))
    assert _serde.loads(out.output) == "failed True FatalError: kaput"


def test_cancelled_child_raises_cancelled() -> None:
    """child_cancelled raises WorkflowRunCancelledError naming the child."""
    _inst, _log, out = run(catcher, [], ends("child_cancelled"))
    assert _serde.loads(out.output) == "cancelled True"


def test_asyncio_forms_over_child_results() -> None:
    """ensure_future, wait, create_task, wait_for and gather take a child's result()."""
    _inst, log, out = run(forms, [], completed)
    assert _serde.loads(out.output) == [0, 1, 2, 0, 1, 2]
    assert replay(forms, log.events) == out


def test_chosen_run_id_is_kept() -> None:
    """run_id= names the child; the next child still gets a derived id."""
    _inst, _log, out = run(chosen_id, [])
    a, b = _serde.loads(out.output)
    assert a == "wrun_CHOSEN" and b.startswith("wrun_") and b != a


def test_nondeterminism_when_a_different_child_is_started() -> None:
    """Replaying code that starts another workflow where the log recorded a child fails the run."""
    _inst, log, _out = run(parent, [7], completed)
    out = replay(parent_changed, log.events)
    assert out.kind == "failed"
    error = _serde.loads(out.error)
    assert "NondeterminismError" in type(error).__name__ and "t_child.kid" in str(error)


def test_unregistered_child_is_a_typed_error_in_the_code() -> None:
    """An unregistered workflow name raises WorkflowNotRegisteredError and records nothing."""
    _inst, log, out = run(unregistered, [])
    assert out.kind == "failed"
    assert isinstance(_serde.loads(out.error), WorkflowNotRegisteredError)
    assert len(log.events) == 2 and out.commands == []


def test_unknown_parent_close_is_a_typed_error() -> None:
    """parent_close other than cancel/abandon raises InvalidParentCloseError naming it."""
    _inst, _log, out = run(bad_close, [])
    error = _serde.loads(out.error)
    assert isinstance(error, InvalidParentCloseError) and "sometimes" in str(error)
    with pytest.raises(InvalidParentCloseError):
        asyncio.run(start(kid, 1, parent_close="sometimes"))


def test_a_child_result_timeout_is_a_durable_timer_raising_workflow_timeout_error() -> None:
    """``await run.result(timeout=5)`` in workflow code arms a durable sleep; when it completes
    first the code gets WorkflowTimeoutError (a TimeoutError), as outside workflow code."""

    def timer_fires(commands: list[NewEvent]) -> list[NewEvent]:
        return [NewEvent("wait_completed", c.corr) for c in commands if c.type == "wait_created"]

    _inst, log, out = run(impatient, [], timer_fires)
    assert out.kind == "completed"
    assert _serde.loads(out.output) == "WorkflowTimeoutError True True"
    kinds = [e.__struct_config__.tag for e in log.events]
    assert kinds.count("child_started") == 1 and kinds.count("wait_created") == 1
    assert replay(impatient, log.events).output == out.output


def test_priority_of_a_child_run_is_recorded_and_kept_on_replay() -> None:
    """priority= in workflow code is recorded in child_started (a child without one has its
    parent's); a replay keeps the log's priorities, whatever the code now says."""
    _inst, log, out = run(prioritised, [], completed, priority=-2)
    assert out.kind == "completed"
    started = [e for e in log.events if e.__struct_config__.tag == "child_started"]
    assert [e.priority for e in started] == [5, -2]  # type: ignore[attr-defined]
    last_start = max(e.seq for e in started)
    again = new_instance(reprioritised)  # replayed up to the starts: the children not ended
    again.feed([e for e in log.events if e.seq <= last_start])
    out2 = again.advance()
    assert (out2.kind, out2.commands) == ("suspended", [])
    assert [c.priority for c in again.children.values()] == [5, -2]


def test_child_priority_out_of_range_is_a_typed_error() -> None:
    """A child priority outside -1000..1000 fails the call with FlowControlError (the workflow
    fails with it) and records no child."""
    _inst, log, out = run(out_of_range, [])
    assert out.kind == "failed"
    assert "FlowControlError" in out.error and "priority" in out.error
    assert not [e for e in log.events if e.__struct_config__.tag == "child_started"]
