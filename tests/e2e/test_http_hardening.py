"""HTTP hardening: what the webhook route stores, where its URL comes from, what the API accepts."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e import hardening_workflows as hw
from tests.e2e import webhook_workflows as ww
from tests.e2e.test_http import serving as http_serving
from tests.e2e.test_webhooks import webhook_tokens
from tests.integration.test_bad_run_hash import corrupt_run
from tests.support import WF, RedisServer, free_port, wait_for, wf_json
from worker import Run, start
from world_redis import RedisWorld

API = "/.well-known/workflow/v1"
MODULES = ("tests.e2e.webhook_workflows", "tests.e2e.hardening_workflows")
SECRETS = {
    "Authorization": "Bearer caller-secret-1",
    "Cookie": "session=caller-secret-2",
    "Proxy-Authorization": "Basic caller-secret-3",
    "Set-Cookie": "id=caller-secret-4",
}


def serving(
    redis: RedisServer, prefix: str, **options: Any
) -> contextlib.AbstractContextManager[str]:
    """Serve ``create_app(**options)`` (no base URL unless given) in a thread; yields its origin."""
    return http_serving(redis, prefix, own_origin=False, **options)


async def stored_log(world: RedisWorld, run: Run) -> str:
    """Every field of every entry of the run's event stream in Redis, as one text."""
    rows = await world.redis.xrange(world.keys.events(run.run_id), "-", "+")
    return "\n".join(f"{k}={v}" for _, fields in rows for k, v in fields.items())


async def send_webhook(base: str, run: Run, headers: dict[str, str]) -> None:
    """POST a JSON body to the run's only webhook with ``headers``; expects 202."""
    (token,) = await webhook_tokens(run, 1)
    async with httpx.AsyncClient(base_url=base) as client:
        res = await client.post(f"{API}/webhook/{token}", json={"n": 1}, headers=headers)
    assert res.status_code == 202


async def test_webhook_drops_credentials(  # type: ignore[no-untyped-def]
    world: RedisWorld, redis_server: RedisServer, prefix: str, start_worker
) -> None:
    """Authorization, Cookie, Proxy-Authorization and Set-Cookie never reach Redis or the workflow."""
    start_worker(*MODULES)
    run = await start(ww.webhook_once)
    with serving(redis_server, prefix, base_url="http://hooks.test") as base:
        await send_webhook(base, run, {**SECRETS, "X-Sig": "kept"})
        result: dict[str, Any] = await run.result(timeout=20)
    assert result["headers"]["x-sig"] == "kept"
    assert not {name.lower() for name in SECRETS} & set(result["headers"])
    log = await stored_log(world, run)
    assert "x-sig" in log and "caller-secret" not in log


async def test_webhook_keeps_headers_it_opted_in_to(  # type: ignore[no-untyped-def]
    world: RedisWorld, redis_server: RedisServer, prefix: str, start_worker
) -> None:
    """create_webhook(keep_headers=["Authorization"]) receives that header and no other credential."""
    start_worker(*MODULES)
    run = await start(hw.webhook_keeps_authorization)
    with serving(redis_server, prefix, base_url="http://hooks.test") as base:
        await send_webhook(base, run, SECRETS)
        result: dict[str, Any] = await run.result(timeout=20)
    assert result["headers"]["authorization"] == "Bearer caller-secret-1"
    assert not {"cookie", "proxy-authorization", "set-cookie"} & set(result["headers"])


