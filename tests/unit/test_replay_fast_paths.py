"""The replay engine's fast paths give what the general paths they stand for give: the same ids,
the same stored arguments, the same handles and callbacks on the replay loop, the same outcomes
and the same instance state."""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
import re
import threading
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.unit.replay_support import new_instance, simulate
from worker import _serde
from worker._events import NewEvent, RunCreated, StepCompleted, entry_id, make_event
from worker._ids import DeterministicIds, _ulid_text
from worker._registry import step, workflow
from worker._replay import ReplayLoop, WorkflowInstance

START = 1_700_000_000_000

# -- ids ----------------------------------------------------------------------------------------


def test_ids_are_the_ones_stored_logs_hold() -> None:
    """Ids are in stored logs: these are the ones every version of the worker gave this run."""
    ids = DeterministicIds("wrun_abc", 1_700_000_000_123)
    assert [ids.next(p) for p in ("step", "step", "wait", "hook", "chld")] == [
        "step_01HF7YAT3V888CP52XCJ7HEDEP",
        "step_01HF7YAT3VN1DV5SBRNKJ1H0SR",
        "wait_01HF7YAT3V65291NMZ3JJ329BW",
        "hook_01HF7YAT3VCBS3H08X4XPEJMNM",
        "chld_01HF7YAT3VDN448R174AJ13MQP",
    ]


@given(
    run_id=st.text(min_size=0, max_size=40),
    started_at_ms=st.integers(min_value=0, max_value=2**48 - 1),
)
def test_ids_spell_the_ulid_of_the_start_and_the_run_seeded_bits(
    run_id: str, started_at_ms: int
) -> None:
    ids = DeterministicIds(run_id, started_at_ms)
    rng = random.Random(f"{run_id}:ids")
    for _ in range(5):
        assert ids.next("step") == f"step_{_ulid_text(started_at_ms << 80 | rng.getrandbits(80))}"


