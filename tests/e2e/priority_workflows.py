"""Workflows of the priority tests: each run's step appends its tag to a Redis list
``<prefix>:prio:<label>``, so a test reads the order in which runs were served."""

from __future__ import annotations

from typing import Any

from worker import get_world, step, workflow


def _redis() -> Any:
    return get_world().redis  # type: ignore[attr-defined]


def order_key(label: str) -> str:
    return f"{get_world().keys.prefix}:prio:{label}"  # type: ignore[attr-defined]


@step(name="prio.note")
async def note(label: str, tag: str) -> str:
    await _redis().rpush(order_key(label), tag)
    return tag


@workflow(name="prio.noted")
async def noted(label: str, tag: str) -> str:
    return await note(label, tag)


@step(name="prio.pool_note", queue="prio_pool")
async def pool_note(label: str, tag: str) -> str:
    await _redis().rpush(order_key(label), tag)
    return tag


@workflow(name="prio.pool_noted")
async def pool_noted(label: str, tag: str) -> str:
    return await pool_note(label, tag)


__all__ = ["note", "noted", "order_key", "pool_note", "pool_noted"]
