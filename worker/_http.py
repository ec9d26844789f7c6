"""The HTTP surface: an ASGI application (Starlette) to serve with ``wf serve`` or mount anywhere.

Routes, all under ``/.well-known/workflow/v1``:

=========================  ========  =============================================================
``/webhook/{token}``       any       public: resume a webhook with the request (see ``_webhooks``);
                                     202 empty, the static response, or the step's manual response
``POST /runs``             bearer    ``{"workflow", "args", "kwargs"?, "run_id"?}`` -> 201 ``{"run_id"}``
``GET /runs/{run_id}``     bearer    ``{"run_id", "status", "output", "error"}`` (404 unknown run),
                                     ``"corrupt_fields": [...]`` too when stored fields are bad
``POST /hooks/{token}``    bearer    JSON body = payload -> 202 ``{"run_id", "hook_id"}``; an ``Idempotency-Key``
                                      header names the delivery (a retry with it is received once)
any path ``?__health``     public    200 text/plain ``Workflow DevKit "<path>" endpoint is healthy``
=========================  ========  =============================================================

The bearer token comes from ``token=`` or ``WORKFLOW_HTTP_TOKEN``; without one the API is open,
so ``check_bind`` keeps a server without one on loopback addresses unless told otherwise.
The JSON endpoints require ``Content-Type: application/json`` (or ``application/*+json``).
Errors of the API are JSON ``{"error": "..."}``: 400 malformed input, 401 missing or wrong token,
404 unknown run or hook, 409 a webhook sent to the hook API, 413 body too large, 415 a body that is
not declared as JSON. The webhook route answers errors with empty bodies (404 unknown token or plain
hook, 413, 504 no manual response).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ._client import get_world, start
from ._context import base_url as default_base_url
from ._errors import (
    CorruptEventError,
    HookNotFoundError,
    PayloadTooLargeError,
    RunNotFoundError,
    UnsafeBindError,
    WorkflowError,
    WorkflowTimeoutError,
    WorldUnavailableError,
)
from ._health import http_health_message
from ._hooks import get_hook_by_token, resume_hook
from ._ids import check_run_id
from ._webhooks import WebhookRequest, deliver, find_webhook, webhook_target
from ._world import RunInfo, World

PREFIX = "/.well-known/workflow/v1"
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
DEFAULT_MAX_BODY = 1_048_576
_DRAIN_CAP = 16 * 1_048_576  # an oversized body is read (and dropped) up to this size
_CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "*"}

Handler = Callable[[Request], Awaitable[Response]]


def check_bind(host: str, *, token: str | None, allow_unauthenticated: bool = False) -> None:
    """Refuse (UnsafeBindError) to serve the API on ``host`` unauthenticated unless it is loopback.

    Loopback is 127.0.0.0/8, ``::1`` and ``localhost``; any other address or name (``0.0.0.0``,
    ``::``, a LAN address, a host name) needs ``token`` or an explicit ``allow_unauthenticated``.
    Every command that serves the app calls it before listening.
    """
    if token or allow_unauthenticated or is_loopback(host):
        return
    shown = repr(host) if host else "all interfaces"
    raise UnsafeBindError(
        f"refusing to serve the HTTP API on {shown} without a token: anyone who reaches it could "
        "start runs and resume hooks. Set WORKFLOW_HTTP_TOKEN (clients send 'Authorization: "
        "Bearer <token>'), listen on a loopback address (--host 127.0.0.1), or pass "
        "--allow-unauthenticated if something in front of it authenticates requests"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ``::1``) or ``localhost``."""
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class ApiError(Exception):
    """An API error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(
    world: World | None = None,
    *,
    token: str | None = None,
    base_url: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    response_timeout_s: float = 30.0,
) -> Starlette:
    """The ASGI app (see the module docstring); ``world`` defaults to ``get_world()`` per request.

    ``base_url`` is the public origin the app is reached at (default ``WORKFLOW_BASE_URL``, else
    ``http://localhost:8787``, the origin ``Webhook.url`` uses too): the URL of the requests a
    webhook receives is built from it and the request path, never from the Host header.
    """
    if token is not None and not token.strip():
        # an empty token would lock every caller out (or, read loosely, let every caller in)
        raise ValueError("token must not be empty: pass None to serve the API without a token")
    bearer = token if token is not None else os.environ.get("WORKFLOW_HTTP_TOKEN") or None
    origin = base_url or default_base_url()
    api = _Api(world, bearer, origin, max_body_bytes, response_timeout_s)
    from ._metrics import metrics_endpoint, redis_metrics  # prometheus-client: only here

    registry, gauges = redis_metrics(world)
    routes = [
        Route("/metrics", metrics_endpoint(registry, gauges, bearer)),
        Route(PREFIX + "/webhook/{token:path}", api.webhook, methods=ALL_METHODS),
        Route(PREFIX + "/runs", api.protected(api.start_run), methods=["POST"]),
        Route(PREFIX + "/runs/{run_id}", api.protected(api.run_status), methods=["GET"]),
        Route(PREFIX + "/hooks/{token:path}", api.protected(api.resume), methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(HealthCheck)])


class HealthCheck:
    """ASGI middleware: ``?__health`` on any workflow path answers that the endpoint is up."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_health(scope):
            response: Response = PlainTextResponse(
                http_health_message(scope["path"]), headers=_CORS
            )
            if scope["method"] == "OPTIONS":
                response = Response(status_code=204, headers=_CORS)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_health(scope: Scope) -> bool:
    if not str(scope["path"]).startswith(PREFIX + "/"):
        return False
    query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"), True)
    return "__health" in query


class _Api:
    def __init__(
        self,
        world: World | None,
        token: str | None,
        base_url: str,
        max_body: int,
        response_timeout_s: float,
    ) -> None:
        self._world = world
        self.token = token
        self.base_url = base_url.rstrip("/")
        self.max_body = max_body
        self.response_timeout_s = response_timeout_s

    @property
    def world(self) -> World:
        return self._world or get_world()

    # -- the public webhook route ----------------------------------------------------------------

    async def webhook(self, request: Request) -> Response:
        try:
            target = await find_webhook(request.path_params["token"], self.world)
        except HookNotFoundError:
            return Response(status_code=404)
        body = await read_body(request, self.max_body)
        if body is None:
            return Response(status_code=413)
        received = WebhookRequest(
            method=request.method,
            url=self._public_url(request),
            headers=_headers(request),
            body=body,
        )
        try:
            answer = await deliver(target, received, self.world, self.response_timeout_s)
        except HookNotFoundError:
            return Response(status_code=404)
        except PayloadTooLargeError:
            return Response(status_code=413)
        except WorkflowTimeoutError:
            return Response(status_code=504)
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    def _public_url(self, request: Request) -> str:
        query = request.url.query
        return self.base_url + request.url.path + (f"?{query}" if query else "")

    # -- the bearer-protected API ----------------------------------------------------------------

    def protected(self, handler: Handler) -> Handler:
        """``handler`` behind the bearer token, with ApiError and engine errors answered as JSON."""

        async def endpoint(request: Request) -> Response:
            try:
                self._authorize(request)
                return await handler(request)
            except ApiError as exc:
                headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
                return JSONResponse({"error": exc.message}, exc.status, headers=headers)
            except Exception as exc:
                status = _status_of(exc)
                if status is None:
                    raise
                return JSONResponse({"error": str(exc)}, status)

        return endpoint

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise ApiError(401, "invalid bearer token")

    async def _json(self, request: Request, *, empty: Any = msgspec.UNSET) -> Any:
        content_type = request.headers.get("content-type", "")
        if not is_json_media_type(content_type):
            sent = repr(content_type) if content_type else "none"
            raise ApiError(
                415, f"unsupported Content-Type {sent}: send 'Content-Type: application/json'"
            )
        body = await read_body(request, self.max_body)
        if body is None:
            raise ApiError(413, f"request body is over the limit of {self.max_body} bytes")
        if not body.strip() and empty is not msgspec.UNSET:
            return empty
        try:
            return msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"malformed JSON body: {exc}") from None

    async def start_run(self, request: Request) -> Response:
        workflow, args, kwargs, run_id = _start_fields(await self._json(request))
        run = await start(workflow, *args, run_id=run_id, world=self.world, **kwargs)
        return JSONResponse({"run_id": run.run_id}, 201)

    async def run_status(self, request: Request) -> Response:
        run_id = check_run_id(request.path_params["run_id"])
        info = await self.world.get_run(run_id)
        if info is None:
            raise RunNotFoundError(run_id)
        return JSONResponse(_run_json(info))

    async def resume(self, request: Request) -> Response:
        token = request.path_params["token"]
        payload = await self._json(request, empty=None)
        hook = await get_hook_by_token(token, self.world)
        if webhook_target(hook) is not None:
            raise ApiError(409, f"hook {token!r} is a webhook: send the request to its URL")
        # a client that retries a request whose answer it lost sends the same Idempotency-Key
        request_id = request.headers.get("idempotency-key", "")[:200]
        hook = await resume_hook(token, payload, self.world, request_id=request_id)
        return JSONResponse({"run_id": hook.run_id, "hook_id": hook.hook_id}, 202)


