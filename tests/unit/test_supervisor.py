"""The supervisor of a worker's background duties, and the batcher's promise to settle futures."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from tests.support import eventually
from worker._batcher import Batcher, MalformedReplyError
from worker._supervisor import Duty, DutyFailedError, Supervisor


def supervisor(max_failures: int = 3) -> Supervisor:
    return Supervisor(structlog.get_logger(), max_failures=max_failures, backoff_s=0.001)


async def test_failed_duty_is_logged_and_restarted() -> None:
    """A duty that raises is logged with its error and started again; its success is recorded."""
    sup = supervisor()
    calls: list[int] = []

    async def flaky(duty: Duty) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError(f"boom {len(calls)}")
        duty.ok()
        await asyncio.Event().wait()

    duty = sup.add("flaky", flaky, stale_after_s=60)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(sup.run())
        await eventually(lambda: duty.last_success is not None, 5, "the third start to succeed")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    failed = [e for e in logs if e["event"] == "duty_failed"]
    assert [e["error"] for e in failed] == ["RuntimeError: boom 1", "RuntimeError: boom 2"]
    assert duty.restarts == 2 and duty.failures == 0 and not duty.is_stale()


async def test_duty_failing_every_time_ends_the_supervisor() -> None:
    """A duty that fails max_failures times in a row raises DutyFailedError naming it and its error."""
    sup = supervisor(max_failures=3)

    async def broken(duty: Duty) -> None:
        raise ValueError("WRONGTYPE")

    async def healthy(duty: Duty) -> None:
        duty.ok()
        await asyncio.Event().wait()

    sup.add("broken", broken, stale_after_s=60)
    sup.add("healthy", healthy, stale_after_s=60)
    with pytest.raises(DutyFailedError) as err:
        await asyncio.wait_for(sup.run(), 10)
    assert err.value.duty == "broken" and err.value.failures == 3
    assert "'broken'" in str(err.value) and "WRONGTYPE" in str(err.value)


async def test_quiet_duty_is_reported_stale() -> None:
    """A duty without a success within its allowance is reported unhealthy, with its last error."""
    sup = supervisor(max_failures=1000)

    async def never_succeeds(duty: Duty) -> None:
        raise ConnectionError("Redis unavailable")

    async def beats(duty: Duty) -> None:
        while True:
            duty.ok()
            await asyncio.sleep(0.01)

    sup.add("requests", never_succeeds, stale_after_s=0.2)
    sup.add("timers", beats, stale_after_s=0.2)
    task = asyncio.create_task(sup.run())
    try:
        await eventually(lambda: [d.name for d in sup.stale()] == ["requests"], 5, "stale report")
        report = sup.report()
        assert not report["requests"]["healthy"] and report["timers"]["healthy"]
        assert report["requests"]["last_error"] == "ConnectionError: Redis unavailable"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_batcher_settles_futures_of_a_short_reply() -> None:
    """A reply with fewer results than requests fails every future of the batch, and the loop goes on."""
    replies = [["only one"], ["a", "b"]]

    async def send(batch: list[str]) -> list[str]:
        return replies.pop(0)

    batcher: Batcher[str, str] = Batcher(send, 10)
    loop = asyncio.create_task(batcher.run())
    try:
        first = await asyncio.wait_for(
            asyncio.gather(batcher.submit("x"), batcher.submit("y"), return_exceptions=True), 5
        )
        assert all(isinstance(r, MalformedReplyError) for r in first)
        second = await asyncio.wait_for(asyncio.gather(batcher.submit("p"), batcher.submit("q")), 5)
        assert second == ["a", "b"]
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_batcher_cancelled_mid_call_settles_its_batch() -> None:
    """A batcher loop cancelled while its call is on the wire fails the futures it took."""
    entered = asyncio.Event()

    async def send(batch: list[str]) -> list[str]:
        entered.set()
        await asyncio.Event().wait()
        return batch

    batcher: Batcher[str, str] = Batcher(send, 10)
    loop = asyncio.create_task(batcher.run())
    pending = asyncio.create_task(batcher.submit("x"))
    await asyncio.wait_for(entered.wait(), 5)
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    with pytest.raises(Exception, match="stopped"):
        await asyncio.wait_for(pending, 5)


async def test_idle_batcher_is_not_stale_but_a_stuck_one_is() -> None:
    """A batcher with no work is never reported; one whose call hangs past its allowance is."""
    hang = asyncio.Event()

    async def send(batch: list[str]) -> list[str]:
        await hang.wait()
        return batch

    batcher: Batcher[str, str] = Batcher(send, 10)
    sup = supervisor()
    duty = sup.add("commit", lambda d: batcher.run(d.ok), stale_after_s=0.2, idle=batcher.idle)
    task = asyncio.create_task(sup.run())
    try:
        await asyncio.sleep(0.3)  # ok: an idle spell longer than the allowance
        assert sup.stale() == []
        pending = asyncio.create_task(batcher.submit("x"))
        await eventually(lambda: sup.stale() == [duty], 5, "the hung call to be reported")
        hang.set()
        assert await asyncio.wait_for(pending, 5) == "x"
        assert sup.stale() == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
