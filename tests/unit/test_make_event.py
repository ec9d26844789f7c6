"""make_event's shortcuts for a step's events build what its general path builds."""

from __future__ import annotations

import pytest

from worker._events import _FAST, NewEvent, _make_general, make_event


@pytest.mark.parametrize(
    "new",
    [
        NewEvent("step_created", "step_1", {"name": "app.add", "input": '{"args":[1]}'}),
        NewEvent("step_created", "step_1", {"name": "app.add"}),
        NewEvent("step_started", "step_1"),
        NewEvent("step_started", "step_1", {"attempt": "9", "claim": "c", "task": "1-0"}),
        NewEvent("step_completed", "step_1", {"result": "[3]", "attempt": "2"}),
        NewEvent("step_completed", "step_1", {"result": "null", "ts": "1700000000123"}),
        NewEvent("step_completed", "step_1"),
    ],
    ids=lambda n: f"{n.type}:{sorted(n.fields)}",
)
def test_a_shortcut_builds_what_the_general_path_builds(new: NewEvent) -> None:
    assert _FAST[new.type](new, 7, 1_700_000_000_000, 3) == _make_general(
        new, 7, 1_700_000_000_000, 3
    )
    built = make_event(new, 7, 1_700_000_000_000, 3)
    expected_ts = int(new.fields.get("ts", 1_700_000_000_000))
    assert (built.seq, built.id, built.ts) == (7, "7-0", expected_ts)
