"""Unit tests for worker._replay: a workflow instance driven by its event log, with no I/O.

Every test drives a ``WorkflowInstance`` through the in-memory simulator of ``replay_support``
(which plays the World and the worker) and, where it matters, replays the recorded log in a fresh
instance: the outcome must be the same as the live one.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from tests.unit.replay_support import (
    RUN_ID,
    Fail,
    SimResult,
    Simulator,
    event_type,
    insert_event,
    new_instance,
    renumber,
    replay,
    replay_instance,
    simulate,
)
from worker import _serde
from worker._client import sleep
from worker._context import get_workflow_metadata, now, workflow_random
from worker._errors import CorruptEventError, NondeterminismError, SerializationError
from worker._events import Event, StepCreated, WaitCompleted, WaitCreated
from worker._registry import step, workflow
from worker._replay import DROP_CONSUMED_AFTER

STEP_ID = re.compile(r"^step_[0-9A-Z]{26}$")
WAIT_ID = re.compile(r"^wait_[0-9A-Z]{26}$")
OTHER_RUN_ID = "wrun_01HAAAAAAAAAAAAAAAAAAAAAAA"

# -- steps -------------------------------------------------------------------------------------

CALLS: dict[str, int] = {}


@step(name="t_replay.add")
def add(a: int, b: int) -> int:
    return a + b


@step(name="t_replay.echo")
def echo(x: Any) -> Any:
    return x


@step(name="t_replay.a")
def step_a() -> str:
    return "A"


@step(name="t_replay.b")
def step_b() -> str:
    return "B"


@step(name="t_replay.c")
def step_c() -> str:
    return "C"


@step(name="t_replay.slow")
def slow() -> str:
    return "done"


@step(name="t_replay.bad")
def bad() -> None:
    raise ValueError("bad")


@step(name="t_replay.count")
def count(i: int) -> int:
    CALLS["count"] = CALLS.get("count", 0) + 1
    return i


# -- workflows ---------------------------------------------------------------------------------


@workflow(name="t_replay.sequential")
async def sequential(x: int) -> list[int]:
    a = await add(x, 1)
    b = await add(a, 10)
    c = await add(b, 100)
    return [a, b, c]


@workflow(name="t_replay.gather")
async def gather3() -> list[str]:
    return list(await asyncio.gather(step_a(), step_b(), step_c()))


@workflow(name="t_replay.race")
async def race() -> list[Any]:
    fa, fb = step_a(), step_b()
    done, _ = await asyncio.wait({fa, fb}, return_when=asyncio.FIRST_COMPLETED)
    winner = "A" if fa in done else "B"
    resolved_at_wakeup = len(done)
    loser = await (fb if winner == "A" else fa)
    return [winner, resolved_at_wakeup, loser]


@workflow(name="t_replay.as_completed")
async def as_completed_wf() -> list[str]:
    out = []
    for fut in asyncio.as_completed([step_a(), step_b(), step_c()]):
        out.append(await fut)
    return out


async def _child(n: int) -> int:
    x = await add(n, n)
    return await add(x, 1)


@workflow(name="t_replay.task_group")
async def task_group_wf() -> list[int]:
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(_child(n)) for n in (1, 2, 3)]
    return [t.result() for t in tasks]


@workflow(name="t_replay.wait_for")
async def wait_for_wf() -> str:
    try:
        return await asyncio.wait_for(slow(), timeout=5)
    except TimeoutError as exc:
        return type(exc).__name__


@workflow(name="t_replay.sleepy")
async def sleepy() -> list[float]:
    t0 = now()
    await sleep("10s")
    t1 = now()
    await asyncio.sleep(10)
    t2 = now()
    return [t.timestamp() * 1000 for t in (t0, t1, t2)]


@workflow(name="t_replay.many_sleeps")
async def many_sleeps(n: int) -> int:
    for _ in range(n):
        await sleep("1s")
    return n


@workflow(name="t_replay.metadata")
async def metadata_wf() -> list[Any]:
    meta = get_workflow_metadata()
    await add(1, 1)
    return [meta.run_id, meta.workflow_name, meta.started_at.timestamp() * 1000]


@workflow(name="t_replay.ids")
async def ids_wf() -> int:
    a = await add(1, 2)
    await asyncio.gather(add(a, 1), add(a, 2))
    await sleep(1)
    return await echo(a)


@workflow(name="t_replay.random")
async def random_wf() -> list[float]:
    rng = workflow_random()
    values = [rng.random()]
    await add(1, 1)
    values.append(float(rng.randint(0, 10**9)))
    await add(2, 2)
    values.append(rng.random())
    return values


@workflow(name="t_replay.two_steps")
async def two_steps(x: int) -> int:
    a = await add(x, 1)
    return await echo(a)


@workflow(name="t_replay.two_steps_renamed")
async def two_steps_renamed(x: int) -> int:
    a = await add(x, 1)
    return await add(a, 0)  # was echo(a): another step name at the same position


@workflow(name="t_replay.two_steps_reinput")
async def two_steps_reinput(x: int) -> int:
    a = await add(x, 1)
    return await echo(a + 1)  # was echo(a): another input


@workflow(name="t_replay.two_steps_slept")
async def two_steps_slept(x: int) -> int:
    a = await add(x, 1)
    await sleep(1)  # was echo(a): a sleep at the position of a step
    return a


@workflow(name="t_replay.catches")
async def catches() -> list[str]:
    try:
        await bad()
        msg = "no error"
    except ValueError as exc:
        msg = f"{type(exc).__name__}:{exc}"
    return [msg, await step_a()]


@workflow(name="t_replay.uncaught")
async def uncaught() -> None:
    await bad()


@workflow(name="t_replay.explodes")
async def explodes() -> None:
    await add(1, 1)
    raise RuntimeError("boom")


@workflow(name="t_replay.unserializable")
async def unserializable() -> object:
    await add(1, 1)
    return object()


@workflow(name="t_replay.long")
async def long_wf(n: int) -> int:
    total = 0
    for i in range(n):
        total += await count(i)
    return total


@workflow(name="t_replay.stuck")
async def stuck() -> None:
    await add(1, 1)
    await asyncio.Future()


@workflow(name="t_replay.exits")
async def exits() -> int:
    await add(1, 1)
    raise SystemExit(3)


@workflow(name="t_replay.exits_in_cleanup")
async def exits_in_cleanup() -> None:
    try:
        await add(1, 1)
        await asyncio.Future()
    finally:
        raise SystemExit(4)


# -- helpers -----------------------------------------------------------------------------------


def step_names(events: list[Event]) -> dict[str, str]:
    """Correlation id -> step name, from the step_created events."""
    return {e.corr: e.name for e in events if isinstance(e, StepCreated)}


def names_of(events: list[Event], etype: str) -> list[str]:
    names = step_names(events)
    return [names[e.corr] for e in events if event_type(e) == etype]


def corr_order(events: list[Event]) -> list[str]:
    """Correlation ids in the order their creation events appear in the log."""
    return [e.corr for e in events if event_type(e) in ("step_created", "wait_created")]


def assert_replays(wf: Any, res: SimResult) -> None:
    """A fresh instance fed the whole recorded log reaches the live outcome, with no commands."""
    out = replay(wf, res.events)
    assert out == res.outcome
    assert out.commands == []


def failure(outcome: Any) -> BaseException:
    assert outcome.kind == "failed", outcome
    exc = _serde.loads(outcome.error)
    assert isinstance(exc, BaseException), outcome.error
    return exc


# -- 1. sequential steps -----------------------------------------------------------------------


def test_sequential_steps_log_order_and_replay() -> None:
    """Sequential steps give the right value, log created/started/completed per step, and replay."""
    res = simulate(sequential, 5)
    assert res.value == [6, 16, 116]
    per_step = ["step_created", "step_started", "step_completed"]
    assert res.types() == ["run_created", "run_started", *per_step * 3, "run_completed"]
    corrs = [e.corr for e in res.events[2:-1]]
    assert corrs == [c for c in dict.fromkeys(corrs) for _ in range(3)]  # grouped by step

    inst, out = replay_instance(sequential, res.events)
    assert out == res.outcome and out.commands == []
    assert inst._pos == len(res.events) - 1  # everything but the (unneeded) run_completed

    # the log cut before the last completion: the code waits, and every call is already created
    inst, out = replay_instance(sequential, res.events[:-2])
    assert out.kind == "suspended" and out.commands == []
    assert [s.name for s in inst.pending_steps()] == ["t_replay.add"]
    assert not inst.is_stuck()


# -- 2. gather ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [False, True])
def test_gather_results_in_call_order_whatever_the_completion_order(batch: bool) -> None:
    """gather creates all 3 steps in one suspension; completions C, A, B still give [A, B, C]."""
    res = simulate(gather3, order=["t_replay.c", "t_replay.a", "t_replay.b"], batch=batch)
    assert res.value == ["A", "B", "C"]
    types = res.types()
    assert types[2:8] == ["step_created"] * 3 + ["step_started"] * 3
    assert res.advances[0].kind == "suspended" and res.advances[0].pos_after == 2
    assert names_of(res.events, "step_created") == ["t_replay.a", "t_replay.b", "t_replay.c"]
    assert names_of(res.events, "step_completed") == ["t_replay.c", "t_replay.a", "t_replay.b"]
    assert_replays(gather3, res)


# -- 3. race -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "expected"),
    [(["t_replay.a", "t_replay.b"], ["A", 1, "B"]), (["t_replay.b", "t_replay.a"], ["B", 1, "A"])],
)
def test_race_first_completion_in_log_wins_on_live_and_replay(
    order: list[str], expected: list[Any]
) -> None:
    """FIRST_COMPLETED picks the first completion in the log, live and on replay (one per idle point)."""
    res = simulate(race, order=order, batch=True)  # both completions land before the next advance
    assert res.value == expected
    completed = [i for i, t in enumerate(res.types()) if t == "step_completed"]
    assert len(completed) == 2 and completed[1] == completed[0] + 1  # adjacent in the log
    assert names_of(res.events, "step_completed") == order
    assert_replays(race, res)

    # swapping the two completions in the recorded log swaps the winner
    swapped = list(res.events)
    i, j = completed
    swapped[i], swapped[j] = swapped[j], swapped[i]
    out = replay(race, renumber(swapped))
    assert out.kind == "completed"
    assert _serde.loads(out.output) == [expected[2], 1, expected[0]]


# -- 4. as_completed, TaskGroup, wait_for -------------------------------------------------------


def test_as_completed_yields_in_log_order() -> None:
    """as_completed yields results in the order their completions appear in the log."""
    res = simulate(as_completed_wf, order=["t_replay.b", "t_replay.c", "t_replay.a"])
    assert res.value == ["B", "C", "A"]
    assert_replays(as_completed_wf, res)


def test_task_group_with_three_children() -> None:
    """A TaskGroup of 3 child tasks, each calling 2 steps, completes with every child's value."""
    res = simulate(task_group_wf)
    assert res.value == [3, 5, 7]
    assert res.types().count("step_completed") == 6
    assert_replays(task_group_wf, res)


