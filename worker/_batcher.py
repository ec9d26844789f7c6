"""Batching of World calls: many runs' requests in one script call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Q = TypeVar("Q")
R = TypeVar("R")


class Batcher(Generic[Q, R]):
    """Gathers requests from every held run and sends them in as few calls as possible.

    Under load one call carries many runs' requests (one script call per partition); when idle a
    request goes out at once. Several ``run`` loops may share one batcher so that one batch is
    prepared while another is on the wire.
    """

    def __init__(self, send: Callable[[list[Q]], Awaitable[list[R]]], max_batch: int) -> None:
        self._send = send
        self._max = max_batch
        self._queue: list[tuple[Q, asyncio.Future[R]]] = []
        self._wake = asyncio.Event()

    async def submit(self, request: Q) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((request, fut))
        self._wake.set()
        return await fut

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                if self._queue:
                    self._wake.set()  # let a sibling loop take the rest meanwhile
                try:
                    results = await self._send([q for q, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), res in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)
