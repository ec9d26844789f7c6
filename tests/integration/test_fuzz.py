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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from tests.integration.fuzz_workflows import fuzz_echo, fuzz_hook
from tests.props import bounded
from tests.support import RedisServer, eventually
from worker import set_world, start
from worker._events import NewEvent
from worker._http import ALL_METHODS, PREFIX, create_app
from worker._ids import new_run_id
from worker._requests import request_run_id
from worker._worker import Worker, WorkerConfig
from worker._world import Commit, StartRequest
from world_redis import RedisWorld
from world_redis._keys import GROUP
from world_redis._queue import UNDECODABLE

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
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
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


# -- start and resume requests, wake-ups: an in-process worker takes them ----------------------

GOOD_START = "good_start"
GOOD_RESUME = "good_resume"
NOT_UTF8 = b"\xff\xfe\xc3("  # bytes that no UTF-8 decoder accepts
SMALL_INTS = st.integers(min_value=-(2**53), max_value=2**53)
JUNK_FIELDS = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(
        lambda n: n not in ("workflow", "args", "run_id", "token", "payload")
    ),
    st.text(max_size=40),
    max_size=2,
)
HUGE = st.integers(min_value=MAX_PAYLOAD, max_value=3 * MAX_PAYLOAD)
BAD_JSON = st.text(max_size=30).map(lambda t: "not json: " + t)


@dataclass
class Entry:
    """A request to write: its fields (bytes where they are not UTF-8) and what it should become."""

    kind: str  # GOOD_START, GOOD_RESUME, or what is wrong with it
    fields: dict[str | bytes, str | bytes]
    value: Any = None  # the output the run of a good request ends with


def _entry(kind: str, value: Any = None, **fields: str | bytes) -> Entry:
    named: dict[str | bytes, str | bytes] = {k: v for k, v in fields.items()}
    return Entry(kind, named, value)


def _non_utf8(fields: dict[str, str], where: str) -> Entry:
    """``fields`` with bytes that are not UTF-8 in a field's name or value."""
    out: dict[str | bytes, str | bytes] = {k: v for k, v in fields.items()}
    if where == "name":
        out[b"x" + NOT_UTF8] = "1"
    else:
        name = next(iter(fields), "workflow")
        out[name] = str(fields.get(name, "")).encode() + NOT_UTF8
    return Entry("not_utf8", out)


GOOD_STARTS = st.builds(
    lambda x, with_id, junk: Entry(
        GOOD_START,
        {
            **junk,
            "workflow": "fuzz_echo",
            "args": json.dumps([x]),
            **({"run_id": new_run_id()} if with_id else {}),
        },
        x,
    ),
    SMALL_INTS,
    st.booleans(),
    JUNK_FIELDS,
)
RUN_IDS = st.one_of(st.none(), st.builds(new_run_id), st.text(max_size=20).map(lambda t: "b d" + t))


def _bad_start(kind: str, run_id: str | None, **fields: str) -> Entry:
    return _entry(kind, **fields, **({"run_id": run_id} if run_id is not None else {}))


BAD_STARTS = st.one_of(
    st.builds(lambda r: _bad_start("no_workflow", r, args="[1]"), RUN_IDS),
    st.builds(lambda r: _bad_start("empty_workflow", r, workflow="", args="[1]"), RUN_IDS),
    st.builds(
        lambda w, r: _bad_start("unknown_workflow", r, workflow="nope_" + w, args="[1]"),
        st.text(max_size=20),
        RUN_IDS,
    ),
    st.builds(
        lambda a, r: _bad_start("args_not_json", r, workflow="fuzz_echo", args=a), BAD_JSON, RUN_IDS
    ),
    st.builds(
        lambda a, r: _bad_start("args_not_array", r, workflow="fuzz_echo", args=json.dumps(a)),
        JSON_VALUES.filter(lambda v: not isinstance(v, list)),
        RUN_IDS,
    ),
    st.builds(
        lambda a, r: _bad_start("args_misfit", r, workflow="fuzz_echo", args=json.dumps(a)),
        st.sampled_from([[], [1, 2], ["one"], [None], [[1]], [{"x": 1}], [1.5]]),
        RUN_IDS,
    ),
    st.builds(
        lambda n, r: _bad_start("args_huge", r, workflow="fuzz_echo", args=f"[{'1' * n}]"),
        HUGE,
        RUN_IDS,
    ),
    st.builds(
        lambda t: _entry("bad_run_id", workflow="fuzz_echo", args="[1]", run_id="b d" + t),
        st.text(max_size=20),
    ),
    st.builds(
        _non_utf8,
        st.just({"workflow": "fuzz_echo", "args": "[1]"}),
        st.sampled_from(["name", "value"]),
    ),
)
BAD_RESUMES = st.one_of(
    st.builds(lambda p: _entry("no_token", payload=json.dumps(p)), JSON_VALUES),
    st.builds(lambda p: _entry("empty_token", token="", payload=json.dumps(p)), JSON_VALUES),
    st.builds(
        lambda t: _entry("unknown_token", token="nope_" + t, payload="1"), st.text(max_size=20)
    ),
    st.builds(lambda p: _entry("payload_not_json", token="{live}", payload=p), BAD_JSON),
    st.builds(lambda n: _entry("payload_huge", token="{live}", payload="1" * n), HUGE),
    st.builds(
        _non_utf8, st.just({"token": "nope", "payload": "1"}), st.sampled_from(["name", "value"])
    ),
)
GOOD_RESUMES = st.builds(lambda p: _entry(GOOD_RESUME, p, payload=json.dumps(p)), JSON_VALUES)


