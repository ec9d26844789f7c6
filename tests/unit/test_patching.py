"""patched() and deprecate_patch(): versioned workflow code replayed against recorded logs.

Each test records a log with one version of a workflow (the in-memory simulator of
``replay_support``) and replays it, whole or cut where the run paused, with another version.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import pytest

from tests.unit.replay_support import (
    SimResult,
    event_type,
    insert_event,
    new_instance,
    replay,
    replay_instance,
    simulate,
)
from worker import (
    ChangeIdReusedError,
    HookConflictError,
    NondeterminismError,
    WorkflowError,
    _serde,
    create_hook,
    deprecate_patch,
    patched,
)
from worker._client import sleep
from worker._errors import CorruptEventError
from worker._events import (
    HOOK_CONFLICT,
    Event,
    NewEvent,
    PatchRecorded,
    WaitCreated,
    event_from_fields,
    make_event,
)
from worker._registry import step
from worker._replay import Outcome, WorkflowInstance


@step(name="t_patch.old")
def old_step() -> str:
    return "old"


@step(name="t_patch.new")
def new_step() -> str:
    return "new"


@step(name="t_patch.after")
def after_step() -> str:
    return "after"


@step(name="t_patch.uses_patched")
def step_calling_patched() -> bool:
    return patched("in-a-step")


# -- versions of one workflow: v1 calls old_step, v2 guards the change to new_step -------------


async def v1() -> str:
    first = await old_step()
    await sleep(60)
    return first


async def v2() -> str:
    first = await new_step() if patched("use-new") else await old_step()
    await sleep(60)
    return first


async def v2_unguarded() -> str:
    first = await new_step()
    await sleep(60)
    return first


async def v3() -> str:
    """The old branch deleted once no run without the marker is left."""
    deprecate_patch("use-new")
    first = await new_step()
    await sleep(60)
    return first


async def v4() -> str:
    """The change no longer mentioned at all."""
    first = await new_step()
    await sleep(60)
    return first


def failure(out: Outcome) -> BaseException:
    assert out.kind == "failed", out
    exc = _serde.loads(out.error)
    assert isinstance(exc, BaseException)
    return exc


def markers(events: Sequence[Event]) -> list[PatchRecorded]:
    return [e for e in events if isinstance(e, PatchRecorded)]


def paused(res: SimResult) -> list[Event]:
    """The log cut where the run sleeps: up to and including its wait_created."""
    at = next(i for i, e in enumerate(res.events) if isinstance(e, WaitCreated))
    return res.events[: at + 1]


def wake(inst: WorkflowInstance, events: list[Event]) -> Outcome:
    """The sleep of a paused run completes: feed its wait_completed and advance."""
    wait = next(e for e in events if isinstance(e, WaitCreated))
    seq = inst.seq + 1
    inst.feed(
        [event_from_fields(seq, {"type": "wait_completed", "corr": wait.corr, "ts": "9" * 13})]
    )
    return inst.advance()


# -- patched() -------------------------------------------------------------------------------


def test_new_execution_takes_the_new_path_and_records_a_marker() -> None:
    """A first execution answers True and records patch_recorded before the new path's creation."""
    res = simulate(v2)
    assert res.value == "new"
    (marker,) = markers(res.events)
    assert (marker.corr, marker.deprecated) == ("use-new", False)
    types = res.types()
    assert types[2:4] == ["patch_recorded", "step_created"]  # one commit, the marker first
    assert replay(v2, res.events) == res.outcome


def test_replaying_a_log_recorded_without_the_change_keeps_the_old_path() -> None:
    """v2 replays v1's log: patched() is False, the old step matches, the value is v1's."""
    res = simulate(v1)
    assert res.value == "old"
    inst, out = replay_instance(v2, res.events)
    assert out == res.outcome
    assert inst.patches == {"use-new": False}
    assert out.commands == []


