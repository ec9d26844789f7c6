"""Benchmark workflows, imported by the worker as ``bench.workloads``.

Every step is a no-op async function, so the figures measure the engine's own cost per durable step
(event appends, leases, wake-ups, replay), not user code.
"""

from __future__ import annotations

from worker import step, workflow

STEPS_PER_RUN = 10
LONG_RUN_STEPS = 1_000


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
