"""Workflows for the chaos run: several steps with a little real work each."""

from __future__ import annotations

import asyncio

from worker import sleep, step, workflow


@step
async def slow_double(x: int) -> int:
    await asyncio.sleep(0.05)
    return x * 2


@step
def sync_inc(x: int) -> int:
    return x + 1


@workflow(name="chaos_chain")
async def chaos_chain(x: int) -> int:
    a = await slow_double(x)
    b, c = await asyncio.gather(slow_double(a), sync_inc(a))
    await sleep("0.2s")
    d = await sync_inc(b + c)
    return await slow_double(d)
