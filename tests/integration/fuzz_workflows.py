"""Workflows the fuzz tests start through the request streams."""

from __future__ import annotations

from typing import Any

from worker import create_hook, workflow


@workflow(name="fuzz_echo")
async def fuzz_echo(x: int) -> int:
    return x


@workflow(name="fuzz_hook")
async def fuzz_hook(token: str) -> Any:
    """Wait for one payload on the hook ``token`` and return it."""
    return await create_hook(token=token)
