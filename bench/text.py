"""The printed report of ``make bench``: a machine header, then one block per figure.

Every number printed here is read from the results dict of the same run (``bench.summary`` for the
rows shared with the chart and the README); a figure that was not measured prints why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import targets
from bench.summary import PEER_LABELS, Result, Row, by_metric, comparison, dig, why_not

Lines = list[str]


def num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def shown(r: Row, digits: int = 0) -> str:
    return f"{num(r.value, digits)} {r.unit}" if r.value is not None else r.why


def versus(ours: Row, peer: Row, higher_is_better: bool, digits: int = 0, label: str = "") -> str:
    """ "   <peer> Y | ours X | ratio ours/peer R (who is better)"."""
    ratio = "ratio n/a"
    if ours.value is not None and peer.value:
        r = ours.value / peer.value
        better = "even" if abs(r - 1) < 0.005 else "ours better"
        if better != "even" and (r > 1) != higher_is_better:
            better = f"{peer.system} better"
        ratio = f"ratio {r:.2f} ({better})"
    return (
        f"   {label}{peer.system}: {shown(peer, digits)} | {ours.system}: {shown(ours, digits)}"
        f" | {ratio}"
    )


def compare_block(
    rows: list[Row], metric: str, ours_system: str, higher: bool, digits: int, label: str = ""
) -> Lines:
    """Each peer's value of ``metric`` against ours (the row of ``ours_system``)."""
    ours = next(r for r in by_metric(rows, metric) if r.system == ours_system)
    peers = [r for r in by_metric(rows, metric) if not r.system.startswith("ours")]
    return [versus(ours, p, higher, digits, label) for p in peers]


def cpu_text(cpu: Any) -> str:
    """ "worker(s) A µs, redis-server B µs, client C µs" of a CPU-per-step dict."""
    if not isinstance(cpu, dict) or "redis" not in cpu:
        return "n/a"
    workers = " + ".join(f"{w:.1f}" for w in cpu["workers"])
    return (
        f"worker(s) {workers} µs, redis-server {cpu['redis']:.1f} µs, client {cpu['client']:.1f} µs"
    )


def block(title: str, data: Any, needed: str, body: Callable[[Result], Lines]) -> Lines:
    """A figure's title and ``body(data)``, or why there is none (``data`` lacks ``needed``)."""
    if not isinstance(data, dict) or not isinstance(data.get(needed), int | float | dict):
        return [title, f"   ours: {why_not(data)}"]
    return [title, *body(data)]


def throughput_lines(tp: Result) -> Lines:
    """Our total and steady rates and CPU per step for one drain."""
    steady = tp.get("steady_steps_per_s")
    return [
        f"   ours: total {num(tp['steps_per_s'])} steps/s ({tp['runs']:,} runs in {tp['seconds']:.2f} s"
        f" from spawning, first run done after {tp['first_run_completed_after_s']} s); steady "
        f"(10 %-90 % of runs done) {num(steady) if steady else 'n/a'} steps/s",
        f"   CPU per step, steady: {cpu_text(tp.get('cpu_us_per_step_steady'))}",
        f"   CPU per step, total:  {cpu_text(tp.get('cpu_us_per_step_total'))}",
        f"   checked {tp['checked_outputs']:,} outputs, {tp['checked_via_result_api']} via result()",
    ]


def block_lines(ps: Result) -> Lines:
    """The mean gap of each block of the long run (older result files have none)."""
    means = ps.get("block_mean_gap_ms")
    if not means:
        return []
    return [
        f"   mean gap per {ps['block_steps']:,}-step block: "
        + " ".join(f"{m:.3f}" for m in means)
        + f" ms (last/first {ps['block_ratio_last_first']}, max/min {ps['block_ratio_max_min']})"
    ]