def test_wait_for_returns_step_value_and_cancels_the_durable_timer() -> None:
    """wait_for returns the step's value when it completes first; its durable wait is cancelled."""
    res = simulate(wait_for_wf)
    assert res.value == "done"
    types = res.types()
    assert "wait_created" in types and "wait_completed" not in types
    (wait,) = res.instance.waits.values()
    assert wait.created and wait.cancelled and not wait.done
    assert res.instance.pending_waits() == []
    assert_replays(wait_for_wf, res)


def test_wait_for_raises_timeout_when_the_wait_completes_first() -> None:
    """wait_for raises TimeoutError when wait_completed precedes the step's completion in the log."""
    res = simulate(wait_for_wf, durations={"t_replay.slow": 10_000})
    assert res.value == "TimeoutError"
    types = res.types()
    assert "wait_completed" in types and "step_completed" not in types
    created = next(e for e in res.events if isinstance(e, WaitCreated))
    completed = next(e for e in res.events if isinstance(e, WaitCompleted))
    assert created.resume_at == created.ts + 5000
    assert completed.ts == created.resume_at
    assert_replays(wait_for_wf, res)


# -- 5. durable sleep --------------------------------------------------------------------------


def test_durable_sleep_uses_the_workflow_clock_not_real_time() -> None:
    """sleep("10s") and asyncio.sleep(10) become 10 s durable waits that advance now(), instantly."""
    began = time.perf_counter()
    res = simulate(sleepy)
    elapsed = time.perf_counter() - began
    t0, t1, t2 = res.value
    creations = [e for e in res.events if isinstance(e, WaitCreated)]
    completions = [e for e in res.events if isinstance(e, WaitCompleted)]
    assert len(creations) == 2 and len(completions) == 2
    for created, completed in zip(creations, completions, strict=True):
        assert created.resume_at == created.ts + 10_000
        assert completed.corr == created.corr and completed.ts == created.resume_at
        assert WAIT_ID.match(created.corr)
    assert t1 - t0 >= 10_000 and t2 - t1 >= 10_000
    assert t1 == completions[0].ts and t2 == completions[1].ts
    assert elapsed < 1.0
    assert_replays(sleepy, res)


