"""Workflows for the rolled-back log test: steps that wait for a file to appear."""

from __future__ import annotations

import time
from pathlib import Path

from worker import sleep, step, workflow


@step(name="rollback.block")
def block(marker: str) -> str:
    """Writes ``<marker>.started`` then waits (up to a minute) for ``<marker>.go``."""
    Path(f"{marker}.started").write_text("1")
    go = Path(f"{marker}.go")
    for _ in range(1200):
        if go.exists():
            return Path(marker).name
        time.sleep(0.05)
    raise TimeoutError(f"{go} never appeared")


@workflow(name="rollback.two_blocks")
async def two_blocks(first: str, second: str) -> list[str]:
    return [await block(first), await block(second)]


@step(name="rollback.count")
def count(marker: str) -> int:
    """Appends a line to ``<marker>`` for each execution; how many executions so far."""
    with open(marker, "a") as f:
        f.write("x\n")
    return len(Path(marker).read_text().splitlines())


@workflow(name="rollback.step_then_short_sleep")
async def step_then_short_sleep(marker: str) -> int:
    """A step, then a sleep short enough that the worker keeps the run while it waits."""
    done = await count(marker)
    await sleep(0.9)
    return done
