"""Webhooks: hooks that third parties resume with plain HTTP requests to a public URL.

In a workflow, ``create_webhook()`` returns a :class:`Webhook`, a hook with a random token and a
``url`` (``<WORKFLOW_BASE_URL>/.well-known/workflow/v1/webhook/<token>``). The app of
``worker._http`` receives requests on that URL, resumes the hook with a :class:`WebhookRequest`
and answers the sender according to ``respond_with``:

* ``None`` (default): 202 with an empty body;
* a :class:`WebhookResponse`: that response, as given at creation;
* ``"manual"``: the response a step sends with ``await request.respond_with(WebhookResponse(...))``
  (the workflow passes the request to a step); the route waits for it, 504 after its timeout.

The request a webhook receives, and so the hook's payload stored in Redis, never carries the
sender's credentials: ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and ``Set-Cookie`` are
dropped unless the webhook names them in ``keep_headers`` (for a sender that authenticates with
them, e.g. ``create_webhook(keep_headers=["Authorization"])``).

Webhooks are marked in the hook metadata (``{"__webhook": {"respond_with": ..., "keep_headers":
[...]}}``): the public route refuses plain hooks, and the bearer-protected hook API refuses webhooks.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from . import _serde
from ._context import base_url, current_step
from ._errors import HookNotFoundError, WorkflowError, WorkflowTimeoutError
from ._health import reply_channel
from ._hooks import Hook, HookInfo, get_hook_by_token, resume_hook
from ._ids import new_id
from ._replay import current_instance
from ._world import World

WEBHOOK_PATH = "/.well-known/workflow/v1/webhook/"
META_KEY = "__webhook"
MANUAL = "manual"
RESPONSE_TTL_S = 300
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


@dataclass
class WebhookResponse:
    """The HTTP response a webhook sends back: status, headers and body (``str`` is UTF-8 encoded)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __post_init__(self) -> None:
        if isinstance(self.body, str):
            self.body = self.body.encode()
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise WorkflowError(f"invalid webhook response status {self.status!r}")


@dataclass
class WebhookRequest:
    """An HTTP request received by a webhook: method, full URL, headers (lower-case names), body."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    run_id: str = field(default="", repr=False)
    response_id: str = field(default="", repr=False)

    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (``ValueError`` when it is not)."""
        return json.loads(self.body)

    async def respond_with(self, response: WebhookResponse) -> None:
        """Send the response of a ``respond_with="manual"`` webhook; call it in a step."""
        if not self.response_id:
            raise WorkflowError(
                "respond_with() needs a request of a webhook created with respond_with='manual'"
            )
        if current_instance.get() is not None and current_step.get() is None:
            raise WorkflowError("respond_with() must be called in a step: pass the request to one")
        if not isinstance(response, WebhookResponse):
            raise WorkflowError(f"respond_with() takes a WebhookResponse, not {response!r}")
        from ._client import get_world

        data = _serde.dumps(response, what="webhook response")
        channel = reply_channel(get_world())
        await channel.push_reply(self.run_id, self.response_id, data, ttl_s=RESPONSE_TTL_S)


RespondWith = WebhookResponse | Literal["manual"] | None


class Webhook(Hook):
    """A hook resumed over HTTP; awaiting it yields a :class:`WebhookRequest`."""

    @property
    def url(self) -> str:
        return webhook_url(base_url(), self.token)

    def __repr__(self) -> str:
        return f"<Webhook {self.hook_id} url={self.url!r}>"


def webhook_url(base: str, token: str) -> str:
    return f"{base.rstrip('/')}{WEBHOOK_PATH}{quote(token, safe='')}"


def create_webhook(
    respond_with: RespondWith = None, *, keep_headers: Collection[str] = ()
) -> Webhook:
    """Create a webhook in workflow code (see the module docstring); its token is random.

    ``keep_headers`` names credential headers (of ``CREDENTIAL_HEADERS``) that its requests keep;
    by default they are dropped before the request is stored.
    """
    instance = current_instance.get()
    if instance is None or current_step.get() is not None:
        raise WorkflowError("create_webhook() can only be called in workflow code")
    if not (
        respond_with is None or respond_with == MANUAL or isinstance(respond_with, WebhookResponse)
    ):
        raise WorkflowError(
            f"invalid respond_with value {respond_with!r}: "
            "expected None, 'manual' or a WebhookResponse"
        )
    options = {"respond_with": respond_with, "keep_headers": _kept_credentials(keep_headers)}
    meta = _serde.dumps({META_KEY: options}, what="webhook metadata")
    return Webhook(instance, instance.create_hook(None, meta))


