"""Workflows the schedule tests start from their schedules."""

from __future__ import annotations

from worker import step, workflow


@step
async def stamp(label: str) -> str:
    return f"done:{label}"


@workflow(name="scheduled_report")
async def scheduled_report(label: str) -> str:
    return await stamp(label)
