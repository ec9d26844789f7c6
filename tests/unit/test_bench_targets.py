"""The performance targets' verdicts, as the text report, the README section and the chart use them."""

from __future__ import annotations

from bench.report import section
from bench.targets import TARGETS, Target, lines, verdicts

MEETS = {
    "throughput": {"steps_per_s": 20_000.0, "steady_steps_per_s": 26_000.0},
    "aof": {"steady_steps_per_s": 15_000.0},
    "latency": {"p50_ms": 0.9, "p99_ms": 2.0},
    "memory": {"bytes_per_run": 6_700, "after_compaction": {"bytes_per_run": 999}},
    "long_run": {"block_ratio_last_first": 1.1},
}


def test_bounds_are_inclusive_and_every_target_is_judged() -> None:
    """A figure equal to its bound meets it (AOF 15,000, p99 2.0); all six are met here."""
    vs = verdicts(MEETS)
    assert [v.met for v in vs] == [True] * len(TARGETS)
    assert lines(MEETS)[0] == f"Targets: {len(TARGETS)} of {len(TARGETS)} met in this run"


def test_a_missed_and_an_unmeasured_target_say_so() -> None:
    """Too slow is MISSED with its figure; a figure the run did not measure is not a pass."""
    ours = {**MEETS, "throughput": {"steady_steps_per_s": 24_999.0}}
    del ours["latency"]
    by_label = {v.target.label: v for v in verdicts(ours)}
    slow = by_label["durable steps/s, ONE worker, steady"]
    assert (slow.met, slow.value) == (False, 24_999.0)
    assert "MISSED" in slow.line() and "24,999" in slow.line()
    p50 = by_label["start-to-result p50, one-step run"]
    assert p50.met is None and "not measured" in p50.line()
    text = lines(ours)
    assert text[0] == f"Targets: {len(TARGETS) - 3} of {len(TARGETS)} met in this run"


def test_an_error_in_place_of_a_figure_is_not_measured() -> None:
    """A figure that failed records an error dict: no number, so no verdict either way."""
    (v,) = verdicts({"aof": {"error": "boom"}}, (TARGETS[1],))
    assert v.met is None


def test_bound_text() -> None:
    assert Target("x", ("a",), 25_000, True, "steps/s").text() == ">= 25,000 steps/s"
    assert Target("x", ("a",), 1.0, False, "ms").text() == "<= 1.0 ms"
    assert Target("x", ("a",), 1.5, False, "").text() == "<= 1.50"


def test_readme_section_lists_the_verdicts() -> None:
    data = {"started_at": "2026-12-01T11:22:07Z", "ours": MEETS, "peers": {}}
    text = section(data)
    assert f"Targets ({len(TARGETS)} of {len(TARGETS)} met in this run" in text
    assert "- durable steps/s, ONE worker, steady >= 25,000 steps/s: 26,000, met" in text
