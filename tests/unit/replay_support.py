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

Every event after ``run_created`` is appended through :class:`CommitRules`, a model of
``world_redis/lua/commit.lua``, which must accept it (and supplies what the script adds: a
step's attempt, a wait's ``resume_at``). tests/integration/test_lua_properties.py checks the model
against the script on random commits, so neither can drift from the other unnoticed.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from worker import _serde
from worker._events import _EXTRA_FIELD, Event, NewEvent, event_from_fields
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
        self.rules = CommitRules()
        self.instance = new_instance(wf, run_id)
        self._fed = 0
        self._open: dict[str, Pending] = {}
        self._created = 0
        self.advances: list[AdvanceRecord] = []
        self.executed: list[str] = []

    # -- the log -------------------------------------------------------------------------------

    def append(self, etype: str, corr: str = "", **fields: str) -> Event:
        """Append through the commit rules (which must accept the event), as a worker would."""
        if etype == "run_created":
            self.rules.create(self.run_id)
        else:
            commit = ModelCommit(self.run_id, [(etype, corr, fields)])
            (reply,) = self.rules.commit([commit], self.clock)
            assert reply.code == "ok" and reply.results[0][0] == "ok", (etype, corr, reply)
            etype = reply.appended[0]
            extra_field = _EXTRA_FIELD.get(etype)
            if extra_field is not None:
                fields = {**fields, extra_field: str(reply.results[0][1])}
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
            AdvanceRecord(len(new), before, inst._pos, inst.log_length, outcome.kind)
        )
        return outcome

    # -- the worker ----------------------------------------------------------------------------

    def _create(self, commands: list[NewEvent]) -> None:
        started: list[str] = []
        for cmd in commands:
            if cmd.type == "patch_recorded":
                self.append("patch_recorded", cmd.corr, **cmd.fields)
            elif cmd.type == "step_created":
                self.append("step_created", cmd.corr, **cmd.fields)
                started.append(cmd.corr)
            elif cmd.type == "wait_created":
                resume_at = self.clock + int(cmd.fields["delay_ms"])
                self.append("wait_created", cmd.corr, until_ms=str(resume_at))
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
        if outcome.kind in ("completed", "failed"):
            for cmd in outcome.commands:  # markers decided by the code's last stretch
                self.append(cmd.type, cmd.corr, **cmd.fields)
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


# -- the commit rules ---------------------------------------------------------------------------
#
# A pure re-implementation of ``world_redis/lua/commit.lua``: the verdicts the script gives, the
# run status, the entity hash, the live hooks, the hook tokens and the timers it writes. The
# simulator above appends every event through it, and tests/integration/test_lua_properties.py
# drives the script and this model with the same random commits and requires the same verdicts.

TERMINAL_RUN = frozenset({"completed", "failed", "cancelled"})
_ENTITY = re.compile(r"([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)")  # commit.lua's pattern
_LUA_DECIMAL = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
_LUA_HEX = re.compile(r"\s*0[xX][0-9a-fA-F]+\s*")


def lua_tonumber(text: str | None) -> float | None:
    """Lua 5.1's ``tonumber`` of a string (decimal or hex; ``inf``/``nan`` are not modelled)."""
    if text is None:
        return None
    if _LUA_DECIMAL.fullmatch(text):
        return float(text)
    if _LUA_HEX.fullmatch(text):
        return float(int(text.strip(), 16))
    return None


def lua_str(value: float | int | str) -> str:
    """How Lua 5.1 turns a number into text (``%.14g``); strings pass unchanged."""
    return value if isinstance(value, str) else f"{value:.14g}"


@dataclass
class RunModel:
    """One run as commit.lua sees it: its hash fields and the keys of its own."""

    status: str = "pending"
    seq: int = 1
    lease_owner: str = ""
    stream_last: int = 1  # last entry id of the run's stream (create_run wrote 1-0)
    entities: dict[str, str] = field(default_factory=dict)  # corr -> "st|at|ra|sa|rs"
    hooks: dict[str, str] = field(default_factory=dict)  # the live hooks hash, field -> value
    children: bool = False  # the run hash's "children" mark: a child_started was appended
    log: list[tuple[str, str]] = field(
        default_factory=lambda: [("run_created", "")]
    )  # (type, corr)


