"""The chart of one run: ours next to the peers for throughput, latency and memory (PNG).

Needs matplotlib (the ``bench`` extra). Every bar is a number of the results dict it is drawn
from (``bench.summary``); a system without a value gets no bar and says why in its label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.summary import Result, Row, by_metric, comparison
from bench.targets import TARGETS, Target

OURS_COLOR, PEER_COLOR = "#c0392b", "#7f8c8d"
PANELS = (
    ("throughput", "throughput (higher is better)"),
    ("latency_p50", "start-to-result latency p50, ms (lower is better)"),
    ("latency_p99", "latency p99, ms (lower is better)"),
    ("memory", "Redis memory per 10-step run / 10 jobs, bytes (lower is better)"),
)


def panel(ax: Axes, rows: list[Row], title: str, bounds: Sequence[Target] = ()) -> None:
    """One horizontal bar per system, its value written at the bar's end; each target on one
    of the panel's rows is a dashed line across the panel, named in the panel's legend."""
    labels = [
        f"{r.system} ({r.unit})" if r.value is not None else f"{r.system}: {r.why[:40]}"
        for r in rows
    ]
    values = [r.value or 0.0 for r in rows]
    colors = [OURS_COLOR if r.system.startswith("ours") else PEER_COLOR for r in rows]
    y = list(range(len(rows)))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    for i, r in enumerate(rows):
        if r.value is not None:
            ax.text(
                r.value,
                i,
                f" {r.value:,.3g}" if r.value < 10 else f" {r.value:,.0f}",
                va="center",
                fontsize=8,
            )
    for style, t in zip(("--", ":", "-."), bounds, strict=False):
        ax.axvline(
            t.bound,
            color="black",
            linestyle=style,
            linewidth=1,
            label=f"target: {t.chart[1] if t.chart else t.label} {t.text()}",
        )
    if bounds:
        ax.legend(loc="lower right", fontsize=7)
    ax.margins(x=0.25)


def write(data: Result, paths: list[Path]) -> list[Path]:
    """Draw the chart of ``data`` into each of ``paths``; returns them."""
    rows = comparison(data)
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(10, 13))
    for ax, (metric, title) in zip(axes, PANELS, strict=True):
        bounds = [t for t in TARGETS if t.chart and t.chart[0] == metric]
        panel(ax, by_metric(rows, metric), title, bounds)
    machine = data.get("machine", {})
    fig.suptitle(
        f"redis-workflows vs peers, {data.get('started_at', '?')}, "
        f"{machine.get('nproc', '?')} CPUs ({machine.get('cpu_model', '?')})",
        fontsize=11,
    )
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return paths
