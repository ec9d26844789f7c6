"""The web dashboard (``wf dashboard``, or ``create_dashboard_app()`` mounted in an app): find a
run, see what it did and why, and act on it.

Pages are HTML rendered on the server (Jinja2, autoescaped); every page reads without
JavaScript, and a few lines of it refresh the runs list and a live run. ``/`` lists runs, newest
first (status and workflow filters, a run id search, cursor pages); ``/runs/{id}`` shows a run:
status, workflow, deployment, input, output or error with its traceback, its steps with attempts
and times, its sleeps and hooks, and its raw event log; a run not finished has a Cancel button.

With a token (``WORKFLOW_HTTP_TOKEN``, the HTTP API's) every page and action needs it: sent as
``Authorization: Bearer <token>``, or given once on ``/login``, which keeps it in an HttpOnly,
SameSite=Strict cookie. Without one the dashboard serves loopback only (``wf dashboard`` refuses
another address, as ``wf serve`` does).
"""

from __future__ import annotations

import hmac
import json
import os
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from . import _serde
from ._children import children_of
from ._client import get_run, get_world, rerun
from ._deployments import base_queue, deployment_store, lane_deployment, live_window_ms
from ._dlq import drop_dead_letter, replay_dead_letter
from ._errors import RunNotFoundError, WorkflowError
from ._events import sleeps_from_events, timeline_from_events
from ._health import worker_reports
from ._hooks import resume_hook
from ._pool_world import pool_queues
from ._world import World

COOKIE = "wf_dashboard_token"
PAGE = 25
ACTIVE = ("pending", "running")
STATUSES = ("pending", "running", "completed", "failed", "cancelled")


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _pretty(text: str | None) -> str:
    """A stored JSON payload, indented; an error shown as type, message and traceback."""
    if text is None:
        return ""
    try:
        value = _serde.loads(text)
    except Exception:
        return text
    if isinstance(value, BaseException):
        tb = getattr(value, "__wf_traceback__", "")
        head = f"{getattr(value, 'type_name', type(value).__name__)}: {value}"
        return f"{head}\n\n{tb}".rstrip()
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


