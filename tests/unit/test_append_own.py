"""WorkflowInstance.append_own: the inline path's shortcut for the step_created / step_started a
worker just appended for its own instance must leave the instance exactly as feeding those
events would, and must refuse (changing nothing) whatever it does not cover."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.replay_support import new_instance, replay
from worker._events import Event, NewEvent, RunCreated, appended_events, make_event
from worker._registry import step, workflow
from worker._replay import WorkflowInstance

START = 1_700_000_000_000


@step(name="t_own.double")
async def double(x: int) -> int:
    return 2 * x


@workflow(name="t_own.sequential")
async def sequential(n: int) -> int:
    total = 0
    for i in range(n):
        total += await double(i)
    return total


@workflow(name="t_own.fan")
async def fan(n: int) -> list[int]:
    first = await double(1)
    rest = await asyncio.gather(*(double(i) for i in range(n)))
    return [first, *rest]


class Log:
    """A run's log as a worker on the inline path writes it: the step result it fed first, then
    the creations and starts its instance asked for, at increasing times."""

    def __init__(self, wf: Any, arg: int, own: bool) -> None:
        self.inst = new_instance(wf)
        self.events: list[Event] = []
        self.own = own  # True: append_own where it applies; False: always feed
        self.shortcuts = 0
        self.outstanding: list[NewEvent] = []
        self.ts = START
        first = RunCreated(seq=1, id="1-0", ts=START, workflow="w", input=f"[{arg}]")
        self.append([first])

    def append(self, events: list[Event]) -> None:
        self.events += events
        self.inst.feed(events)

    def run(self) -> Any:
        head: NewEvent | None = NewEvent("run_started")
        while True:
            base = self.inst.seq
            self.ts += 1
            if head is not None:
                self.append([make_event(head, base + 1, self.ts, 0)])
            out = self.inst.advance()
            if out.kind != "suspended":
                return out
            fresh = [*out.commands, *(NewEvent("step_started", c.corr) for c in out.commands)]
            first = self.inst.seq + 1
            attempts = [0 if e.type == "step_created" else 1 for e in fresh]
            results = [_Ok(a) for a in attempts]
            built = appended_events(fresh, results, first - 1 + len(fresh), self.ts)
            if self.own and self.inst.append_own(fresh, first, self.ts, attempts):
                self.shortcuts += 1
                self.events += built  # the log holds them all the same
            else:
                self.append(built)
            self.outstanding += [c for c in out.commands if c.type == "step_created"]
            call = self.outstanding.pop(0)  # complete the oldest step still running
            x = int(call.fields["input"].split("[")[1].split("]")[0])
            head = NewEvent("step_completed", call.corr, {"result": str(2 * x)})


class _Ok:
    status = "ok"

    def __init__(self, extra: int) -> None:
        self.extra = extra


def state(inst: WorkflowInstance) -> dict[str, Any]:
    return {
        "seq": inst.seq,
        "log_length": inst.log_length,
        "clock_ms": inst.clock_ms,
        "steps": sorted((c.corr, c.status, c.attempt, c.created) for c in inst.steps.values()),
        "pending": sorted(c.corr for c in inst.pending_steps()),
        "stuck": inst.is_stuck(),
    }


@pytest.mark.parametrize(("wf", "arg"), [(sequential, 6), (fan, 4)])
def test_shortcut_leaves_the_instance_as_feeding_does(wf: Any, arg: int) -> None:
    fed, own = Log(wf, arg, own=False), Log(wf, arg, own=True)
    out_fed, out_own = fed.run(), own.run()
    assert out_own.kind == out_fed.kind == "completed"
    assert out_own.output == out_fed.output
    assert state(own.inst) == state(fed.inst)
    assert [(e.seq, type(e), e.corr) for e in own.events] == [
        (e.seq, type(e), e.corr) for e in fed.events
    ]
    assert own.shortcuts >= 1  # the one-step commits took the shortcut
    # the log written with the shortcut replays to the same end on a fresh instance
    assert replay(wf, own.events).output == out_fed.output


def _suspended_with_one_step() -> tuple[WorkflowInstance, list[NewEvent]]:
    inst = new_instance(sequential)
    inst.feed([RunCreated(seq=1, id="1-0", ts=START, workflow="w", input="[2]")])
    out = inst.advance()
    assert out.kind == "suspended"
    created = out.commands[0]
    return inst, [created, NewEvent("step_started", created.corr)]


def test_shortcut_refuses_and_changes_nothing() -> None:
    inst, events = _suspended_with_one_step()
    before = state(inst)
    # not at the next position
    assert not inst.append_own(events, inst.seq + 2, START, [0, 1])
    # a call the code did not make
    other = [NewEvent("step_created", "step_x", {"name": "n"}), NewEvent("step_started", "step_x")]
    assert not inst.append_own(other, inst.seq + 1, START, [0, 1])
    # a start without its creation
    assert not inst.append_own(events[1:], inst.seq + 1, START, [1])
    # another event type
    wait = [NewEvent("wait_created", events[0].corr, {"delay_ms": "1"})]
    assert not inst.append_own(wait, inst.seq + 1, START, [0])
    assert state(inst) == before
    # an event fed but not consumed yet stands before them
    inst.feed([make_event(events[0], inst.seq + 1, START, 0)])
    after_feed = state(inst)
    assert not inst.append_own(events[1:], inst.seq + 1, START, [1])
    assert state(inst) == after_feed


def test_shortcut_records_the_attempt_and_the_time() -> None:
    inst, events = _suspended_with_one_step()
    seq = inst.seq
    assert inst.append_own(events, seq + 1, START + 5, [0, 3])
    call = inst.steps[events[0].corr]
    assert (call.created, call.status, call.attempt) == (True, "running", 3)
    assert inst.seq == seq + 2 and inst.clock_ms == START + 5
    assert [c.corr for c in inst.pending_steps()] == [call.corr]
    # a second shortcut of the same creation is refused: it is in the log already
    assert not inst.append_own(events, inst.seq + 1, START + 6, [0, 4])
