"""Workflows of the stream scenarios (SPEC.md 6 and 8.1): writers, namespaces, returned streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from worker import get_writable, sleep, step, workflow

# -- outputStreamWorkflow: the workflow hands its streams to steps ------------------------------


@step
async def write_chunk(writable: Any, value: Any) -> None:
    await writable.write(value)


@step
async def close_stream(writable: Any) -> None:
    await writable.close()


@workflow(name="output_stream")
async def output_stream() -> str:
    default, named = get_writable(), get_writable("test")
    await sleep("0.2s")
    await write_chunk(default, b"Hello, world!")
    await sleep("0.2s")
    await write_chunk(named, b"Hello, named stream!")
    await sleep("0.2s")
    await write_chunk(default, {"foo": "test"})
    await sleep("0.2s")
    await write_chunk(named, {"foo": "bar"})
    await sleep("0.2s")
    await close_stream(default)
    await close_stream(named)
    return "done"


# -- outputStreamInsideStepWorkflow: steps open the run's streams themselves --------------------


@step
async def write_in_step(namespace: str | None, value: Any) -> None:
    await get_writable(namespace).write(value)


@step
async def close_in_step(namespace: str | None) -> None:
    await get_writable(namespace).close()


@workflow(name="output_stream_inside_step")
async def output_stream_inside_step() -> str:
    await write_in_step(None, "Hello from step!")
    await write_in_step("step-ns", {"message": "Hello from named stream in step!"})
    await write_in_step(None, "Second message")
    await write_in_step("step-ns", {"counter": 42})
    await close_in_step(None)
    await close_in_step("step-ns")
    return "done"


# -- readableStreamWorkflow: a step returns an async generator, the workflow returns it ---------


@step
async def count_lines() -> AsyncIterator[str]:
    for i in range(10):
        await asyncio.sleep(0.05)
        yield f"{i}\n"


@workflow(name="readable_stream")
async def readable_stream() -> Any:
    return await count_lines()