def long_run_lines(ps: Result) -> Lines:
    return [
        f"   ours: steps {ps['first_steps']} {ps['mean_gap_ms_first']:.4f} ms, steps "
        f"{ps['last_steps']} {ps['mean_gap_ms_last']:.4f} ms (ratio {ps['ratio_last_first']}); "
        f"p50 {ps['p50_gap_ms']} ms; whole run {ps['wall_seconds']:.2f} s",
        *block_lines(ps),
        f"   worker RSS: {ps['worker_rss_mb_before']} MB before the run, "
        f"{ps['worker_rss_mb_after']} MB after it (peak so far {ps['worker_rss_mb_peak']} MB)",
    ]


def in_flight_lines(fl: Result) -> Lines:
    return [
        f"   ours: idle {fl['worker_rss_mb_idle']} MB, with {fl['runs']:,} runs live "
        f"{fl['worker_rss_mb_with_runs_in_flight']} MB, peak {fl['worker_rss_mb_peak']} MB "
        f"({fl['seconds_until_all_asleep']:.1f} s from the first start() until all asleep)"
    ]


def fan_out_lines(fo: Result) -> Lines:
    return [
        f"   ours: {int(n):,} steps in {fig['seconds']:.3f} s = {num(fig['steps_per_s'])} steps/s"
        if "seconds" in fig
        else f"   ours: {int(n):,} steps: {why_not(fig)}"
        for n, fig in fo.items()
    ]


def start_rate_lines(sr: Result) -> Lines:
    api, xadd = sr["start_api"], sr["xadd"]
    return [
        f"   ours: start() from one process, {api['in_flight']} in flight: "
        f"{num(api['runs_per_s'])} runs/s ({api['runs']:,} runs)",
        f"   ours: XADD <prefix>:start drained by one worker: {num(xadd['runs_per_s'])} runs/s "
        f"({xadd['runs']:,} requests, sent in {xadd['xadd_seconds']:.2f} s)",
    ]


def memory_block(rows: list[Row], mem: Any) -> Lines:
    out = ["9. Memory per finished 10-step run (lower is better)"]
    mem_rows = by_metric(rows, "memory")
    ours, compacted = (
        next(r for r in mem_rows if r.system == s) for s in ("ours", "ours, compacted")
    )
    out += compare_block(rows, "memory", "ours", False, 0)
    out.append(f"   ours as finished: {shown(ours)}; after compaction: {shown(compacted)}")
    keys = dig(mem, "memory_usage_of_one_run_keys")
    if isinstance(keys, dict):
        out.append(
            f"   ours: used_memory delta over {mem['runs']:,} runs; MEMORY USAGE of one run: hash "
            f"{keys['run_hash']} B, event stream {keys['event_stream']} B, entity hash "
            f"{keys['entity_hash']} B (stream-node-max-bytes {mem['stream_node_max_bytes']})"
        )
    return out


def header(machine: Result, peers: Result, started: str) -> Lines:
    load = " ".join(str(x) for x in machine["load_avg_1m_5m_15m"])
    versions = ", ".join(
        f"{PEER_LABELS.get(n, n)} {p['version']}"
        if p.get("version")
        else f"{PEER_LABELS.get(n, n)} ({why_not(p)})"
        for n, p in peers.items()
    )
    return [
        f"redis-workflows benchmark, {started}",
        f"machine: nproc {machine['nproc']} | CPU {machine['cpu_model']} | load {load} "
        f"(1/5/15 min) | Python {machine['python']} | Redis {machine['redis']} ({machine['redis_binary']})",
        f"peers:   {versions or 'none'}",
        "ratio = ours / peer. The machine is shared: figures are noisy; compare within one run only.",
    ]


def peer_notes(peers: Result) -> Lines:
    """What each peer's throughput counts, as its script says."""
    return [
        f"   {PEER_LABELS.get(n, n)}: {dig(p, 'throughput', 'what')}"
        for n, p in peers.items()
        if isinstance(dig(p, "throughput", "what"), str)
    ]


