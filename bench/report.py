"""``python -m bench.report bench/results/latest.json``: the README's performance section, as Markdown.

Prints one Markdown block rendered from ONE results file: the machine, the command, the date, a
table of ours next to the peers and the link to that run's chart. Every number in it is a number
of that file; a figure the run did not measure reads "n/a" (or the reason). The README's section is
replaced by this output by hand, so the README always shows one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.summary import PEER_LABELS, Result, Row, comparison, dig, why_not
from bench.targets import verdicts

Cell = str


def fmt(value: Any, digits: int = 0, unit: str = "") -> Cell:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,.{digits}f}{unit}"
    return "n/a"


def cell(r: Row | None, digits: int = 0) -> Cell:
    if r is None:
        return "n/a"
    if r.value is None:
        return r.why.replace("|", "/")
    return f"{r.value:,.{digits}f}"


def stamp_of(data: Result) -> str:
    """``2026-11-30T18:55:21Z`` -> ``20261130T185521Z``: the name of the run's files."""
    return str(data.get("started_at", "")).replace("-", "").replace(":", "")


def find(rows: list[Row], metric: str, system: str) -> Row | None:
    return next((r for r in rows if r.metric == metric and r.system == system), None)


def peer_cells(
    rows: list[Row], peers: list[str], metric: str, digits: int = 0, unit: bool = True
) -> list[Cell]:
    """Each peer's value of ``metric`` (with its unit, where peers count different things)."""
    out = []
    for name in peers:
        r = find(rows, metric, PEER_LABELS.get(name, name))
        with_unit = unit and r is not None and r.value is not None
        out.append(
            f"{cell(r, digits)} {r.unit}" if with_unit and r is not None else cell(r, digits)
        )
    return out


def ours_only_rows(ours: Result) -> list[tuple[str, Cell]]:
    """The figures no peer has: (label, our value)."""
    lr, fl, fo, sr = (ours.get(k) for k in ("long_run", "in_flight", "fan_out", "start_rate"))
    blocks = dig(lr, "block_mean_gap_ms") or []
    return [
        (
            "10,000-step run: mean gap, steps 1-100 / 9,901-10,000",
            f"{fmt(dig(lr, 'mean_gap_ms_first'), 3)} / {fmt(dig(lr, 'mean_gap_ms_last'), 3)} ms",
        ),
        (
            "10,000-step run: mean gap per 1,000-step block, first / last (largest / smallest)",
            f"{fmt(blocks[0] if blocks else None, 3)} / {fmt(blocks[-1] if blocks else None, 3)}"
            f" ms ({fmt(dig(lr, 'block_ratio_max_min'), 2)}x)",
        ),
        (
            "worker RSS before / after the 10,000-step run",
            f"{fmt(dig(lr, 'worker_rss_mb_before'), 1)} / {fmt(dig(lr, 'worker_rss_mb_after'), 1)} MB",
        ),
        (
            "worker RSS idle / with 10,000 runs in flight (asleep after one step)",
            f"{fmt(dig(fl, 'worker_rss_mb_idle'), 1)} / "
            f"{fmt(dig(fl, 'worker_rss_mb_with_runs_in_flight'), 1)} MB",
        ),
        (
            "fan-out: one run gathering 1,000 / 10,000 steps, steps/s",
            f"{fmt(dig(fo, '1000', 'steps_per_s'))} / {fmt(dig(fo, '10000', 'steps_per_s'))}",
        ),
        (
            "runs started per second: start() (50 in flight) / XADD wf:start",
            f"{fmt(dig(sr, 'start_api', 'runs_per_s'))} / {fmt(dig(sr, 'xadd', 'runs_per_s'))}",
        ),
    ]


