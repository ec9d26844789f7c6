"""The ``@workflow`` and ``@step`` decorators and the per-process registry of both."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import types
from _thread import get_ident
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from . import _serde
from ._context import current_step
from ._errors import (
    FlowControlError,
    StepNotRegisteredError,
    WorkflowError,
    WorkflowNameError,
    WorkflowNotRegisteredError,
)
from ._flow import FlowSpec, flow_spec
from ._pool_world import DEFAULT_QUEUE, check_queue
from ._replay import current_instance

F = TypeVar("F", bound=Callable[..., Any])

_workflows: dict[str, WorkflowFunction] = {}
_steps: dict[str, StepFunction] = {}

DEFAULT_MAX_RETRIES = 3


def _default_name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def _hints(fn: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(fn, eval_str=True)
    except (NameError, TypeError, ValueError):
        return inspect.signature(fn)


def convert_args(
    sig: inspect.Signature, args: list[Any], kwargs: dict[str, Any], what: str
) -> tuple[list[Any], dict[str, Any]]:
    """Bind and convert arguments to the function's annotations; errors name the parameter."""
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise _serde.SerializationError(f"{what}: {exc}") from None
    for name, value in list(bound.arguments.items()):
        param = sig.parameters[name]
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        bound.arguments[name] = _serde.convert(
            value, param.annotation, what=f"{what}, parameter {name!r}"
        )
    return list(bound.args), dict(bound.kwargs)


_EMPTY = inspect.Parameter.empty
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class ArgSpec:
    """A function's parameters, prepared so that converting arguments is cheap when they fit."""

    def __init__(self, sig: inspect.Signature) -> None:
        self.signature = sig
        params = list(sig.parameters.values())
        self.positional_only = all(p.kind in _POSITIONAL for p in params)
        self.names = [p.name for p in params]
        self.types = [
            None if p.annotation in (_EMPTY, Any, object) else p.annotation for p in params
        ]
        self.count = len(params)
        # the parameters whose annotation says what a value must be: (position, type, name)
        self.typed = [
            (i, ann, name)
            for i, (ann, name) in enumerate(zip(self.types, self.names, strict=True))
            if ann is not None
        ]

    def convert(
        self, args: Sequence[Any], kwargs: dict[str, Any], what: str
    ) -> tuple[Sequence[Any], dict[str, Any]]:
        """The arguments converted to the parameters' annotations (``args`` itself when every
        value already has its parameter's type); errors name the parameter."""
        if not (self.positional_only and not kwargs and len(args) == self.count):
            return convert_args(self.signature, list(args), kwargs, what)
        out: list[Any] | None = None
        for i, ann, name in self.typed:  # as many as args (checked above)
            if type(args[i]) is ann:
                continue
            if out is None:
                out = list(args)
            out[i] = _serde.convert(args[i], ann, what=f"{what}, parameter {name!r}")
        return (args if out is None else out), {}


class WorkflowFunction:
    """A registered workflow. Calling it outside a worker runs the coroutine function directly."""

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        queue: str | None = None,
        flow: FlowSpec | None = None,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise WorkflowError(f"workflow {name!r} must be an 'async def' function")
        self.fn = fn
        self.name = name
        self.queue = queue or DEFAULT_QUEUE
        self.flow = flow  # concurrency= / concurrency_key= (see _flow.py)
        self.signature = _hints(fn)
        self.argspec = ArgSpec(self.signature)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def decode_args(self, input_json: str) -> tuple[Sequence[Any], dict[str, Any]]:
        raw = _serde.loads(input_json)
        if isinstance(raw, dict) and "args" in raw:
            args, kwargs = list(raw.get("args") or []), dict(raw.get("kwargs") or {})
        elif isinstance(raw, list):
            args, kwargs = raw, {}
        else:
            raise _serde.SerializationError(
                f"input of workflow {self.name!r} must be a JSON array of arguments"
            )
        return self.argspec.convert(args, kwargs, f"workflow {self.name!r}")