def test_workflow_metadata_comes_from_the_log() -> None:
    """get_workflow_metadata() gives the run id, workflow name and run_started's time."""
    res = simulate(metadata_wf)
    started = res.events[1]
    assert event_type(started) == "run_started"
    assert res.value == [RUN_ID, "t_replay.metadata", float(started.ts)]
    assert_replays(metadata_wf, res)


# -- 6. deterministic ids ----------------------------------------------------------------------


def test_correlation_ids_are_deterministic_per_run() -> None:
    """The same run id gives the same correlation ids in call order; another run id, other ids."""
    first = simulate(ids_wf)
    second = simulate(ids_wf)
    other = simulate(ids_wf, run_id=OTHER_RUN_ID)
    ids = corr_order(first.events)
    assert len(ids) == 5
    assert ids == corr_order(second.events)
    assert set(ids).isdisjoint(corr_order(other.events))
    steps = [c for c in ids if c.startswith("step_")]
    assert len(steps) == 4 and all(STEP_ID.match(c) for c in steps)
    assert all(WAIT_ID.match(c) for c in ids if not c.startswith("step_"))

    _, out = replay_instance(ids_wf, first.events)
    assert out == first.outcome  # the replay made the same calls under the same ids


# -- 7. workflow_random ------------------------------------------------------------------------


