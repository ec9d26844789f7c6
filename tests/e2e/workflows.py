"""Workflows of the end-to-end suite, ported from the peer's e2e workbench (SPEC.md 8.1)."""

from __future__ import annotations

from worker import step, workflow


@step
async def add(a: int, b: int) -> int:
    return a + b


@workflow(name="add_ten")
async def add_ten(x: int) -> int:
    a = await add(x, 2)
    b = await add(a, 3)
    return await add(b, 5)
