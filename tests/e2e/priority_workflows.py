"""Workflows of the priority tests: each run's step appends its tag to a Redis list
``<prefix>:prio:<label>``, so a test reads the order in which runs were served."""

from __future__ import annotations

from typing import Any

from worker import get_world, start, step, workflow


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


@workflow(name="prio.parent")
async def parent(label: str, priority: int | None) -> str:
    """Starts a child run of ``noted`` (with ``priority`` when not None) and returns its id."""
    if priority is None:
        child = await start(noted, label, "child")
    else:
        child = await start(noted, label, "child", priority=priority)
    await child.result()
    return child.run_id


@workflow(name="prio.bad_child")
async def bad_child(label: str) -> str:
    """Starts a child with a priority out of range: the workflow fails with the error."""
    child = await start(noted, label, "never", priority=5000)
    return child.run_id


__all__ = ["bad_child", "note", "noted", "order_key", "parent", "pool_note", "pool_noted"]
