"""The web dashboard in a real browser: Debian's Chromium driven by Playwright (nothing is
downloaded), against a real `wf dashboard` process, a real worker and a real Redis."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.e2e import workflows as w
from tests.support import WF, eventually, free_port
from worker import get_run, start
from world_redis import RedisWorld

MODULE = "tests.e2e.workflows"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
SHOTS = os.environ.get("WF_DASHBOARD_SCREENSHOTS")  # a folder: the README's screenshots


@pytest.fixture
def dashboard(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start `wf dashboard --port P` as a user would; yields a function of extra env -> URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def run(**env: str) -> str:
        port = free_port()
        log = open(tmp_path / f"dashboard{len(procs)}.log", "wb")  # noqa: SIM115 - closed by the process end
        procs.append(
            subprocess.Popen(
                [WF, "dashboard", "--port", str(port)],
                env={**worker_env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return f"http://127.0.0.1:{port}"

    yield run
    for p in procs:
        p.terminate()
        p.wait(10)


async def answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(url, timeout=2, follow_redirects=False)).status_code < 500
    except httpx.TransportError:
        return False


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()


async def shot(page: Page, name: str) -> None:
    if SHOTS:
        await page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


async def test_find_a_run_see_its_steps_and_cancel_a_sleeping_one(
    world: RedisWorld, start_worker, dashboard, browser: Browser
) -> None:  # type: ignore[no-untyped-def]
    """The runs list shows both runs; a finished run's page shows its step completed and its
    log; the sleeping run's Cancel button cancels it and the page says so."""
    start_worker(MODULE)
    done = await start(w.add_flow, 2, 3)
    assert await done.result(timeout=30) == 5
    sleeping = await start(w.sleep_then_step, 3600)
    await eventually(lambda: _sleeps(sleeping.run_id), 20, what="the run sleeps")
    url = dashboard()
    await eventually(lambda: answers(url), 20, what="the dashboard answers")

    page = await browser.new_page()
    await page.goto(url + "/?live=0")
    rows = page.locator("#runs tbody tr")
    assert await rows.count() == 2
    assert "completed" in await page.locator(f"tr[data-run='{done.run_id}']").inner_text()
    await shot(page, "dashboard-runs.png")

    await page.click(f"a[href='/runs/{done.run_id}']")
    await page.wait_for_selector("#steps")
    assert await page.locator("#run-status").inner_text() == "completed"
    steps = await page.locator("#steps tbody").inner_text()
    assert "tests.e2e.workflows:add" in steps and "completed" in steps
    assert "run_completed" in await page.locator("#events").inner_text()
    assert "5" in await page.locator("#output").inner_text()
    bars = page.locator("#timeline .bar")
    assert await bars.count() == 1  # one attempt of the one step, on the run's time axis
    assert "completed" in (await bars.first.get_attribute("title") or "")
    await shot(page, "dashboard-run.png")

    await page.goto(f"{url}/runs/{sleeping.run_id}")
    assert await page.locator("#run-status").inner_text() == "running"
    assert await page.locator("#sleeps tbody tr").count() == 1
    await page.click("#cancel")
    await page.wait_for_selector(".notice")
    assert await page.locator("#run-status").inner_text() == "cancelled"
    assert await get_run(sleeping.run_id).status() == "cancelled"


async def test_with_a_token_pages_ask_for_it_first(
    world: RedisWorld, dashboard, browser: Browser
) -> None:  # type: ignore[no-untyped-def]
    """With WORKFLOW_HTTP_TOKEN every page leads to the sign-in form; a wrong token is refused,
    the right one opens the runs list."""
    await start(w.add_flow, 1, 1)
    url = dashboard(WORKFLOW_HTTP_TOKEN="s3cret-token")
    await eventually(lambda: answers(url), 20, what="the dashboard answers")
    page = await browser.new_page()
    await page.goto(url + "/?live=0")
    assert "/login" in page.url
    await page.fill("input[name=token]", "wrong")
    await page.click("button[type=submit]")
    assert "not the dashboard's" in await page.content()
    await page.fill("input[name=token]", "s3cret-token")
    await page.click("button[type=submit]")
    await page.wait_for_selector("#runs")
    assert await page.locator("#runs tbody tr").count() == 1


