"""The built-in ``fetch`` step: an HTTP request whose response is recorded in the run's log.

In a workflow ``await fetch(url)`` is a step like any other (retried on network errors, replayed from
the log), so the workflow may then read ``.json()`` / ``.text()`` of the recorded response. Outside a
workflow it is a plain HTTP call. HTTP error statuses are responses, not errors (check ``.ok``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ._registry import step


@dataclass
class FetchResponse:
    """A recorded HTTP response: status, headers (lower-case names), body and the final URL."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    url: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        """The body decoded with the response's charset (UTF-8 by default)."""
        try:
            return self.body.decode(_charset(self.headers.get("content-type", "")), "replace")
        except LookupError:  # an unknown charset name
            return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON (``ValueError`` when it is not)."""
        return json.loads(self.body)


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            return value.strip('"')
    return "utf-8"


@step(name="worker.fetch")
async def fetch(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | str | None = None,
    timeout: float = 30.0,
) -> FetchResponse:
    """Send an HTTP request (redirects followed) and return the whole response."""
    import httpx  # imported on first use: most processes never fetch

    async with httpx.AsyncClient(follow_redirects=True, timeout=timeout) as client:
        res = await client.request(method.upper(), url, headers=headers, content=body)
    merged: dict[str, str] = {}
    for name, value in res.headers.multi_items():
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return FetchResponse(res.status_code, merged, res.content, str(res.url))
