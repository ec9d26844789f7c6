"""Payload encryption in the Redis World: ciphertext at rest, plaintext through the World."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.integration.helpers import commit1, ev, new_run_id
from tests.support import RedisServer
from worker import DecryptionError, PayloadCodec
from worker._events import RunCreated
from world_redis import RedisWorld

KEY_A = "ka:" + base64.b64encode(bytes(range(32))).decode()
KEY_B = "kb:" + base64.b64encode(bytes(range(100, 132))).decode()
MARKER = "zebra-marker-4711"


def j(text: str) -> str:
    return f'"{text}"'


async def raw_dump(redis_server: RedisServer, world: RedisWorld, run_id: str) -> str:
    """Everything Redis holds for the run, as a plain client (no World) reads it."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        parts: list[Any] = [await client.hgetall(world.keys.run(run_id))]
        parts.append(await client.xrange(world.keys.events(run_id)))
        parts.append(await client.hgetall(world.keys.run_hooks(run_id)))
        for name in await client.smembers(world.keys.streams_index(run_id)):
            parts.append(await client.xrange(world.keys.stream(run_id, name)))
        return repr(parts)
    finally:
        await client.aclose()


async def full_log(world: RedisWorld, run_id: str) -> None:
    """A run with a step, a hook that received a payload and an output, every payload marked."""
    await world.create_run(run_id, "secret_flow", f'["{MARKER}-input"]')
    await commit1(
        world,
        run_id,
        ev("run_started"),
        ev("step_created", "s1", name="charge_card", input=j(MARKER)),
    )
    await commit1(world, run_id, ev("step_started", "s1"))
    await commit1(world, run_id, ev("step_completed", "s1", result=j(f"{MARKER}-result")))
    await commit1(
        world, run_id, ev("hook_created", "h1", token="tok-1", metadata=j(f"{MARKER}-meta"))
    )
    await commit1(world, run_id, ev("hook_received", "h1", payload=j(f"{MARKER}-payload")))
    await world.streams.write(run_id, "strm_x_user", {"chunk": f"{MARKER}-chunk"})


async def test_payloads_are_ciphertext_at_rest_and_plaintext_through_the_world(
    world: RedisWorld, redis_server: RedisServer
) -> None:
    """With a key, raw Redis holds no payload plaintext but readable names; the World decrypts."""
    world.codec = PayloadCodec.parse(KEY_A)
    run_id = new_run_id()
    await full_log(world, run_id)
    assert await world.list_hooks(run_id) == [("h1", "tok-1", j(f"{MARKER}-meta"))]
    assert await world.find_hook("tok-1") == (run_id, "h1", j(f"{MARKER}-meta"))
    await commit1(world, run_id, ev("run_completed", output=j(f"{MARKER}-output")))

    raw = await raw_dump(redis_server, world, run_id)
    assert MARKER not in raw
    for readable in ("secret_flow", "completed", "step_completed", "charge_card", "tok-1", "$enc:"):
        assert readable in raw

    events = await world.read_events(run_id)
    payloads = [
        getattr(e, f, None) for e in events for f in ("input", "result", "payload", "output")
    ]
    for suffix in ("input", "result", "payload", "output"):
        assert any(isinstance(p, str) and f"{MARKER}-{suffix}" in p for p in payloads), suffix
    info = await world.get_run(run_id)
    assert info is not None and info.corrupt_fields == ()
    assert (info.input, info.output) == (f'["{MARKER}-input"]', j(f"{MARKER}-output"))
    (step,) = await world.list_steps(run_id)
    assert (step.name, step.input, step.output) == ("charge_card", j(MARKER), j(f"{MARKER}-result"))


async def test_stream_chunks_round_trip_encrypted(
    world: RedisWorld, redis_server: RedisServer
) -> None:
    """Stream chunks and a stream's error are encrypted at rest and read back as written."""
    world.codec = PayloadCodec.parse(KEY_A)
    run_id = new_run_id()
    await world.create_run(run_id, "streamer", "[]")
    await world.streams.write(run_id, "s", {"chunk": f"{MARKER}-chunk"})
    await world.streams.write(run_id, "s", f"{MARKER}-bytes".encode())
    await world.streams.close(run_id, "s", ValueError(f"{MARKER}-error"))
    assert MARKER not in await raw_dump(redis_server, world, run_id)
    got: list[Any] = []
    with pytest.raises(ValueError, match=f"{MARKER}-error"):
        async for chunk in world.streams.read(run_id, "s"):
            got.append(chunk)
    assert got == [{"chunk": f"{MARKER}-chunk"}, f"{MARKER}-bytes".encode()]