@dataclass(frozen=True)
class ModelCommit:
    """One run's part of a commit batch (``worker._world.Commit`` without the World types)."""

    run_id: str
    events: Sequence[tuple[str, str, dict[str, str]]]  # (type, corr, fields)
    token: str = ""
    expected_seq: int = -1
    wake: str = ""


@dataclass
class ModelReply:
    code: str
    seq: int
    results: list[tuple[str, int]]
    appended: list[str] = field(default_factory=list)  # the types appended (hook_conflict...)


@dataclass
class CommitRules:
    """The state commit.lua keeps for the runs of one partition, and its transition rules, with
    the hook token reservations RedisWorld.commit takes before the script and releases after."""

    runs: dict[str, RunModel] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # reservations: token -> "<run>|<hook>"
    timers: dict[str, int] = field(default_factory=dict)  # "<run id>|<corr>" -> due ms
    wakeups: int = 0  # wake-ups enqueued by commits

    def create(self, run_id: str) -> None:
        """What create_run.lua leaves: a pending run at seq 1 with no lease."""
        self.runs.setdefault(run_id, RunModel())

    def commit(self, commits: Sequence[ModelCommit], now: int) -> list[ModelReply]:
        reserved: dict[tuple[int, str], str] = {}
        taken: list[set[str]] = [set() for _ in commits]
        ours: set[str] = set()
        for i, c in enumerate(commits):
            for etype, corr, f in c.events:
                token = f.get("token", "")
                if etype != "hook_created" or not corr or not token:
                    continue
                holder = f"{c.run_id}|{corr}"
                if self._reserve(token, holder, ours):
                    ours.add(holder)
                    reserved[(i, corr)] = token
                else:
                    taken[i].add(corr)
        replies, freed = [], []
        for c, t in zip(commits, taken, strict=True):
            ended: list[tuple[str, str]] = []
            replies.append(self._commit_run(c, now, t, ended))
            freed.append(ended)
        for i, (c, reply, ended) in enumerate(zip(commits, replies, freed, strict=True)):
            if reply.code == "no_run":
                ended += [(h, t) for (n, h), t in reserved.items() if n == i]
            for (etype, corr, _), (res, extra) in zip(c.events, reply.results, strict=False):
                lost = res == "terminal" or (res == "ok" and extra == -1)
                if etype == "hook_created" and (i, corr) in reserved and lost:
                    ended.append((corr, reserved[(i, corr)]))
            for hook_id, token in ended:
                if self.tokens.get(token) == f"{c.run_id}|{hook_id}":
                    del self.tokens[token]
        return replies

    def _reserve(self, token: str, holder: str, ours: set[str]) -> bool:
        """reserve_hook.lua, with one reclaim of a reservation whose hook is lost (fence_hook.lua)."""
        other = self.tokens.setdefault(token, holder)
        if other == holder:
            return True
        run_id, _, hook_id = other.partition("|")
        run = self.runs.get(run_id)
        if other in ours:
            return False
        if run is not None and run.status not in TERMINAL_RUN:
            if run.hooks.get(hook_id) == token:
                return False
            run.hooks[f"{hook_id}|lost"] = token
        self.tokens[token] = holder  # released, then reserved again: nothing came in between
        return True

    def _commit_run(
        self, c: ModelCommit, now: int, taken: set[str], freed: list[tuple[str, str]]
    ) -> ModelReply:
        run = self.runs.get(c.run_id)
        if run is None:
            return ModelReply("no_run", 0, [])
        if c.token != "" and run.lease_owner != c.token:
            return ModelReply("lease", run.seq, [])
        if c.expected_seq >= 0 and run.seq != c.expected_seq:
            return ModelReply("conflict", run.seq, [])
        reply = ModelReply("ok", run.seq, [])
        for etype, corr, fields in c.events:
            res, extra, appended = self._event(
                c.run_id, run, etype, corr, fields, now, taken, freed
            )
            reply.results.append((res, extra))
            if appended:
                reply.appended.append(appended)
            if res not in ("ok", "exists"):
                reply.code = "rejected"
                break
        reply.seq = run.seq
        if reply.appended and c.wake:
            self.wakeups += 1
        return reply

    def _event(
        self,
        run_id: str,
        run: RunModel,
        etype: str,
        corr: str,
        f: dict[str, str],
        now: int,
        taken: set[str],
        freed: list[tuple[str, str]],
    ) -> tuple[str, int, str]:
        """(status, extra, type appended or "") of one event, applying it when it is appended."""
        state: list[Any] = [None, "0", "0", None, "0"]
        parsed = _ENTITY.fullmatch(run.entities.get(corr, "")) if corr != "" else None
        if parsed is not None:  # a field that is no step or wait ("patch|<id>") reads as none
            st, at, ra, sa, rs = parsed.groups()
            state = [st, at, ra, sa if sa != "0" else None, rs]
        step_status = state[0]
        entity: list[Any] | None = None
        timer_at: float | None = None
        new_status: str | None = None
        res, extra = "ok", 0.0
        hook_token = hook_dispose = hook_request = patch_field = child_write = None
        claim_write: str | None = None  # "" ends the step's claim
        hooks = run.hooks
        terminal = run.status in TERMINAL_RUN

        if etype == "run_started":
            if run.status == "pending":
                new_status = "running"
            else:
                res = "exists" if run.status == "running" else "terminal"
        elif etype in ("run_completed", "run_failed", "run_cancelled"):
            if terminal:
                cancel_again = etype == "run_cancelled" and run.status == "cancelled"
                res = "exists" if cancel_again else "terminal"
            else:
                new_status = {"run_completed": "completed", "run_failed": "failed"}.get(
                    etype, "cancelled"
                )
        elif etype in ("step_created", "wait_created"):
            if terminal:
                res = "terminal"
            elif corr == "":
                res = "invalid"
            elif step_status:
                res = "exists"
            elif etype == "step_created":
                entity = ["pending", 0, 0, 0, 0]
            else:
                until = lua_tonumber(f.get("until_ms", ""))
                delay = lua_tonumber(f.get("delay_ms", "0")) or 0
                resume_at = until if until is not None else now + delay
                extra = resume_at
                entity = ["waiting", 0, 0, 0, resume_at]
                timer_at = resume_at
        elif etype == "wait_completed":
            if not step_status:
                res = "not_found"
            elif step_status != "waiting":
                res = "exists"
            elif (lua_tonumber(state[4]) or 0) > now:
                res, extra = "too_early", lua_tonumber(state[4]) or 0
            else:
                entity = ["completed", 0, 0, 0, state[4]]
        elif etype in ("step_started", "step_completed", "step_failed", "step_retrying"):
            attempt = lua_tonumber(state[1]) or 0
            # a pool worker's claim: "<claim token>|<task entry id>" (see commit.lua's header)
            record = run.entities.get(f"{corr}|claim")
            held_claim, held_task = (None, None)
            if record is not None and "|" in record:
                held_claim, held_task = record.split("|", 1)
            claim = f.get("claim") or None
            if claim and etype == "step_started":
                claim_write = f"{claim}|{f.get('task', '')}"
            elif record is not None:
                claim_write = ""
            if not step_status:
                res = "not_found"
            elif step_status in ("completed", "failed") or (
                terminal
                and (step_status != "running" or etype in ("step_started", "step_retrying"))
            ):
                res = "terminal"
            elif (
                etype == "step_started"
                and claim
                and step_status == "running"
                and held_task is not None
                and held_task != f.get("task", "")
            ):
                res = "exists"  # another pool worker holds the step, for another task entry
            elif etype == "step_started":
                due = lua_tonumber(state[2]) or 0
                if due > now:
                    res, extra = "too_early", due
                else:
                    attempt += 1
                    extra = attempt
                    entity = ["running", attempt, 0, state[3] or now, 0]
            elif (
                step_status != "running"
                or ("attempt" in f and lua_tonumber(f["attempt"]) != attempt)
                or (claim and claim != held_claim)
            ):
                res = "stale"
            elif etype == "step_completed":
                entity = ["completed", attempt, 0, state[3] or 0, 0]
            elif etype == "step_failed":
                entity = ["failed", attempt, 0, state[3] or 0, 0]
            else:
                retry_after = lua_tonumber(f.get("retry_after", "0")) or 0
                retry_after = max(retry_after, now)
                extra = retry_after
                entity = ["pending", attempt, retry_after, state[3] or 0, 0]
                timer_at = retry_after
        elif etype == "hook_created":
            token = f.get("token", "")
            if terminal:
                res = "terminal"
            elif corr == "":
                res = "invalid"
            elif corr in hooks:
                res = "exists"
            elif token == "":
                res = "invalid"
            elif corr in taken or f"{corr}|lost" in hooks:
                etype, extra = "hook_conflict", -1  # recorded instead of the creation
            else:
                hook_token = token
        elif etype in ("hook_received", "hook_disposed"):
            request_id = f.get("request_id", "")
            if corr not in hooks:
                res = "not_found"
            elif etype == "hook_disposed":
                hook_dispose = hooks[corr]
            elif request_id != "":
                hook_request = f"{corr}|req|{request_id}"
                if hook_request in hooks:
                    res = "exists"
        elif etype == "patch_recorded":
            deprecated = f.get("deprecated", "false")
            if terminal:
                res = "terminal"
            elif run.status != "running" or corr == "" or deprecated not in ("true", "false"):
                res = "invalid"
            elif f"patch|{corr}" in run.entities:
                res = "exists"
            else:
                patch_field = f"patch|{corr}"
        elif etype == "child_started":
            if terminal:
                res = "terminal"
            elif corr == "" or f.get("run_id", "") == "":
                res = "invalid"
            elif f"{corr}|child" in run.entities:
                res = "exists"
            else:
                child_write = "started"
        elif etype in ("child_completed", "child_failed", "child_cancelled"):
            child = run.entities.get(f"{corr}|child")
            if child is None:
                res = "not_found"
            elif child != "started":
                res = "exists"
            elif terminal:
                res = "terminal"
            else:
                child_write = etype
        else:
            res = "invalid"

        if res != "ok":
            return res, int(extra), ""
        if run.seq + 1 <= run.stream_last:
            return "corrupt", int(extra), ""  # XADD refuses an id not above the last one
        run.seq += 1
        run.stream_last = run.seq
        run.log.append((etype, corr))
        if entity is not None:
            run.entities[corr] = "|".join(lua_str(v) for v in entity)
        if claim_write:
            run.entities[f"{corr}|claim"] = claim_write
        elif claim_write is not None:
            run.entities.pop(f"{corr}|claim", None)
        if timer_at is not None:
            self.timers[f"{run_id}|{corr}"] = int(timer_at)
        if hook_token is not None:
            hooks[corr] = hook_token
            hooks[f"{corr}|meta"] = f.get("metadata", "null")
        if hook_request is not None:
            hooks[hook_request] = lua_str(run.seq)
        if patch_field is not None:
            run.entities[patch_field] = lua_str(run.seq)
        if child_write is not None:
            run.entities[f"{corr}|child"] = child_write
            run.children = run.children or child_write == "started"
        if hook_dispose is not None:
            freed.append((corr, hook_dispose))
            hooks.pop(corr, None)
            hooks.pop(f"{corr}|meta", None)
        if new_status is not None:
            run.status = new_status
            if new_status in TERMINAL_RUN:
                freed += [(h, t) for h, t in hooks.items() if "|" not in h]
                hooks.clear()
                if run.children:
                    self.wakeups += 1  # reason "ended": the run's children are closed
        return "ok", int(extra), etype
