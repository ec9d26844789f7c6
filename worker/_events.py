"""The event types of a run's log, as frozen msgspec Structs tagged by their type name.

Payload fields (``input``, ``result``, ``output``, ``error``) hold JSON text produced by
``worker._serde`` and are kept verbatim: the log is what ``redis-cli XRANGE`` shows. Evolve this schema
only by adding fields with defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import msgspec

from ._errors import CorruptEventError


class Event(msgspec.Struct, frozen=True, tag_field="type", kw_only=True, gc=False):
    """Fields every event carries: its position in the log, id, server time and correlation id.

    Events hold only strings and ints, so they are not tracked by the garbage collector
    (``gc=False``): a long run's log then costs nothing at each collection.
    """

    seq: int
    id: str = ""
    ts: int = 0
    corr: str = ""
    resolves: ClassVar[bool] = False  # does consuming it resume awaiting workflow code?


class RunCreated(Event, frozen=True, tag="run_created"):
    workflow: str
    input: str = "[]"
    deployment: str = ""
    seed: str = ""  # secret per run: default hook tokens derive from it
    trace: str = ""  # W3C trace context of the code that started the run (JSON), see _tracing
    parent: str = ""  # the run whose workflow code started this one (see worker/_children.py)
    priority: int = 0  # start(..., priority=): flow control serves higher priorities first


class RunStarted(Event, frozen=True, tag="run_started"):
    pass


class RunCompleted(Event, frozen=True, tag="run_completed"):
    output: str = "null"


class RunFailed(Event, frozen=True, tag="run_failed"):
    error: str = "null"


class RunCancelled(Event, frozen=True, tag="run_cancelled"):
    reason: str = ""


class StepCreated(Event, frozen=True, tag="step_created"):
    name: str
    input: str = "null"


class StepStarted(Event, frozen=True, tag="step_started"):
    attempt: int = 1


class StepCompleted(Event, frozen=True, tag="step_completed"):
    result: str = "null"
    resolves: ClassVar[bool] = True


class StepFailed(Event, frozen=True, tag="step_failed"):
    error: str = "null"
    resolves: ClassVar[bool] = True


class StepRetrying(Event, frozen=True, tag="step_retrying"):
    error: str = "null"
    retry_after: int = 0


class WaitCreated(Event, frozen=True, tag="wait_created"):
    resume_at: int = 0


class WaitCompleted(Event, frozen=True, tag="wait_completed"):
    resolves: ClassVar[bool] = True


class HookCreated(Event, frozen=True, tag="hook_created"):
    token: str = ""
    metadata: str = "null"


class HookConflict(Event, frozen=True, tag="hook_conflict"):
    """Written by the World instead of hook_created when a live hook of another run holds the token."""

    token: str = ""
    resolves: ClassVar[bool] = True


class HookReceived(Event, frozen=True, tag="hook_received"):
    payload: str = "null"
    resolves: ClassVar[bool] = True


class HookDisposed(Event, frozen=True, tag="hook_disposed"):
    resolves: ClassVar[bool] = True


class PatchRecorded(Event, frozen=True, tag="patch_recorded"):
    """Workflow code asked ``patched(corr)`` (or ``deprecate_patch(corr)``) at a point it ran for
    the first time, so this run takes the new code path of change ``corr``; see worker/_patching.py.
    """

    deprecated: bool = False  # recorded by deprecate_patch(): replay ignores it when nothing asks


class ChildStarted(Event, frozen=True, tag="child_started"):
    """Workflow code started child run ``run_id`` (see worker/_children.py)."""

    run_id: str = ""
    workflow: str = ""
    input: str = "[]"
    parent_close: str = "cancel"  # cancel | abandon: what the parent's end does to the child
    priority: int = 0  # the child run's priority (absent from the entry when 0)


class ChildCompleted(Event, frozen=True, tag="child_completed"):
    output: str = "null"
    resolves: ClassVar[bool] = True


class ChildFailed(Event, frozen=True, tag="child_failed"):
    error: str = "null"
    resolves: ClassVar[bool] = True


class ChildCancelled(Event, frozen=True, tag="child_cancelled"):
    resolves: ClassVar[bool] = True


AnyEvent = (
    RunCreated
    | RunStarted
    | RunCompleted
    | RunFailed
    | RunCancelled
    | StepCreated
    | StepStarted
    | StepCompleted
    | StepFailed
    | StepRetrying
    | WaitCreated
    | WaitCompleted
    | HookCreated
    | HookConflict
    | HookReceived
    | HookDisposed
    | PatchRecorded
    | ChildStarted
    | ChildCompleted
    | ChildFailed
    | ChildCancelled
)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        RunCreated,
        RunStarted,
        RunCompleted,
        RunFailed,
        RunCancelled,
        StepCreated,
        StepStarted,
        StepCompleted,
        StepFailed,
        StepRetrying,
        WaitCreated,
        WaitCompleted,
        HookCreated,
        HookConflict,
        HookReceived,
        HookDisposed,
        PatchRecorded,
        ChildStarted,
        ChildCompleted,
        ChildFailed,
        ChildCancelled,
    )
}

TERMINAL_RUN_EVENTS = frozenset({"run_completed", "run_failed", "run_cancelled"})


def entry_id(seq: int) -> str:
    """An event's id: its entry id in the run's stream. Event ids are dense positions (1-0, 2-0,
    ...) that sort in log order within a run; logs written by earlier versions also stored an
    ``evnt_`` ULID per entry, which readers keep as the id."""
    return f"{seq}-0"


def entry_name(seq: int, etype: str, corr: str = "") -> str:
    """How errors name a log entry: its stream id (``<seq>-0``), its type and correlation id."""
    return f"log entry {seq}-0 ({etype}, {corr})" if corr else f"log entry {seq}-0 ({etype})"


def event_name(ev: Event) -> str:
    """:func:`entry_name` of an event."""
    return entry_name(ev.seq, str(ev.__struct_config__.tag), ev.corr)


def event_from_fields(seq: int, fields: dict[str, str], run_id: str = "") -> Event:
    """Build an event from a log entry's fields; anything malformed raises CorruptEventError."""
    etype = fields.get("type")
    cls = EVENT_TYPES.get(etype or "")
    if cls is None:
        raise CorruptEventError(
            f"run {run_id or '?'}: log entry {seq}-0 has unknown event type {etype!r}"
        )
    data: dict[str, Any] = {k: v for k, v in fields.items() if k != "type"}
    data["seq"] = seq
    data.setdefault("id", entry_id(seq))  # logs written before 0.2 hold an evnt_ ULID
    try:
        return msgspec.convert(data, cls, strict=False)
    except (msgspec.ValidationError, UnicodeEncodeError) as exc:
        # UnicodeEncodeError: an int field holding bytes that are not UTF-8 (read back as lone
        # surrogates, see RedisWorld.from_url), which msgspec encodes before parsing the number
        name = entry_name(seq, str(etype), str(fields.get("corr", "")))
        raise CorruptEventError(f"run {run_id or '?'}: {name} does not parse: {exc}") from None


