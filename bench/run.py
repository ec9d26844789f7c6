"""``make bench``: our engine next to arq and DBOS Transact, in one run on this machine.

Installs each peer into its own virtualenv under ``bench/.venvs/`` (once), starts a private
``redis-server`` (persistence off) for every Redis measurement, measures our engine (``bench.ours``),
then runs each peer's script (``bench/peers/``) as a subprocess with the peer's python. DBOS uses the
PostgreSQL server at 127.0.0.1:5432 (a fresh database, dropped afterwards) and is skipped without one.
Prints the machine and one block per figure, "ours X | peer Y | ratio", and writes everything to
``bench/results/latest.json`` plus a timestamped copy. A peer that fails is reported and skipped; the
exit code is 1 only when one of OUR figures failed.

Figures: 1 durable steps/s with one worker, 2 start-to-result latency, 3 per-step overhead of a
1,000-step run, 4 Redis memory per finished run (``bench/ours.py`` says exactly what is timed), 5
scale-out: 1 and 2 workers on one server with 1 and 4 partitions and on a local 3-master cluster
(``bench/scale.py``; ``--scale-only`` measures just that, into ``results/scale-<time>.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import ours, scale
from bench.infra import (
    BENCH,
    RESULTS,
    ROOT,
    ensure_peer_env,
    log,
    machine_info,
    port_open,
    private_redis,
    run_peer,
)

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_URL = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
PEER_TIMEOUT_S = 900.0

Result = dict[str, Any]


# -- running -------------------------------------------------------------------------------------


def install_peers(skip: set[str]) -> dict[str, Result]:
    """Each peer's venv (created once), or the reason it cannot run."""
    envs: dict[str, Result] = {}
    specs = {"arq": (["arq"], "arq", "arq"), "dbos": (["dbos"], "dbos", "dbos, psycopg")}
    for name, (packages, dist, module) in specs.items():
        if name in skip:
            envs[name] = {"skipped": "--no-peers"}
            continue
        if name == "dbos" and not port_open(PG_HOST, PG_PORT):
            envs[name] = {"skipped": f"no PostgreSQL at {PG_HOST}:{PG_PORT}"}
            continue
        try:
            env = ensure_peer_env(name, packages, dist, module)
            envs[name] = {"python": str(env.python), "version": env.version}
        except Exception as exc:
            envs[name] = {"error": f"install failed: {exc}"}
    return envs


def run_peers(envs: dict[str, Result], redis_port: int) -> dict[str, Result]:
    """Each installed peer's figures, or its error; never raises."""
    args = {
        "arq": ["--redis-url", f"redis://127.0.0.1:{redis_port}/1"],
        "dbos": ["--pg-url", PG_URL],
    }
    out: dict[str, Result] = {}
    for name, env in envs.items():
        if "python" not in env:
            out[name] = dict(env)
            continue
        log(f"{name}: running bench/peers/{name}_bench.py")
        try:
            script = BENCH / "peers" / f"{name}_bench.py"
            out[name] = run_peer(Path(env["python"]), script, args[name], PEER_TIMEOUT_S)
        except Exception as exc:
            out[name] = {"error": str(exc)}
        out[name].setdefault("version", env.get("version"))
    return out


# -- the report ----------------------------------------------------------------------------------


def num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


@dataclass
class Fig:
    """One figure of one system: its value, or why there is none."""

    value: float | None
    why: str = "n/a"


def why_not(data: Result) -> str:
    """The first line of a result's error, skip reason or not-applicable note."""
    for key, label in (("error", "ERROR: "), ("skipped", "skipped: "), ("not_applicable", "n/a: ")):
        if data.get(key):
            first = str(data[key]).strip().splitlines()[0]
            return label + (first if len(first) <= 160 else first[:157] + "...")
    return "n/a"


def pick(data: Result, key: str, scale: float = 1.0) -> Fig:
    value = data.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Fig(float(value) * scale)
    return Fig(None, why_not(data))