def _start_fields(body: Any) -> tuple[str, list[Any], dict[str, Any], str | None]:
    """(workflow, args, kwargs, run id) of a start request, or ApiError 400 naming the problem."""
    if not isinstance(body, dict):
        raise ApiError(400, 'body must be a JSON object: {"workflow": name, "args": [...]}')
    workflow, args = body.get("workflow"), body.get("args", [])
    kwargs, run_id = body.get("kwargs") or {}, body.get("run_id")
    if not isinstance(workflow, str) or not workflow:
        raise ApiError(400, "'workflow' must be a non-empty string (the workflow's name)")
    if not isinstance(args, list):
        raise ApiError(400, "'args' must be a JSON array of the workflow's arguments")
    if not isinstance(kwargs, dict):
        raise ApiError(400, "'kwargs' must be a JSON object of keyword arguments")
    if run_id is not None and not isinstance(run_id, str):
        raise ApiError(400, "'run_id' must be a string")
    return workflow, args, kwargs, run_id


def _run_json(info: RunInfo) -> dict[str, Any]:
    """A run as the API shows it; ``output`` in the wire format (plain JSON for JSON values).

    A field stored corrupt is shown as null and named in ``corrupt_fields`` (absent when none is).
    """
    corrupt = list(info.corrupt_fields)
    output = _stored_json(info.output, "output", corrupt)
    error = None
    raw = _stored_json(info.error, "error", corrupt)
    if isinstance(raw, dict) and "msg" in raw:
        error = {"type": str(raw.get("cls", "")), "message": str(raw["msg"])}
    elif raw is not None:
        error = {"type": "", "message": str(raw)}
    shown = {"run_id": info.run_id, "status": info.status, "output": output, "error": error}
    return {**shown, "corrupt_fields": corrupt} if corrupt else shown


