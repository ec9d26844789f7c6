"""``make bench``: our engine next to arq, BullMQ, Celery and DBOS Transact, in one run on this machine.

Installs each peer into its own virtualenv under ``bench/.venvs/`` (once), starts a private
``redis-server`` (persistence off) for every Redis measurement (and a second one with AOF
``everysec`` for figure 2), measures our engine, then runs each peer's script (``bench/peers/``) as
a subprocess with the peer's python. DBOS uses the PostgreSQL server at 127.0.0.1:5432 (a fresh
database, dropped afterwards) and is skipped without one. Prints the machine and one block per
figure, writes everything to ``bench/results/latest.json`` plus a timestamped copy, and a chart
beside them (``latest.png``). A peer that fails to install or to run is reported and skipped; the
exit code is 1 only when one of OUR figures failed.

Figures (``--only`` takes their numbers or names): 1 throughput (one worker), 2 aof, 3 two_workers,
4 latency, 5 long_run, 6 in_flight, 7 fan_out, 8 start_rate, 9 memory, peers (every peer's
figures), and 10 scale (scale-out: 1 and 2 workers on one server with 1 and 4 partitions and on a
local 3-master cluster, ``bench/scale.py``; ``--scale-only`` = ``--only scale``, written to
``results/scale-<time>.json``). ``bench/ours.py``, ``bench/ours_warm.py``,
``bench/ours_capacity.py`` and ``bench/scale.py`` say exactly what each figure times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import ours, ours_capacity, ours_warm, scale
from bench.infra import (
    BENCH,
    RESULTS,
    ROOT,
    RedisServer,
    byte_compile,
    ensure_peer_env,
    log,
    machine_info,
    port_open,
    private_redis,
    run_peer,
)
from bench.text import FIGURE_KEYS, report

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_URL = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
PEER_TIMEOUT_S = 300.0  # each peer takes well under a minute here

Result = dict[str, Any]

FIGURES = (*FIGURE_KEYS, "scale")  # figure n is FIGURES[n - 1]
DEFAULT = (*FIGURES, "peers")


def parse_only(text: str) -> set[str]:
    """``--only 1,latency,peers`` -> figure names; raises ValueError on an unknown one."""
    wanted: set[str] = set()
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if item.isdigit() and 1 <= int(item) <= len(FIGURES):
            wanted.add(FIGURES[int(item) - 1])
        elif item in (*FIGURES, "peers"):
            wanted.add(item)
        else:
            raise ValueError(
                f"unknown figure {item!r}: use 1-{len(FIGURES)} or {', '.join(DEFAULT)}"
            )
    return wanted


# -- the peers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerSpec:
    """How to install a peer (its distribution at a pinned version, with extras; the modules that
    must import) and what it needs."""

    dist: str
    version: str
    modules: str
    extras: str = ""
    needs_postgres: bool = False

    def requirement(self) -> str:
        return f"{self.dist}{self.extras}=={self.version}"


# the versions measured; a venv with another version is created again
PEERS = {
    "arq": PeerSpec("arq", "0.28.0", "arq"),
    "bullmq": PeerSpec("bullmq", "3.4.4", "bullmq"),
    "celery": PeerSpec("celery", "5.7.0", "celery, redis", extras="[redis]"),
    "dbos": PeerSpec("dbos", "3.4.0", "dbos, psycopg", needs_postgres=True),
}


def peer_args(name: str, redis_port: int) -> list[str]:
    """Each peer's command line: its own database of the private Redis, or PostgreSQL."""
    url = f"redis://127.0.0.1:{redis_port}"
    return {
        "arq": ["--redis-url", f"{url}/1"],
        "bullmq": ["--redis-url", f"{url}/2"],
        "celery": ["--broker-url", f"{url}/3", "--backend-url", f"{url}/4"],
        "dbos": ["--pg-url", PG_URL],
    }[name]


def install_peers(run: bool) -> dict[str, Result]:
    """Each peer's venv (created once), or the reason it cannot run; none when not ``run``."""
    envs: dict[str, Result] = {}
    for name, spec in PEERS.items():
        if not run:
            break
        if spec.needs_postgres and not port_open(PG_HOST, PG_PORT):
            envs[name] = {"skipped": f"no PostgreSQL at {PG_HOST}:{PG_PORT}"}
        else:
            try:
                env = ensure_peer_env(
                    name, [spec.requirement()], spec.dist, spec.modules, spec.version
                )
                envs[name] = {"python": str(env.python), "version": env.version}
            except Exception as exc:
                envs[name] = {"error": f"install failed: {exc}"}
                log(f"{name}: install failed, skipped")
    return envs


def run_peers(envs: dict[str, Result], redis_port: int) -> dict[str, Result]:
    """Each installed peer's figures, or its error; never raises."""
    out: dict[str, Result] = {}
    for name, env in envs.items():
        if "python" not in env:
            out[name] = dict(env)
            continue
        log(f"{name}: running bench/peers/{name}_bench.py")
        try:
            script = BENCH / "peers" / f"{name}_bench.py"
            args = peer_args(name, redis_port)
            out[name] = run_peer(Path(env["python"]), script, args, PEER_TIMEOUT_S)
        except Exception as exc:
            out[name] = {"error": str(exc)}
        out[name].setdefault("version", env.get("version"))
    return out


# -- our figures ---------------------------------------------------------------------------------