_EXTRA_FIELD = {"step_started": "attempt", "wait_created": "resume_at"}
HOOK_CONFLICT = -1  # commit.lua's "extra" for a hook_created it turned into hook_conflict
_INT_FIELDS = frozenset({"attempt", "resume_at", "retry_after", "priority"})
_BOOL_FIELDS = frozenset({"deprecated"})  # stored as the text true | false
_BASE_FIELDS = frozenset({"seq", "id", "ts", "corr"})
_PAYLOAD_FIELDS = {
    tag: frozenset(cls.__struct_fields__) - _BASE_FIELDS for tag, cls in EVENT_TYPES.items()
}


def _step_created(new: NewEvent, seq: int, ts: int, extra: int) -> Event:
    f = new.fields
    return StepCreated(
        seq=seq,
        id=entry_id(seq),
        ts=ts,
        corr=new.corr,
        name=f["name"],
        input=f.get("input", "null"),
    )


def _step_started(new: NewEvent, seq: int, ts: int, extra: int) -> Event:
    return StepStarted(seq=seq, id=entry_id(seq), ts=ts, corr=new.corr, attempt=extra)


def _step_completed(new: NewEvent, seq: int, ts: int, extra: int) -> Event:
    result = new.fields.get("result", "null")
    return StepCompleted(seq=seq, id=entry_id(seq), ts=ts, corr=new.corr, result=result)


# the events of a step's commit, built without the general path's loop over fields (a test holds
# each to what _make_general builds from the same input)
_FAST: dict[str, Callable[[NewEvent, int, int, int], Event]] = {
    "step_created": _step_created,
    "step_started": _step_started,
    "step_completed": _step_completed,
}


def make_event(new: NewEvent, seq: int, ts: int, extra: int) -> Event:
    """The event as the log now holds it, built from what was appended (no round trip)."""
    fields = new.fields
    given = fields.get("ts")
    if given is not None and given.isascii() and given.isdigit():  # as commit.lua keeps it
        ts = int(given)
    fast = _FAST.get(new.type)
    if fast is not None and (new.type != "step_created" or "name" in fields):
        return fast(new, seq, ts, extra)
    return _make_general(new, seq, ts, extra)