def table(data: Result) -> list[str]:
    """The Markdown table: one row per figure, ours then each peer."""
    rows = comparison(data)
    peers = list(data.get("peers", {}))
    ours = data.get("ours", {})
    head = ["figure", "ours", *(PEER_LABELS.get(p, p) for p in peers)]
    none = ["n/a"] * len(peers)
    tp_total = find(rows, "throughput", "ours, 1 worker (total)")
    lines = [
        (
            "durable steps/s, 1 worker, 10-step runs: total (start-up included) / steady",
            f"{cell(tp_total)} / {cell(find(rows, 'throughput', 'ours, 1 worker (steady)'))}",
            peer_cells(rows, peers, "throughput"),
        ),
        (
            "the same, Redis AOF everysec: steady steps/s",
            cell(find(rows, "throughput", "ours, AOF everysec (steady)")),
            none,
        ),
        (
            "the same, 2 worker processes: steady steps/s",
            cell(find(rows, "throughput", "ours, 2 workers (steady)")),
            none,
        ),
        (
            "start-to-result latency of a one-step run, p50 / p99 (ms)",
            f"{cell(find(rows, 'latency_p50', 'ours'), 2)} / {cell(find(rows, 'latency_p99', 'ours'), 2)}",
            [
                f"{a} / {b}"
                for a, b in zip(
                    peer_cells(rows, peers, "latency_p50", 2, unit=False),
                    peer_cells(rows, peers, "latency_p99", 2, unit=False),
                    strict=True,
                )
            ],
        ),
        (
            "Redis memory per finished 10-step run (B): as finished / compacted",
            f"{cell(find(rows, 'memory', 'ours'))} / {cell(find(rows, 'memory', 'ours, compacted'))}",
            peer_cells(rows, peers, "memory"),
        ),
        *((label, value, none) for label, value in ours_only_rows(ours)),
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += [f"| {label} | {value} | " + " | ".join(cells) + " |" for label, value, cells in lines]
    return out


def versions(data: Result) -> str:
    return ", ".join(
        f"{PEER_LABELS.get(n, n)} {p['version']}"
        if p.get("version")
        else f"{PEER_LABELS.get(n, n)}: {why_not(p)}"
        for n, p in data.get("peers", {}).items()
    )


def command(data: Result) -> str:
    """The run's command with ``python`` for the interpreter's path (the machine's, not the repo's)."""
    words = str(data.get("command", "python -m bench.run")).split()
    return " ".join(["python", *words[1:]])


def target_lines(data: Result) -> list[str]:
    """The targets (``bench/targets.py``) and this run's figure against each."""
    vs = verdicts(data.get("ours", {}))
    met = sum(1 for v in vs if v.met)
    out = [
        f"Targets ({met} of {len(vs)} met in this run; the chart draws each as a dashed line):",
        "",
    ]
    out += [f"- {v.target.label} {v.target.text()}: {v.shown}, {v.word('**missed**')}" for v in vs]
    return out


def section(data: Result) -> str:
    """The whole Markdown block."""
    m = data.get("machine", {})
    stamp = stamp_of(data)
    what = [
        "## Performance",
        "",
        f"What `make bench` printed on {m.get('nproc', '?')} vCPU ({m.get('cpu_model', '?')}), "
        f"Python {m.get('python', '?')}, Redis {m.get('redis', '?')}, on {data.get('started_at', '?')} "
        f"(`{command(data)}`, run `bench/results/{stamp}.json`, "
        f"{data.get('duration_s', '?')} s). Peers in the same run: {versions(data) or 'none'}. "
        "The machine is shared and its speed varies, by up to 3x for every engine alike from one "
        "hour or host to the next: compare within this table only.",
        "",
        *table(data),
        "",
        *target_lines(data),
        "",
        f"![ours vs peers: throughput, latency, memory](bench/results/{stamp}.png)",
        "",
        "How each figure is measured: `bench/ours.py`, `bench/ours_warm.py`, "
        "`bench/ours_capacity.py` and each peer's script in `bench/peers/`; where a worker's "
        "time goes: `bench/PROFILE.md`.",
    ]
    return "\n".join(what)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("results", type=Path, help="a results JSON, e.g. bench/results/latest.json")
    args = parser.parse_args(argv)
    print(section(json.loads(args.results.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