def test_workflow_random_is_the_same_on_replay() -> None:
    """workflow_random() yields the same sequence for the same run id, live or replayed."""
    res = simulate(random_wf)
    values = res.value
    assert len(set(values)) == 3
    assert_replays(random_wf, res)
    assert simulate(random_wf).value == values
    assert simulate(random_wf, run_id=OTHER_RUN_ID).value != values


# -- 8. nondeterminism -------------------------------------------------------------------------


def recorded_two_steps() -> SimResult:
    res = simulate(two_steps, 5)
    assert res.value == 6
    return res


def test_nondeterminism_changed_step_name() -> None:
    """A different step name at a recorded position fails the run naming the step_created event."""
    res = recorded_two_steps()
    second = [e for e in res.events if isinstance(e, StepCreated)][1]
    out = replay(two_steps_renamed, res.events)
    assert out.kind == "failed"
    assert "NondeterminismError" in out.error
    exc = failure(out)
    assert isinstance(exc, NondeterminismError)
    assert f"event {second.seq} step_created" in str(exc)
    assert "t_replay.echo" in str(exc) and "t_replay.add" in str(exc)


def test_nondeterminism_changed_step_input() -> None:
    """A different step input fails the run with a message quoting the recorded input."""
    res = recorded_two_steps()
    second = [e for e in res.events if isinstance(e, StepCreated)][1]
    assert second.input == '{"args":[6]}'
    exc = failure(replay(two_steps_reinput, res.events))
    assert isinstance(exc, NondeterminismError)
    assert f"event {second.seq} step_created" in str(exc)
    assert f"recorded input {second.input}" in str(exc)
    assert '{"args":[7]}' in str(exc)


