"""The Redis client: one factory for a single server and for a Redis Cluster, and one type for both.

``RedisClient`` names the commands the engine uses, with redis-py's own signatures, so that
``redis.asyncio.Redis`` and ``redis.asyncio.cluster.RedisCluster`` both satisfy it (mypy checks
that below, ``_check_clients``). Replies are ``str`` at run time (``decode_responses=True``);
the annotations say ``bytes | str`` because redis-py types them for either setting, and the
callers narrow with ``text()``.

Topology is found, not configured: the World starts with a single-node client for the URL
(redis-py connects lazily: no I/O yet), and its first-use check (``check_config``, which also
agrees on the partition count) asks that server ``INFO cluster``; on ``cluster_enabled:1`` the
client is replaced by a cluster client for the same URL and options. ``WORKFLOW_REDIS_CLUSTER=1``
(or ``0``) skips the question. Why at first use: detection needs a round trip and
``RedisWorld.from_url`` is synchronous (and must not block an event loop that calls
``get_world()``). Every path (``start()``, ``get_run``, listing, the worker, ``wf``, the HTTP app,
``get_world()``) builds its World with ``from_url`` and passes that check before its first
command (``RedisCore._ready``).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.typing import (
    BlockingListPopResponse,
    EncodableT,
    FieldT,
    KeyT,
    StreamIdT,
    StreamRangeResponse,
    XClaimResponse,
    XPendingRangeResponse,
    XReadGroupResponse,
    XReadResponse,
    ZSetRangeResponse,
)

from worker.world import WorkflowError, get_logger

from ._retry import with_retry

CLUSTER_ENV = "WORKFLOW_REDIS_CLUSTER"


class RedisPipeline(Protocol):
    """The pipeline commands the engine queues (their replies come from ``execute``)."""

    def hsetnx(self, name: str, key: str, value: str | int) -> object: ...
    def hget(self, name: str, key: str) -> object: ...
    def hgetall(self, name: str) -> object: ...
    def xrange(self, name: str, min: str = "-", max: str = "+") -> object: ...
    def exists(self, *names: str) -> object: ...
    def xack(self, name: str, groupname: str, *ids: str) -> object: ...
    def xdel(self, name: str, *ids: str) -> object: ...
    def xadd(self, name: str, fields: dict[FieldT, EncodableT]) -> object: ...
    def xpending(self, name: str, groupname: str) -> object: ...
    def rpush(self, name: str, *values: str) -> object: ...
    def expire(self, name: str, time: int) -> object: ...
    def sadd(self, name: str, *values: str) -> object: ...
    def execute(self) -> Awaitable[list[Any]]: ...


class RedisClient(Protocol):
    """The commands the engine sends; both redis-py asyncio clients satisfy it."""

    def register_script(self, script: str) -> AsyncScript: ...
    def hget(self, name: str, key: str) -> Awaitable[bytes | str | None]: ...
    def hgetall(self, name: str) -> Awaitable[dict[bytes | str, bytes | str]]: ...
    def hmget(self, name: str, keys: Iterable[str]) -> Awaitable[list[bytes | str | None]]: ...
    def hset(self, name: str, key: str, value: str) -> Awaitable[int]: ...
    def hdel(self, name: str, *keys: str) -> Awaitable[int]: ...
    def get(self, name: str) -> Awaitable[bytes | str | None]: ...
    def set(
        self, name: str, value: str, *, px: int | None = None, nx: bool = False
    ) -> Awaitable[bool | str | bytes | None]: ...
    def delete(self, *names: str) -> Awaitable[int]: ...
    def lrange(self, name: str, start: int, end: int) -> Awaitable[list[Any]]: ...
    def smembers(self, name: str) -> Awaitable[builtins.set[bytes | str]]: ...
    def exists(self, *names: str) -> Awaitable[int]: ...
    def zrevrangebyscore(
        self,
        name: str,
        max: str,
        min: str,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
    ) -> Awaitable[ZSetRangeResponse]: ...
    def zrangebyscore(
        self,
        name: str,
        min: str | int,
        max: str | int,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
    ) -> Awaitable[ZSetRangeResponse]: ...
    def zrange(
        self, name: str, start: int, end: int, desc: bool = False, withscores: bool = False
    ) -> Awaitable[ZSetRangeResponse]: ...
    def xrange(
        self, name: str, min: str = "-", max: str = "+", count: int | None = None
    ) -> Awaitable[StreamRangeResponse | None]: ...
    def xread(
        self, streams: dict[KeyT, StreamIdT], count: int | None = None, block: int | None = None
    ) -> Awaitable[XReadResponse]: ...
    def xreadgroup(
        self,
        groupname: str,
        consumername: str,
        streams: dict[KeyT, StreamIdT],
        count: int | None = None,
        block: int | None = None,
        noack: bool = False,
    ) -> Awaitable[XReadGroupResponse]: ...
    def xgroup_create(
        self, name: str, groupname: str, id: str = "$", mkstream: bool = False
    ) -> Awaitable[bool]: ...
    def xpending_range(
        self,
        name: str,
        groupname: str,
        min: str,
        max: str,
        count: int,
        consumername: str | None = None,
        idle: int | None = None,
    ) -> Awaitable[XPendingRangeResponse]: ...
    def xclaim(
        self,
        name: str,
        groupname: str,
        consumername: str,
        min_idle_time: int,
        message_ids: list[StreamIdT],
        idle: int | None = None,
        time: int | None = None,
        retrycount: int | None = None,
        force: bool = False,
        justid: bool = False,
    ) -> Awaitable[XClaimResponse]: ...
    def xack(self, name: str, groupname: str, *ids: str) -> Awaitable[int]: ...
    def xdel(self, name: str, *ids: str) -> Awaitable[int]: ...
    def xadd(
        self,
        name: str,
        fields: dict[FieldT, EncodableT],
        id: str = "*",
        maxlen: int | None = None,
        approximate: bool = True,
    ) -> Awaitable[bytes | str]: ...
    def blpop(
        self, keys: list[str], timeout: float | None = 0
    ) -> Awaitable[BlockingListPopResponse]: ...
    def xinfo_groups(self, name: str) -> Awaitable[list[dict[str, Any]]]: ...
    def xlen(self, name: str) -> Awaitable[int]: ...
    def zcard(self, name: str) -> Awaitable[int]: ...
    def zcount(self, name: str, min: float | str, max: float | str) -> Awaitable[int]: ...
    def time(self) -> Awaitable[tuple[int, int]]: ...
    def info(self, section: str | None = None) -> Awaitable[dict[str, Any]]: ...
    def config_get(self, pattern: str = "*") -> Awaitable[dict[str | None, str | None]]: ...
    def pipeline(self, transaction: bool = True) -> RedisPipeline: ...
    async def aclose(self) -> None: ...


def _check_clients(single: aioredis.Redis, cluster: RedisCluster) -> list[RedisClient]:
    """Never called: mypy proves here that both clients are RedisClients."""
    return [single, cluster]


def text(value: bytes | str | None) -> str:
    """A reply narrowed to ``str`` (already ``str`` with ``decode_responses=True``)."""
    if value is None:
        return ""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def text_dict(value: Mapping[Any, Any] | None) -> dict[str, str]:
    """A hash or a stream entry's fields with ``str`` names and values."""
    return {text(k): text(v) for k, v in (value or {}).items()}


