"""Run output streams at the World level (world.streams), on a real Redis, without a worker."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support import eventually
from worker import PayloadTooLargeError, RunNotFoundError, WorkflowError, get_writable
from worker._context import StepContext
from worker._replay import current_instance
from worker._serde import dumps, loads
from worker._streams import (
    StreamRef,
    WritableStream,
    capture_stream_result,
    read_stream,
    stream_name,
)
from world_redis import RedisWorld

from .helpers import new_run_id


async def collect(chunks: AsyncIterator[Any], timeout: float = 5.0) -> list[Any]:
    async def drain() -> list[Any]:
        return [chunk async for chunk in chunks]

    return await asyncio.wait_for(drain(), timeout)


async def new_run(world: RedisWorld) -> str:
    run_id = new_run_id()
    assert await world.create_run(run_id, "streams", "[]")
    return run_id


async def filled(world: RedisWorld, *values: object, name: str = "s") -> str:
    """A run whose stream ``name`` holds ``values`` and is closed."""
    run_id = await new_run(world)
    for value in values:
        await world.streams.write(run_id, name, value)
    await world.streams.close(run_id, name)
    return run_id


def step_context(run_id: str) -> StepContext:
    return StepContext("step_1", "produce", 1, 0, run_id, "streams", 0)


async def test_chunks_come_back_in_write_order(world: RedisWorld) -> None:
    """Ten writes are read back in the order they were written, then the stream ends."""
    run_id = await filled(world, *range(10))
    assert await collect(world.streams.read(run_id, "s")) == list(range(10))


async def test_bytes_stay_bytes_and_values_round_trip(world: RedisWorld) -> None:
    """Bytes are stored raw (field b) and read as bytes; other values (field v) as equal values."""
    values = [b"\x00\xffraw", bytearray(b"ba"), {"foo": "test"}, "text", (1, 2), None]
    run_id = await filled(world, *values)
    assert await collect(world.streams.read(run_id, "s")) == [
        b"\x00\xffraw",
        b"ba",
        {"foo": "test"},
        "text",
        (1, 2),
        None,
    ]
    rows = await world.redis.xrange(world.keys.stream(run_id, "s"))
    fields = [row[1] for row in rows]
    assert fields[0] == {"b": base64.b64encode(b"\x00\xffraw").decode()}
    assert fields[2] == {"v": '{"foo":"test"}'}
    assert fields[-1] == {"eof": "1"}


@pytest.mark.parametrize(
    ("start_index", "expected"),
    [(0, ["a", "b", "c"]), (1, ["b", "c"]), (-1, ["c"]), (-2, ["b", "c"]), (-9, ["a", "b", "c"])],
)
async def test_start_index_skips_chunks(
    world: RedisWorld, start_index: int, expected: list[str]
) -> None:
    """start_index skips that many chunks; a negative one counts from the end (-1 = last chunk)."""
    run_id = await filled(world, "a", "b", "c")
    assert await collect(world.streams.read(run_id, "s", start_index)) == expected


async def test_start_index_beyond_the_end_reads_nothing(world: RedisWorld) -> None:
    """A start_index past the last chunk yields nothing and still ends at the close marker."""
    run_id = await filled(world, "a", "b")
    assert await collect(world.streams.read(run_id, "s", 5)) == []


async def blocked_stream_reads(world: RedisWorld) -> int:
    """Clients of the test's Redis blocked right now in XREAD (waiting for stream entries)."""
    clients = await world.redis.client_list()
    return sum(1 for c in clients if c.get("cmd") == "xread" and "b" in c.get("flags", ""))


async def test_reader_attached_first_follows_live_writes(world: RedisWorld) -> None:
    """A reader started before the first write waits, then receives chunks as they are written."""
    run_id = await new_run(world)
    before = await blocked_stream_reads(world)
    chunks = aiter(world.streams.read(run_id, "s"))
    first = asyncio.ensure_future(anext(chunks))

    async def reader_blocked() -> bool:
        return await blocked_stream_reads(world) > before

    await eventually(reader_blocked, what="the reader to block in XREAD on the empty stream")
    assert not first.done()
    await world.streams.write(run_id, "s", b"one")
    assert await asyncio.wait_for(first, 5) == b"one"
    second = asyncio.ensure_future(anext(chunks))
    await world.streams.write(run_id, "s", {"n": 2})
    assert await asyncio.wait_for(second, 5) == {"n": 2}
    await world.streams.close(run_id, "s")
    assert await collect(chunks) == []


async def test_negative_start_index_on_an_open_stream_then_follows(world: RedisWorld) -> None:
    """-1 resolves against the chunks stored when the reader connects, then follows live ones."""
    run_id = await new_run(world)
    for value in ("a", "b"):
        await world.streams.write(run_id, "s", value)
    chunks = aiter(world.streams.read(run_id, "s", -1))
    assert await asyncio.wait_for(anext(chunks), 5) == "b"  # connected: -1 resolved to "b"
    await world.streams.write(run_id, "s", "c")
    await world.streams.close(run_id, "s")
    assert await collect(chunks) == ["c"]


async def test_close_ends_every_reader(world: RedisWorld) -> None:
    """After close, new readers get the stored chunks and stop; chunks after the marker are unseen."""
    run_id = await filled(world, "kept")
    await world.streams.write(run_id, "s", "after close")
    assert await collect(world.streams.read(run_id, "s")) == ["kept"]
    assert await collect(world.streams.read(run_id, "s", -1)) == ["kept"]


