"""OpenTelemetry traces (the optional extra ``redis-workflows[otel]``): a run is one trace with
the code that started it.

``start()`` opens a ``workflow.start <name>`` span and stores its W3C trace context with the run
(the ``trace`` field of ``run_created``); the workers continue that trace: a span per step
attempt (``workflow.step <name>``), per commit of the run's events (``workflow.commit``), and,
once the run has ended, one covering it from its start to its end (``workflow.run <name>``). A
run started from a step of another run (a child run) joins that step's trace.

Without the opentelemetry API installed, or with no SDK tracer provider configured (the API's
default), nothing here does any work: the hot path pays one attribute read per step.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

SCOPE = "redis-workflows"


def enabled() -> bool:
    """Whether spans are recorded: a tracer provider has been set (which the program does after
    importing opentelemetry itself; the engine never imports it first, at no cost then)."""
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return False
    provider = api.get_tracer_provider()
    return not isinstance(provider, api.ProxyTracerProvider | api.NoOpTracerProvider)


def _api() -> Any:
    from opentelemetry import propagate, trace

    return trace, propagate


def _tracer() -> Any:
    return _api()[0].get_tracer(SCOPE)


@contextmanager
def start_span(workflow: str) -> Iterator[str]:
    """Around ``start()``: the span of starting a run; yields the trace context to store with it
    ("" when tracing is off)."""
    if not enabled():
        yield ""
        return
    trace, propagate = _api()
    with _tracer().start_as_current_span(
        f"workflow.start {workflow}",
        kind=trace.SpanKind.PRODUCER,
        attributes={"workflow.name": workflow},
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield json.dumps(carrier, separators=(",", ":")) if carrier else ""


def _parent(stored: str) -> Any:
    """The context a run's stored trace names (None: a root span)."""
    if not stored:
        return None
    try:
        carrier = json.loads(stored)
    except ValueError:
        return None
    return _api()[1].extract(carrier) if isinstance(carrier, dict) else None


def span(name: str, stored: str, attributes: dict[str, Any]) -> Any:
    """A context manager: a span continuing the run's stored trace (a no-op when off)."""
    if not enabled():
        return nullcontext()
    return _tracer().start_as_current_span(
        name, context=_parent(stored), attributes=attributes, record_exception=False
    )


def step_outcome(current: Any, event_type: str) -> None:
    """Mark the current step span with the attempt's outcome."""
    if not enabled() or current is None:
        return
    current.set_attribute("workflow.step.outcome", event_type.removeprefix("step_"))
    if event_type != "step_completed":
        from opentelemetry.trace import Status, StatusCode

        current.set_status(Status(StatusCode.ERROR, event_type))


def run_ended(stored: str, workflow: str, run_id: str, started_ms: int, status: str) -> None:
    """The span of a whole run, from its start to now, recorded by the worker that ended it."""
    if not enabled():
        return
    trace = _api()[0]
    start_ns = started_ms * 1_000_000
    end_ns = time.time_ns()
    s = _tracer().start_span(
        f"workflow.run {workflow}",
        context=_parent(stored),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "workflow.name": workflow,
            "workflow.run_id": run_id,
            "workflow.status": status,
        },
        start_time=min(start_ns, end_ns),
    )
    if status != "completed":
        from opentelemetry.trace import Status, StatusCode

        s.set_status(Status(StatusCode.ERROR, status))
    s.end(end_time=end_ns)