Entry = tuple[str, dict[str, str]]


def entries(rows: StreamRangeResponse | None) -> list[Entry]:
    """XRANGE / XCLAIM rows as (id, fields); a deleted entry (nil fields) keeps empty fields."""
    return [(text(entry_id), text_dict(fields)) for entry_id, fields in rows or []]


def stream_replies(
    reply: XReadResponse | XReadGroupResponse | None,
) -> list[tuple[str, list[Entry]]]:
    """An XREAD / XREADGROUP reply (RESP2 list or RESP3 map) as (stream, entries) pairs."""
    if not reply:
        return []
    pairs = list(reply.items()) if isinstance(reply, dict) else [tuple(r) for r in reply]
    return [(text(stream), entries(rows)) for stream, rows in pairs]


def cluster_setting() -> bool | None:
    """``WORKFLOW_REDIS_CLUSTER``: True (``1``), False (``0``), None (unset: detect)."""
    raw = os.environ.get(CLUSTER_ENV, "").strip().lower()
    if raw == "":
        return None
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise WorkflowError(
        f"{CLUSTER_ENV}={raw!r}: expected 1 (a Redis Cluster), 0 (one server) or unset"
    )


@dataclass
class ClientFactory:
    """How to reach Redis: the URL, the client options, and whether it is a cluster (None:
    ask the server at first use)."""

    url: str
    cluster: bool | None = None
    options: dict[str, Any] = field(default_factory=dict)
    _single: aioredis.Redis | None = None

    def first(self) -> tuple[RedisClient, bool]:
        """The client to start with (no connection is made yet), and whether it is final.

        With the topology unknown this is a single-node client: right for one server (and for a
        unix socket, which a cluster never listens on), replaced by ``detect`` on a cluster."""
        if self.cluster is True:
            if self.url.startswith("unix://"):
                raise WorkflowError("a Redis Cluster is reached over TCP, not a unix socket")
            return RedisCluster.from_url(self.url, **self.options), True
        self._single = aioredis.Redis.from_url(self.url, **self.options)
        return self._single, self.cluster is False or self.url.startswith("unix://")

    async def detect(self) -> RedisCluster | None:
        """A cluster client when the server of the first client is a cluster node, else None.

        ``CLUSTER INFO`` answers on a cluster node and fails with "cluster support disabled"
        elsewhere (the deploy ACL grants it: it is not @dangerous, unlike INFO). A user that may
        run neither it nor ``INFO cluster`` is taken to be on one server, with a warning that
        ``WORKFLOW_REDIS_CLUSTER=1`` says otherwise."""
        single = self._single
        if single is None:
            return None
        try:
            await with_retry(single.execute_command, "CLUSTER", "INFO")
        except rexc.NoPermissionError:
            try:
                info = await with_retry(single.info, "cluster")
            except rexc.NoPermissionError:
                get_logger(component="world_redis").warning(
                    "redis_topology_unknown",
                    problem="the ACL denies CLUSTER INFO and INFO: taken for one server; "
                    f"set {CLUSTER_ENV}=1 if it is a Redis Cluster",
                )
                return None
            if str(info.get("cluster_enabled", 0)) != "1":
                return None
        except rexc.ResponseError:  # "ERR This instance has cluster support disabled"
            return None
        return RedisCluster.from_url(self.url, **self.options)
