"""The callgrind tool's readers, on made-up inputs (a count itself needs valgrind and a minute)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.callgrind import dumped, flat_reply, summary


def test_flat_reply_reads_both_shapes_of_commit_lua() -> None:
    """The per-run arrays of older versions become the flat array the script answers now."""
    nested = [["ok", 5, 100, [["ok", 0], ["ok", 2]], []], ["conflict", 3, 100, [], ["h", "t"]]]
    flat = ["ok", 5, 100, 2, "ok", 0, "ok", 2, 0, "conflict", 3, 100, 0, 2, "h", "t"]
    assert flat_reply(nested) == flat
    assert flat_reply(flat) == flat


def test_summary_and_dump_of_a_callgrind_output(tmp_path: Path) -> None:
    (tmp_path / "cg.42").write_text("version: 1\nsummary: 7\n")
    (tmp_path / "cg.42.1").write_text("version: 1\ncmd: x\nsummary: 1234567\ntotals: 1234567\n")
    assert dumped(tmp_path) == tmp_path / "cg.42.1"
    assert summary(dumped(tmp_path)) == 1_234_567
    (tmp_path / "cg.43.1").write_text("summary: 1\n")
    with pytest.raises(RuntimeError, match="expected one callgrind dump"):
        dumped(tmp_path)