def test_without_patched_the_same_change_fails_the_recorded_run() -> None:
    """The same change unguarded fails v1's log with NondeterminismError naming the old step."""
    res = simulate(v1)
    exc = failure(replay(v2_unguarded, res.events))
    assert isinstance(exc, NondeterminismError)
    assert "t_patch.old" in str(exc) and "t_patch.new" in str(exc)


def test_a_paused_v1_run_finishes_on_the_old_path_under_v2() -> None:
    """A v1 run paused in its sleep, woken under v2: old path, nothing recorded."""
    log = paused(simulate(v1))
    inst = new_instance(v2)
    inst.feed(log)
    out = inst.advance()
    assert (out.kind, out.commands) == ("suspended", [])  # everything it calls is in the log
    out = wake(inst, log)
    assert (out.kind, _serde.loads(out.output), out.commands) == ("completed", "old", [])


def test_a_log_with_the_marker_replays_true() -> None:
    """A log holding the marker answers True on replay, whole or cut where the run paused."""
    res = simulate(v2)
    log = paused(res)
    inst = new_instance(v2)
    inst.feed(log)
    out = inst.advance()
    assert (out.kind, out.commands, inst.patches) == ("suspended", [], {"use-new": True})
    assert _serde.loads(wake(inst, log).output) == "new"


async def guarded_after_the_pause() -> list[str]:
    first = await old_step()
    await sleep(60)
    return [first, await after_step()] if patched("add-after") else [first]


def test_code_reached_for_the_first_time_after_a_pause_takes_the_new_path() -> None:
    """A v1 run paused before the change: the change's code runs for the first time, so True."""
    log = paused(simulate(v1))
    inst = new_instance(guarded_after_the_pause)
    inst.feed(log)
    inst.advance()
    out = wake(inst, log)
    assert out.kind == "suspended"
    assert (out.commands[0].type, out.commands[0].corr) == ("patch_recorded", "add-after")
    assert [c.fields.get("name") for c in out.commands[1:]] == ["t_patch.after"]


async def asks_twice() -> list[bool]:
    answers = [patched("twice")]
    await old_step()
    await sleep(60)
    answers.append(patched("twice"))
    return answers


def test_the_first_answer_holds_for_the_whole_run() -> None:
    """One marker however often a change is asked; a False of a replay holds past the log's end."""
    res = simulate(asks_twice)
    assert res.value == [True, True]
    assert len(markers(res.events)) == 1
    assert replay(asks_twice, res.events) == res.outcome

    log = paused(simulate(v1))  # recorded without the change: False, also after the pause
    inst = new_instance(asks_twice)
    inst.feed(log)
    inst.advance()
    out = wake(inst, log)
    assert (_serde.loads(out.output), out.commands) == ([False, False], [])


async def asks_after_a_result_arrived() -> list[str]:
    first = asyncio.ensure_future(old_step())
    second = asyncio.ensure_future(after_step())
    a = await first
    c = await new_step() if patched("late") else a
    return [a, c, await second]


@pytest.mark.parametrize("batch", [False, True])
def test_results_already_in_the_log_do_not_make_a_first_execution_a_replay(batch: bool) -> None:
    """A result waiting in the log (batch=True) when the code first asks: still True."""
    res = simulate(asks_after_a_result_arrived, order=["t_patch.old", "t_patch.after"], batch=batch)
    assert res.value == ["old", "new", "after"]
    assert [m.corr for m in markers(res.events)] == ["late"]
    assert replay(asks_after_a_result_arrived, res.events) == res.outcome


async def asks_at_the_end() -> str:
    first = await old_step()
    return "patched" if patched("at-end") else first


