"""Pure arithmetic of the benchmark: percentiles, gaps between timestamps, steady-state rates.

No I/O and no clock here, so ``tests/unit/test_bench_stats.py`` checks it without Redis.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

GAP_WINDOW = 100  # steps at each end of a long run whose mean gap is compared
GAP_BLOCKS = 10  # equal blocks of a long run, each with its mean gap: the whole run's profile


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def summary_ms(samples_ms: Sequence[float]) -> dict[str, Any]:
    """p50, p99, mean and max of latency samples in ms, rounded to µs."""
    return {
        "runs": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 50), 3),
        "p99_ms": round(percentile(samples_ms, 99), 3),
        "mean_ms": round(sum(samples_ms) / len(samples_ms), 3),
        "max_ms": round(max(samples_ms), 3),
    }


def gap_stats(
    completed_ms: Sequence[int], window: int = GAP_WINDOW, blocks: int = GAP_BLOCKS
) -> dict[str, Any]:
    """Mean gap between consecutive step completions over the first and the last ``window`` steps
    (timestamps in ms, one per step, at least ``window`` of them), their ratio and the p50 gap;
    and the mean gap over each of ``blocks`` equal blocks of the run, so that a trend across the
    whole run shows even where a short window is dominated by the 1 ms timestamp resolution."""
    n = len(completed_ms)
    if n < max(window, 2, 2 * blocks):
        raise ValueError(f"need at least {max(window, 2, 2 * blocks)} timestamps, got {n}")
    gaps = [float(b - a) for a, b in itertools.pairwise(completed_ms)]
    first = (completed_ms[window - 1] - completed_ms[0]) / (window - 1)
    last = (completed_ms[n - 1] - completed_ms[n - window]) / (window - 1)
    return {
        "steps": n,
        "first_steps": f"1-{window}",
        "last_steps": f"{n - window + 1}-{n}",
        "mean_gap_ms_first": round(first, 4),
        "mean_gap_ms_last": round(last, 4),
        "ratio_last_first": round(last / first, 3) if first > 0 else None,
        "p50_gap_ms": round(percentile(gaps, 50), 3),
        "mean_gap_ms_all": round((completed_ms[-1] - completed_ms[0]) / (n - 1), 4),
        "timestamp_resolution_ms": 1,
        **block_gaps(completed_ms, blocks),
    }


def block_gaps(completed_ms: Sequence[int], blocks: int) -> dict[str, Any]:
    """Mean gap within each of ``blocks`` consecutive blocks of steps (the last takes the rest),
    the last block's over the first's, and the largest over the smallest."""
    n = len(completed_ms)
    size = n // blocks
    bounds = [(b * size, (b + 1) * size - 1 if b < blocks - 1 else n - 1) for b in range(blocks)]
    means = [(completed_ms[hi] - completed_ms[lo]) / (hi - lo) for lo, hi in bounds]
    return {
        "block_steps": size,
        "block_mean_gap_ms": [round(m, 4) for m in means],
        "block_ratio_last_first": round(means[-1] / means[0], 3) if means[0] > 0 else None,
        "block_ratio_max_min": round(max(means) / min(means), 3) if min(means) > 0 else None,
    }


@dataclass(frozen=True)
class Sample:
    """One poll of a progress counter: seconds since the clock started, and the count then."""

    t: float
    count: int


def crossing(samples: Sequence[Sample], target: float) -> Sample | None:
    """The first sample whose count reached ``target``."""
    return next((s for s in samples if s.count >= target), None)


def steady_rate(
    samples: Sequence[Sample], total: int, lo: float = 0.1, hi: float = 0.9
) -> dict[str, Any] | None:
    """Completions per second between the first polls that saw ``lo`` and ``hi`` of ``total`` done.

    The counts at those two polls (not the nominal fractions) are divided by the time between
    them, so polling granularity does not bias the rate. None when the window holds no time.
    """
    a, b = crossing(samples, lo * total), crossing(samples, hi * total)
    if a is None or b is None or b.t <= a.t:
        return None
    return {
        "per_s": (b.count - a.count) / (b.t - a.t),
        "from_s": a.t,
        "to_s": b.t,
        "completed_from": a.count,
        "completed_to": b.count,
    }
