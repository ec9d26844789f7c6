"""Raw RESP connections for the hot commands: script calls and blocking stream reads.

redis-py stays the client of everything else. Its per-command machinery (connection pool,
retry wrapper, timeouts, observability hooks, pure-Python command packing) costs about 55 µs of
CPU per command on our 2-core machine, where a raw connection costs about 7 µs
(``bench/PROFILE.md``). A one-step run's result crosses about five commands (the client's
create_run, the worker's read of its wake-up and two commits, the client's read of the log), so
that cost is a good part of its latency. Here a command is packed by hand, written on an
``asyncio.Protocol`` and its reply parsed by ``hiredis.Reader``, as redis-py's hiredis parser does.

Used only where it behaves as redis-py does (see ``LeanRedis.of``): a single server (no cluster),
over TCP or a Unix socket without TLS, RESP2, a password and user if any, a database number.
Replies are decoded as the World's client decodes them (UTF-8, ``surrogateescape``); an error
reply raises the exception class redis-py raises for it (NoScriptError, BusyLoadingError,
ReadOnlyError, ResponseError...), and a lost connection fails every command on it with redis-py's
ConnectionError, which ``with_retry`` retries on a new connection. The client's timeouts apply
as redis-py applies them: a reply that does not come within its ``socket_timeout`` (plus the
time a blocking read may wait) fails with redis-py's TimeoutError and closes the connection (a
server paused by SIGSTOP keeps its connections open), a connect takes at most its
``socket_connect_timeout``. A connection idle longer than ``HEALTH_CHECK_S`` is replaced before
use (redis-py pings such a connection first), so a connection a failover left behind is not
written to.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis import exceptions as rexc
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

HEALTH_CHECK_S = 30.0  # as the World's redis-py client (health_check_interval)
IDLE_BLOCKING = 4  # connections for blocking reads kept open while idle, at most


def _default(cls: type, name: str) -> Any:
    """The default of ``name`` in the ``__init__`` of ``cls`` (or of its bases), else None."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            param = inspect.signature(init).parameters.get(name)
            if param is not None and param.default is not inspect.Parameter.empty:
                return param.default
    return None


class _ReplyError(Exception):
    """An error reply, as hiredis gives it; raised as redis-py's class for it."""


def _error(reply: _ReplyError) -> Exception:
    return BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call,no-any-return]