def test_a_marker_decided_by_the_last_stretch_is_recorded_with_the_end() -> None:
    """patched() just before the code returns: the marker precedes run_completed."""
    res = simulate(asks_at_the_end)
    assert res.value == "patched"
    assert res.types()[-2:] == ["patch_recorded", "run_completed"]
    assert res.outcome.commands == [NewEvent("patch_recorded", "at-end", {"deprecated": "false"})]
    out = replay(asks_at_the_end, res.events)
    assert (out.kind, out.output, out.commands) == ("completed", res.outcome.output, [])


async def v1_ends_after_old_step() -> str:
    return await old_step()


def test_a_finished_log_without_the_marker_is_a_replay() -> None:
    """A log that ends the run past the call is a replay: False, even with no creation ahead."""
    res = simulate(v1_ends_after_old_step)
    inst, out = replay_instance(asks_at_the_end, res.events)
    assert inst.patches == {"at-end": False} and out == res.outcome


async def v2_reversed() -> str:
    """The marker's position changed: the change is asked after the step it guarded."""
    first = await new_step()
    return "x" if patched("use-new") else first


def test_a_marker_no_call_matches_fails_the_run() -> None:
    """A marker recorded by patched() that the code no longer asks about is a divergence."""
    res = simulate(v2)
    exc = failure(replay(v4, res.events))
    assert isinstance(exc, NondeterminismError)
    assert "patch_recorded (use-new)" in str(exc)
    exc = failure(replay(v2_reversed, res.events))
    assert isinstance(exc, NondeterminismError)


# -- deprecate_patch() -----------------------------------------------------------------------


def test_deprecate_patch_in_a_new_execution_records_a_deprecated_marker() -> None:
    """A first execution records the marker flagged deprecated; the call returns None."""
    res = simulate(v3)
    assert res.value == "new"
    (marker,) = markers(res.events)
    assert (marker.corr, marker.deprecated) == ("use-new", True)
    assert replay(v3, res.events) == res.outcome
    assert replay(v2, res.events) == res.outcome  # a rollback to patched() takes the new path


def test_deprecate_patch_replays_logs_with_and_without_the_marker() -> None:
    """v3 replays v2's log (marker) and a log of v4's code (no marker), recording nothing."""
    with_marker = simulate(v2)
    inst, out = replay_instance(v3, with_marker.events)
    assert out == with_marker.outcome and inst.patches == {"use-new": True}

    without = simulate(v4)
    assert markers(without.events) == []
    inst, out = replay_instance(v3, without.events)
    assert out == without.outcome and out.commands == []
    assert inst.patches == {"use-new": False}


def test_code_without_the_change_replays_a_deprecated_marker() -> None:
    """Once deprecate_patch() is removed too, its marker is ignored on replay."""
    res = simulate(v3)
    assert replay(v4, res.events) == res.outcome


async def v5_reuses_the_id() -> str:
    """v4, plus a later change guarded by the id of the first one (deprecated and deleted)."""
    first = await new_step()
    await sleep(60)
    if patched("use-new"):
        await after_step()
    return first


async def v5_fresh_id() -> str:
    """The same later change under an id of its own."""
    first = await new_step()
    await sleep(60)
    if patched("after-sleep"):
        await after_step()
    return first


@pytest.mark.parametrize("cut", [False, True])
def test_a_change_id_reused_for_another_change_fails_with_a_typed_error(cut: bool) -> None:
    """A run recorded with deprecate_patch("use-new") at its start, replayed (whole, or paused at
    its sleep and woken) by code that asks patched("use-new") after the sleep for another change:
    ChangeIdReusedError names the id, instead of an answer taken from the old change's marker.
    Under an id of its own the new change replays the finished log on the old path and takes
    the new path where the paused run first reaches it."""
    res = simulate(v3)
    if cut:
        inst, out = replay_instance(v5_reuses_the_id, paused(res))
        assert out.kind == "suspended", out
        out = wake(inst, paused(res))
    else:
        out = replay(v5_reuses_the_id, res.events)
    exc = failure(out)
    assert isinstance(exc, ChangeIdReusedError) and isinstance(exc, NondeterminismError)
    assert "patched('use-new')" in str(exc) and "give a new change a new id" in str(exc)

    if cut:
        inst, out = replay_instance(v5_fresh_id, paused(res))
        out = wake(inst, paused(res))
        assert out.kind == "suspended" and "after-sleep" in [c.corr for c in out.commands]
    else:
        assert replay(v5_fresh_id, res.events) == res.outcome


