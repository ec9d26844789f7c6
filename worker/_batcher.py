"""Batching of World calls: many runs' requests in one script call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from ._errors import WorkflowError

SETTLE_SLICE = 32

Q = TypeVar("Q")
R = TypeVar("R")


class MalformedReplyError(WorkflowError):
    """A batched call answered with a reply that does not match its requests."""


class Batcher(Generic[Q, R]):
    """Gathers requests from every held run and sends them in as few calls as possible.

    Under load one call carries many runs' requests (one script call per partition); when idle a
    request goes out at once. Several ``run`` loops may share one batcher so that one batch is
    prepared while another is on the wire. Every future handed out is settled: with its result,
    with the error of its call, or with :class:`MalformedReplyError` when the reply does not
    match the batch; a loop that is cancelled mid-call fails the futures of its batch.
    """

    def __init__(self, send: Callable[[list[Q]], Awaitable[list[R]]], max_batch: int) -> None:
        self._send = send
        self._max = max_batch
        self._queue: list[tuple[Q, asyncio.Future[R]]] = []
        self._wake = asyncio.Event()
        self._woken = False  # whether _wake is set
        self._sending = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of its callers

    def idle(self) -> bool:
        """Nothing queued and nothing on the wire: a batcher with no work cannot be late."""
        return not self._queue and not self._sending

    async def submit(self, request: Q) -> R:
        return await self.enqueue(request)

    def enqueue(self, request: Q) -> asyncio.Future[R]:
        """``submit`` without its coroutine: the future of the request's result (what the
        hot path awaits, one frame less on every resumption)."""
        loop = self._loop
        if loop is None or loop.is_closed():  # asked once: asking costs a system call (3.11)
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._queue.append((request, fut))
        if not self._woken:  # (the flag of self._wake, kept here: read once per request)
            self._woken = True
            self._wake.set()
        return fut

    async def run(self, beat: Callable[[], None] | None = None) -> None:
        """Send batches until cancelled; ``beat`` is called when work comes after an idle spell
        (the allowance of a duty runs from there) and after each good call."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._woken = False
            if beat is not None:
                beat()
            while self._queue:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                if self._queue:
                    self._woken = True
                    self._wake.set()  # let a sibling loop take the rest meanwhile
                if await self._send_batch(batch) and beat is not None:
                    beat()

    async def _send_batch(self, batch: list[tuple[Q, asyncio.Future[R]]]) -> bool:
        self._sending += 1
        try:
            results = await self._send([q for q, _ in batch])
            if len(results) != len(batch):
                raise MalformedReplyError(
                    f"a batched call answered {len(results)} results for {len(batch)} requests"
                )
        except BaseException as exc:  # settle the batch whatever happened, cancellation included
            error = exc if isinstance(exc, Exception) else WorkflowError("the batcher was stopped")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return False
        finally:
            self._sending -= 1
        for i, ((_, fut), res) in enumerate(zip(batch, results, strict=True), 1):
            if not fut.done():
                fut.set_result(res)
            if i % SETTLE_SLICE == 0 and i < len(batch):
                # let the callers of this slice run, and a sibling loop send what they submit,
                # before the next slice: the worker's processing and Redis's then overlap
                await asyncio.sleep(0)
        return True