class StepFunction:
    """A registered step. In a workflow a call schedules it durably; elsewhere it runs inline."""

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        max_retries: int,
        queue: str | None,
        flow: FlowSpec | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.max_retries = max_retries
        self.queue = queue
        # the queue it is routed to, None when it runs where its run does (step_queue(self))
        self.routed = queue if queue and queue != DEFAULT_QUEUE else None
        self.flow = flow  # concurrency= / concurrency_key= / rate= (see _flow.py)
        self.signature = _hints(fn)
        self.argspec = ArgSpec(self.signature)
        self.is_async = inspect.iscoroutinefunction(fn)
        # how errors name the step, its arguments and its result (made once, not per call)
        self.label = f"step {name!r}"
        self.args_label = f"arguments of step {name!r}"
        self.result_label = f"result of step {name!r}"
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        instance = current_instance.get()
        # the instance's loop runs in this thread (asyncio.get_running_loop() is instance._loop:
        # a loop is set running in a thread only by advance() and close(), which note the thread)
        if (
            instance is not None
            and instance.loop_thread == get_ident()
            and current_step.get() is None
        ):
            if self.flow is not None and self.flow.key is not None:
                self._check_key(args, kwargs)
            input_json, plain = _serde.encode_args(args, kwargs, what=self.args_label)
            return instance.call_step(self.name, input_json, self, plain)
        return self.fn(*args, **kwargs)

    def _check_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """The concurrency_key must work on the call's arguments: a failure raises here, in the
        workflow code that called the step (the same on every replay)."""
        assert self.flow is not None
        self.flow.check_key(list(args), kwargs, self.label)

    @property
    def __wf_step_ref__(self) -> dict[str, Any]:
        return {"name": self.name, "closure": closure_of(self.fn)}

    def __repr__(self) -> str:
        return f"<step {self.name}>"


def closure_of(fn: Callable[..., Any]) -> dict[str, Any]:
    cells = getattr(fn, "__closure__", None) or ()
    out: dict[str, Any] = {}
    for var, cell in zip(fn.__code__.co_freevars, cells, strict=False):
        try:
            out[var] = cell.cell_contents
        except ValueError:  # an empty cell: the variable is not assigned yet
            continue
    return out


def revive_step_ref(name: str, closure: dict[str, Any]) -> StepFunction:
    """Rebuild a step passed as a value: the registered function, bound to the sent closure."""
    template = _steps.get(name)
    if template is None:
        raise StepNotRegisteredError(name)
    fn = template.fn
    if not closure or not fn.__code__.co_freevars:
        return template
    cells = tuple(
        types.CellType(closure[var]) if var in closure else types.CellType()
        for var in fn.__code__.co_freevars
    )
    rebuilt = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, cells)
    rebuilt.__kwdefaults__ = fn.__kwdefaults__
    return StepFunction(rebuilt, name, template.max_retries, template.queue, template.flow)


_serde.set_stepref_resolver(revive_step_ref)


@overload
def workflow(fn: F, /) -> F: ...
@overload
def workflow(
    *,
    name: str | None = None,
    queue: str | None = None,
    concurrency: int | None = None,
    concurrency_key: Callable[..., Any] | None = None,
) -> Callable[[F], F]: ...
def workflow(
    fn: Any = None,
    /,
    *,
    name: str | None = None,
    queue: str | None = None,
    concurrency: int | None = None,
    concurrency_key: Callable[..., Any] | None = None,
) -> Any:
    """Declare an ``async def`` as a workflow: ``@workflow`` or ``@workflow(name="orders.place")``.

    ``queue``: only workers serving that queue (``wf worker --queues``) replay its runs.
    ``concurrency``: at most that many runs in progress (started, not ended) at once, across all
    workers; ``concurrency_key`` (a function of the run's arguments) makes it per key."""
    if queue is not None:
        check_queue(queue)

    def wrap(f: Callable[..., Any]) -> Any:
        wf_name = name or _default_name(f)
        spec = flow_spec("workflow", wf_name, concurrency, concurrency_key)
        wf = WorkflowFunction(f, wf_name, queue, spec)
        existing = _workflows.get(wf.name)
        if existing is not None and existing.fn.__qualname__ != f.__qualname__:
            raise WorkflowError(f"workflow name {wf.name!r} is already used by {existing.fn!r}")
        _workflows[wf.name] = wf
        return wf

    return wrap(fn) if fn is not None else wrap