@dataclass
class FuzzWorker:
    """An in-process worker on a world of its own, and a client that writes raw bytes."""

    world: RedisWorld
    raw: aioredis.Redis
    worker: Worker
    task: asyncio.Task[None]

    @classmethod
    async def start(cls, server: RedisServer) -> FuzzWorker:
        world = new_world(server)
        await world.ensure_groups()
        worker = Worker(world, WorkerConfig(concurrency=20, drain_timeout_s=1))
        task = asyncio.create_task(worker.run())
        raw = aioredis.Redis.from_url(server.url, decode_responses=False)
        # its duties report once the worker has started (assert_alive reads that report)
        await eventually(lambda: worker.supervisor.report(), 20, "the worker's duties to start")
        return cls(world, raw, worker, task)

    async def stop(self) -> None:
        self.worker.stop()
        await asyncio.wait_for(asyncio.gather(self.task, return_exceptions=True), 30)
        await self.raw.aclose()
        await drop_keys(self.world)

    async def write(self, stream: str, fields: dict[str | bytes, str | bytes]) -> str:
        mid = await self.raw.xadd(stream, fields)  # type: ignore[arg-type]
        return mid.decode() if isinstance(mid, bytes) else str(mid)

    def assert_alive(self) -> None:
        """The worker runs, and none of its duties has failed."""
        assert not self.task.done(), self.task
        report = self.worker.supervisor.report()
        assert report and all(d["failures"] == 0 for d in report.values()), report

    async def settled(self, *streams: str) -> bool:
        """Nothing is left in or pending on ``streams``."""
        for stream in streams:
            if await self.world.redis.xlen(stream):
                return False
            if (await self.world.redis.xpending(stream, GROUP))["pending"]:
                return False
        return True

    async def finished(self, run_ids: Sequence[str]) -> bool:
        for run_id in run_ids:
            info = await self.world.get_run(run_id)
            if info is None or info.status not in ("completed", "failed", "cancelled"):
                return False
        return True

    async def set_aside(self, stream: str) -> dict[str, str]:
        """message id -> reason of the copies on ``stream`` (a rejected or dead-letter stream)."""
        return {f["message_id"]: f["reason"] for _, f in await self.world.redis.xrange(stream)}


@pytest.fixture
def fuzz_worker(redis_server: RedisServer, runner: asyncio.Runner) -> Iterator[FuzzWorker]:
    fw = runner.run(FuzzWorker.start(redis_server))
    try:
        yield fw
    finally:
        runner.run(fw.stop())


def _output(info: Any) -> Any:
    return json.loads(info.output)