def report(data: Result) -> str:
    """The whole printed report of one results dict."""
    ours, peers = data.get("ours", {}), data.get("peers", {})
    rows = comparison(data)
    out = header(data["machine"], peers, data["started_at"])
    blocks: list[Lines] = [
        [
            *block(
                "1. Durable steps/s, ONE worker process, 10 no-op steps per run (higher is better)",
                ours.get("throughput"),
                "steps_per_s",
                throughput_lines,
            ),
            *compare_block(rows, "throughput", "ours, 1 worker (total)", True, 0),
            *peer_notes(peers),
        ],
        block(
            "2. The same on Redis with AOF appendfsync everysec",
            ours.get("aof"),
            "steps_per_s",
            throughput_lines,
        ),
        block(
            "3. The same with TWO worker processes",
            ours.get("two_workers"),
            "steps_per_s",
            throughput_lines,
        ),
        [
            "4. Start-to-result latency, one-step run, warm worker, 200 sequential (lower is better)",
            *compare_block(rows, "latency_p50", "ours", False, 2, "p50 "),
            *compare_block(rows, "latency_p99", "ours", False, 2, "p99 "),
            f"   ours p50 {shown(by_metric(rows, 'latency_p50')[0], 3)}, "
            f"p99 {shown(by_metric(rows, 'latency_p99')[0], 3)}",
        ],
        block(
            "5. One run of 10,000 sequential no-op steps: mean gap between step completions",
            ours.get("long_run"),
            "mean_gap_ms_first",
            long_run_lines,
        ),
        block(
            "6. Worker RSS with 10,000 runs in flight (each asleep for 1 h after one step)",
            ours.get("in_flight"),
            "worker_rss_mb_idle",
            in_flight_lines,
        ),
        block(
            "7. Fan-out: one run gathering N parallel no-op steps, start() to result()",
            ours.get("fan_out"),
            "1000",
            fan_out_lines,
        ),
        block(
            "8. Start rate: runs created per second",
            ours.get("start_rate"),
            "xadd",
            start_rate_lines,
        ),
        memory_block(rows, ours.get("memory")),
    ]
    for lines, key in zip(blocks, FIGURE_KEYS, strict=True):
        if key in ours or (key in COMPARED and peers):
            out += ["", *lines]
    out += scale_report(ours.get("scale_out"))
    out += ["", *targets.lines(ours)]
    return "\n".join(out)


def scale_report(rows: list[Result] | Result | None) -> list[str]:
    """The scale-out figure's lines (none when it was not measured)."""
    if rows is None:
        return []
    out = ["", "10. Scale-out: 1,000 runs x 10 no-op steps, N worker processes (higher is better)"]
    if isinstance(rows, dict):
        return [*out, f"   ours: {why_not(rows)}"]
    single = next(
        (
            r["steps_per_s"]
            for r in rows
            if (r.get("topology"), r.get("partitions"), r.get("workers")) == ("server", 1, 1)
            and "steps_per_s" in r
        ),
        None,
    )
    for r in rows:
        where = (
            f"{r['topology']}, {r.get('partitions') or 'default'} partition(s), "
            f"{r['workers']} worker(s)"
        )
        if "error" in r:
            out.append(f"   ours {where}: failed: {r['error'].splitlines()[0]}")
            continue
        vs = f" ({r['steps_per_s'] / single:.2f}x the first line)" if single else ""
        out.append(
            f"   ours {where}: {num(r['steps_per_s'])} steps/s{vs}; CPU per step: workers "
            f"{r['worker_cpu_us_per_step']} µs, redis-server {r['redis_cpu_us_per_step']} µs"
        )
    out.append("   peers: not measured for this figure (they are measured on one server)")
    return out


COMPARED = ("throughput", "latency", "memory")  # blocks that show the peers too
# the key in ``ours`` of each block of ``report``, in order: figures 1-9
FIGURE_KEYS = (
    "throughput",
    "aof",
    "two_workers",
    "latency",
    "long_run",
    "in_flight",
    "fan_out",
    "start_rate",
    "memory",
)
