"""The words scripts answer are typed, and lease tokens are made and read in one place."""

from __future__ import annotations

import pytest

from worker._errors import WorkflowError
from worker._ids import lease_token, token_worker
from worker._world import acquire_code, commit_code, event_status


def test_script_reply_words_are_checked() -> None:
    """Known words pass through; an unknown one is a typed error naming it and the known ones."""
    assert commit_code("conflict") == "conflict"
    assert event_status("too_early") == "too_early"
    assert acquire_code("busy") == "busy"
    with pytest.raises(WorkflowError, match=r"unknown commit code 'leased'.*'rejected'"):
        commit_code("leased")
    with pytest.raises(WorkflowError, match="unknown event status 'done'"):
        event_status("done")
    with pytest.raises(WorkflowError, match="unknown acquire code ''"):
        acquire_code("")


def test_lease_token_names_its_worker_and_differs_per_process() -> None:
    """A lease token carries its worker's consumer name (host:pid, which holds colons) and a nonce."""
    first, second = lease_token("host-1:4242"), lease_token("host-1:4242")
    assert first != second
    assert token_worker(first) == token_worker(second) == "host-1:4242"
