"""The batcher: every request is answered once, with its own result, whatever the timing of its
batch; requests that come while a batch is on the wire go in a later one; two loops may share it."""

from __future__ import annotations

import asyncio

import pytest

from worker._batcher import Batcher, MalformedReplyError


class Echo:
    """A send that answers each request with ``(request, call number)``; its calls can be held."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next: Exception | None = None
        self.short_next = False

    async def __call__(self, batch: list[int]) -> list[tuple[int, int]]:
        self.calls.append(list(batch))
        n = len(self.calls)
        await self.gate.wait()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        if self.short_next:
            self.short_next = False
            return [(q, n) for q in batch[1:]]
        return [(q, n) for q in batch]


async def _eventually(check: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


async def test_each_request_gets_its_own_result_and_late_ones_a_later_batch() -> None:
    send = Echo()
    batcher: Batcher[int, tuple[int, int]] = Batcher(send, max_batch=100)
    loop = asyncio.create_task(batcher.run())
    try:
        send.gate.clear()  # the first batch stays on the wire
        first = [batcher.enqueue(i) for i in range(3)]
        await _eventually(lambda: len(send.calls) == 1)
        assert not batcher.idle()
        late = [batcher.enqueue(i) for i in range(3, 5)]
        send.gate.set()
        assert await asyncio.wait_for(asyncio.gather(*first), 5) == [(0, 1), (1, 1), (2, 1)]
        assert await asyncio.wait_for(asyncio.gather(*late), 5) == [(3, 2), (4, 2)]
        assert send.calls == [[0, 1, 2], [3, 4]]
        await _eventually(batcher.idle)
        # after an idle spell a request still wakes the loop
        assert await asyncio.wait_for(batcher.submit(9), 5) == (9, 3)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_two_loops_share_one_batcher_and_answer_everything_once() -> None:
    send = Echo()
    batcher: Batcher[int, tuple[int, int]] = Batcher(send, max_batch=7)
    loops = [asyncio.create_task(batcher.run()) for _ in range(2)]
    try:
        futures = [batcher.enqueue(i) for i in range(100)]
        results = await asyncio.wait_for(asyncio.gather(*futures), 10)
        assert [q for q, _ in results] == list(range(100))
        assert sorted(q for batch in send.calls for q in batch) == list(range(100))
        assert all(len(batch) <= 7 for batch in send.calls)
        more = [batcher.enqueue(i) for i in range(100, 110)]
        assert [q for q, _ in await asyncio.wait_for(asyncio.gather(*more), 10)] == list(
            range(100, 110)
        )
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)


async def test_a_failed_or_malformed_call_fails_its_batch_only() -> None:
    send = Echo()
    batcher: Batcher[int, tuple[int, int]] = Batcher(send, max_batch=100)
    loop = asyncio.create_task(batcher.run())
    try:
        send.fail_next = ConnectionError("down")
        with pytest.raises(ConnectionError, match="down"):
            await asyncio.wait_for(batcher.submit(1), 5)
        send.short_next = True
        with pytest.raises(MalformedReplyError, match="1 results for 2 requests"):
            await asyncio.wait_for(asyncio.gather(batcher.enqueue(2), batcher.enqueue(3)), 5)
        assert await asyncio.wait_for(batcher.submit(4), 5) == (4, 3)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
