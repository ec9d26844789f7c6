"""End-to-end stream scenarios (SPEC.md 6, 8.1): real worker processes write, the client reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e import stream_workflows as wf
from tests.support import wf_json
from worker import RunNotFoundError, get_run, start
from world_redis import RedisWorld

WORKFLOWS = "tests.e2e.stream_workflows"


async def collect(chunks: AsyncIterator[Any], timeout: float = 20.0) -> list[Any]:
    async def drain() -> list[Any]:
        return [chunk async for chunk in chunks]

    return await asyncio.wait_for(drain(), timeout)


async def test_output_stream(world: RedisWorld, start_worker, worker_env) -> None:  # type: ignore[no-untyped-def]
    """outputStreamWorkflow: a reader attached before the first write and later readers by index."""
    start_worker(WORKFLOWS)
    run = await start(wf.output_stream)
    early = asyncio.create_task(collect(run.readable()))
    assert await run.result(timeout=30) == "done"
    assert await early == [b"Hello, world!", {"foo": "test"}]
    assert await collect(run.readable()) == [b"Hello, world!", {"foo": "test"}]
    assert await collect(run.readable(start_index=1)) == [{"foo": "test"}]
    assert await collect(run.readable(start_index=-1)) == [{"foo": "test"}]
    assert await collect(run.readable("test")) == [b"Hello, named stream!", {"foo": "bar"}]
    listed = await wf_json(worker_env, "inspect", "streams", run.run_id)
    assert isinstance(listed, list) and len(listed) == 2
    assert sorted(listed) == sorted(await world.streams.list_streams(run.run_id))


async def test_output_stream_inside_step(world: RedisWorld, start_worker) -> None:
    """outputStreamInsideStepWorkflow: steps call get_writable() themselves, default and 'step-ns'."""
    start_worker(WORKFLOWS)
    run = await start(wf.output_stream_inside_step)
    assert await run.result(timeout=30) == "done"
    assert await collect(run.readable()) == ["Hello from step!", "Second message"]
    assert await collect(run.readable("step-ns")) == [
        {"message": "Hello from named stream in step!"},
        {"counter": 42},
    ]


async def test_readable_stream(world: RedisWorld, start_worker) -> None:
    """readableStreamWorkflow: a step's async generator, returned by the workflow, reads 0..9."""
    start_worker(WORKFLOWS)
    run = await start(wf.readable_stream)
    stream = await run.result(timeout=30)
    assert [line async for line in stream] == [f"{i}\n" for i in range(10)]


async def test_reading_an_unknown_run_raises(world: RedisWorld) -> None:
    """Reading a stream of a run that does not exist raises RunNotFoundError."""
    with pytest.raises(RunNotFoundError):
        await collect(get_run("wrun_01UNKNOWN").readable())