def pack(args: Sequence[Any]) -> bytes:
    """One command in RESP: an array of bulk strings (str as UTF-8 with surrogateescape, as the
    World's client encodes; int and float as their decimal text)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode("utf-8", "surrogateescape")
        elif isinstance(a, bool):  # redis-py refuses bools: so does this
            raise rexc.DataError(f"invalid input of type bool: {a!r}; convert it first")
        elif isinstance(a, int | float):
            b = repr(a).encode()
        else:
            raise rexc.DataError(f"invalid input of type {type(a).__name__}: {a!r}")
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    """One connection; replies answer the commands in the order they were written."""

    def __init__(self, timeout: float | None = None) -> None:
        self._timeout = timeout  # seconds a reply may take (None: no limit)
        self._reader = hiredis.Reader(
            replyError=_ReplyError, encoding="utf-8", errors="surrogateescape"
        )
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.used = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        # its loop, asked once (asking costs a system call on Python 3.11)
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    return
                waiter = self._waiters.popleft()
                if waiter.done():  # its caller was cancelled: the reply is dropped
                    continue
                if isinstance(reply, _ReplyError):
                    waiter.set_exception(_error(reply))
                else:
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # a reply nothing asked for
            self._fail(rexc.ConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(rexc.ConnectionError(f"Connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, error: Exception) -> None:
        if self.lost is None:
            self.lost = error
        if self._transport is not None:
            self._transport.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def send(self, payload: bytes, wait_s: float = 0.0) -> asyncio.Future[Any]:
        """Write one packed command; the future of its reply (``wait_s``: how long the command
        itself may wait, a blocking read's BLOCK, beyond the reply timeout)."""
        loop = self._loop
        if self.lost is not None or self._transport is None or loop is None:
            raise rexc.ConnectionError(f"Connection to Redis lost: {self.lost}")
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiters.append(fut)
        self._transport.write(payload)
        self.used = time.monotonic()
        if self._timeout is not None:
            timer = loop.call_later(self._timeout + wait_s, self._expired, fut)
            fut.add_done_callback(lambda _: timer.cancel())
        return fut

    def _expired(self, fut: asyncio.Future[Any]) -> None:
        if not fut.done():  # as redis-py: the connection is closed, its commands fail
            self._fail(rexc.TimeoutError("Timeout reading from Redis"))

    def close(self) -> None:
        self._fail(rexc.ConnectionError("Connection closed by the client"))

    @property
    def idle(self) -> bool:
        return not self._waiters


class LeanRedis:
    """Raw connections to the server a redis-py client talks to: one shared, pipelined, for
    commands that answer at once, and one per blocking read in flight."""

    def __init__(
        self,
        target: dict[str, Any],
        handshake: list[list[Any]],
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self._target = target  # host and port, or path
        self._timeout, self._connect_timeout = timeout, connect_timeout
        self._handshake = handshake  # AUTH, SELECT, CLIENT SETNAME: each new connection's
        self._shared: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._blocking: list[_Connection] = []  # idle connections for blocking reads

    @classmethod
    def of(cls, client: Any) -> LeanRedis | None:
        """Lean connections beside ``client``, when its connections are plain ones of a single
        server (TCP or a Unix socket, no TLS, RESP2, a static password if any); None
        otherwise, and the client serves every command."""
        if not isinstance(client, Redis):
            return None
        pool = client.connection_pool
        kw = dict(pool.connection_kwargs)
        if kw.get("credential_provider") is not None or kw.get("protocol") not in (None, 2, "2"):
            return None
        if pool.connection_class is Connection:
            target: dict[str, Any] = {"host": kw.get("host", "localhost"), "port": kw["port"]}
        elif pool.connection_class is UnixDomainSocketConnection:
            target = {"path": kw["path"]}
        else:  # TLS, or a connection class of the application's own
            return None
        handshake: list[list[Any]] = []
        if kw.get("password"):
            user = kw.get("username")
            handshake.append(["AUTH", user, kw["password"]] if user else ["AUTH", kw["password"]])
        if int(kw.get("db") or 0):
            handshake.append(["SELECT", int(kw["db"])])
        if kw.get("client_name"):
            handshake.append(["CLIENT", "SETNAME", kw["client_name"]])
        # the timeouts its connections get: the pool's, else its connection class's defaults
        timeout = kw.get("socket_timeout", _default(pool.connection_class, "socket_timeout"))
        connect = kw.get(
            "socket_connect_timeout", _default(pool.connection_class, "socket_connect_timeout")
        )
        return cls(target, handshake, timeout, connect or timeout)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        timeout = self._timeout

        def made() -> _Connection:
            return _Connection(timeout)

        try:
            async with asyncio.timeout(self._connect_timeout):
                if "path" in self._target:
                    _, conn = await loop.create_unix_connection(made, self._target["path"])
                else:
                    _, conn = await loop.create_connection(
                        made, self._target["host"], self._target["port"]
                    )
        except TimeoutError as exc:
            raise rexc.TimeoutError("Timeout connecting to Redis") from exc
        except OSError as exc:
            raise rexc.ConnectionError(f"Error connecting to Redis: {exc}") from exc
        try:
            for command in self._handshake:
                await conn.send(pack(command))
        except BaseException:
            conn.close()
            raise
        return conn

    async def _shared_connection(self) -> _Connection:
        """The shared connection: the open one, else a new one (one connect at a time, which
        every caller that finds none waits for)."""
        conn = self._shared
        if conn is not None and conn.lost is None:
            if not (conn.idle and time.monotonic() - conn.used > HEALTH_CHECK_S):
                return conn
            conn.close()  # idle too long: maybe left behind by a failover
        self._shared = None
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, fut: asyncio.Future[_Connection]) -> None:
        self._connecting = None
        if not fut.cancelled() and fut.exception() is None:  # its error: each waiter's
            self._shared = fut.result()

    async def execute(self, *args: Any) -> Any:
        """A command that answers at once, on the shared connection (pipelined with others)."""
        conn = self._shared
        if conn is None or conn.lost is not None or time.monotonic() - conn.used > HEALTH_CHECK_S:
            conn = await self._shared_connection()
        return await conn.send(pack(args))

    async def execute_blocking(self, *args: Any, wait_s: float = 0.0) -> Any:
        """A command that may block (XREAD ... BLOCK) up to ``wait_s`` seconds, on a connection of
        its own meanwhile."""
        conn = await self._own_connection()
        try:
            reply = await conn.send(pack(args), wait_s)
        except BaseException:
            conn.close()  # cancelled mid-read, or lost: its reply would answer the next command
            raise
        self._give_back(conn)
        return reply

    async def _own_connection(self) -> _Connection:
        """An idle connection of the blocking ones that is still good, else a new one."""
        while self._blocking:
            candidate = self._blocking.pop()
            if candidate.lost is None and time.monotonic() - candidate.used <= HEALTH_CHECK_S:
                return candidate
            candidate.close()
        return await self._open()

    def _give_back(self, conn: _Connection) -> None:
        """A connection whose commands have all answered: kept idle (up to IDLE_BLOCKING)."""
        if conn.lost is None and len(self._blocking) < IDLE_BLOCKING:
            self._blocking.append(conn)
        else:
            conn.close()

    async def execute_together(self, commands: Sequence[Sequence[Any]], wait_s: float) -> list[Any]:
        """Commands sent back to back on one connection of their own (the last may block up to
        ``wait_s`` seconds: a WAIT that must follow its write on the same connection); each
        reply, or the error it answered, in order."""
        conn = await self._own_connection()
        try:
            futures = [conn.send(pack(command), wait_s) for command in commands]
            replies = await asyncio.gather(*futures, return_exceptions=True)
        except BaseException:
            conn.close()  # cancelled mid-read: its replies would answer the next command
            raise
        self._give_back(conn)
        return list(replies)

    async def evalsha(self, sha: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    def close(self) -> None:
        """Close the open connections; a later command opens new ones (as redis-py's client
        does after ``aclose()``)."""
        for conn in [self._shared, *self._blocking]:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._shared, self._blocking = None, []


def stream_rows(reply: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """A raw XREAD / XREADGROUP reply (RESP2) as (stream, [(entry id, fields)]) pairs, the shape
    ``_client.stream_replies`` gives redis-py's; a deleted entry (nil fields) keeps no field."""
    out: list[tuple[str, list[tuple[str, dict[str, str]]]]] = []
    for stream, rows in reply or ():
        entries = []
        for entry_id, flat in rows:
            it = iter(flat or ())
            entries.append((entry_id, dict(zip(it, it, strict=True))))
        out.append((stream, entries))
    return out
