"""Benchmark workflows, imported by the worker as ``bench.workloads``.

Every step is a no-op async function, so the figures measure the engine's own cost per durable step
(event appends, leases, wake-ups, replay), not user code. ``hold`` and ``park`` stay live (they
sleep an hour) so that a figure can count runs in flight.
"""

from __future__ import annotations

import asyncio

from worker import sleep, step, workflow

STEPS_PER_RUN = 10
LONG_RUN_STEPS = 10_000


@step(name="bench.noop")
async def noop(i: int) -> int:
    """A no-op step: returns its argument."""
    return i


@workflow(name="bench.ten_steps")
async def ten_steps(n: int) -> int:
    """Ten sequential no-op steps; returns ``n + 45``."""
    total = 0
    for i in range(STEPS_PER_RUN):
        total += await noop(i)
    return n + total


@workflow(name="bench.one_step")
async def one_step(n: int) -> int:
    """One no-op step; returns ``n``."""
    return await noop(n)


@workflow(name="bench.long_run")
async def long_run(steps: int = LONG_RUN_STEPS) -> int:
    """``steps`` sequential no-op steps; returns ``steps``."""
    done = 0
    for i in range(steps):
        done += await noop(i) - i + 1
    return done


def expected_ten_steps(n: int) -> int:
    """The result ``ten_steps(n)`` must return."""
    return n + sum(range(STEPS_PER_RUN))


@workflow(name="bench.hold")
async def hold(n: int) -> int:
    """One no-op step, then a durable sleep of an hour: the run stays live (figure 6)."""
    value = await noop(n)
    await sleep("1h")
    return value


@workflow(name="bench.park")
async def park(n: int) -> int:
    """No step: sleeps an hour at once, so a created run costs its worker one commit (figure 8)."""
    await sleep("1h")
    return n


@workflow(name="bench.fan_out")
async def fan_out(n: int) -> int:
    """``n`` no-op steps in parallel (one gather); returns their sum, ``n * (n - 1) // 2``."""
    values = await asyncio.gather(*(noop(i) for i in range(n)))
    return sum(values)
