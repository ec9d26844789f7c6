"""Run ids derived from start requests: deterministic, valid, distinct per request."""

from __future__ import annotations

from worker import _requests as requests
from worker._world import StartRequest


def test_derived_run_id_is_stable_and_valid() -> None:
    """A start request without run_id gets a valid run id derived from its stream id: the same on every delivery, distinct per request."""
    a = StartRequest(message_id="1764500000000-0", fields={}, source="wf:start")
    again = StartRequest(message_id="1764500000000-0", fields={}, source="wf:start", deliveries=3)
    b = StartRequest(message_id="1764500000001-0", fields={}, source="wf:start")
    other_prefix = StartRequest(message_id="1764500000000-0", fields={}, source="x:start")
    ids = [requests.request_run_id(r) for r in (a, again, b, other_prefix)]
    assert ids[0] == ids[1] and len({ids[0], ids[2], ids[3]}) == 3
    assert all(requests._valid_run_id(i) for i in ids)
    assert ids[0] < ids[2]  # time-sortable like any ULID