async def test_acquire_returns_decrypted_events(world: RedisWorld) -> None:
    """Events handed over with a lease (acquire replies) arrive decrypted."""
    world.codec = PayloadCodec.parse(KEY_A)
    run_id = new_run_id()
    await world.create_run(run_id, "secret_flow", f'["{MARKER}"]')
    acquired = await world.acquire(run_id, "w1#1", 10_000, 0)
    assert acquired.code == "ok"
    assert [getattr(e, "input", None) for e in acquired.events] == [f'["{MARKER}"]']


async def test_ciphertext_moved_to_another_run_is_refused(world: RedisWorld) -> None:
    """An envelope copied into another run's hash or log fails authentication, never garbage."""
    codec = PayloadCodec.parse(KEY_A)
    world.codec = codec
    victim, other = new_run_id(), new_run_id()
    await world.create_run(victim, "secret_flow", '["victim"]')
    await world.create_run(other, "secret_flow", '["other"]')
    stolen = await world.redis.hget(world.keys.run(other), "input")
    await world.redis.hset(world.keys.run(victim), "input", stolen)
    info = await world.get_run(victim)
    assert info is not None and info.corrupt_fields == ("input",)
    assert info.input == stolen  # the stored envelope, not someone else's plaintext

    world.codec = None  # write the stolen envelope verbatim into the victim's log
    await commit1(world, victim, ev("run_started"), ev("step_created", "s1", name="x"))
    await commit1(world, victim, ev("step_started", "s1"))
    await commit1(world, victim, ev("step_completed", "s1", result=stolen))
    world.codec = codec
    with pytest.raises(DecryptionError, match="fails authentication") as err:
        await world.read_events(victim)
    assert (err.value.run_id, err.value.field) == (victim, "result")
    acquired = await world.acquire(victim, "w1#1", 10_000, 0)
    assert acquired.events == []  # the worker reads the log itself and fails the run


async def test_rotation_keeps_old_values_readable(world: RedisWorld) -> None:
    """Values written with key A read back after configuring `B,A`; new values use B."""
    world.codec = PayloadCodec.parse(KEY_A)
    run_id = new_run_id()
    await world.create_run(run_id, "secret_flow", f'["{MARKER}"]')
    world.codec = PayloadCodec.parse(f"{KEY_B},{KEY_A}")
    await commit1(world, run_id, ev("run_started"), ev("run_completed", output=j("new")))
    info = await world.get_run(run_id)
    assert info is not None and (info.input, info.output) == (f'["{MARKER}"]', j("new"))
    stored = await world.redis.hmget(world.keys.run(run_id), "input", "output")
    assert [s.split(":")[2] for s in stored] == ["ka", "kb"]

    world.codec = PayloadCodec.parse(KEY_B)  # key A dropped too early
    with pytest.raises(DecryptionError, match="key id 'ka'"):
        await world.read_events(run_id)


async def test_without_the_key_the_world_shows_envelopes(world: RedisWorld) -> None:
    """A reader without a key sees the envelopes as stored; nothing raises, nothing is corrupt."""
    world.codec = PayloadCodec.parse(KEY_A)
    run_id = new_run_id()
    await world.create_run(run_id, "secret_flow", f'["{MARKER}"]')
    world.codec = None
    (created,) = await world.read_events(run_id)
    assert isinstance(created, RunCreated) and created.input.startswith("$enc:v1:ka:")
    info = await world.get_run(run_id)
    assert info is not None and info.corrupt_fields == () and info.input.startswith("$enc:v1:ka:")


async def test_plaintext_written_before_encryption_stays_readable(world: RedisWorld) -> None:
    """A run stored before a key was configured reads the same after; new writes are encrypted."""
    world.codec = None
    run_id = new_run_id()
    await world.create_run(run_id, "secret_flow", f'["{MARKER}"]')
    world.codec = PayloadCodec.parse(KEY_A)
    await commit1(world, run_id, ev("run_started"), ev("run_completed", output=j(MARKER)))
    info = await world.get_run(run_id)
    assert info is not None and (info.input, info.output) == (f'["{MARKER}"]', j(MARKER))
    assert (await world.redis.hget(world.keys.run(run_id), "output")).startswith("$enc:v1:ka:")


async def test_webhook_responses_are_encrypted_in_their_reply_list(world: RedisWorld) -> None:
    """A manual webhook response waits in Redis as an envelope and pops as the text pushed;
    replies not tied to a run (health checks) stay plain."""
    world.codec = PayloadCodec.parse(KEY_A)
    run_id = new_run_id()
    await world.push_reply(run_id, "wres_1", j(MARKER))
    stored = await world.redis.lrange(world.reply_key(run_id, "wres_1"), 0, -1)
    assert len(stored) == 1 and stored[0].startswith("$enc:v1:ka:") and MARKER not in stored[0]
    assert await world.pop_reply(run_id, "wres_1", 1) == j(MARKER)
    await world.push_reply("", "health_1", "ok")
    assert await world.redis.lrange(world.reply_key("", "health_1"), 0, -1) == ["ok"]
