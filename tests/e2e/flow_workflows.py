"""Workflows with flow control (concurrency, concurrency_key, rate, priority) for the tests.

Every limited step records its own start and end (wall clock, pid) in a Redis list
``<prefix>:flowlog:<label>``, so that a test computes the overlap of executions from what the
steps saw, whichever worker process ran them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from worker import get_step_metadata, get_world, step, workflow


def _redis() -> Any:
    return get_world().redis  # type: ignore[attr-defined]


def log_key(label: str) -> str:
    return f"{get_world().keys.prefix}:flowlog:{label}"  # type: ignore[attr-defined]


def gate_key(label: str) -> str:
    return f"{get_world().keys.prefix}:flowgate:{label}"  # type: ignore[attr-defined]


async def _record(label: str, kind: str, tag: str) -> None:
    entry = {
        "kind": kind,
        "tag": tag,
        "t": time.time(),
        "pid": os.getpid(),
        "attempt": get_step_metadata().attempt,
    }
    await _redis().rpush(log_key(label), json.dumps(entry))


async def _work(label: str, tag: str, ms: int) -> str:
    await _record(label, "start", tag)
    await asyncio.sleep(ms / 1000.0)
    await _record(label, "end", tag)
    return tag


@step(concurrency=2)
async def limited(label: str, tag: str, ms: int) -> str:
    return await _work(label, tag, ms)


@step(concurrency=1, concurrency_key=lambda customer, label, tag, ms: customer)
async def per_customer(customer: str, label: str, tag: str, ms: int) -> str:
    return await _work(label, tag, ms)


@step(rate="3/2s")
async def rated(label: str, tag: str) -> str:
    await _record(label, "start", tag)
    return tag


@step(concurrency=1)
async def single(label: str, tag: str, ms: int) -> str:
    """One at a time; the tag "block" holds its slot until the test opens the gate."""
    await _record(label, "start", tag)
    if tag == "block":
        for _ in range(3000):  # until the test opens the gate (a blocking pop would hold a
            if await _redis().get(gate_key(label)):  # connection the worker's pool may need)
                break
            await asyncio.sleep(0.02)
    else:
        await asyncio.sleep(ms / 1000.0)
    await _record(label, "end", tag)
    return tag


@step(concurrency=1, max_retries=3)
async def killable(label: str, tag: str, ms: int) -> str:
    """One at a time; its first attempt for the tag "victim" hangs until its worker is killed."""
    await _record(label, "start", tag)
    if tag == "victim" and get_step_metadata().attempt == 1:
        await asyncio.sleep(600)
    await asyncio.sleep(ms / 1000.0)
    await _record(label, "end", tag)
    return tag


@workflow
async def run_limited(label: str, tag: str, ms: int) -> str:
    return await limited(label, tag, ms)


@workflow
async def run_limited_pair(label: str, tag: str, ms: int) -> list[str]:
    """Two limited steps of one run at once (the limit counts steps, not runs)."""
    return list(await asyncio.gather(limited(label, f"{tag}a", ms), limited(label, f"{tag}b", ms)))


@workflow
async def run_per_customer(customer: str, label: str, tag: str, ms: int) -> str:
    return await per_customer(customer, label, tag, ms)


@workflow
async def run_rated(label: str, tag: str) -> str:
    return await rated(label, tag)


@workflow
async def run_single(label: str, tag: str, ms: int) -> str:
    return await single(label, tag, ms)


@workflow
async def run_killable(label: str, tag: str, ms: int) -> str:
    return await killable(label, tag, ms)


@step
async def mark(label: str, kind: str, tag: str) -> None:
    await _record(label, kind, tag)


@workflow(concurrency=1)
async def one_at_a_time(label: str, tag: str) -> str:
    """At most one run in progress: from its first step to its last, a durable sleep between."""
    await mark(label, "start", tag)
    await asyncio.sleep(0.2)
    await mark(label, "end", tag)
    return tag


def intervals(entries: list[str]) -> dict[str, list[float]]:
    """ "<tag>" (or "<tag>#<attempt>" for attempts after the first) -> [start, end] from a
    flowlog; an attempt that never recorded its end (its worker was killed) ends at inf."""
    out: dict[str, list[float]] = {}
    for raw in entries:
        e = json.loads(raw)
        name = e["tag"] if e["attempt"] <= 1 else f"{e['tag']}#{e['attempt']}"
        if e["kind"] == "start":
            out[name] = [e["t"], float("inf")]
        elif name in out:
            out[name][1] = e["t"]
    return out


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans open at one instant (an end before a start at a tie)."""
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda p: p)
    best = now = 0
    for _, delta in points:
        now += delta
        best = max(best, now)
    return best


@workflow(concurrency=1, concurrency_key=lambda label, tag, seconds: label)
async def holds_slot(label: str, tag: str, seconds: float) -> str:
    """One run in progress per label; it sleeps ``seconds`` (durably) while it holds its slot."""
    await mark(label, "start", tag)
    await asyncio.sleep(seconds)
    return tag


@step(concurrency=1, concurrency_key=lambda order: order["customer"])
async def keyed_by_customer(order: dict[str, str]) -> str:
    return order["customer"]


@workflow
async def order_without_customer() -> str:
    return await keyed_by_customer({"item": "book"})


@workflow(concurrency=2, concurrency_key=lambda order: order["customer"])
async def keyed_run(order: dict[str, str]) -> str:
    return order["customer"]