def _kept_credentials(names: Collection[str]) -> list[str]:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise WorkflowError(f"keep_headers must be a list of header names, not {names!r}")
    kept = {n.lower() for n in names}
    unknown = kept - CREDENTIAL_HEADERS
    if unknown:
        raise WorkflowError(
            f"keep_headers names {sorted(unknown)}: only credential headers are dropped, "
            f"so only {sorted(CREDENTIAL_HEADERS)} can be kept"
        )
    return sorted(kept)


def without_credentials(headers: Mapping[str, str], keep: Collection[str] = ()) -> dict[str, str]:
    """``headers`` (lower-case names) without the credential headers not named in ``keep``."""
    return {k: v for k, v in headers.items() if k not in CREDENTIAL_HEADERS or k in keep}


@dataclass(frozen=True)
class WebhookTarget:
    """A live webhook found by token: the hook, how the route answers, the credentials it keeps."""

    hook: HookInfo
    mode: Literal["default", "static", "manual"]
    static: WebhookResponse | None = None
    keep_headers: frozenset[str] = frozenset()


def webhook_target(hook: HookInfo) -> WebhookTarget | None:
    """How ``hook`` answers HTTP requests; None when it is a plain hook, not a webhook."""
    meta = hook.metadata
    options = meta.get(META_KEY) if isinstance(meta, dict) else None
    if not isinstance(options, dict):
        return None
    kept = options.get("keep_headers")
    keep = frozenset(
        n.lower() for n in (kept if isinstance(kept, list) else ()) if isinstance(n, str)
    )
    value = options.get("respond_with")
    if value is None:
        return WebhookTarget(hook, "default", keep_headers=keep)
    if value == MANUAL:
        return WebhookTarget(hook, "manual", keep_headers=keep)
    response = _as_response(value)
    return None if response is None else WebhookTarget(hook, "static", response, keep)


def _as_response(value: Any) -> WebhookResponse | None:
    if isinstance(value, WebhookResponse):
        return value
    if isinstance(value, dict):  # the class could not be revived: its fields
        try:
            return WebhookResponse(**value)
        except (TypeError, WorkflowError):
            return None
    return None


async def find_webhook(token: str, world: World) -> WebhookTarget:
    """The live webhook holding ``token``; HookNotFoundError for unknown tokens and plain hooks."""
    target = webhook_target(await get_hook_by_token(token, world))
    if target is None:
        raise HookNotFoundError(token)
    return target


async def deliver(
    target: WebhookTarget, request: WebhookRequest, world: World, timeout_s: float
) -> WebhookResponse:
    """Resume the webhook with ``request`` (less the credentials it does not keep); the response.

    HookNotFoundError when the hook went away meanwhile, PayloadTooLargeError for a request over the
    World's payload limit, WorkflowTimeoutError when a manual response did not come in time.
    """
    hook = target.hook
    response_id = new_id("wres") if target.mode == "manual" else ""
    request = dataclasses.replace(
        request,
        headers=without_credentials(request.headers, target.keep_headers),
        run_id=hook.run_id,
        response_id=response_id,
    )
    await resume_hook(hook.token, request, world)
    if target.mode == "default":
        return WebhookResponse(202)
    if target.mode == "static" and target.static is not None:
        return target.static
    data = await reply_channel(world).pop_reply(hook.run_id, response_id, timeout_s)
    if data is None:
        raise WorkflowTimeoutError(
            f"webhook {hook.hook_id} of run {hook.run_id}: no response sent within {timeout_s:g} s"
        )
    response = _as_response(_serde.loads(data, what="webhook response"))
    if response is None:
        raise WorkflowError(f"webhook {hook.hook_id}: the step sent an invalid response")
    return response