# -- stored arguments ---------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
_values = st.recursive(
    _scalars | st.binary(max_size=4) | st.tuples(_scalars),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@given(
    args=st.lists(_values, max_size=4).map(tuple),
    kwargs=st.dictionaries(st.text(max_size=3), _values, max_size=2),
)
def test_dumps_args_writes_what_dumps_writes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    payload = {"args": list(args), "kwargs": kwargs} if kwargs else {"args": list(args)}
    assert _serde.dumps_args(args, kwargs, what="w") == _serde.dumps(payload, what="w")


@given(args=st.lists(_scalars, max_size=5).map(tuple))
def test_dumps_args_of_scalars_writes_what_dumps_writes(args: tuple[Any, ...]) -> None:
    assert _serde.dumps_args(args, {}, what="w") == _serde.dumps({"args": list(args)}, what="w")


class _Text(str):
    pass


@given(
    args=st.lists(_values, max_size=4).map(tuple),
    kwargs=st.dictionaries(st.text(max_size=3), _values, max_size=2),
)
@example(args=(1, -0.0, 1e16, "$t", "\\u0041", None, False), kwargs={})
@example(args=((1,),), kwargs={})
@example(args=(2**64,), kwargs={})
def test_encode_args_hands_back_only_what_loading_gives_back(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """A step run where it was called skips loading its input when encode_args hands its
    arguments back: they must be what loading the text gives, value and type alike."""
    text, plain = _serde.encode_args(args, kwargs, what="w")
    assert text == _serde.dumps_args(args, kwargs, what="w")
    if plain is None:
        return
    assert plain is args and not kwargs
    loaded = _serde.loads(text)["args"]
    assert [type(v) for v in loaded] == [type(v) for v in plain]
    assert [repr(v) for v in loaded] == [repr(v) for v in plain]  # nan-safe, -0.0 apart from 0.0


@pytest.mark.parametrize(
    "args",
    [((1,),), ([1],), ({"a": 1},), (2**64,), (math.nan,), (math.inf,), (b"x",), (_Text("x"),)],
)
def test_encode_args_keeps_containers_and_tagged_values_to_the_load(args: tuple[Any, ...]) -> None:
    """Containers (a tuple loads as a list), big ints, nan, inf, bytes and str subclasses are
    loaded from the text, never handed back."""
    _, plain = _serde.encode_args(args, {}, what="w")
    assert plain is None
    _, plain = _serde.encode_args(args, {"k": 1}, what="w")
    assert plain is None


@pytest.mark.parametrize(
    "args",
    [
        (),
        (1, "a", None, True, 2.5),
        (2**64, -(2**63) - 1),  # outside the raw int range: tagged
        (math.nan, math.inf, -math.inf),
        (_Text("x"),),  # a subclass takes the general path
        ([1, {"$t": 2}],),
        ("\u00e9\u4e2d\U0001f600",),
    ],
)
def test_dumps_args_edge_values(args: tuple[Any, ...]) -> None:
    assert _serde.dumps_args(args, {}, what="w") == _serde.dumps({"args": list(args)}, what="w")


@pytest.mark.parametrize("args", [(object(),), ("\ud800",), (1, "a\udfff")])
def test_dumps_args_errors_as_dumps(args: tuple[Any, ...]) -> None:
    with pytest.raises(_serde.SerializationError) as fast:
        _serde.dumps_args(args, {}, what="arguments of step 's'")
    with pytest.raises(_serde.SerializationError) as general:
        _serde.dumps({"args": list(args)}, what="arguments of step 's'")
    assert str(fast.value) == str(general.value)


@given(value=_scalars | st.characters(codec=None) | st.integers())
@example(value="\ud800")  # a lone surrogate: the error, on every run
def test_dumps_of_a_scalar_writes_what_dumps_bytes_writes(value: Any) -> None:
    """The same text, or the same error (a lone surrogate is not text)."""
    try:
        expected = _serde.dumps_bytes(value).decode()
    except _serde.SerializationError as exc:
        with pytest.raises(_serde.SerializationError, match=re.escape(str(exc))):
            _serde.dumps(value)
    else:
        assert _serde.dumps(value) == expected


@pytest.mark.parametrize("value", ["\ud800", 2**64, -(2**63) - 1, math.nan, _Text("x")])
def test_dumps_of_edge_scalars_as_dumps_bytes(value: Any) -> None:
    try:
        expected = _serde.dumps_bytes(value, what="r").decode()
    except _serde.SerializationError as exc:
        with pytest.raises(_serde.SerializationError, match=re.escape(str(exc))):
            _serde.dumps(value, what="r")
    else:
        assert _serde.dumps(value, what="r") == expected


# -- the replay loop ----------------------------------------------------------------------------


def _loop() -> ReplayLoop:
    return new_instance(sequential)._loop


def test_replay_loop_has_every_attribute_of_the_base_loop() -> None:
    """ReplayLoop sets BaseEventLoop's attributes itself: none may be missing."""
    base = asyncio.BaseEventLoop()
    loop = _loop()
    assert set(vars(base)) <= set(vars(loop))
    for name in set(vars(base)) - {"_ready", "_scheduled", "_asyncgens", "_exception_handler"}:
        assert getattr(loop, name) == getattr(base, name), name
    assert not loop._ready and not loop._scheduled and not loop._asyncgens
    assert loop.get_debug() == base.get_debug()
    base.close()


@pytest.mark.parametrize("value", [None, "", "1", "0"])
def test_a_loop_is_in_debug_mode_as_asyncio_says(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The debug flag is read at each loop's making, from PYTHONASYNCIODEBUG as it is then."""
    if value is None:
        monkeypatch.delenv("PYTHONASYNCIODEBUG", raising=False)
    else:
        monkeypatch.setenv("PYTHONASYNCIODEBUG", value)
    loop = _loop()
    base = asyncio.BaseEventLoop()
    assert loop.get_debug() == base.get_debug() == asyncio.coroutines._is_debug_mode()
    base.close()


def test_call_soon_makes_the_handle_the_base_makes() -> None:
    loop = _loop()
    loop.set_debug(False)  # (in debug mode the base makes it: see the next test)
    ctx = contextvars.copy_context()
    seen: list[Any] = []
    handle = loop.call_soon(seen.append, 1, context=ctx)
    assert type(handle) is asyncio.Handle and handle._context is ctx
    assert (handle._callback, handle._args, handle._loop) == (seen.append, (1,), loop)
    assert handle._source_traceback is None and not handle.cancelled()
    other = loop.call_soon(seen.append, 2)  # no context: a copy of the current one
    assert isinstance(other._context, contextvars.Context)
    loop.call_soon(seen.append, 3).cancel()
    assert list(loop._ready)[:2] == [handle, other]
    loop.run_ready()
    assert seen == [1, 2]
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon(seen.append, 4)


def test_call_soon_in_debug_mode_is_the_base_one() -> None:
    loop = _loop()
    loop.set_debug(True)
    with pytest.raises(TypeError, match="coroutines cannot be used with call_soon"):
        loop.call_soon(_coro_fn)
    handle = loop.call_soon(print)
    assert handle._source_traceback  # the base records where it was made
    loop._ready.clear()
    loop.close()


async def _coro_fn() -> None:
    pass


def test_run_ready_reports_a_failing_callback_as_handle_run_does() -> None:
    loop = _loop()
    reports: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    error = ValueError("boom")

    def fail() -> None:
        raise error

    handle = loop.call_soon(fail)
    later: list[int] = []
    loop.call_soon(later.append, 1)
    loop.run_ready()
    assert later == [1]
    assert len(reports) == 1
    assert reports[0]["exception"] is error and reports[0]["handle"] is handle
    assert reports[0]["message"].startswith("Exception in callback ")
    assert "fail" in reports[0]["message"]


def test_run_ready_goes_on_after_system_exit() -> None:
    loop = _loop()
    later: list[int] = []

    def exit_() -> None:
        raise SystemExit(3)

    loop.call_soon(exit_)
    loop.call_soon(later.append, 1)
    loop.run_ready()
    assert later == [1]


# -- step calls ---------------------------------------------------------------------------------


@step(name="t_fast.double")
async def double(x: int) -> int:
    return 2 * x


@step(name="t_fast.inc")
def inc(x: int) -> int:
    return x + 1


@workflow(name="t_fast.sequential")
async def sequential(n: int) -> int:
    total = 0
    for i in range(n):
        total += await double(i)
    return total


@workflow(name="t_fast.from_a_thread")
async def from_a_thread() -> int:
    """A step called from another thread (with the workflow's context) runs there, inline."""
    ctx = contextvars.copy_context()
    out: list[int] = []
    thread = threading.Thread(target=lambda: out.append(ctx.run(inc, 1)))
    thread.start()
    thread.join()
    return out[0] + await double(5)


def test_a_step_called_from_another_thread_runs_inline() -> None:
    res = simulate(from_a_thread)
    assert res.outcome.kind == "completed" and res.outcome.output == "12"
    assert [ev.name for ev in res.events if type(ev).__name__ == "StepCreated"] == ["t_fast.double"]


def test_loop_thread_is_set_only_while_the_loop_runs() -> None:
    inst = new_instance(sequential)
    assert inst.loop_thread is None
    inst.feed([RunCreated(seq=1, id="1-0", ts=START, workflow="w", input="[2]")])
    inst.advance()
    assert inst.loop_thread is None
    inst.close()
    assert inst.loop_thread is None


# -- suspension ---------------------------------------------------------------------------------


@workflow(name="t_fast.hooked")
async def hooked() -> int:
    from worker import create_hook

    hook = create_hook()
    return await double(1) + len(hook.token) * 0


def test_one_step_suspension_is_what_the_general_path_answers() -> None:
    for wf, arg in ((sequential, "[3]"), (hooked, "[]")):
        inst = new_instance(wf)
        inst.feed([RunCreated(seq=1, id="1-0", ts=START, workflow="w", input=arg)])
        out = inst.advance()
        assert out.kind == "suspended"
        assert out == inst._suspend() == inst._suspend_all()


# -- complete_own -------------------------------------------------------------------------------


@workflow(name="t_fast.values")
async def values() -> list[Any]:
    out = []
    for i in range(6):
        out.append(await double(i))
    return out


RESULTS = ['{"a":[1,2.5,null,true]}', '"text"', "[1,[2,[3]]]", "-7", "0.125", "null"]


class Run:
    """A run driven as the worker's inline path drives it: the step's result goes in through
    feed() or complete_own(), the creation and start through append_own()."""

    def __init__(self, wf: Any, arg: str, own: bool) -> None:
        self.inst = new_instance(wf)
        self.own = own
        self.taken = 0  # results that went in through complete_own()
        self.outstanding: list[str] = []  # steps started, oldest first
        self.outcomes: list[Any] = []
        self.states: list[dict[str, Any]] = []
        self.ts = START
        self.inst.feed([RunCreated(seq=1, id="1-0", ts=START, workflow="w", input=arg)])

    def run(self, results: list[str]) -> Any:
        head: NewEvent | None = NewEvent("run_started")
        n = 0
        while True:
            self.ts += 3
            if head is not None and head.type == "step_completed":
                seq, result = self.inst.seq + 1, head.fields["result"]
                if self.own and self.inst.complete_own(head.corr, result, seq, self.ts):
                    self.taken += 1
                else:
                    self.inst.feed([make_event(head, seq, self.ts, 0)])
            elif head is not None:
                self.inst.feed([make_event(head, self.inst.seq + 1, self.ts, 0)])
            out = self.inst.advance()
            self.outcomes.append(out)
            self.states.append(state(self.inst))
            if out.kind != "suspended":
                return out
            created = [c.corr for c in out.commands]
            fresh = [*out.commands, *(NewEvent("step_started", c) for c in created)]
            attempts = [0] * len(created) + [1] * len(created)
            assert self.inst.append_own(fresh, self.inst.seq + 1, self.ts, attempts)
            self.outstanding += created
            corr = self.outstanding.pop(0)  # the oldest step still running completes
            head = NewEvent("step_completed", corr, {"result": results[n % len(results)]})
            n += 1


def state(inst: WorkflowInstance) -> dict[str, Any]:
    return {
        "seq": inst.seq,
        "log_length": inst.log_length,
        "clock_ms": inst.clock_ms,
        "steps": sorted((c.corr, c.status, c.attempt, c.created) for c in inst.steps.values()),
        "pending": sorted(c.corr for c in inst.pending_steps()),
        "finished": inst.finished,
        "stuck": inst.is_stuck(),
    }


@workflow(name="t_fast.fan")
async def fan(n: int) -> list[int]:
    first = await double(1)
    rest = await asyncio.gather(*(double(i) for i in range(n)))
    return [first, *rest, await double(7)]


@pytest.mark.parametrize(
    ("wf", "arg", "results"),
    [
        (sequential, "[5]", ["0", "2", "4", "6", "8"]),
        (values, "[]", RESULTS),
        (fan, "[4]", ["2", "0", "2", "4", "6", "14"]),
    ],
)
def test_complete_own_then_advance_is_feed_then_advance(
    wf: Any, arg: str, results: list[str]
) -> None:
    fed, own = Run(wf, arg, own=False), Run(wf, arg, own=True)
    out_fed, out_own = fed.run(results), own.run(results)
    assert out_own.kind == out_fed.kind == "completed"
    assert out_own == out_fed
    assert own.outcomes == fed.outcomes
    assert own.states == fed.states
    assert own.taken == len(own.outcomes) - 1  # every step result went in that way
    if wf is values:
        assert _serde.loads(out_own.output) == [_serde.loads(r) for r in RESULTS]


def _awaiting_one_step() -> tuple[WorkflowInstance, str]:
    inst = new_instance(sequential)
    inst.feed([RunCreated(seq=1, id="1-0", ts=START, workflow="w", input="[2]")])
    out = inst.advance()
    corr = out.commands[0].corr
    assert inst.append_own([*out.commands, NewEvent("step_started", corr)], 2, START, [0, 1])
    return inst, corr


def test_complete_own_refuses_and_changes_nothing() -> None:
    inst, corr = _awaiting_one_step()
    before = state(inst)
    seq = inst.seq + 1
    assert not inst.complete_own(corr, "1", seq + 1, START)  # not the next position
    assert not inst.complete_own(corr, "1", seq - 1, START)
    assert not inst.complete_own("step_x", "1", seq, START)  # a call the code did not make
    assert not inst.complete_own(corr, "{not json", seq, START)  # feed + advance fail the run
    inst._loop.call_soon(lambda: None)  # a callback ready before the step's
    assert not inst.complete_own(corr, "1", seq, START)
    inst._loop._ready.clear()
    assert state(inst) == before
    # an event fed but not consumed yet stands before it
    inst.feed([StepCompleted(seq=seq, id=entry_id(seq), ts=START, corr=corr, result="0")])
    assert not inst.complete_own(corr, "1", seq + 1, START)
    assert inst.advance().kind == "suspended"


def test_complete_own_refuses_a_step_whose_awaiter_is_gone() -> None:
    inst, corr = _awaiting_one_step()
    inst.steps[corr].future.cancel()
    assert not inst.complete_own(corr, "1", inst.seq + 1, START)


def test_complete_own_refuses_a_finished_run() -> None:
    inst, corr = _awaiting_one_step()
    seq = inst.seq + 1
    inst.feed([StepCompleted(seq=seq, id=entry_id(seq), ts=START, corr=corr, result="0")])
    out = inst.advance()
    corr = out.commands[0].corr
    assert inst.append_own([*out.commands, NewEvent("step_started", corr)], seq + 1, START, [0, 1])
    seq = inst.seq + 1
    inst.feed([StepCompleted(seq=seq, id=entry_id(seq), ts=START, corr=corr, result="2")])
    assert inst.advance().kind == "completed"
    assert not inst.complete_own(corr, "2", inst.seq + 1, START)


def test_complete_own_of_a_bad_result_leaves_feed_to_fail_the_run() -> None:
    fed, _ = _awaiting_one_step()
    own, corr = _awaiting_one_step()
    seq = own.seq + 1
    assert not own.complete_own(corr, "{bad", seq, START)
    for inst in (fed, own):
        inst.feed([StepCompleted(seq=seq, id=entry_id(seq), ts=START, corr=corr, result="{bad")])
    out_fed, out_own = fed.advance(), own.advance()
    assert out_fed.kind == out_own.kind == "failed"
    assert out_fed.error == out_own.error


def test_get_debug_follows_set_debug() -> None:
    """Futures ask their loop get_debug(): the replay loop answers what set_debug() last set."""
    loop = _loop()
    for flag in (True, False, True):
        loop.set_debug(flag)
        assert loop.get_debug() is flag
        assert loop.create_future().get_loop() is loop


# -- argument conversion ------------------------------------------------------------------------


def _typed_step(a: int, b, c: float, d: Any) -> None:  # type: ignore[no-untyped-def]
    pass


@pytest.mark.parametrize(
    "args",
    [
        (1, "x", 2.5, None),  # every annotated value has its type: handed back as it is
        [1, {"k": 1}, 2, [3]],  # c: an int for a float parameter, converted
        (True, None, 1.0, object()),  # a: a bool for an int parameter, as convert_args does
    ],
)
def test_argspec_convert_agrees_with_convert_args(args: Any) -> None:
    from worker._registry import ArgSpec, _hints, convert_args

    sig = _hints(_typed_step)
    spec = ArgSpec(sig)
    fast, fast_kwargs = spec.convert(args, {}, "step 's'")
    slow, slow_kwargs = convert_args(sig, list(args), {}, "step 's'")
    assert list(fast) == slow and fast_kwargs == slow_kwargs == {}
    assert [type(v) for v in fast] == [type(v) for v in slow]
    if all(type(v) is t for v, t in zip(args, (int, type(args[1]), float), strict=False)):
        assert fast is args


def test_argspec_convert_names_the_parameter_it_cannot_convert() -> None:
    from worker._registry import ArgSpec, _hints

    with pytest.raises(_serde.SerializationError, match="parameter 'c'"):
        ArgSpec(_hints(_typed_step)).convert((1, 2, "not a number", 4), {}, "step 's'")