def line(
    label: str,
    ours_fig: Fig,
    peer: str,
    peer_fig: Fig,
    unit: str,
    higher_is_better: bool,
    digits: int = 0,
    peer_unit: str | None = None,
) -> str:
    """ "ours X | peer Y | ratio ours/peer R (who is better)"; "n/a" where a value is missing."""
    left = (
        f"ours {num(ours_fig.value, digits)} {unit}" if ours_fig.value is not None else "ours n/a"
    )
    right = (
        f"{peer} {num(peer_fig.value, digits)} {peer_unit or unit}"
        if peer_fig.value is not None
        else f"{peer} {peer_fig.why}"
    )
    ratio = "ratio n/a"
    if ours_fig.value is not None and peer_fig.value:
        r = ours_fig.value / peer_fig.value
        verdict = (
            "even"
            if abs(r - 1) < 0.005
            else ("ours better" if (r > 1) == higher_is_better else f"{peer} better")
        )
        ratio = f"ratio {r:.2f} ({verdict})"
    return f"   {label}{left} | {right} | {ratio}"


LABELS = {"arq": "arq", "dbos": "DBOS"}


def section(peers: dict[str, Result], name: str, key: str) -> Result:
    """A peer's result for one figure; the peer's own error when it produced nothing."""
    peer = peers.get(name, {})
    value = peer.get(key)
    return value if isinstance(value, dict) else peer


def unavailable(peer: Result) -> str | None:
    """Why a peer produced no figures at all (skipped, failed to install or to run), else None."""
    figures = ("throughput", "latency", "per_step", "memory", "storage")
    if any(isinstance(peer.get(k), dict) for k in figures):
        return None
    return why_not(peer)


def scale_report(rows: list[Result] | None) -> list[str]:
    """Figure 5's lines (none when it was not measured)."""
    if rows is None:
        return []
    out = ["", "5. Scale-out: 1,000 runs x 10 no-op steps, N worker processes (higher is better)"]
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
    out.append("   peers: not measured for this figure (arq and DBOS are measured on one server)")
    return out


