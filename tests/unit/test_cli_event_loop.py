"""Which event loop ``wf`` runs on: uvloop's where installed, asyncio's when asked for."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from worker._cli import _loop_factory


def test_wf_runs_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKFLOW_EVENT_LOOP", raising=False)
    factory = _loop_factory()
    assert factory is not None
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)


@pytest.mark.parametrize("value", ["asyncio", " ASYNCIO "])
def test_workflow_event_loop_asyncio_keeps_asyncios_loop(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("WORKFLOW_EVENT_LOOP", value)
    assert _loop_factory() is None
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        assert not isinstance(runner.get_loop(), uvloop.Loop)
