"""Which addresses the HTTP server may listen on without a token, and what a token may be."""

from __future__ import annotations

import pytest

from worker._http import UnsafeBindError, check_bind, create_app


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"],
)
def test_loopback_needs_no_token(host: str) -> None:
    """Loopback addresses (127.0.0.0/8, ::1, localhost) are served without a token."""
    check_bind(host, token=None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "example.com", "localhost.evil"])
def test_other_addresses_need_a_token(host: str) -> None:
    """Any other address without a token raises UnsafeBindError naming WORKFLOW_HTTP_TOKEN."""
    with pytest.raises(UnsafeBindError) as err:
        check_bind(host, token=None)
    assert "WORKFLOW_HTTP_TOKEN" in str(err.value)
    check_bind(host, token="t")
    check_bind(host, token=None, allow_unauthenticated=True)


def test_empty_api_token_is_refused() -> None:
    """create_app(token="") is a configuration error naming the token (it used to lock every caller out)."""
    with pytest.raises(ValueError, match="token must not be empty"):
        create_app(token="")
    with pytest.raises(ValueError, match="token must not be empty"):
        create_app(token="  ")