def report(machine: Result, ours_r: Result, peers: dict[str, Result], started: str) -> str:
    """The printed report: machine header, then one block per figure."""
    out: list[str] = []
    add = out.append
    load = " ".join(str(x) for x in machine["load_avg_1m_5m_15m"])
    add(f"redis-workflows benchmark, {started}")
    add(
        f"machine: nproc {machine['nproc']} | CPU {machine['cpu_model']} | load {load} "
        f"(1/5/15 min) | Python {machine['python']} | Redis {machine['redis']} "
        f"({machine['redis_binary']})"
    )
    add(
        "peers:   "
        + ", ".join(
            f"{LABELS[n]} {p['version']}" if p.get("version") else f"{LABELS[n]} ({why_not(p)})"
            for n, p in peers.items()
        )
    )
    add("ratio = ours / peer. The machine is shared: figures are noisy.")

    def ours_error(data: Result) -> None:
        if "error" in data:
            add(f"   ours {why_not(data)}")

    # 1 -------------------------------------------------------------------------------------
    tp = ours_r.get("throughput", {})
    add("")
    add("1. Durable steps/s, ONE worker process: 1,000 runs x 10 no-op steps (higher is better)")
    ours_error(tp)
    for name in peers:
        ptp = section(peers, name, "throughput")
        key, unit = ("jobs_per_s", "jobs/s") if name == "arq" else ("steps_per_s", "steps/s")
        add(
            line(
                "",
                pick(tp, "steps_per_s"),
                LABELS[name],
                pick(ptp, key),
                "steps/s",
                True,
                peer_unit=unit,
            )
        )
    if "seconds" in tp:
        add(
            f"   ours: {tp['seconds']:.3f} s from spawning `wf worker` to 1,000 completed (first "
            f"after {tp['first_run_completed_after_s']:.3f} s: process start-up is included); "
            f"{tp['checked_outputs']} outputs and {tp['checked_via_result_api']} result() verified"
        )
        if "worker_cpu_us_per_step" in tp:
            add(
                f"   ours: CPU per step: worker {tp['worker_cpu_us_per_step']:.1f} µs (start-up "
                f"included), redis-server {tp['redis_cpu_us_per_step']:.1f} µs"
            )
    arq_tp = section(peers, "arq", "throughput")
    if "seconds" in arq_tp:
        add(
            f"   arq: 10,000 jobs drained by one burst worker (max_jobs {arq_tp['max_jobs']}, "
            f"poll_delay {arq_tp['poll_delay_s']} s) in {arq_tp['seconds']:.3f} s, spawn to exit"
        )
    dbos_tp = section(peers, "dbos", "throughput")
    if "seconds" in dbos_tp:
        add(
            f"   DBOS: in-process, {dbos_tp['concurrency']} workflows in flight, "
            f"{dbos_tp['seconds']:.3f} s from first start to last result"
        )

    # 2 -------------------------------------------------------------------------------------
    lat = ours_r.get("latency", {})
    add("")
    add(
        "2. Start-to-result latency, one-step run, worker running, 200 sequential (lower is better)"
    )
    ours_error(lat)
    for name, peer in peers.items():
        if unavailable(peer):
            add(f"   {LABELS[name]} {unavailable(peer)}")
    for q in ("p50", "p99"):
        for name in (n for n, p in peers.items() if not unavailable(p)):
            plat = section(peers, name, "latency")
            add(
                line(
                    f"{q}: ",
                    pick(lat, f"{q}_ms"),
                    LABELS[name],
                    pick(plat, f"{q}_ms"),
                    "ms",
                    False,
                    digits=2,
                )
            )
    add(
        "   ours: run.result(), which blocks on the run's event stream (XREAD BLOCK); "
        "arq: job.result(poll_delay=0.002); DBOS: in-process handle.get_result()"
    )

    # 3 -------------------------------------------------------------------------------------
    ps = ours_r.get("per_step", {})
    add("")
    add(
        "3. Per-step overhead, one run of 1,000 sequential no-op steps: gap between step completions"
    )
    ours_error(ps)
    if "ratio_last_first" in ps:
        ratio = ps["ratio_last_first"]
        ok_ratio = ratio is not None and ratio <= 1.5
        ok_p50 = ps["p50_gap_ms"] < 2
        add(
            f"   ours: mean gap steps 1-100 {ps['mean_gap_ms_steps_1_100']:.3f} ms, 901-1000 "
            f"{ps['mean_gap_ms_steps_901_1000']:.3f} ms: ratio {ratio} (target <= 1.5: "
            f"{'PASS' if ok_ratio else 'FAIL'}); p50 {ps['p50_gap_ms']:.1f} ms (target < 2 ms: "
            f"{'PASS' if ok_p50 else 'FAIL'}); whole run {ps['wall_seconds']:.2f} s"
        )
    for name in peers:
        pps = section(peers, name, "per_step")
        if pps.get("not_applicable") or unavailable(peers[name]):
            add(f"   {LABELS[name]} {why_not(pps)}")
            continue
        for label, key in (
            ("mean gap 1-100: ", "mean_gap_ms_steps_1_100"),
            ("mean gap 901-1000: ", "mean_gap_ms_steps_901_1000"),
            ("p50 gap: ", "p50_gap_ms"),
        ):
            add(line(label, pick(ps, key), LABELS[name], pick(pps, key), "ms", False, digits=3))
    add(
        "   gaps come from the events' timestamps, whole ms (ours: the worker's clock for steps "
        "run inline; DBOS: completed_at_epoch_ms): a single gap reads 0, 1 or 2 ms"
    )

    # 4 -------------------------------------------------------------------------------------
    mem = ours_r.get("memory", {})
    add("")
    add("4. Memory per finished 10-step run (lower is better)")
    ours_error(mem)
    arq_mem = section(peers, "arq", "memory")
    arq_job = pick(arq_mem, "bytes_per_job")
    if "arq" in peers:
        per_job = f" ({num(arq_job.value, 1)} B/job x 10, results kept)" if arq_job.value else ""
        add(
            line(
                "",
                pick(mem, "bytes_per_run"),
                "arq",
                pick(arq_mem, "bytes_per_job", 10.0),
                "B/run",
                False,
                peer_unit="B per 10 jobs" + per_job,
            )
        )
    if "dbos" in peers:
        add(
            line(
                "",
                pick(mem, "bytes_per_run"),
                "DBOS",
                pick(section(peers, "dbos", "storage"), "bytes_per_run"),
                "B/run",
                False,
                peer_unit="B/run (PostgreSQL table pages, information only)",
            )
        )
    if "memory_usage_of_one_run_keys" in mem:
        keys = mem["memory_usage_of_one_run_keys"]
        add(
            f"   ours: Redis used_memory delta over 1,000 runs; MEMORY USAGE of one run: hash "
            f"{keys['run_hash']} B, event stream {keys['event_stream']} B, entity hash "
            f"{keys['entity_hash']} B (stream-node-max-bytes {mem['stream_node_max_bytes']})"
        )

    out += scale_report(ours_r.get("scale_out"))
    return "\n".join(out)


