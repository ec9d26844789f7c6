"""The raw connections of script calls and blocking reads (world_redis/_lean.py), against a real
redis-server: the replies and errors redis-py would give, order under pipelining, lost and
cancelled connections, AUTH and SELECT, and where they are not used."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis import exceptions as rexc

from tests.support import RedisServer
from world_redis import RedisWorld
from world_redis._lean import LeanRedis, pack, stream_rows


@pytest.fixture
async def client(single_redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis(
        port=single_redis_server.port, decode_responses=True, encoding_errors="surrogateescape"
    )
    yield c
    await c.aclose()


@pytest.fixture
async def lean(client: aioredis.Redis) -> AsyncIterator[LeanRedis]:
    found = LeanRedis.of(client)
    assert found is not None
    yield found
    found.close()


SCRIPT = """
return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1, {ARGV[3], false}, redis.call('PING')}
"""


async def test_a_script_answers_as_through_redis_py(
    client: aioredis.Redis, lean: LeanRedis
) -> None:
    sha = await client.script_load(SCRIPT)
    args = ["k", "caf\u00e9 \udcff", 41, "x"]  # text with a byte that is not UTF-8, an int
    via_redis_py = await client.evalsha(sha, 1, *args)
    via_lean = await lean.evalsha(sha, args[:1], args[1:])
    assert via_lean == via_redis_py == ["k", "caf\u00e9 \udcff", 42, ["x", None], "PONG"]


async def test_error_replies_raise_redis_pys_classes(
    client: aioredis.Redis, lean: LeanRedis
) -> None:
    with pytest.raises(rexc.NoScriptError):
        await lean.evalsha("0" * 40, [], [])
    await client.set("a-string", "v")
    with pytest.raises(rexc.ResponseError, match="WRONGTYPE"):
        await lean.execute("LPUSH", "a-string", "x")
    assert await lean.execute("GET", "a-string") == "v"  # the connection goes on


async def test_pipelined_commands_get_their_own_replies(lean: LeanRedis) -> None:
    keys = [f"counter-{i % 7}" for i in range(300)]
    replies = await asyncio.gather(*(lean.execute("INCR", k) for k in keys))
    for k in set(keys):
        mine = [r for key, r in zip(keys, replies, strict=True) if key == k]
        assert mine == list(range(1, len(mine) + 1))


async def test_a_lost_connection_fails_its_commands_and_the_next_one_reconnects(
    client: aioredis.Redis, lean: LeanRedis
) -> None:
    await lean.execute("CLIENT", "SETNAME", "lean-victim")
    blocked = asyncio.ensure_future(lean.execute("BLPOP", "never-pushed", 0))
    await asyncio.sleep(0)
    killed = await client.execute_command("CLIENT", "KILL", "SKIPME", "yes")  # not ours: all
    assert killed >= 1
    with pytest.raises(rexc.ConnectionError):
        await asyncio.wait_for(blocked, 5)
    assert await lean.execute("PING") == "PONG"


async def test_a_cancelled_blocking_read_leaves_no_reply_behind(lean: LeanRedis) -> None:
    read = asyncio.ensure_future(lean.execute_blocking("BLPOP", "later", 0))
    await asyncio.sleep(0.05)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    await lean.execute("RPUSH", "later", "1")  # the cancelled read's connection is closed
    assert await lean.execute_blocking("BLPOP", "later", 1) == ["later", "1"]


async def test_blocking_reads_wait_beside_each_other_and_beside_commands(
    lean: LeanRedis,
) -> None:
    await lean.execute("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")
    reads = [
        asyncio.ensure_future(
            lean.execute_blocking(
                "XREADGROUP", "GROUP", "g", f"c{i}", "COUNT", 1, "BLOCK", 5000, "STREAMS", "s", ">"
            )
        )
        for i in range(3)
    ]
    await asyncio.sleep(0.05)
    assert await lean.execute("PING") == "PONG"  # not behind the blocked reads
    for i in range(3):
        await lean.execute("XADD", "s", "*", "n", str(i))
    got = [stream_rows(r) for r in await asyncio.wait_for(asyncio.gather(*reads), 5)]
    assert sorted(rows[0][1][0][1]["n"] for rows in got) == ["0", "1", "2"]


async def test_auth_and_database_are_those_of_the_client(tmp_path: object) -> None:
    server = RedisServer.start()
    try:
        server.client().config_set("requirepass", "s3cret")
        client = aioredis.Redis(port=server.port, password="s3cret", db=3, decode_responses=True)
        lean = LeanRedis.of(client)
        assert lean is not None
        await lean.execute("SET", "where", "db3")
        assert await client.get("where") == "db3"
        other = aioredis.Redis(port=server.port, password="s3cret", db=0, decode_responses=True)
        assert await other.get("where") is None
        wrong = LeanRedis.of(aioredis.Redis(port=server.port, password="nope"))
        assert wrong is not None
        with pytest.raises(rexc.AuthenticationError):
            await wrong.execute("PING")
        lean.close()
        wrong.close()
        await client.aclose()
        await other.aclose()
    finally:
        server.stop()


def test_clients_whose_connections_it_cannot_reproduce_keep_redis_py() -> None:
    assert LeanRedis.of(aioredis.Redis(port=1, ssl=True)) is None
    assert LeanRedis.of(aioredis.Redis(port=1, protocol=3)) is None
    assert LeanRedis.of(object()) is None
    assert LeanRedis.of(aioredis.Redis(unix_socket_path="/tmp/redis.sock")) is not None


def test_commands_are_packed_as_resp_bulk_strings() -> None:
    assert pack(["SET", "k\u00e9", 12, 1.5, b"\x00"]) == (
        b"*5\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$2\r\n12\r\n$3\r\n1.5\r\n$1\r\n\x00\r\n"
    )
    with pytest.raises(rexc.DataError):
        pack(["SET", "k", True])
    with pytest.raises(rexc.DataError):
        pack(["SET", "k", None])


async def test_a_world_uses_them_on_a_single_server_and_not_when_told_not_to(
    single_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = RedisWorld.from_url(single_redis_server.url, prefix="leanw")
    await world.core.check_config()
    assert world.core.lean is not None
    await world.close()
    monkeypatch.setenv("WORKFLOW_REDIS_LEAN", "0")
    world = RedisWorld.from_url(single_redis_server.url, prefix="leanw")
    await world.core.check_config()
    assert world.core.lean is None
    await world.close()


async def test_a_paused_server_times_out_as_through_redis_py() -> None:
    """A server paused by SIGSTOP keeps its connections open: a reply that does not come within
    the client's socket_timeout fails with redis-py's TimeoutError (a blocking read: after its
    BLOCK too), and the next command, once the server goes on, gets a connection that works."""
    server = RedisServer.start()
    client = aioredis.Redis(port=server.port, socket_timeout=0.5, decode_responses=True)
    lean = LeanRedis.of(client)
    assert lean is not None
    try:
        assert await lean.execute("PING") == "PONG"
        server.proc.send_signal(signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(rexc.TimeoutError):
                await lean.execute("PING")
            with pytest.raises(rexc.TimeoutError):
                await lean.execute_blocking("BLPOP", "nothing", 1, wait_s=1.0)
            assert time.monotonic() - began >= 1.4  # 0.5 s, then 0.5 s + the 1 s it may block
            with pytest.raises(rexc.TimeoutError):  # redis-py's own, for comparison
                await client.ping()
        finally:
            server.proc.send_signal(signal.SIGCONT)
        assert await lean.execute("PING") == "PONG"
        assert await lean.execute_blocking("BLPOP", "nothing", 0.1, wait_s=0.1) is None
    finally:
        lean.close()
        await client.aclose()
        server.stop()


async def test_a_closed_lean_client_reconnects_as_redis_py_does(lean: LeanRedis) -> None:
    """close() closes what is open; a later command opens a new connection instead of failing
    (redis-py's client does the same after aclose())."""
    assert await lean.execute("PING") == "PONG"
    lean.close()
    assert await asyncio.wait_for(lean.execute("PING"), 5) == "PONG"
    assert (
        await asyncio.wait_for(lean.execute_blocking("BLPOP", "none", 0.1, wait_s=0.1), 5) is None
    )
