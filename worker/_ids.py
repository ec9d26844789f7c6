"""Identifiers: a 4-letter prefix, an underscore and a ULID (time-sortable)."""

from __future__ import annotations

import random

from ulid import ULID


def new_id(prefix: str) -> str:
    return f"{prefix}_{ULID()}"


def new_run_id() -> str:
    return new_id("wrun")


def new_event_id() -> str:
    return new_id("evnt")


class DeterministicIds:
    """Correlation ids that depend only on the run and the order of calls in the workflow.

    The time part is the run's start time; the random part comes from a generator seeded by the
    run id (separate from the workflow's user-facing random generator).
    """

    def __init__(self, run_id: str, started_at_ms: int) -> None:
        self._rng = random.Random(f"{run_id}:ids")
        self._ts = started_at_ms

    def next(self, prefix: str) -> str:
        raw = self._ts.to_bytes(6, "big") + self._rng.getrandbits(80).to_bytes(10, "big")
        return f"{prefix}_{ULID(raw)}"