def test_nondeterminism_foreign_event() -> None:
    """An event whose correlation id no call owns fails the run with NondeterminismError."""
    res = recorded_two_steps()
    foreign = "step_01ARZ3NDEKTSV4RRFFQ69G5FAV"
    fields = {"type": "step_created", "ts": str(res.events[1].ts), "corr": foreign}
    events = insert_event(res.events, 2, {**fields, "name": "t_replay.add", "input": "[]"})
    exc = failure(replay(two_steps, events))
    assert isinstance(exc, NondeterminismError)
    assert "event 3 step_created" in str(exc) and foreign in str(exc)


def test_nondeterminism_step_replaced_by_sleep() -> None:
    """A sleep where the log recorded a step fails the run with NondeterminismError."""
    res = recorded_two_steps()
    second = [e for e in res.events if isinstance(e, StepCreated)][1]
    exc = failure(replay(two_steps_slept, res.events))
    assert isinstance(exc, NondeterminismError)
    assert f"event {second.seq} step_created" in str(exc)


# -- 9. step failures --------------------------------------------------------------------------


def test_caught_step_failure_lets_the_workflow_continue() -> None:
    """A step_failed with a ValueError raises it in the workflow; caught, the workflow goes on."""
    error = _serde.dumps(ValueError("bad"))
    res = simulate(catches, steps={"t_replay.bad": lambda: Fail(error)})
    assert res.value == ["ValueError:bad", "A"]
    failed = next(e for e in res.events if event_type(e) == "step_failed")
    assert failed.error == error
    assert_replays(catches, res)


def test_uncaught_step_failure_fails_the_run() -> None:
    """An uncaught step failure fails the run; its error JSON revives to the step's ValueError."""
    res = simulate(uncaught)
    exc = failure(res.outcome)
    assert type(exc) is ValueError and str(exc) == "bad"
    assert res.types()[-2:] == ["step_failed", "run_failed"]
    assert_replays(uncaught, res)


@workflow(name="t_replay.catches_any")
async def catches_any() -> str:
    try:
        await bad()
    except Exception as exc:
        return f"{type(exc).__name__}|{getattr(exc, 'type_name', '')}|{exc}"
    return "no error"


SYSTEM_EXIT = '{"$t":"exc","cls":"builtins:SystemExit","args":[7]}'


@pytest.mark.parametrize(
    "stored",
    [SYSTEM_EXIT, _serde.dumps(KeyboardInterrupt("k")), _serde.dumps(GeneratorExit())],
    ids=["SystemExit", "KeyboardInterrupt", "GeneratorExit"],
)
def test_stored_base_exception_reaches_the_code_as_remote_error(stored: str) -> None:
    """A step_failed holding a SystemExit (or another non-Exception) reaches the workflow as a
    RemoteError that ``except Exception`` catches; advancing never raises it, live or on replay."""
    res = simulate(catches_any, steps={"t_replay.bad": lambda: Fail(stored)})
    name = json.loads(stored)["cls"]
    assert res.value.startswith(f"RemoteError|{name}|")
    assert_replays(catches_any, res)


def test_stored_stop_iteration_fails_the_step_not_the_worker() -> None:
    """A step_failed holding StopIteration (which a future refuses) reaches the code as RemoteError."""
    stored = _serde.dumps(StopIteration("done"))
    res = simulate(catches_any, steps={"t_replay.bad": lambda: Fail(stored)})
    assert res.value == "RemoteError|builtins:StopIteration|done"


# -- 10, 11. failures of the workflow code -----------------------------------------------------


def test_exception_in_workflow_code_fails_with_traceback() -> None:
    """An exception raised by workflow code fails the run with a traceback naming the function."""
    res = simulate(explodes)
    exc = failure(res.outcome)
    assert type(exc) is RuntimeError and str(exc) == "boom"
    tb = json.loads(res.outcome.error)["tb"]
    assert "Traceback" in tb and "in explodes" in tb and "RuntimeError: boom" in tb
    assert_replays(explodes, res)