@overload
def step(fn: F, /) -> F: ...
@overload
def step(
    *,
    name: str | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    queue: str | None = None,
    concurrency: int | None = None,
    concurrency_key: Callable[..., Any] | None = None,
    rate: str | None = None,
) -> Callable[[F], F]: ...
def step(
    fn: Any = None,
    /,
    *,
    name: str | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    queue: str | None = None,
    concurrency: int | None = None,
    concurrency_key: Callable[..., Any] | None = None,
    rate: str | None = None,
) -> Any:
    """Declare a step: a function whose result is recorded, retried up to ``max_retries`` times.

    ``concurrency``: at most that many executions at once across all workers; ``rate``
    (``"100/m"``): at most that many starts within any such window; ``concurrency_key`` (a
    function of the step's arguments) makes both per key (see README, "Flow control")."""

    def wrap(f: Callable[..., Any]) -> Any:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if queue is not None:
            check_queue(queue)  # InvalidQueueNameError at import, not when a run reaches it
        st_name = name or _default_name(f)
        spec = flow_spec("step", st_name, concurrency, concurrency_key, rate)
        if spec is not None and queue is not None and queue != DEFAULT_QUEUE:
            raise FlowControlError(
                "queue",
                queue,
                "a step with concurrency= or rate= runs on the default queue (its limits are "
                "checked by the worker holding the run)",
                f"step {st_name!r}",
            )
        st = StepFunction(f, st_name, max_retries, queue, spec)
        existing = _steps.get(st.name)
        if (
            existing is not None
            and existing.fn.__code__ is not f.__code__
            and (existing.fn.__qualname__, existing.fn.__module__) != (f.__qualname__, f.__module__)
        ):
            raise WorkflowError(f"step name {st.name!r} is already used by {existing.fn!r}")
        _steps[st.name] = st
        return st

    return wrap(fn) if fn is not None else wrap


def get_workflow(name: str) -> WorkflowFunction:
    wf = _workflows.get(name)
    if wf is None:
        raise WorkflowNotRegisteredError(name)
    return wf


def import_workflow_modules(modules: list[str]) -> None:
    """Import the modules that define workflows and steps (from the current directory too), as
    ``wf`` commands do with their MODULE arguments and ``--import``."""
    sys.path.insert(0, os.getcwd())
    for name in modules:
        importlib.import_module(name)


def has_workflow(name: str) -> bool:
    return name in _workflows


def resolve_workflow_name(name: str) -> str:
    """The registered name ``name`` stands for: itself, or the one workflow whose short name it
    is (``my_flow`` for ``mymod:my_flow``: the part after the last ':' or '.', or the function's
    name). WorkflowNameError, listing the registered names, when it names none or several."""
    if name in _workflows:
        return name
    matches = [
        wf.name
        for wf in _workflows.values()
        if name in (wf.name.rsplit(":", 1)[-1], wf.name.rsplit(".", 1)[-1], wf.fn.__name__)
    ]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(_workflows)) or "none"
    if matches:
        raise WorkflowNameError(
            f"workflow name {name!r} is ambiguous: it may be {', '.join(sorted(matches))}; "
            "give the full name"
        )
    raise WorkflowNameError(f"no workflow {name!r} is registered (registered: {known})")


def registered_workflows() -> list[WorkflowFunction]:
    """Every workflow this process registered (in registration order)."""
    return list(_workflows.values())


def registered_steps() -> list[StepFunction]:
    """Every step this process registered (in registration order)."""
    return list(_steps.values())