# -- results -------------------------------------------------------------------------------------


def write_results(data: Result, stamp: str, latest: bool = True) -> list[str]:
    """``results/<stamp>.json`` and (``latest``) ``results/latest.json``, each written atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    written = []
    for name in (f"{stamp}.json", "latest.json") if latest else (f"{stamp}.json",):
        path = RESULTS / name
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        written.append(str(path.relative_to(ROOT)))
    return written


def ours_failed(ours_r: Result) -> bool:
    return any(
        isinstance(v, dict) and "error" in v
        for k, v in ours_r.items()
        if k in ("throughput", "latency", "per_step", "memory")
    ) or any("error" in r for r in ours_r.get("scale_out", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--no-peers", action="store_true", help="measure only our engine")
    parser.add_argument(
        "--scale-only", action="store_true", help="only figure 5, scale-out (implies --no-peers)"
    )
    args = parser.parse_args(argv)
    if args.scale_only:
        args.no_peers = True
    os.chdir(ROOT)
    now = datetime.now(UTC)
    started = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    t0 = time.monotonic()

    envs = install_peers({"arq", "dbos"} if args.no_peers else set())
    for name, env in envs.items():
        if "skipped" in env and name == "dbos" and not args.no_peers:
            print(f"DBOS: skipped ({env['skipped']})", flush=True)
        elif "error" in env:
            print(f"{LABELS[name]}: {env['error']}", flush=True)

    with private_redis() as server:
        log(f"private redis-server on 127.0.0.1:{server.port} ({server.binary})")
        machine = machine_info(server)
        tag = secrets.token_hex(3)
        ours_r = {} if args.scale_only else asyncio.run(ours.run_all(server, tag))
        ours_r["scale_out"] = asyncio.run(scale.scale_out(server, tag))
        peers = run_peers(envs, server.port)

    if args.scale_only:
        text = "\n".join(
            report(machine, {}, {}, started).splitlines()[:3] + scale_report(ours_r["scale_out"])
        )
    else:
        text = report(machine, ours_r, peers, started)
    data: Result = {
        "started_at": started,
        "duration_s": round(time.monotonic() - t0, 1),
        "command": f"{sys.executable} -m bench.run",
        "machine": machine,
        "ours": ours_r,
        "peers": peers,
        "report": text.splitlines(),
    }
    # a partial run never replaces latest.json, which holds a whole one
    written = write_results(
        data, f"scale-{stamp}" if args.scale_only else stamp, not args.scale_only
    )
    print()
    print(text)
    print(f"\nresults: {', '.join(written)}")
    return 1 if ours_failed(ours_r) else 0


if __name__ == "__main__":
    sys.exit(main())
