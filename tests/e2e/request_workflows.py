"""Workflows for the request-recovery tests: cheap on purpose, so thousands of runs stay quick."""

from __future__ import annotations

from worker import workflow


@workflow(name="noop")
async def noop(x: int) -> int:
    return x


@workflow(name="text_length")
async def text_length(text: str) -> int:
    return len(text)