def _stored_json(text: str | None, name: str, corrupt: list[str]) -> Any:
    """The JSON value of a stored field; None when it is empty or corrupt (then named in corrupt)."""
    if not text or name in corrupt:
        return None
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        corrupt.append(name)
        return None


def _status_of(exc: Exception) -> int | None:
    """The HTTP status for an engine error raised while serving the API; None: unexpected."""
    if isinstance(exc, HookNotFoundError | RunNotFoundError):
        return 404
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, WorldUnavailableError):
        return 503
    if isinstance(exc, CorruptEventError):  # stored data this process cannot read (or decrypt)
        return 500
    if isinstance(exc, WorkflowError | TypeError):  # bad run id, arguments, serialization
        return 400
    return None


def is_json_media_type(content_type: str) -> bool:
    """Whether a Content-Type is ``application/json`` or ``application/*+json`` (any parameters).

    Browsers send ``text/plain`` and form types cross-site without a preflight; JSON types they
    send only after one, so requiring JSON keeps other sites' pages from calling the API.
    """
    media = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (
        subtype == "json" or (len(subtype) > 5 and subtype.endswith("+json"))
    )


def _headers(request: Request) -> dict[str, str]:
    merged: dict[str, str] = {}
    for name, value in request.headers.items():
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` bytes (the rest is drained, capped)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _DRAIN_CAP:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _DRAIN_CAP:
            break
        if size <= limit:
            chunks.append(chunk)
    return None if size > limit else b"".join(chunks)
