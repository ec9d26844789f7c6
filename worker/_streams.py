"""Output streams: chunks a run publishes while it executes, readable from any process.

Writing
-------
``get_writable(namespace=None)`` names one of the run's streams:

- in workflow code it returns a :class:`WritableStream` *handle* (only the stream name and run id);
  pass it to a step, which writes to it. Workflow code itself cannot write (writes are side
  effects; they belong in steps).
- in a step it returns the same object, used directly: ``await w.write(value)``, ``await w.close()``.
  A handle received as a step argument is revived as a writer too.

``bytes`` are stored as bytes; any other value is stored as one structured value (the engine's JSON
serialization) and comes back to readers as an equal value.

Reading
-------
``run.readable(namespace=None, start_index=0)`` replays the stored chunks from ``start_index`` (the
number of chunks to skip; negative counts from the end when the reader connects, -1 = only the last
chunk), then follows live chunks until the stream is closed. A reader may attach before the first
write. Resuming after a disconnect = reading again with ``start_index`` = chunks already received.

Returning a stream
------------------
A step may return an async iterator (for example an async generator): the worker drains it in the
background into a fresh stream ``strm_<ULID>`` and the step's result is a :class:`StreamRef` to it.
The reference travels like any value (workflow code may return it), and iterating it reads the
stream from the start: ``async for item in await run.result(): ...``.

Stream names
------------
``strm_<run ULID>_user`` (default), ``strm_<run ULID>_user_<base64url(namespace), no padding>``
(namespaced), ``strm_<ULID>`` (returned by a step). ``<run ULID>`` is the run id without ``wrun_``.
The storage layout (one Redis Stream per stream) is described in ``world_redis._streams``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import _serde
from ._context import StepContext, current_step
from ._errors import WorkflowError
from ._ids import new_id
from ._logging import get_logger

if TYPE_CHECKING:
    from ._world import World

__all__ = ["StreamRef", "StreamStore", "WritableStream", "capture_stream_result", "get_writable"]

_RUN_PREFIX = "wrun_"
_DRAINS: set[asyncio.Task[None]] = set()  # background drains, referenced until they finish


class StreamStore(Protocol):
    """Where a World keeps a run's streams (``world.streams``)."""

    async def write(self, run_id: str, name: str, value: object) -> None:
        """Append one chunk: ``bytes``/``bytearray`` as bytes, anything else as a serialized value."""
        ...

    async def close(self, run_id: str, name: str, error: BaseException | None = None) -> None:
        """Mark the end of the stream; with ``error``, readers raise it after the stored chunks."""
        ...

    def read(self, run_id: str, name: str, start_index: int = 0) -> AsyncIterator[Any]:
        """Stored chunks from ``start_index``, then live ones until the end (RunNotFoundError)."""
        ...

    async def list_streams(self, run_id: str) -> list[str]:
        """Names of the run's streams that received a chunk or a close, sorted."""
        ...


def stream_name(run_id: str, namespace: str | None = None) -> str:
    """The name of a run's default stream, or of its stream ``namespace``."""
    ulid = run_id[len(_RUN_PREFIX) :] if run_id.startswith(_RUN_PREFIX) else run_id
    if namespace is None:
        return f"strm_{ulid}_user"
    encoded = base64.urlsafe_b64encode(namespace.encode()).decode("ascii").rstrip("=")
    return f"strm_{ulid}_user_{encoded}"


def _world() -> World:
    from ._client import get_world

    return get_world()


def _in_workflow_code() -> bool:
    from ._replay import current_instance

    return current_instance.get() is not None and current_step.get() is None


@dataclass(frozen=True, slots=True)
class WritableStream:
    """A run's stream: a handle in workflow code, a writer in steps (World resolved per call)."""

    name: str
    run_id: str

    def _check(self, action: str) -> None:
        if _in_workflow_code():
            raise WorkflowError(f"cannot {action} a stream in workflow code; pass it to a step")

    async def write(self, value: object) -> None:
        """Append ``value`` as one chunk (bytes as bytes, anything else serialized)."""
        self._check("write to")
        await _world().streams.write(self.run_id, self.name, value)

    async def close(self) -> None:
        """End the stream: readers stop after the chunks written so far."""
        self._check("close")
        await _world().streams.close(self.run_id, self.name)


@dataclass(frozen=True, slots=True)
class StreamRef:
    """A stream returned by a step; iterate it to read the stream from its start."""

    name: str
    run_id: str

    def readable(self, start_index: int = 0) -> AsyncIterator[Any]:
        """The chunks from ``start_index`` (see ``Run.readable``), until the stream ends."""
        return _world().streams.read(self.run_id, self.name, start_index)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.readable()


def get_writable(namespace: str | None = None) -> WritableStream:
    """The run's default stream (or stream ``namespace``), in a workflow or in one of its steps."""
    ctx = current_step.get()
    if ctx is not None:
        return WritableStream(stream_name(ctx.run_id, namespace), ctx.run_id)
    from ._replay import current_instance

    inst = current_instance.get()
    if inst is None:
        raise WorkflowError("get_writable() can only be called in a workflow or a step")
    return WritableStream(stream_name(inst.run_id, namespace), inst.run_id)


def read_stream(
    world: World, run_id: str, namespace: str | None = None, start_index: int = 0
) -> AsyncIterator[Any]:
    """The chunks of a run's stream (what ``Run.readable`` returns)."""
    return world.streams.read(run_id, stream_name(run_id, namespace), start_index)


async def capture_stream_result(result: Any, ctx: StepContext, world: World) -> Any:
    """A step's result, or a StreamRef to a stream the async iterator it returned is drained into."""
    if not hasattr(result, "__aiter__") or isinstance(result, StreamRef):
        return result
    ref = StreamRef(new_id("strm"), ctx.run_id)
    task = asyncio.create_task(_drain(result, ref, world, ctx.step_name))
    _DRAINS.add(task)
    task.add_done_callback(_DRAINS.discard)
    return ref


async def _drain(source: Any, ref: StreamRef, world: World, step_name: str) -> None:
    """Copy ``source`` into the stream ``ref``; an exception is stored and ends the stream."""
    store, log = world.streams, get_logger(run_id=ref.run_id, stream=ref.name, step=step_name)
    error: BaseException | None = None
    try:
        async for item in source:
            await store.write(ref.run_id, ref.name, item)
    except asyncio.CancelledError:  # the worker is shutting down: readers must not wait forever
        error = WorkflowError(f"stream {ref.name} was interrupted: its worker stopped")
        raise
    except Exception as exc:
        log.warning("stream_source_failed", error=str(exc))
        error = exc
    finally:
        await _finish(source, ref, world, error, log)


async def _finish(
    source: Any, ref: StreamRef, world: World, error: BaseException | None, log: Any
) -> None:
    """Release the source, then write the end marker (and the error, if any)."""
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        with suppress(Exception):
            await aclose()
    try:
        await world.streams.close(ref.run_id, ref.name, error=error)
    except Exception as exc:
        log.error("stream_close_failed", error=str(exc))


def _decode_ref(cls: type[WritableStream] | type[StreamRef]) -> Any:
    def decode(payload: Any) -> Any:
        return cls(str(payload["name"]), str(payload["run_id"]))

    return decode


def _encode_ref(obj: WritableStream | StreamRef) -> dict[str, str]:
    return {"name": obj.name, "run_id": obj.run_id}


_serde.register_codec("stream", WritableStream, _encode_ref, _decode_ref(WritableStream))
_serde.register_codec("streamref", StreamRef, _encode_ref, _decode_ref(StreamRef))
