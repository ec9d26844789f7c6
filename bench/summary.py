"""Ours next to the peers, read out of one results JSON: the rows the report, chart and README use.

Pure: a results dict in (as ``bench.run`` writes it), ``Row``s out; no I/O. A row carries a value,
or why there is none (the error, skip reason or not-applicable note of that figure).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Result = dict[str, Any]

PEER_LABELS = {"arq": "arq", "bullmq": "BullMQ", "celery": "Celery", "dbos": "DBOS"}
# what one peer's throughput counts, as its script measures it
PEER_UNITS = {"arq": "jobs/s", "bullmq": "jobs/s", "celery": "jobs/s", "dbos": "steps/s"}


@dataclass(frozen=True)
class Row:
    """One system's value of one metric, or why there is none."""

    metric: str  # "throughput", "latency_p50", "latency_p99", "memory"
    system: str
    value: float | None
    unit: str
    why: str = "n/a"


def why_not(data: Any) -> str:
    """The first line of a result's error, skip reason or not-applicable note."""
    if not isinstance(data, dict):
        return "not measured"
    for key, label in (("error", "ERROR: "), ("skipped", "skipped: "), ("not_applicable", "n/a: ")):
        if data.get(key):
            first = str(data[key]).strip().splitlines()[0]
            return label + (first if len(first) <= 160 else first[:157] + "...")
    return "not measured"


def dig(data: Any, *path: str) -> Any:
    """``data[path[0]][path[1]]...``, None where a step is missing."""
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def value_at(data: Any, path: tuple[str, ...], scale: float = 1.0) -> tuple[float | None, str]:
    """The number at ``path`` (times ``scale``), or None and why (from the deepest dict there)."""
    value = dig(data, *path)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) * scale, ""
    holder = data
    for key in path[:-1]:
        inner = dig(holder, key)
        if not isinstance(inner, dict):
            break
        holder = inner
    return None, why_not(holder)


def row(
    metric: str, system: str, data: Any, path: tuple[str, ...], unit: str, scale: float = 1
) -> Row:
    value, why = value_at(data, path, scale)
    return Row(metric, system, value, unit, why or "n/a")


def ours_rows(ours: Result) -> list[Row]:
    """Our figures that have a peer counterpart (and the variants shown beside them)."""
    return [
        row("throughput", "ours, 1 worker (total)", ours, ("throughput", "steps_per_s"), "steps/s"),
        row(
            "throughput",
            "ours, 1 worker (steady)",
            ours,
            ("throughput", "steady_steps_per_s"),
            "steps/s",
        ),
        row(
            "throughput",
            "ours, AOF everysec (steady)",
            ours,
            ("aof", "steady_steps_per_s"),
            "steps/s",
        ),
        row(
            "throughput",
            "ours, 2 workers (steady)",
            ours,
            ("two_workers", "steady_steps_per_s"),
            "steps/s",
        ),
        row("latency_p50", "ours", ours, ("latency", "p50_ms"), "ms"),
        row("latency_p99", "ours", ours, ("latency", "p99_ms"), "ms"),
        row("memory", "ours", ours, ("memory", "bytes_per_run"), "B per 10-step run"),
        row(
            "memory",
            "ours, compacted",
            ours,
            ("memory", "after_compaction", "bytes_per_run"),
            "B per 10-step run",
        ),
    ]


PeerPaths = dict[str, Callable[[Result], Row]]


def peer_rows(name: str, peer: Result) -> list[Row]:
    """A peer's throughput, latency and memory; DBOS's memory is its PostgreSQL tables' pages."""
    label = PEER_LABELS.get(name, name)
    if name == "dbos":
        memory = row(
            "memory", label, peer, ("storage", "bytes_per_run"), "B per 10-step run (PG pages)"
        )
        tp = row("throughput", label, peer, ("throughput", "steps_per_s"), "steps/s")
    else:
        memory = row("memory", label, peer, ("memory", "bytes_per_job"), "B per 10 jobs", scale=10)
        tp = row("throughput", label, peer, ("throughput", "jobs_per_s"), "jobs/s")
    return [
        tp,
        row("latency_p50", label, peer, ("latency", "p50_ms"), "ms"),
        row("latency_p99", label, peer, ("latency", "p99_ms"), "ms"),
        memory,
    ]


def comparison(data: Result) -> list[Row]:
    """Every row of ours and of each peer in the results, ours first."""
    rows = ours_rows(data.get("ours", {}))
    for name, peer in data.get("peers", {}).items():
        rows += peer_rows(name, peer)
    return rows


def by_metric(rows: list[Row], metric: str) -> list[Row]:
    return [r for r in rows if r.metric == metric]
