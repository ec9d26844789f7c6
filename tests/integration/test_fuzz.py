"""Random and malformed input to the worker's parsers and the HTTP API, on a real Redis.

Start and resume requests and wake-ups are written to the real streams (also bytes that are not
UTF-8, through a client that does not decode) beside valid ones, and an in-process worker takes
them all: every valid one is honoured once, every bad one is set aside with its reason, nothing
stays pending, and no duty of the worker fails. The HTTP API gets random methods, paths, headers,
content types and bodies: it never answers 500, and its errors are JSON with a message.

Each test keeps one event loop (an ``asyncio.Runner``) across its Hypothesis examples, so the
worker started in the first one keeps running while the later ones are written.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.props import bounded
from tests.support import RedisServer
from worker import set_world
from worker._events import NewEvent
from worker._http import ALL_METHODS, PREFIX, create_app
from worker._ids import new_run_id
from worker._world import Commit
from world_redis import RedisWorld

MAX_PAYLOAD = 4096  # the worlds of these tests refuse payloads over 4 KB, so "huge" stays cheap
API_TOKEN = "fuzz-secret"


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


def new_world(server: RedisServer) -> RedisWorld:
    return RedisWorld.from_url(
        server.url, prefix=f"tf{uuid.uuid4().hex[:10]}", max_payload_bytes=MAX_PAYLOAD
    )


async def drop_keys(world: RedisWorld) -> None:
    """Delete every key of the world's prefix and close it."""
    keys = [k async for k in world.redis.scan_iter(match=f"{world.keys.prefix}:*")]
    if keys:
        await world.redis.delete(*keys)
    await world.close()


# -- the HTTP API -----------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
START_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "workflow": st.one_of(st.sampled_from(["fuzz_echo", "", "nope"]), JSON_VALUES),
        "args": st.one_of(st.just([1]), JSON_VALUES),
        "kwargs": JSON_VALUES,
        "run_id": st.one_of(st.builds(new_run_id), JSON_VALUES),
    },
)
VALID_STARTS = st.fixed_dictionaries(
    {"workflow": st.just("fuzz_echo"), "args": st.tuples(st.integers()).map(list)},
    optional={"run_id": st.builds(new_run_id), "kwargs": st.just({})},
)
BODIES = st.one_of(
    VALID_STARTS.map(lambda v: json.dumps(v).encode()),
    START_BODIES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.binary(min_size=MAX_PAYLOAD, max_size=MAX_PAYLOAD + 200),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    START_BODIES.map(lambda v: json.dumps(v).encode()),
)
HOOK_TOKEN = "fuzz-live-hook"  # a live hook of a run, so resumes can succeed
SEGMENTS = st.one_of(
    st.sampled_from(
        [HOOK_TOKEN, "", "wrun_01HZZZZZZZZZZZZZZZZZZZZZZZ", "%ff%fe", "..", "a/b", "%00", "x?y"]
    ),
    st.text(max_size=30).map(lambda t: quote(t, safe="")),
)
API_CALLS = st.one_of(
    st.just(("POST", PREFIX + "/runs")),
    SEGMENTS.map(lambda s: ("GET", PREFIX + "/runs/" + s)),
    SEGMENTS.map(lambda s: ("POST", PREFIX + "/hooks/" + s)),
    st.tuples(st.sampled_from(ALL_METHODS), SEGMENTS.map(lambda s: PREFIX + "/webhook/" + s)),
)
ANY_CALLS = st.tuples(
    st.sampled_from(ALL_METHODS),
    st.one_of(
        st.tuples(st.sampled_from(["/runs", "/runs/", "/hooks/", "/", ""]), SEGMENTS).map(
            lambda p: PREFIX + p[0] + p[1]
        ),
        SEGMENTS.map(lambda s: "/" + s),
    ),
)
CALLS = st.one_of(API_CALLS, API_CALLS, ANY_CALLS)
QUERIES = st.sampled_from(["", "", "", "?__health", "?x=1", "?__health=%ff", "?%ff"])
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json",
            "application/x+json; charset=utf-8",
            "text/plain",
            "application/+json",
        ]
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
)
AUTHORIZATIONS = st.sampled_from(
    [
        f"Bearer {API_TOKEN}",
        f"Bearer {API_TOKEN}",
        f"bearer   {API_TOKEN} ",
        None,
        "Bearer wrong",
        "Basic eA==",
        "Bearer",
    ]
)


def _api_route(method: str, path: str) -> bool:
    """Whether the request reaches a handler of the bearer-protected JSON API (the router's
    ``{token:path}`` is ``.*``, which stops at a line break: such a path is not routed)."""
    rest = path.removeprefix(PREFIX)
    if rest == path or "\n" in rest:
        return False
    if method == "POST" and (rest == "/runs" or (rest.startswith("/hooks/") and len(rest) > 7)):
        return True
    return method == "GET" and rest.startswith("/runs/") and len(rest) > 6 and "/" not in rest[6:]


def test_http_api_never_answers_500(redis_server: RedisServer, runner: asyncio.Runner) -> None:
    """Random methods, paths, headers and bodies never get a 500; API errors are JSON with a message."""
    world = new_world(redis_server)
    apps = {
        True: create_app(world, token=API_TOKEN, max_body_bytes=MAX_PAYLOAD),
        False: create_app(world, token=None, max_body_bytes=MAX_PAYLOAD),
    }

    async def send(
        guarded: bool, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> httpx.Response:
        transport = httpx.ASGITransport(app=apps[guarded], raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, url, headers=headers, content=body)

    @bounded(300)
    @given(
        guarded=st.booleans(),
        call=CALLS,
        query=QUERIES,
        content_type=CONTENT_TYPES,
        authorization=AUTHORIZATIONS,
        body=BODIES,
    )
    def check(
        guarded: bool,
        call: tuple[str, str],
        query: str,
        content_type: str,
        authorization: str | None,
        body: bytes,
    ) -> None:
        method, path = call
        headers = {"content-type": content_type}
        if authorization is not None:
            headers["authorization"] = authorization
        response = runner.run(send(guarded, method, path + query, headers, body))
        assert response.status_code < 500 or response.status_code in (503, 504), response.text
        sent = response.request.url.path  # after the client normalized it ("..", "%2F")
        if response.status_code >= 400 and _api_route(method, sent) and "__health" not in query:
            data = response.json()
            assert isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"]

    async def live_hook() -> None:
        run_id = new_run_id()
        await world.create_run(run_id, "fuzz_hook", "[]")
        hook = NewEvent("hook_created", "hook_fuzz", {"token": HOOK_TOKEN})
        (res,) = await world.commit([Commit(run_id=run_id, events=[NewEvent("run_started"), hook])])
        assert res.code == "ok", res

    set_world(world)
    try:
        runner.run(live_hook())
        check()
    finally:
        set_world(None)
        runner.run(drop_keys(world))
