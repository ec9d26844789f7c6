"""Runs as the World shows them, read from what Redis stores: a run's hash as a RunInfo, its
steps folded from its log, and the per-partition index walks merged newest first. No I/O here
beyond iterating the walks the caller hands in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec

from worker.world import (
    DecryptionError,
    Event,
    PayloadCodec,
    RunInfo,
    StepCompleted,
    StepCreated,
    StepFailed,
    StepInfo,
    StepRetrying,
    StepStarted,
    is_envelope,
    run_status,
)

_INT_RUN_FIELDS = ("created_at", "started_at", "completed_at", "updated_at", "seq", "priority")
_REQUIRED_RUN_FIELDS = ("created_at", "seq")
_JSON_RUN_FIELDS = ("input", "output", "error")
_RAW_JSON = msgspec.json.Decoder(msgspec.Raw)


def _is_json(text: str) -> bool:
    """Whether ``text`` is one JSON value (checked without building it)."""
    try:
        _RAW_JSON.decode(text)
    except msgspec.DecodeError:
        return False
    return True


def run_info(run_id: str, data: dict[str, str], codec: PayloadCodec | None = None) -> RunInfo:
    """The run in ``data`` (its hash); a field that cannot be read is named, never raised.

    A payload field that cannot be decrypted keeps its stored text (the envelope) and is named
    in ``corrupt_fields`` like any other unreadable field."""
    corrupt: list[str] = []
    if codec is not None:
        data = dict(data)
        for f in _JSON_RUN_FIELDS:
            v = data.get(f)
            if v is not None:
                try:
                    data[f] = codec.decrypt(v, run_id=run_id, field=f)
                except DecryptionError:
                    corrupt.append(f)
    ints: dict[str, int | None] = {}
    for f in _INT_RUN_FIELDS:
        v = data.get(f)
        ints[f] = None
        if v is None or v == "":
            if f in _REQUIRED_RUN_FIELDS:
                corrupt.append(f)
        else:
            try:
                ints[f] = int(v)
            except ValueError:
                corrupt.append(f)
    workflow = data.get("workflow", "")
    if not workflow:
        corrupt.append("workflow")
    status = run_status(data.get("status", ""))
    if status == "unknown":
        corrupt.append("status")
    for f in _JSON_RUN_FIELDS:
        v = data.get(f)
        # without the key an envelope is shown as stored: readable as such, not corrupt
        if v is not None and f not in corrupt and not (is_envelope(v) or _is_json(v)):
            corrupt.append(f)
    return RunInfo(
        run_id=run_id,
        workflow=workflow,
        status=status,
        input=data.get("input", "[]"),
        output=data.get("output"),
        error=data.get("error"),
        deployment=data.get("deployment", ""),
        created_at=ints["created_at"] or 0,
        started_at=ints["started_at"],
        completed_at=ints["completed_at"],
        updated_at=ints["updated_at"],
        seq=ints["seq"] or 0,
        lease_owner=data.get("lease_owner", ""),
        parent_run_id=data.get("parent", ""),
        priority=ints["priority"] or 0,
        corrupt_fields=tuple(corrupt),
    )


async def merge_newest_first(
    walks: list[AsyncIterator[tuple[int, str]]],
) -> AsyncIterator[tuple[int, str]]:
    """Merge per-partition index walks (each newest first) lazily into one, newest first; the
    first page of every walk is read concurrently."""
    firsts = await asyncio.gather(*(anext(walk, None) for walk in walks))
    heads = [(item, i) for i, item in enumerate(firsts) if item is not None]
    while heads:
        best = max(heads)
        heads.remove(best)
        yield best[0]
        async for item in walks[best[1]]:
            heads.append((item, best[1]))
            break


def steps_from_events(events: Sequence[Event]) -> list[StepInfo]:
    """Step entities as the log defines them (first start time kept across attempts)."""
    steps: dict[str, dict[str, Any]] = {}
    for ev in events:
        if isinstance(ev, StepCreated):
            steps[ev.corr] = {
                "step_id": ev.corr,
                "name": ev.name,
                "status": "pending",
                "input": ev.input,
                "created_at": ev.ts,
            }
            continue
        step = steps.get(ev.corr)
        if step is None:
            continue
        if isinstance(ev, StepStarted):
            step.update(status="running", attempt=ev.attempt, retry_after=None)
            step.setdefault("started_at", ev.ts)
        elif isinstance(ev, StepCompleted):
            step.update(status="completed", output=ev.result, completed_at=ev.ts)
        elif isinstance(ev, StepFailed):
            step.update(status="failed", error=ev.error, completed_at=ev.ts)
        elif isinstance(ev, StepRetrying):
            step.update(status="pending", error=ev.error, retry_after=ev.retry_after)
    return [StepInfo(**s) for s in steps.values()]