def test_unserializable_result_fails_naming_the_path() -> None:
    """A workflow returning an unserializable value fails with an error naming the path $."""
    res = simulate(unserializable)
    exc = failure(res.outcome)
    assert isinstance(exc, SerializationError)
    assert " at $ " in str(exc) and "result of workflow t_replay.unserializable" in str(exc)
    assert exc.path == "$"
    assert_replays(unserializable, res)


# -- 12. feeding -------------------------------------------------------------------------------


def test_feed_rejects_gaps_and_ignores_seen_events() -> None:
    """A gap in seq raises CorruptEventError; events already fed are ignored."""
    res = simulate(sequential, 1)
    inst = new_instance(sequential)
    inst.feed(res.events[:2])
    with pytest.raises(CorruptEventError, match="gap"):
        inst.feed([res.events[3]])
    assert inst.seq == 2 and inst.log_length == 2

    inst.feed(res.events[:4])
    inst.feed(res.events)  # overlaps everything fed so far
    inst.feed(res.events[1:3])
    assert inst.seq == len(res.events)
    assert [e.seq for e in inst.log] == list(range(1, len(res.events) + 1))  # none consumed yet
    assert inst.advance() == res.outcome


def replaced(events: list[Event], index: int, **changes: Any) -> list[Event]:
    """The log with the event at ``index`` changed (fields given as their stored values)."""
    out = list(events)
    out[index] = msgspec.structs.replace(out[index], **changes)
    return out


def index_of(events: list[Event], etype: str, nth: int = 0) -> int:
    return [i for i, e in enumerate(events) if event_type(e) == etype][nth]


FOREIGN_STEP = "step_01ARZ3NDEKTSV4RRFFQ69G5FAV"


@pytest.mark.parametrize("etype", ["step_started", "step_completed"])
def test_step_event_of_a_step_never_created_is_corrupt(etype: str) -> None:
    """A step event whose step no earlier step_created opened makes feed raise CorruptEventError
    naming the entry (stream id and type) and the problem."""
    res = recorded_two_steps()
    at = index_of(res.events, etype)
    events = replaced(res.events, at, corr=FOREIGN_STEP)
    inst = new_instance(two_steps)
    with pytest.raises(CorruptEventError) as err:
        inst.feed(events)
    message = str(err.value)
    assert f"log entry {at + 1}-0 ({etype}, {FOREIGN_STEP})" in message
    assert "no step_created" in message and RUN_ID in message


def test_step_event_after_the_step_finished_is_corrupt() -> None:
    """A second step_completed for a step already completed is refused by feed."""
    res = recorded_two_steps()
    done = res.events[index_of(res.events, "step_completed")]
    at = index_of(res.events, "step_completed") + 1
    fields = {"type": "step_completed", "corr": done.corr, "result": "1"}
    events = insert_event(res.events, at, fields)
    with pytest.raises(CorruptEventError) as err:
        new_instance(two_steps).feed(events)
    assert f"log entry {at + 1}-0 (step_completed" in str(err.value)
    assert "already finished" in str(err.value)


def test_wait_completed_of_a_wait_never_created_is_corrupt() -> None:
    """A wait_completed whose wait no wait_created opened is refused by feed."""
    res = simulate(sleepy)
    at = index_of(res.events, "wait_completed")
    events = replaced(res.events, at, corr="wait_01ARZ3NDEKTSV4RRFFQ69G5FAV")
    with pytest.raises(CorruptEventError, match=f"log entry {at + 1}-0 \\(wait_completed"):
        new_instance(sleepy).feed(events)


def test_log_must_start_with_a_single_run_created() -> None:
    """A log whose first entry is not run_created, or with a second run_created, is corrupt."""
    res = recorded_two_steps()
    with pytest.raises(CorruptEventError, match=r"log entry 1-0 \(run_started\).*run_created"):
        new_instance(two_steps).feed(renumber(res.events[1:]))
    again = insert_event(res.events, 2, {"type": "run_created", "workflow": "t_replay.two_steps"})
    with pytest.raises(CorruptEventError, match="log entry 3-0 \\(run_created\\)"):
        new_instance(two_steps).feed(again)