async def test_error_marker_raises_after_the_chunks(world: RedisWorld) -> None:
    """A stream closed with an error yields its chunks, then the reader raises that error."""
    run_id = await new_run(world)
    await world.streams.write(run_id, "s", 1)
    await world.streams.close(run_id, "s", error=ValueError("source broke"))
    seen: list[Any] = []
    with pytest.raises(ValueError, match="source broke"):
        async for chunk in world.streams.read(run_id, "s"):
            seen.append(chunk)
    assert seen == [1]


async def test_streams_expire_with_the_retention(world: RedisWorld) -> None:
    """Every write sets the retention TTL on the stream and on the run's name set."""
    run_id = await new_run(world)
    await world.streams.write(run_id, "s", "x")
    keys = (world.keys.stream(run_id, "s"), world.keys.streams_index(run_id))
    for key in keys:
        await world.redis.expire(key, 5)
    await world.streams.write(run_id, "s", "y")  # refreshed on each write
    for key in keys:
        assert world.retention_s - 5 < await world.redis.ttl(key) <= world.retention_s


async def test_list_streams_names_the_runs_streams(world: RedisWorld) -> None:
    """list_streams returns the names written or closed in the run, sorted; none for a fresh run."""
    run_id = await new_run(world)
    assert await world.streams.list_streams(run_id) == []
    default, named = stream_name(run_id), stream_name(run_id, "test")
    await world.streams.write(run_id, named, "x")
    await world.streams.close(run_id, default)
    assert await world.streams.list_streams(run_id) == sorted([default, named])


async def test_unknown_run_raises_run_not_found(world: RedisWorld) -> None:
    """Reading a stream of a run that does not exist raises RunNotFoundError when it connects."""
    with pytest.raises(RunNotFoundError):
        await collect(world.streams.read(new_run_id(), "s"))


async def test_oversized_chunk_is_refused(world: RedisWorld) -> None:
    """A chunk above the World's payload limit is refused before anything is stored."""
    run_id = await new_run(world)
    with pytest.raises(PayloadTooLargeError):
        await world.streams.write(run_id, "s", b"x" * (world.max_payload_bytes + 1))
    assert await world.streams.list_streams(run_id) == []


def test_stream_names_follow_the_spec() -> None:
    """Default name strm_<ULID>_user; namespaced adds base64url(namespace) without padding."""
    assert stream_name("wrun_01ABC") == "strm_01ABC_user"
    assert stream_name("wrun_01ABC", "test") == "strm_01ABC_user_dGVzdA"
    assert stream_name("wrun_01ABC", "a/b?") == "strm_01ABC_user_YS9iPw"


def test_handles_and_refs_round_trip_through_serde() -> None:
    """A writable handle and a StreamRef serialize by tag and revive as the same objects."""
    handle, ref = WritableStream("strm_X_user", "wrun_X"), StreamRef("strm_Y", "wrun_X")
    text = dumps([handle, ref])
    assert '"$t":"stream"' in text and '"$t":"streamref"' in text
    assert loads(text) == [handle, ref]


def test_get_writable_outside_a_run_is_refused() -> None:
    """get_writable() needs a workflow or a step to know the run."""
    with pytest.raises(WorkflowError):
        get_writable()


async def test_client_reader_by_namespace(world: RedisWorld) -> None:
    """read_stream (behind Run.readable) reads the default and the namespaced stream by name."""
    run_id = await new_run(world)
    await WritableStream(stream_name(run_id), run_id).write(b"default")
    await WritableStream(stream_name(run_id, "ns"), run_id).write({"ns": True})
    for ns in (None, "ns"):
        await world.streams.close(run_id, stream_name(run_id, ns))
    assert await collect(read_stream(world, run_id)) == [b"default"]
    assert await collect(read_stream(world, run_id, "ns")) == [{"ns": True}]


async def test_returned_async_iterator_is_drained_into_a_stream(world: RedisWorld) -> None:
    """capture_stream_result swaps an async iterator for a StreamRef and drains it in the background."""

    async def produce() -> AsyncIterator[str]:
        for i in range(3):
            await asyncio.sleep(0.01)
            yield f"{i}\n"

    run_id = await new_run(world)
    ref = await capture_stream_result(produce(), step_context(run_id), world)
    assert isinstance(ref, StreamRef) and ref.name.startswith("strm_")
    assert await collect(aiter(ref)) == ["0\n", "1\n", "2\n"]
    assert await capture_stream_result(ref, step_context(run_id), world) is ref
    assert await capture_stream_result({"plain": 1}, step_context(run_id), world) == {"plain": 1}


async def test_failing_async_iterator_closes_its_stream_with_the_error(world: RedisWorld) -> None:
    """If the returned iterator raises, readers get the chunks so far, then that error."""

    async def produce() -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("generator failed")

    run_id = await new_run(world)
    ref = await capture_stream_result(produce(), step_context(run_id), world)
    seen: list[Any] = []
    with pytest.raises(RuntimeError, match="generator failed"):
        async for chunk in ref:
            seen.append(chunk)
    assert seen == [1]


async def test_workflow_code_cannot_write(world: RedisWorld) -> None:
    """Writing or closing from workflow code (not a step) is refused: writes are side effects."""
    handle = WritableStream("strm_X_user", await new_run(world))
    token = current_instance.set(object())  # type: ignore[arg-type]
    try:
        with pytest.raises(WorkflowError, match="pass it to a step"):
            await handle.write("x")
        with pytest.raises(WorkflowError, match="pass it to a step"):
            await handle.close()
    finally:
        current_instance.reset(token)