class Dashboard:
    def __init__(self, world: World | None, token: str | None) -> None:
        self._world = world
        self.token = token
        self.env = Environment(
            loader=PackageLoader("worker", "templates"),
            autoescape=select_autoescape(["html"]),
        )
        self.env.filters["when"] = _when
        self.env.filters["pretty"] = _pretty

    @property
    def world(self) -> World:
        return self._world or get_world()

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            given = request.cookies.get(COOKIE, "")
        return bool(given) and hmac.compare_digest(given.strip().encode(), self.token.encode())

    def page(self, name: str, code: int = 200, **values: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(auth=self.token is not None, **values)
        return HTMLResponse(html, status_code=code)

    def login_first(self, request: Request) -> Response:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    async def runs(self, request: Request) -> Response:
        if not self.authorized(request):
            return self.login_first(request)
        q = request.query_params
        status = q.get("status") or None
        workflow = q.get("workflow") or None
        search = (q.get("q") or "").strip()
        if search:
            info = await self.world.get_run(search)
            runs, cursor = ([info] if info is not None else []), None
        else:
            runs, cursor = await self.world.list_runs(
                status=status if status in STATUSES else None,
                workflow=workflow,
                limit=PAGE,
                cursor=q.get("cursor") or None,
            )
        return self.page(
            "runs.html",
            runs=runs,
            cursor=cursor,
            status=status or "",
            workflow=workflow or "",
            search=search,
            statuses=STATUSES,
            live=q.get("live", "1") != "0",
        )

    async def run(self, request: Request) -> Response:
        if not self.authorized(request):
            return self.login_first(request)
        run_id = request.path_params["run_id"]
        run = get_run(run_id, world=self.world)
        try:
            info = await run.info()
        except RunNotFoundError:
            return self.page("missing.html", code=404, run_id=run_id)
        events = await run.events()
        return self.page(
            "run.html",
            info=info,
            steps=await run.steps(),
            events=events,
            sleeps=sleeps_from_events(events, info.status in ACTIVE),
            children=children_of(events),
            timeline=_timeline(events, info),
            streams=await self._streams(run_id),
            hooks=await self.world.list_hooks(run_id),
            active=info.status in ACTIVE,
            live=info.status in ACTIVE,
            notice=request.query_params.get("notice", ""),
        )

    async def _streams(self, run_id: str) -> list[dict[str, Any]]:
        """The run's output streams: their last chunks (as JSON text) and their state."""
        store = getattr(self.world, "streams", None)
        if store is None:
            return []
        out = []
        for name in await store.list_streams(run_id):
            chunks, state = await store.snapshot(run_id, name)
            shown = [json.dumps(c, default=str, ensure_ascii=False) for c in chunks]
            out.append({"name": name, "chunks": shown, "state": state})
        return out

    def refuse_action(self, request: Request) -> Response | None:
        """An action is refused unless authorized and sent by a page of this dashboard: a
        cross-site form posting to a loopback dashboard would otherwise act (CSRF)."""
        if not self.authorized(request):
            return Response("unauthorized", 401)
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return Response("cross-site request refused", 403)
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
            return Response("cross-origin request refused", 403)
        return None

    def action(self, handler: Any) -> Any:
        """``handler`` run only for a request :meth:`refuse_action` lets through."""

        async def endpoint(request: Request) -> Response:
            refused = self.refuse_action(request)
            return refused if refused is not None else await handler(request)

        return endpoint

    async def dead_letter(self, request: Request) -> Response:
        """Replay or drop the dead letter named in the form; back to /queues with the outcome."""
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name, action = form.get("name", [""])[0], form.get("action", [""])[0]
        try:
            if action == "replay":
                notice = f"{name}: run {await replay_dead_letter(self.world, name)} woken"
            elif action == "drop":
                await drop_dead_letter(self.world, name)
                notice = f"{name} dropped"
            else:
                notice = f"unknown action {action!r}"
        except WorkflowError as exc:
            notice = str(exc)
        return RedirectResponse(f"/queues?{urlencode({'notice': notice, 'live': '0'})}", 303)

    def back(self, run_id: str, notice: str) -> Response:
        return RedirectResponse(f"/runs/{run_id}?{urlencode({'notice': notice})}", 303)

    async def cancel(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            await get_run(run_id, world=self.world).cancel()
            notice = "cancelled"
        except WorkflowError as exc:
            notice = str(exc)
        return self.back(run_id, notice)

    async def rerun(self, request: Request) -> Response:
        """Start a new run with the same input; the new run's page."""
        run_id = request.path_params["run_id"]
        try:
            new = await rerun(run_id, world=self.world)
        except WorkflowError as exc:
            return self.back(run_id, str(exc))
        return self.back(new.run_id, f"started again from {run_id}")

    async def resume(self, request: Request) -> Response:
        """Resume one of the run's hooks with the JSON payload of the form."""
        run_id = request.path_params["run_id"]
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        hook_id, text = form.get("hook", [""])[0], form.get("payload", ["null"])[0]
        tokens = {h: t for h, t, _ in await self.world.list_hooks(run_id)}
        if hook_id not in tokens:
            return self.back(run_id, f"hook {hook_id} is not live")
        try:
            payload = json.loads(text or "null")
        except ValueError as exc:
            return self.back(run_id, f"the payload is not JSON: {exc}")
        try:
            await resume_hook(tokens[hook_id], payload, world=self.world)
        except WorkflowError as exc:
            return self.back(run_id, str(exc))
        return self.back(run_id, f"hook {hook_id} resumed")

    async def queues(self, request: Request) -> Response:
        """Per partition and queue: length, lag, pending, oldest; live workers; deployments."""
        if not self.authorized(request):
            return self.login_first(request)
        world = self.world
        gauges = getattr(world, "gauges", None)
        store = getattr(world, "dead_letters", None)
        flow = getattr(world, "flow", None)  # flow-control limits (see _flow_gate.py)
        return self.page(
            "queues.html",
            queues=await pool_queues(world).queue_stats(),
            partitions=await gauges.partition_gauges() if gauges is not None else [],
            letters=await store.list(PAGE) if store is not None else [],
            limits=await flow.limits() if flow is not None else [],
            notice=request.query_params.get("notice", ""),
            workers=await worker_reports(world),
            deployments=await deployment_store(world).stats(live_window_ms()),
            base_queue=base_queue,
            lane_deployment=lane_deployment,
            live=request.query_params.get("live", "1") != "0",
        )

    async def login(self, request: Request) -> Response:
        target = request.query_params.get("next", "/")
        target = target if target.startswith("/") and not target.startswith("//") else "/"
        if request.method == "GET":
            return self.page("login.html", next=target, failed=False)
        # the sign-in form is urlencoded: parsed with the standard library (no multipart here)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = form.get("token", [""])[0]
        if self.token is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            return self.page("login.html", code=401, next=target, failed=True)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
        return response


def _timeline(events: list[Any], info: Any) -> dict[str, Any]:
    """The run's timeline bars placed on its time axis (left and width in % of the run)."""
    end = info.completed_at or int(time.time() * 1000)
    bars = timeline_from_events(events, end)
    start = info.created_at or (bars[0]["start_ms"] if bars else end)
    span = max(1, end - start)
    for bar in bars:
        bar["left"] = round(100 * (bar["start_ms"] - start) / span, 2)
        bar["width"] = max(0.3, round(100 * (bar["end_ms"] - bar["start_ms"]) / span, 2))
        bar["took_ms"] = bar["end_ms"] - bar["start_ms"]
    return {"bars": bars, "span_ms": span, "start_ms": start}


def create_dashboard_app(world: World | None = None, *, token: str | None = None) -> Starlette:
    """The dashboard as an ASGI app (``token`` defaults to ``WORKFLOW_HTTP_TOKEN``)."""
    dash = Dashboard(world, token if token is not None else os.environ.get("WORKFLOW_HTTP_TOKEN"))
    return Starlette(
        routes=[
            Route("/", dash.runs),
            Route("/runs/{run_id}", dash.run),
            Route("/runs/{run_id}/cancel", dash.action(dash.cancel), methods=["POST"]),
            Route("/runs/{run_id}/rerun", dash.action(dash.rerun), methods=["POST"]),
            Route("/runs/{run_id}/resume", dash.action(dash.resume), methods=["POST"]),
            Route("/queues", dash.queues),
            Route("/dead-letters", dash.action(dash.dead_letter), methods=["POST"]),
            Route("/login", dash.login, methods=["GET", "POST"]),
        ]
    )