def _make_general(new: NewEvent, seq: int, ts: int, extra: int) -> Event:
    """make_event for any type: the payload fields the event's type has, typed."""
    cls = EVENT_TYPES[new.type]
    payload = _PAYLOAD_FIELDS[new.type]
    data: dict[str, Any] = {}
    for k, v in new.fields.items():
        if k in payload:
            data[k] = int(v) if k in _INT_FIELDS else (v == "true" if k in _BOOL_FIELDS else v)
    if new.type == "hook_created" and extra == HOOK_CONFLICT:
        cls = HookConflict  # the World recorded a conflict instead of the creation
        data = {"token": new.fields.get("token", "")}
    extra_field = _EXTRA_FIELD.get(new.type)
    if extra_field is not None:
        data[extra_field] = extra
    return cls(seq=seq, id=entry_id(seq), ts=ts, corr=new.corr, **data)


def appended_events(
    events: Sequence[NewEvent], results: Sequence[Any], last_seq: int, ts: int, skip: int = 0
) -> list[Event]:
    """The events a commit appended, as the log holds them: ``results`` has one (status, extra)
    per event (commit.lua's answer), ``last_seq`` is the log's last position after it, and the
    first ``skip`` events are left out (their positions still count)."""
    s = last_seq
    for r in results:
        if r.status == "ok":
            s -= 1
    out: list[Event] = []
    for i, (ev, r) in enumerate(zip(events, results, strict=False)):
        if r.status != "ok":
            continue
        s += 1
        if i >= skip:
            out.append(make_event(ev, s, ts, r.extra))
    return out


class NewEvent(msgspec.Struct, frozen=True, gc=False):
    """An event to append: its type, correlation id and payload fields (JSON text values)."""

    type: str
    corr: str = ""
    fields: dict[str, str] = {}


def sleeps_from_events(events: list[Event], run_active: bool) -> list[dict[str, Any]]:
    """A run's durable sleeps from its log: created, due, completed, and a status: waiting,
    completed, or abandoned (the run ended first, or its code stopped waiting)."""
    sleeps: dict[str, dict[str, Any]] = {}
    for ev in events:
        if isinstance(ev, WaitCreated):
            sleeps[ev.corr] = {
                "wait_id": ev.corr,
                "created_at": ev.ts,
                "resume_at": ev.resume_at,
                "completed_at": None,
                "status": "waiting" if run_active else "abandoned",
            }
        elif isinstance(ev, WaitCompleted) and ev.corr in sleeps:
            sleeps[ev.corr].update(completed_at=ev.ts, status="completed")
    return list(sleeps.values())


def timeline_from_events(events: list[Event], end_ms: int) -> list[dict[str, Any]]:
    """Bars of a run's timeline, in log order: each step attempt (from its step_started to the
    attempt's outcome), each sleep (from its creation to its end) and each hook (from its
    creation to its disposal); a bar still open ends at ``end_ms``. Each bar: label, kind,
    start_ms, end_ms, outcome (completed, retrying, failed, running, waiting, open...)."""
    bars: list[dict[str, Any]] = []
    open_bars: dict[str, dict[str, Any]] = {}  # correlation id -> its open bar
    names: dict[str, str] = {}
    for ev in events:
        kind, outcome = _timeline_event(ev)
        if kind == "open":
            names.setdefault(ev.corr, getattr(ev, "name", ev.corr))
            label = (
                f"{names[ev.corr]} #{getattr(ev, 'attempt', 1)}" if outcome == "step" else ev.corr
            )
            bar = {"label": label, "kind": outcome, "start_ms": ev.ts, "end_ms": end_ms}
            bar["outcome"] = "running" if outcome == "step" else "waiting"
            bars.append(bar)
            open_bars[ev.corr] = bar
        elif kind == "name":
            names[ev.corr] = getattr(ev, "name", ev.corr)
        elif kind == "close" and ev.corr in open_bars:
            bar = open_bars.pop(ev.corr)
            bar.update(end_ms=ev.ts, outcome=outcome)
    return bars


def _timeline_event(ev: Event) -> tuple[str, str]:
    """What an event does to the timeline: ("open", kind), ("close", outcome), ("name", ""),
    or ("", "")."""
    if isinstance(ev, StepCreated):
        return "name", ""
    if isinstance(ev, StepStarted):
        return "open", "step"
    if isinstance(ev, WaitCreated):
        return "open", "sleep"
    if isinstance(ev, HookCreated):
        return "open", "hook"
    outcome = {
        StepCompleted: "completed",
        StepFailed: "failed",
        StepRetrying: "retrying",
        WaitCompleted: "completed",
        HookDisposed: "disposed",
    }.get(type(ev))
    return ("close", outcome) if outcome else ("", "")