@pytest.mark.parametrize(
    ("etype", "field"),
    [("step_completed", "result"), ("step_failed", "error"), ("run_created", "input")],
)
def test_payload_that_is_not_json_fails_the_run_with_corrupt_event(etype: str, field: str) -> None:
    """A payload field that does not deserialize fails the run (advance returns failed) with a
    CorruptEventError naming the entry, the field and the problem; advance never raises."""
    res = simulate(catches) if etype == "step_failed" else recorded_two_steps()
    wf = catches if etype == "step_failed" else two_steps
    at = index_of(res.events, etype)
    events = replaced(res.events, at, **{field: '{"not json'})
    exc = failure(replay(wf, events))
    assert isinstance(exc, CorruptEventError)
    assert f"log entry {at + 1}-0 ({etype}" in str(exc)
    assert f"cannot deserialize field {field!r}" in str(exc)


def test_run_input_of_the_wrong_type_fails_the_run() -> None:
    """Valid JSON input that does not fit the workflow's parameters fails the run with
    SerializationError instead of escaping advance."""
    res = recorded_two_steps()
    events = replaced(res.events, 0, input='["not a number"]')
    exc = failure(replay(two_steps, events))
    assert isinstance(exc, SerializationError) and "t_replay.two_steps" in str(exc)


# -- 13. incremental cost ----------------------------------------------------------------------


def test_advance_consumes_only_new_events() -> None:
    """Each advance of a 300-step run consumes just the new events and re-runs no earlier step."""
    CALLS.clear()
    n = 300
    res = simulate(long_wf, n)
    assert res.value == sum(range(n))
    assert CALLS["count"] == n and len(res.executed) == n
    assert len(res.advances) == 1 + 2 * n
    for rec in res.advances:
        assert rec.pos_before == rec.log_len - rec.fed  # starts where the previous one stopped
        assert rec.pos_after - rec.pos_before == rec.fed  # and consumes exactly the new events
    assert max(rec.fed for rec in res.advances) == 2
    assert res.instance.log_length == len(res.events) - 1  # all but run_completed, fed once each
    assert len(res.instance.log) <= DROP_CONSUMED_AFTER  # consumed events are not kept

    assert_replays(long_wf, res)
    assert CALLS["count"] == n  # replay never executes steps


def test_a_long_run_keeps_only_what_is_ahead() -> None:
    """An instance does not keep what it consumed: after 300 sleeps it holds no finished wait,
    no finished step and only the tail of the log."""
    res = simulate(many_sleeps, 300)
    assert res.value == 300
    inst = res.instance
    assert not inst.waits and not inst.steps and len(inst.log) <= DROP_CONSUMED_AFTER
    assert_replays(many_sleeps, res)


class CountingDict(dict[str, None]):
    """A dict that counts the keys handed out by iterating over it."""

    yielded = 0

    def __iter__(self) -> Iterator[str]:
        for item in super().__iter__():
            self.yielded += 1
            yield item


def test_suspension_work_does_not_grow_with_history() -> None:
    """The calls an advance inspects to build its commands do not grow with the run's history."""
    n = 300
    sim = Simulator(long_wf, [n])
    order = CountingDict()
    sim.instance._open = order
    inspected: list[int] = []
    advance = sim.instance.advance

    def counted() -> Any:
        before = order.yielded
        out = advance()
        inspected.append(order.yielded - before)
        return out

    sim.instance.advance = counted  # type: ignore[method-assign]
    res = sim.run()
    assert res.value == sum(range(n))
    assert len(inspected) == 1 + 2 * n
    assert max(inspected) <= 4, f"last advances inspected {inspected[-4:]} calls"


# -- 14. stuck workflows -----------------------------------------------------------------------


def test_waiting_on_a_plain_future_is_stuck() -> None:
    """Awaiting a Future nothing resolves suspends with no commands, and is_stuck() is True."""
    res = simulate(stuck)
    assert res.outcome.kind == "suspended" and res.outcome.commands == []
    assert res.instance.is_stuck()
    assert res.types()[-1] == "step_completed"  # no terminal event

    res.instance.close()

    inst, out = replay_instance(stuck, res.events[:-1])  # the step still running: not stuck
    assert out.kind == "suspended" and out.commands == [] and not inst.is_stuck()
    inst.close()