async def test_a_non_loopback_bind_without_a_token_is_refused(worker_env: dict[str, str]) -> None:
    """`wf dashboard --host 0.0.0.0` without a token exits with code 2 and says why."""
    done = await asyncio.to_thread(
        subprocess.run,
        [WF, "dashboard", "--host", "0.0.0.0", "--port", str(free_port())],
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "without a token" in done.stderr


async def _sleeps(run_id: str) -> bool:
    return any(e.__struct_config__.tag == "wait_created" for e in await get_run(run_id).events())


async def test_resume_a_hook_rerun_a_run_and_see_the_queues(
    world: RedisWorld, start_worker, dashboard, browser: Browser
) -> None:  # type: ignore[no-untyped-def]
    """A run waiting on a hook is resumed from its page with a JSON payload and completes; its
    'start again' makes a new run with the same input; the queues page lists the ready stream
    and the live worker."""
    from tests.e2e import hook_workflows as hw

    start_worker(MODULE, "tests.e2e.hook_workflows")
    run = await start(hw.hook_cleanup, "dash-token", "from-the-dashboard")
    await eventually(lambda: _hook_live(run.run_id), 20, what="the hook is live")
    url = dashboard()
    await eventually(lambda: answers(url), 20, what="the dashboard answers")
    page = await browser.new_page()
    await page.goto(f"{url}/runs/{run.run_id}")
    await page.fill("#resume input[name=payload]", '{"message": "hi"}')
    await page.click("#resume button")
    await page.wait_for_selector(".notice")
    result = await run.result(timeout=20)
    assert result["message"] == "hi"

    await page.goto(f"{url}/runs/{run.run_id}")
    await page.click("#rerun")
    await page.wait_for_selector(".notice")
    assert f"started again from {run.run_id}" in await page.locator(".notice").inner_text()
    new_id = page.url.split("/runs/", 1)[1].split("?", 1)[0]
    assert new_id != run.run_id
    assert (await get_run(new_id).info()).input == (await run.info()).input

    await page.goto(f"{url}/queues?live=0")
    assert "default" in await page.locator("#queues").inner_text()
    await eventually(lambda: _worker_listed(page, url), 20, what="the live worker is listed")


async def _hook_live(run_id: str) -> bool:
    from worker import get_world

    return bool(await get_world().list_hooks(run_id))  # type: ignore[attr-defined]


async def _worker_listed(page: Page, url: str) -> bool:
    await page.goto(f"{url}/queues?live=0")
    return "healthy" in await page.locator("#workers").inner_text()


async def test_a_cross_site_form_cannot_act(world: RedisWorld, dashboard) -> None:  # type: ignore[no-untyped-def]
    """A POST that another site's page makes the browser send (Origin of that site) is refused:
    the run is not cancelled."""
    run = await start(w.sleep_then_step, 3600)
    url = dashboard()
    await eventually(lambda: answers(url), 20, what="the dashboard answers")
    async with httpx.AsyncClient() as client:
        refused = await client.post(
            f"{url}/runs/{run.run_id}/cancel", headers={"Origin": "http://evil.example"}
        )
    assert refused.status_code == 403
    assert await run.status() == "pending"


async def test_a_run_s_output_streams_and_the_dead_letters(
    world: RedisWorld, start_worker, dashboard, browser: Browser
) -> None:  # type: ignore[no-untyped-def]
    """A run's page shows its output streams' chunks and that they ended; /queues shows the
    partitions' timers and dead letters, and its Drop button deletes one the worker set aside."""
    from tests.e2e import stream_workflows as sw

    start_worker(MODULE, "tests.e2e.stream_workflows")
    run = await start(sw.output_stream)
    assert await run.result(timeout=30) == "done"
    await world.redis.xadd(world.keys.ready(0), {"reason": "created"})  # names no run
    letters = world.dead_letters  # type: ignore[attr-defined]
    (letter,) = await eventually(lambda: letters.list(), 20, what="the letter is set aside")
    url = dashboard()
    await eventually(lambda: answers(url), 20, what="the dashboard answers")
    page = await browser.new_page()
    await page.goto(f"{url}/runs/{run.run_id}")
    streams = page.locator("pre.stream")
    assert await streams.count() == 2
    shown = " ".join([await streams.nth(i).inner_text() for i in range(2)])
    assert "Hello, named stream!" in shown and '"foo": "bar"' in shown
    assert {await s.inner_text() for s in await page.locator(".stream-state").all()} == {"ended"}

    await page.goto(f"{url}/queues?live=0")
    assert await page.locator("#partitions tbody tr").count() == world.keys.partitions
    row = page.locator(f"tr[data-letter='{letter.name}']")
    assert "malformed" in await row.inner_text()
    await row.locator("button[value=drop]").click()
    await page.wait_for_selector(".notice")
    assert f"{letter.name} dropped" in await page.locator(".notice").inner_text()
    assert await letters.list() == []