async def guarded(make: Callable[[], Awaitable[Any]]) -> Any:
    """A figure's result, or its error; one failing figure never stops the others."""
    try:
        return await make()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


async def aof_throughput(prefix: str, workdir: Path) -> Result:
    """Figure 2: figure 1 on a second private server with AOF everysec. The AOF's pages still
    in the page cache are written out before the next figure, so that the kernel does not
    write them back while the next one is measured."""
    with private_redis(aof=True) as server:
        out = await ours.throughput(server, prefix, workdir)
        out["redis_config"] = {
            k: server.config_value(k) for k in ("appendonly", "appendfsync", "save")
        }
    os.sync()
    return out


async def ours_figures(server: RedisServer, wanted: set[str], tag: str) -> Result:
    """Every wanted figure of ours, in order."""
    workdir = Path(tempfile.mkdtemp(prefix="wfbench-ours-"))
    p = f"wfb{tag}"
    steps: dict[str, Callable[[], Awaitable[Any]]] = {
        "throughput": lambda: ours.throughput(server, f"{p}tp", workdir),
        "aof": lambda: aof_throughput(f"{p}aof", workdir),
        "two_workers": lambda: ours.throughput(server, f"{p}tw", workdir, workers=2),
        "in_flight": lambda: ours_capacity.runs_in_flight(server, f"{p}fl", workdir),
        "start_rate": lambda: ours_capacity.start_rate(server, f"{p}sr", workdir),
        "memory": lambda: ours_capacity.memory(server, f"{p}mem", workdir),
        "scale": lambda: scale.scale_out(server, tag),
    }
    out: Result = {"worker_logs": str(workdir)}
    for name in FIGURES:
        if name in ours_warm.WARM_FIGURES:
            warm = wanted & set(ours_warm.WARM_FIGURES)
            if name == ours_warm.WARM_FIGURES[0] and warm:
                got = await guarded(
                    lambda: ours_warm.warm_figures(server, f"{p}w", workdir, wanted)
                )
                out.update(got if "error" not in got else dict.fromkeys(warm, got))
        elif name in wanted:
            log(f"ours: {name}")
            out["scale_out" if name == "scale" else name] = await guarded(steps[name])
    if ours_failed(out):
        log(f"ours: worker logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        out["worker_logs"] = None
    return out


def ours_failed(ours_r: Result) -> bool:
    scale_rows = ours_r.get("scale_out")
    return any(isinstance(v, dict) and "error" in v for v in ours_r.values()) or (
        isinstance(scale_rows, list) and any("error" in r for r in scale_rows)
    )


# -- results -------------------------------------------------------------------------------------


def write_results(data: Result, stamp: str, latest: bool = True) -> list[Path]:
    """``results/<stamp>.json`` and (``latest``) ``results/latest.json``, each written atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    written = []
    for name in (f"{stamp}.json", "latest.json") if latest else (f"{stamp}.json",):
        path = RESULTS / name
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        written.append(path)
    return written


def write_chart(data: Result, json_paths: list[Path]) -> list[Path]:
    """The PNG chart beside each JSON file; none (and a log line) without matplotlib."""
    try:
        from bench import chart
    except ImportError as exc:
        log(f"chart skipped: {exc} (install the bench extra: pip install -e '.[bench]')")
        return []
    return chart.write(data, [p.with_suffix(".png") for p in json_paths])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--no-peers", action="store_true", help="measure only our engine")
    parser.add_argument("--only", metavar="FIG[,FIG]", help="a subset of figures (see above)")
    parser.add_argument("--scale-only", action="store_true", help="= --only scale")
    args = parser.parse_args(argv)
    try:
        args.wanted = parse_only(args.only) if args.only else set(DEFAULT)
    except ValueError as exc:
        parser.error(str(exc))
    if args.scale_only:
        args.wanted = {"scale"}
    if args.no_peers:
        args.wanted.discard("peers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    byte_compile()
    now = datetime.now(UTC)
    started = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    t0 = time.monotonic()
    envs = install_peers("peers" in args.wanted)
    with private_redis() as server:
        log(f"private redis-server on 127.0.0.1:{server.port} ({server.binary})")
        machine = machine_info(server)
        tag = secrets.token_hex(3)
        ours_r = asyncio.run(ours_figures(server, args.wanted, tag))
        peers = run_peers(envs, server.port)
    data: Result = {
        "started_at": started,
        "duration_s": round(time.monotonic() - t0, 1),
        "command": " ".join([sys.executable, "-m", "bench.run", *(argv or sys.argv[1:])]),
        "figures": sorted(args.wanted),
        "machine": machine,
        "ours": ours_r,
        "peers": peers,
    }
    text = report(data)
    data["report"] = text.splitlines()
    whole = args.wanted >= set(DEFAULT)  # a partial run never replaces latest.json
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    kind = "" if whole else ("scale-" if args.wanted == {"scale"} else "partial-")
    written = write_results(data, f"{kind}{stamp}", latest=whole)
    if args.wanted & {"throughput", "latency", "memory", "peers"}:  # what the chart shows
        written += write_chart(data, written)
    print()
    print(text)
    print(f"\nresults: {', '.join(str(p.relative_to(ROOT)) for p in written)}")
    return 1 if ours_failed(ours_r) else 0


if __name__ == "__main__":
    sys.exit(main())