async def test_webhook_url_ignores_forged_host(  # type: ignore[no-untyped-def]
    world: RedisWorld,
    redis_server: RedisServer,
    prefix: str,
    start_worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The URL a webhook receives comes from WORKFLOW_BASE_URL, never from the Host header."""
    monkeypatch.setenv("WORKFLOW_BASE_URL", "https://hooks.example.test/")
    start_worker(*MODULES)
    run = await start(ww.webhook_once)
    with serving(redis_server, prefix) as base:
        (token,) = await webhook_tokens(run, 1)
        await send_webhook(base, run, {"Host": "attacker.example"})
        result: dict[str, Any] = await run.result(timeout=20)
    assert result["url"] == f"https://hooks.example.test{API}/webhook/{token}"


async def test_webhook_url_default_without_base_url(  # type: ignore[no-untyped-def]
    world: RedisWorld,
    redis_server: RedisServer,
    prefix: str,
    start_worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without WORKFLOW_BASE_URL the request URL uses the default origin, the one hook.url uses."""
    monkeypatch.delenv("WORKFLOW_BASE_URL", raising=False)
    start_worker(*MODULES)
    run = await start(ww.webhook_once)
    with serving(redis_server, prefix) as base:
        (token,) = await webhook_tokens(run, 1)
        await send_webhook(base, run, {"Host": "attacker.example"})
        result: dict[str, Any] = await run.result(timeout=20)
    assert result["url"] == f"http://localhost:8787{API}/webhook/{token}"


async def test_api_requires_json_content_type(
    world: RedisWorld, redis_server: RedisServer, prefix: str
) -> None:
    """JSON endpoints answer 415 naming application/json to bodies sent as another type."""
    body = b'{"workflow": "add_ten", "args": [1]}'
    with serving(redis_server, prefix) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            for path in (f"{API}/runs", f"{API}/hooks/some-token"):
                for headers in (
                    {"Content-Type": "text/plain"},
                    {"Content-Type": "application/x-www-form-urlencoded"},
                    {"Content-Type": "multipart/form-data; boundary=x"},
                    {"Content-Type": "application/jsonp"},
                    {},
                ):
                    res = await client.post(path, content=body, headers=headers)
                    assert res.status_code == 415, (path, headers)
                    assert "application/json" in res.json()["error"]
            assert await world.list_runs() == ([], None)


async def test_api_accepts_json_content_types(
    world: RedisWorld, redis_server: RedisServer, prefix: str
) -> None:
    """application/json with parameters and application/*+json are accepted by POST /runs."""
    body = b'{"workflow": "add_ten", "args": [1]}'
    with serving(redis_server, prefix) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            for content_type in (
                "application/json",
                "Application/JSON; charset=utf-8",
                "application/vnd.api+json",
            ):
                res = await client.post(
                    f"{API}/runs", content=body, headers={"Content-Type": content_type}
                )
                assert res.status_code == 201, content_type
    assert len((await world.list_runs())[0]) == 3


async def test_inspect_runs_shows_a_run_with_a_bad_field(
    world: RedisWorld, worker_env: dict[str, str]
) -> None:
    """`wf inspect runs` (table and --json) and `wf inspect run` list a bad run, naming its field."""
    good = (await start("add_ten", 1)).run_id
    bad = await corrupt_run(world, created_at="garbage")
    runs = await wf_json(worker_env, "inspect", "runs")
    assert isinstance(runs, list)
    by_id = {r["run_id"]: r for r in runs}
    assert by_id[bad]["corrupt_fields"] == ["created_at"] and by_id[good]["corrupt_fields"] == []
    one = await wf_json(worker_env, "inspect", "run", bad)
    assert isinstance(one, dict) and one["corrupt_fields"] == ["created_at"]
    table = await asyncio.to_thread(
        subprocess.run, [WF, "inspect", "runs"], env=worker_env, capture_output=True, text=True
    )
    assert table.returncode == 0, table.stderr
    (row,) = [line for line in table.stdout.splitlines() if line.startswith(f"{bad} ")]
    assert "<invalid>" in row and good in table.stdout
    assert f"{bad}: invalid created_at" in table.stdout


async def test_run_status_reports_a_bad_output(
    world: RedisWorld, redis_server: RedisServer, prefix: str
) -> None:
    """GET /runs/{id} of a run whose output is not JSON answers 200 naming the corrupt field."""
    run_id = await corrupt_run(world, status="completed", output="{not json")
    with serving(redis_server, prefix) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            res = await client.get(f"{API}/runs/{run_id}")
    assert res.status_code == 200
    assert res.json() == {
        "run_id": run_id,
        "status": "completed",
        "output": None,
        "error": None,
        "corrupt_fields": ["output"],
    }


def serve_env(worker_env: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment of a `wf serve` process: no token unless given."""
    env = {k: v for k, v in worker_env.items() if k != "WORKFLOW_HTTP_TOKEN"}
    return {**env, **extra}


@contextlib.contextmanager
def wf_serve(env: dict[str, str], *args: str) -> Iterator[int]:
    """`wf serve --port P *args` as a user runs it, up and answering health; yields P."""
    port = free_port()
    proc = subprocess.Popen(
        [WF, "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"wf serve exited with {proc.returncode}: {err}")
        try:
            res = httpx.get(f"http://127.0.0.1:{port}{API}/runs?__health", timeout=1)
        except httpx.TransportError:
            return False
        return res.status_code == 200

    try:
        wait_for(healthy, 20, what="wf serve to answer health checks")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


def test_serve_refuses_public_address_without_token(worker_env: dict[str, str]) -> None:
    """`wf serve --host 0.0.0.0` without a token exits non-zero naming WORKFLOW_HTTP_TOKEN."""
    for host in ("0.0.0.0", "::"):
        done = subprocess.run(
            [WF, "serve", "--host", host, "--port", str(free_port())],
            env=serve_env(worker_env),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode != 0, host
        assert "WORKFLOW_HTTP_TOKEN" in done.stderr and "--allow-unauthenticated" in done.stderr


def test_serve_public_address_with_token(worker_env: dict[str, str]) -> None:
    """With WORKFLOW_HTTP_TOKEN, `wf serve --host 0.0.0.0` serves, and the API asks for the token."""
    env = serve_env(worker_env, WORKFLOW_HTTP_TOKEN="serve-token")
    with wf_serve(env, "--host", "0.0.0.0") as port:
        res = httpx.get(f"http://127.0.0.1:{port}{API}/runs/wrun_x", timeout=5)
    assert res.status_code == 401


def test_serve_public_address_allow_unauthenticated(worker_env: dict[str, str]) -> None:
    """`wf serve --host 0.0.0.0 --allow-unauthenticated` serves without a token."""
    with wf_serve(serve_env(worker_env), "--host", "0.0.0.0", "--allow-unauthenticated") as port:
        res = httpx.get(f"http://127.0.0.1:{port}{API}/runs/wrun_x", timeout=5)
    assert res.status_code == 404


def test_serve_loopback_needs_no_token(worker_env: dict[str, str]) -> None:
    """`wf serve` on its default loopback address serves without a token, as before."""
    with wf_serve(serve_env(worker_env)) as port:
        res = httpx.get(f"http://127.0.0.1:{port}{API}/runs/wrun_x", timeout=5)
    assert res.status_code == 404
