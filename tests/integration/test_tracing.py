"""OpenTelemetry traces with the SDK's in-memory exporter: a run started in a span is one trace
with it, its steps, commits and the run itself; a start request's traceparent is continued."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support import eventually, running_worker
from worker import get_run, start, step, workflow
from worker._worker import Worker, WorkerConfig
from world_redis import RedisWorld

EXPORTER = InMemorySpanExporter()


@pytest.fixture(autouse=True)
def tracer_provider() -> None:
    """One SDK provider for the process (the API allows setting it once); spans cleared."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
    EXPORTER.clear()


@step(name="traced.double")
async def double(n: int) -> int:
    return 2 * n


@step(name="traced.flaky", max_retries=1)
async def flaky(n: int) -> int:
    from worker import get_step_metadata

    if get_step_metadata().attempt == 1:
        raise RuntimeError("first attempt fails")
    return n


@workflow(name="traced.flow")
async def flow(n: int) -> int:
    return await double(await flaky(n))


@step(name="traced.spawn")
async def spawn(n: int) -> str:
    child = await start(flow, n)
    return child.run_id


@workflow(name="traced.parent")
async def parent(n: int) -> str:
    return await spawn(n)


def named(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def test_a_run_is_one_trace_with_the_code_that_started_it(world: RedisWorld) -> None:
    """Started inside a span: workflow.start is its child; every step attempt (the retried one
    twice, the failed attempt marked as an error), every commit and the run's own span continue
    the trace under workflow.start."""
    worker = Worker(world, WorkerConfig(lease_ms=5000))
    async with running_worker(worker):
        with trace.get_tracer("test").start_as_current_span("caller") as caller:
            run = await start(flow, 21)
        assert await run.result(timeout=30) == 42
        await eventually(lambda: named(EXPORTER.get_finished_spans(), "workflow.run"), 10)
    spans = EXPORTER.get_finished_spans()
    trace_id = caller.get_span_context().trace_id
    (started,) = named(spans, "workflow.start traced.flow")
    assert (
        started.parent is not None and started.parent.span_id == caller.get_span_context().span_id
    )
    steps = named(spans, "workflow.step")
    assert sorted(s.name for s in steps) == [
        "workflow.step traced.double",
        "workflow.step traced.flaky",
        "workflow.step traced.flaky",
    ]
    outcomes = sorted(str(s.attributes["workflow.step.outcome"]) for s in steps)  # type: ignore[index]
    assert outcomes == ["completed", "completed", "retrying"]
    (ran,) = named(spans, "workflow.run traced.flow")
    assert ran.attributes["workflow.status"] == "completed"  # type: ignore[index]
    assert ran.attributes["workflow.run_id"] == run.run_id  # type: ignore[index]
    assert ran.start_time is not None and ran.end_time is not None and ran.start_time < ran.end_time
    commits = named(spans, "workflow.commit")
    assert len(commits) >= 3
    for s in [*steps, ran, *commits]:
        assert s.context.trace_id == trace_id, s.name
        assert s.parent is not None and s.parent.span_id == started.context.span_id, s.name


async def test_a_start_request_s_traceparent_is_continued(world: RedisWorld) -> None:
    """A service in any language that XADDs a start request with a `traceparent` field gets the
    run's spans in its trace."""
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    worker = Worker(world, WorkerConfig(lease_ms=5000))
    async with running_worker(worker):
        await world.redis.xadd(
            world.keys.start_stream(),
            {
                "workflow": "traced.flow",
                "args": "[1]",
                "run_id": "wrun_traced_by_request",
                "traceparent": f"00-{trace_id}-{parent_id}-01",
            },
        )
        run = get_run("wrun_traced_by_request")
        await eventually(lambda: _exists(run), 20, what="the run is created")
        assert await run.result(timeout=30) == 2
        await eventually(lambda: named(EXPORTER.get_finished_spans(), "workflow.run"), 10)
    (ran,) = named(EXPORTER.get_finished_spans(), "workflow.run traced.flow")
    assert format(ran.context.trace_id, "032x") == trace_id
    assert ran.parent is not None and format(ran.parent.span_id, "016x") == parent_id


async def _exists(run) -> bool:  # type: ignore[no-untyped-def]
    from worker import RunNotFoundError

    try:
        await run.info()
    except RunNotFoundError:
        return False
    return True


async def test_a_run_started_from_a_step_joins_that_step_s_trace(world: RedisWorld) -> None:
    """A step that starts another run: that run's workflow.start is a child of the step's span,
    so the child run, its steps and its end are in the parent's trace."""
    worker = Worker(world, WorkerConfig(lease_ms=5000))
    async with running_worker(worker):
        with trace.get_tracer("test").start_as_current_span("caller") as caller:
            run = await start(parent, 5)
        child_id = await run.result(timeout=30)
        assert await get_run(child_id).result(timeout=30) == 10
        await eventually(lambda: len(named(EXPORTER.get_finished_spans(), "workflow.run")) >= 2, 10)
    spans = EXPORTER.get_finished_spans()
    (spawning,) = named(spans, "workflow.step traced.spawn")
    (child_start,) = named(spans, "workflow.start traced.flow")
    assert child_start.parent is not None
    assert child_start.parent.span_id == spawning.context.span_id
    trace_id = caller.get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}