def test_requests_fuzz(fuzz_worker: FuzzWorker, runner: asyncio.Runner) -> None:
    """Random bad start and resume requests among good ones: each good one is honoured once, each
    bad one rejected with its reason, nothing stays pending, and the worker carries on."""
    fw = fuzz_worker
    world = fw.world
    start_stream, resume_stream = world.keys.start_stream(), world.keys.resume_stream()

    async def one_batch(starts: list[Entry], resumes: list[Entry]) -> None:
        # a live hook for each good resume (and one for bad resumes that name a live token)
        tokens = [
            f"tok_{uuid.uuid4().hex}"
            for _ in range(sum(e.kind == GOOD_RESUME for e in resumes) + 1)
        ]
        hook_runs = [await start(fuzz_hook, t, world=world) for t in tokens]
        for t in tokens:
            await eventually(partial(world.find_hook, t), 20, f"hook {t}")
        free = iter(tokens[1:])
        for e in resumes:
            if e.kind == GOOD_RESUME:
                e.fields["token"] = next(free)
            elif e.fields.get("token") == "{live}":
                e.fields["token"] = tokens[0]

        written: list[tuple[str, Entry, str]] = []  # (stream, entry, message id)
        for stream, e in [(start_stream, e) for e in starts] + [
            (resume_stream, e) for e in resumes
        ]:
            written.append((stream, e, await fw.write(stream, e.fields)))

        expected_runs: dict[str, Entry] = {}
        failed_records: set[str] = set()
        for stream, e, mid in written:
            if e.kind == GOOD_START:
                run_id = str(e.fields.get("run_id") or "") or request_run_id(
                    StartRequest(message_id=mid, fields={}, kind="start", source=stream)
                )
                expected_runs[run_id] = e
            elif stream == start_stream and e.kind not in (
                "not_utf8",
                "no_workflow",
                "empty_workflow",
            ):
                run_id = str(e.fields.get("run_id", ""))
                if run_id.startswith("wrun_"):
                    failed_records.add(run_id)  # the caller chose the id: it reads why there
        resumed = [
            r.run_id
            for r, e in zip(
                hook_runs[1:], [e for e in resumes if e.kind == GOOD_RESUME], strict=True
            )
        ]

        await eventually(lambda: fw.settled(start_stream, resume_stream), 20, "requests decided")
        await eventually(
            lambda: fw.finished([*expected_runs, *failed_records, *resumed]), 20, "runs finished"
        )

        for run_id, e in expected_runs.items():
            info = await world.get_run(run_id)
            assert info is not None and info.status == "completed", (e, info)
            assert _output(info) == e.value
        for run_id in failed_records:
            info = await world.get_run(run_id)
            assert info is not None and info.status == "failed", info
        good_resumes = [e for e in resumes if e.kind == GOOD_RESUME]
        for run, e in zip(hook_runs[1:], good_resumes, strict=True):
            info = await world.get_run(run.run_id)
            assert info is not None and info.status == "completed" and _output(info) == e.value
        first = await world.get_run(hook_runs[0].run_id)
        assert first is not None and first.status == "running"  # no bad resume reached it

        rejected = {  # the two streams may hold entries of the same id
            stream: await fw.set_aside(world.keys.rejected(stream))
            for stream in (start_stream, resume_stream)
        }
        for stream, e, mid in written:
            good = e.kind in (GOOD_START, GOOD_RESUME)
            reason = rejected[stream].get(mid)
            assert (reason is None) == good, (e, reason)
            assert good or reason, e
            if e.kind == "not_utf8":
                assert reason == UNDECODABLE
        fw.assert_alive()

    @bounded(25)
    @given(
        starts=st.lists(st.one_of(GOOD_STARTS, BAD_STARTS), max_size=8),
        resumes=st.lists(st.one_of(GOOD_RESUMES, BAD_RESUMES), max_size=5),
    )
    def check(starts: list[Entry], resumes: list[Entry]) -> None:
        runner.run(one_batch(starts, resumes))

    check()


WAKEUP_FIELDS = st.one_of(
    st.dictionaries(
        st.sampled_from(["run", "reason", "x"]),
        st.one_of(st.text(max_size=20), st.sampled_from(["", "wrun_", "created", "health:hc_1"])),
        min_size=1,
        max_size=3,
    ),
    st.builds(
        lambda r: {"run": "wrun_" + r, "reason": "created"},
        st.from_regex(r"[A-Z0-9]{1,26}", fullmatch=True),
    ),
)
NOT_UTF8_WAKEUPS = st.sampled_from(
    [{"run": NOT_UTF8}, {b"run" + NOT_UTF8: "wrun_x"}, {"run": b"wrun_" + NOT_UTF8, "reason": "x"}]
)


def test_wakeups_fuzz(fuzz_worker: FuzzWorker, runner: asyncio.Runner) -> None:
    """Random and undecodable wake-ups among real runs: the runs complete, the garbage is
    dead-lettered or dropped, nothing stays pending, and the worker carries on."""
    fw = fuzz_worker
    world = fw.world
    ready, dlq = world.keys.ready(0), world.keys.dlq(0)

    async def one_batch(values: list[int], garbage: list[dict[Any, Any]]) -> None:
        runs = [await start(fuzz_echo, v, world=world) for v in values]
        ids = [await fw.write(ready, fields) for fields in garbage]
        await eventually(lambda: fw.finished([r.run_id for r in runs]), 20, "runs finished")
        await eventually(lambda: fw.settled(ready), 20, "wake-ups decided")
        for run, v in zip(runs, values, strict=True):
            info = await world.get_run(run.run_id)
            assert info is not None and info.status == "completed" and _output(info) == v
        dead = await fw.set_aside(dlq)
        for fields, mid in zip(garbage, ids, strict=True):
            target = fields.get("run")
            undecodable = any(isinstance(x, bytes) for item in fields.items() for x in item)
            # a legacy health check (no run, reason health:hc_...) is answered, not dead-lettered
            health = not target and str(fields.get("reason", "")).startswith("health:")
            if undecodable:
                assert dead.get(mid) == UNDECODABLE, fields
            elif not str(target or "").startswith("wrun_") and not health:
                assert dead.get(mid), fields  # malformed: no valid 'run' field
        fw.assert_alive()

    @bounded(20)
    @given(
        values=st.lists(SMALL_INTS, max_size=4),
        garbage=st.lists(st.one_of(WAKEUP_FIELDS, NOT_UTF8_WAKEUPS), max_size=8),
    )
    def check(values: list[int], garbage: list[dict[Any, Any]]) -> None:
        runner.run(one_batch(values, garbage))

    check()