def test_deprecate_patch_after_its_deprecated_marker_is_still_allowed() -> None:
    """deprecate_patch() branches nothing: asked later than where its marker was recorded (one
    of several sites of the same change deleted), it replays as before."""

    async def v3_later() -> str:
        first = await new_step()
        await sleep(60)
        deprecate_patch("use-new")
        return first

    res = simulate(v3)
    assert replay(v3_later, res.events) == res.outcome


# -- misuse and corrupt logs ---------------------------------------------------------------------


def test_outside_workflow_code_it_raises() -> None:
    """Outside workflow code (no run, or inside a step) both functions raise WorkflowError."""
    with pytest.raises(WorkflowError, match=r"patched\(\) can only be called in workflow code"):
        patched("x")
    with pytest.raises(WorkflowError, match=r"deprecate_patch\(\) can only be called"):
        deprecate_patch("x")
    with pytest.raises(WorkflowError, match="can only be called in workflow code"):
        step_calling_patched()  # a step called outside a workflow runs as a plain function


async def empty_change_id() -> Any:
    return patched("")


def test_an_empty_change_id_fails_the_run() -> None:
    """A change id must be a non-empty string."""
    exc = failure(simulate(empty_change_id).outcome)
    assert isinstance(exc, WorkflowError) and "non-empty string" in str(exc)


@pytest.mark.parametrize("corr", ["", "use-new"])
def test_a_second_or_unnamed_marker_is_a_corrupt_log(corr: str) -> None:
    """commit.lua records a change once, by its id: anything else in a log is corruption."""
    res = simulate(v2)
    fields = {"type": "patch_recorded", "corr": corr, "ts": str(res.events[-1].ts)}
    events = insert_event(res.events, 4, fields)
    inst = new_instance(v2)
    with pytest.raises(CorruptEventError, match="recorded once per run"):
        inst.feed(events)


def test_marker_commands_carry_the_flag_as_text() -> None:
    """The marker command is the text the log stores (deprecated true | false)."""
    res = simulate(v3)
    log = [e for e in res.events if event_type(e) in ("run_created", "run_started")]
    inst = new_instance(v3)
    inst.feed(log)
    out = inst.advance()
    assert out.commands[0] == NewEvent("patch_recorded", "use-new", {"deprecated": "true"})


async def conflict_then_asks() -> list[Any]:
    hook = create_hook(token="taken")
    task = asyncio.ensure_future(old_step())
    with contextlib.suppress(HookConflictError):
        await hook
    return [patched("after-conflict"), await task]


def test_creations_of_calls_already_made_do_not_make_a_first_execution_a_replay() -> None:
    """The step created with a hook that conflicts is still ahead when the code first asks: True."""
    inst = new_instance(conflict_then_asks)
    inst.feed(
        [
            event_from_fields(1, {"type": "run_created", "workflow": "w", "input": "[]"}),
            event_from_fields(2, {"type": "run_started"}),
        ]
    )
    out = inst.advance()
    assert [c.type for c in out.commands] == ["hook_created", "step_created"]
    hook, created = out.commands
    inst.feed(
        [
            make_event(hook, 3, 3, HOOK_CONFLICT),
            make_event(created, 4, 4, 0),
            make_event(NewEvent("step_started", created.corr), 5, 5, 1),
        ]
    )
    out = inst.advance()
    assert out.commands == [NewEvent("patch_recorded", "after-conflict", {"deprecated": "false"})]
    assert inst.patches == {"after-conflict": True}