def test_workflow_code_raising_system_exit_fails_the_run() -> None:
    """SystemExit raised by workflow code fails the run with that error; it never leaves the
    replay (it used to propagate out of advance() and end the worker process)."""
    res = simulate(exits)
    assert res.outcome.kind == "failed"
    assert "SystemExit" in str(res.outcome.error)


def test_workflow_cleanup_raising_system_exit_is_reported_by_close() -> None:
    """A workflow whose finally block raises SystemExit when its instance is closed: close()
    returns the error instead of raising it."""
    res = simulate(stuck)
    inst, out = replay_instance(exits_in_cleanup, res.events)
    assert out.kind == "suspended"
    error = inst.close()
    assert isinstance(error, SystemExit) and error.code == 4


def test_deterministic_ids_spell_the_ulid_of_the_start_time_and_the_run_seeded_bits() -> None:
    """Step ids are the ULID of (start time, 80 bits of a generator seeded by the run id): the
    same text for a run on every replay and in every version of the worker."""
    import random as _random

    from worker._ids import DeterministicIds, _ulid_text

    ids = DeterministicIds("wrun_abc", 1_700_000_000_123)
    rng = _random.Random("wrun_abc:ids")
    for _ in range(200):
        expected = f"step_{_ulid_text(1_700_000_000_123 << 80 | rng.getrandbits(80))}"
        assert ids.next("step") == expected


# -- asyncio forms over step calls --------------------------------------------------------------


@workflow(name="t_replay.forms")
async def forms_wf() -> list[Any]:
    """Every asyncio form users reach for, applied to step calls and sleeps directly."""
    out: list[Any] = []
    task = asyncio.create_task(step_a())
    out.append(await task)
    out.append(await asyncio.ensure_future(step_b()))
    async with asyncio.TaskGroup() as tg:
        grouped = [tg.create_task(add(n, n)) for n in (1, 2)]
    out.append([t.result() for t in grouped])
    done, _ = await asyncio.wait([asyncio.create_task(step_c())])
    out.append([t.result() for t in done])
    out.append(await asyncio.wait_for(asyncio.create_task(add(3, 4)), timeout=60))
    out.append([await f for f in asyncio.as_completed([step_a(), asyncio.create_task(step_b())])])
    napping = asyncio.create_task(sleep("1s"))
    await napping
    out.append(list(await asyncio.gather(asyncio.create_task(add(5, 5)), step_c())))
    return out


def test_step_calls_work_with_every_asyncio_form() -> None:
    """create_task, ensure_future, TaskGroup.create_task, wait, wait_for, as_completed and gather
    all take what a step call or sleep() returns; results come in the recorded order and the
    run replays to the same outcome."""
    res = simulate(forms_wf)
    assert res.value == ["A", "B", [2, 4], ["C"], 7, ["A", "B"], [10, "C"]]
    assert "wait_created" in res.types() and "wait_completed" in res.types()
    assert_replays(forms_wf, res)


def test_step_calls_in_tasks_replay_the_recorded_interleaving() -> None:
    """Results delivered in another order than the calls replay to the same value."""
    res = simulate(forms_wf, order=["t_replay.b", "t_replay.a", "t_replay.c"])
    assert res.value[0:2] == ["A", "B"]
    assert_replays(forms_wf, res)


def test_a_run_s_timeline_has_one_bar_per_step_attempt_and_per_sleep() -> None:
    """timeline_from_events: one bar per step attempt and one per sleep, each from its start
    to its outcome, in log order."""
    from worker._events import timeline_from_events

    steps = simulate(sequential, 3)
    bars = timeline_from_events(steps.events, end_ms=10**15)
    assert [b["kind"] for b in bars] == ["step"] * len(steps.executed)
    assert all(b["outcome"] == "completed" and b["start_ms"] <= b["end_ms"] for b in bars)
    assert bars[0]["label"].endswith("#1")
    naps = timeline_from_events(simulate(sleepy).events, end_ms=10**15)
    assert [(b["kind"], b["outcome"]) for b in naps] == [("sleep", "completed")] * 2
    assert [b["end_ms"] - b["start_ms"] for b in naps] == [10_000, 10_000]
