"""A tiny in-memory World + worker that drives a ``WorkflowInstance`` without any I/O.

The simulator owns the run's event log. It appends ``run_created`` / ``run_started``, feeds the
instance and advances it; for a *suspended* outcome it appends the returned commands
(``step_created`` + ``step_started``, ``wait_created`` with ``resume_at = clock + delay_ms``), then
"executes" outstanding work with a scripted policy (``steps``: step name -> function replacing
the registered one; returning :class:`Fail` records that exact error) and appends the resolving events
(``step_completed`` / ``step_failed`` / ``wait_completed``) with increasing ``ts``, until the run
completes or fails (or is stuck: suspended with nothing outstanding).

The clock is simulated: a step finishes ``durations[name]`` ms (default 1) after it started, a wait
at its ``resume_at``. Which outstanding item resolves next is the one with the best
``(rank in order, due time, creation index)``; ``order`` lists step names (or correlation ids, or
``"wait"`` for sleeps) to force completion orders. With ``batch=True`` every outstanding item is
resolved (in that order) before the next advance, so several resolving events sit in the log at
one idle point, as when completions land while the worker is busy.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from worker import _serde
from worker._events import Event, NewEvent, event_from_fields
from worker._registry import WorkflowFunction
from worker._replay import Outcome, WorkflowInstance

RUN_ID = "wrun_01HZZZZZZZZZZZZZZZZZZZZZZZ"
START_MS = 1_700_000_000_000


def workflow_parts(
    wf: Any,
) -> tuple[str, Callable[..., Any], Callable[[str], tuple[list[Any], dict[str, Any]]]]:
    """Name, coroutine function and argument decoder of a ``@workflow`` or a plain ``async def``."""
    if isinstance(wf, WorkflowFunction):
        return wf.name, wf.fn, wf.decode_args
    name = f"{wf.__module__}:{wf.__qualname__}"

    def decode(text: str) -> tuple[list[Any], dict[str, Any]]:
        return list(_serde.loads(text)), {}

    return name, wf, decode


def new_instance(wf: Any, run_id: str = RUN_ID) -> WorkflowInstance:
    name, fn, decode = workflow_parts(wf)
    return WorkflowInstance(run_id, name, fn, decode)


@dataclass(frozen=True)
class Fail:
    """Returned by a scripted step: append ``step_failed`` with exactly this error JSON."""

    error: str


@dataclass
class Pending:
    """A durable call whose resolving event is not in the log yet."""

    corr: str
    kind: str  # step | wait
    name: str  # the step's name, or "wait"
    due: int  # simulated ms at which it resolves
    index: int  # creation order


@dataclass
class AdvanceRecord:
    """What one ``advance`` saw: events fed just before it and how far ``_pos`` moved."""

    fed: int
    pos_before: int
    pos_after: int
    log_len: int
    kind: str


@dataclass
class SimResult:
    outcome: Outcome
    events: list[Event]
    instance: WorkflowInstance
    advances: list[AdvanceRecord] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)  # step names, in execution order

    @property
    def value(self) -> Any:
        assert self.outcome.kind == "completed", self.outcome
        return _serde.loads(self.outcome.output)

    def types(self) -> list[str]:
        return [event_type(e) for e in self.events]


def event_type(ev: Event) -> str:
    return str(ev.__struct_config__.tag)


class Simulator:
    def __init__(
        self,
        wf: Any,
        args: Sequence[Any] = (),
        *,
        run_id: str = RUN_ID,
        start_ms: int = START_MS,
        steps: dict[str, Callable[..., Any]] | None = None,
        durations: dict[str, int] | None = None,
        order: Sequence[str] = (),
        batch: bool = False,
        max_rounds: int = 100_000,
    ) -> None:
        self.wf = wf
        self.args = list(args)
        self.run_id = run_id
        self.clock = start_ms
        self.steps = dict(steps or {})
        self.durations = dict(durations or {})
        self.order = list(order)
        self.batch = batch
        self.max_rounds = max_rounds
        self.events: list[Event] = []
        self.instance = new_instance(wf, run_id)
        self._fed = 0
        self._open: dict[str, Pending] = {}
        self._created = 0
        self.advances: list[AdvanceRecord] = []
        self.executed: list[str] = []

    # -- the log -------------------------------------------------------------------------------

    def append(self, etype: str, corr: str = "", **fields: str) -> Event:
        seq = len(self.events) + 1
        raw = {"type": etype, "id": f"evnt_{seq}", "ts": str(self.clock), "corr": corr, **fields}
        ev = event_from_fields(seq, raw, self.run_id)
        self.events.append(ev)
        self.clock += 1
        return ev

    def _advance(self) -> Outcome:
        inst = self.instance
        new = self.events[self._fed :]
        inst.feed(new)
        self._fed = len(self.events)
        before = inst._pos
        outcome = inst.advance()
        self.advances.append(
            AdvanceRecord(len(new), before, inst._pos, len(inst.log), outcome.kind)
        )
        return outcome

    # -- the worker ----------------------------------------------------------------------------

    def _create(self, commands: list[NewEvent]) -> None:
        started: list[str] = []
        for cmd in commands:
            if cmd.type == "step_created":
                self.append("step_created", cmd.corr, **cmd.fields)
                started.append(cmd.corr)
            elif cmd.type == "wait_created":
                resume_at = self.clock + int(cmd.fields["delay_ms"])
                self.append("wait_created", cmd.corr, resume_at=str(resume_at))
                self._open[cmd.corr] = Pending(cmd.corr, "wait", "wait", resume_at, self._created)
                self._created += 1
            else:  # pragma: no cover - the instance emits nothing else
                raise AssertionError(f"unexpected command {cmd}")
        for corr in started:
            ev = self.append("step_started", corr, attempt="1")
            name = self.instance.steps[corr].name
            due = ev.ts + self.durations.get(name, 1)
            self._open[corr] = Pending(corr, "step", name, due, self._created)
            self._created += 1

    def _rank(self, item: Pending) -> int:
        for key in (item.corr, item.name):
            if key in self.order:
                return self.order.index(key)
        return len(self.order)

    def _choose(self) -> list[Pending]:
        for corr, item in list(self._open.items()):
            if item.kind == "wait" and self.instance.waits[corr].cancelled:
                del self._open[corr]  # a cancelled timer is never completed by the worker
        ready = sorted(self._open.values(), key=lambda p: (self._rank(p), p.due, p.index))
        return ready if self.batch else ready[:1]

    def _resolve(self, item: Pending) -> None:
        del self._open[item.corr]
        self.clock = max(self.clock, item.due)
        if item.kind == "wait":
            self.append("wait_completed", item.corr)
            return
        call = self.instance.steps[item.corr]
        fn = self.steps.get(call.name) or call.fn.fn
        payload = _serde.loads(call.input)
        self.executed.append(call.name)
        try:
            result = fn(*payload.get("args", []), **payload.get("kwargs", {}))
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
            if isinstance(result, Fail):
                self.append("step_failed", item.corr, error=result.error)
                return
            text = _serde.dumps(result, what=f"result of step {call.name!r}")
        except Exception as exc:
            self.append("step_failed", item.corr, error=_serde.dumps(exc, what="error"))
            return
        self.append("step_completed", item.corr, result=text)

    def run(self) -> SimResult:
        self.append(
            "run_created", workflow=workflow_parts(self.wf)[0], input=_serde.dumps(self.args)
        )
        self.append("run_started")
        outcome = self._advance()
        for _ in range(self.max_rounds):
            if outcome.kind != "suspended":
                break
            if outcome.commands:
                self._create(outcome.commands)
                outcome = self._advance()
                continue
            chosen = self._choose()
            if not chosen:
                break  # stuck: the code waits for something no event will ever resolve
            for item in chosen:
                self._resolve(item)
            outcome = self._advance()
        else:  # pragma: no cover
            raise AssertionError("simulation did not settle")
        if outcome.kind == "completed":
            self.append("run_completed", output=outcome.output)
        elif outcome.kind == "failed":
            self.append("run_failed", error=outcome.error)
        return SimResult(outcome, list(self.events), self.instance, self.advances, self.executed)


def simulate(wf: Any, *args: Any, **options: Any) -> SimResult:
    """Run ``wf(*args)`` to its end in memory; see :class:`Simulator` for the options."""
    return Simulator(wf, args, **options).run()


def replay_instance(
    wf: Any, events: Sequence[Event], run_id: str = RUN_ID
) -> tuple[WorkflowInstance, Outcome]:
    """A fresh instance fed the whole recorded log at once, advanced once."""
    inst = new_instance(wf, run_id)
    inst.feed(list(events))
    return inst, inst.advance()


def replay(wf: Any, events: Sequence[Event], run_id: str = RUN_ID) -> Outcome:
    return replay_instance(wf, events, run_id)[1]


def renumber(events: Sequence[Event]) -> list[Event]:
    """The same events with consecutive ``seq`` from 1 (after inserting or removing some)."""
    return [msgspec.structs.replace(ev, seq=i) for i, ev in enumerate(events, 1)]


def insert_event(events: Sequence[Event], index: int, fields: dict[str, str]) -> list[Event]:
    """Insert an event built from ``fields`` before ``events[index]`` and renumber the log."""
    out = list(events)
    out.insert(index, event_from_fields(0, fields))
    return renumber(out)
