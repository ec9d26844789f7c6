"""The benchmark's pure helpers: percentiles, gaps, steady-state rates, figure selection, rows."""

from __future__ import annotations

import os

import pytest

from bench.replicas import acks_env, lines
from bench.run import parse_only
from bench.stats import Sample, gap_stats, percentile, steady_rate
from bench.summary import comparison, value_at


def test_percentile_is_nearest_rank() -> None:
    """p50 of 1..100 is 50 and p99 is 99, whatever the input order."""
    values = [float(v) for v in reversed(range(1, 101))]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0


def test_gap_stats_compares_the_first_and_last_window() -> None:
    """Steps 1 ms apart, then 2 ms apart: the last window's mean gap is twice the first's."""
    stamps = list(range(0, 100)) + [99 + 2 * k for k in range(1, 101)]
    out = gap_stats(stamps, window=100)
    assert out["mean_gap_ms_first"] == 1.0
    assert out["mean_gap_ms_last"] == 2.0
    assert out["ratio_last_first"] == 2.0
    assert (out["first_steps"], out["last_steps"]) == ("1-100", "101-200")


def test_gap_stats_refuses_too_few_timestamps() -> None:
    """Fewer timestamps than the window is an error, not a silent number."""
    with pytest.raises(ValueError):
        gap_stats([1, 2, 3], window=100)


def test_steady_rate_uses_the_counts_at_the_crossing_polls() -> None:
    """The rate divides the counts actually seen at the 10 % and 90 % polls by their time apart."""
    samples = [Sample(0.0, 0), Sample(1.0, 15), Sample(2.0, 50), Sample(3.0, 95), Sample(4.0, 100)]
    out = steady_rate(samples, 100)
    assert out is not None
    assert out["per_s"] == pytest.approx((95 - 15) / 2.0)
    assert (out["completed_from"], out["completed_to"]) == (15, 95)


def test_steady_rate_is_none_without_a_window() -> None:
    """When one poll saw both 10 % and 90 %, there is no steady state to report."""
    assert steady_rate([Sample(0.0, 0), Sample(1.0, 100)], 100) is None


def test_parse_only_takes_numbers_and_names() -> None:
    """``--only 1,latency,peers`` selects figure 1 by number and the others by name."""
    assert parse_only("1,latency,peers") == {"throughput", "latency", "peers"}
    with pytest.raises(ValueError):
        parse_only("nope")


def test_rows_say_why_a_value_is_missing() -> None:
    """A skipped figure yields a row without a value and with the skip reason."""
    data = {
        "ours": {"memory": {"bytes_per_run": 900.0, "after_compaction": {"skipped": "no"}}},
        "peers": {"arq": {"error": "install failed: x"}},
    }
    rows = {(r.metric, r.system): r for r in comparison(data)}
    assert rows[("memory", "ours")].value == 900.0
    assert rows[("memory", "ours, compacted")].why == "skipped: no"
    assert rows[("throughput", "arq")].why == "ERROR: install failed: x"
    assert value_at({"a": {"b": 2}}, ("a", "b"), 10) == (20.0, "")


def test_gap_stats_profiles_the_whole_run_in_blocks() -> None:
    """1,000 steps 1 ms apart then 1,000 steps 3 ms apart: five blocks of 400 show the change
    where it happens (the middle block straddles it), and the ratios compare the blocks."""
    stamps = list(range(1000)) + [999 + 3 * k for k in range(1, 1001)]
    out = gap_stats(stamps, window=100, blocks=5)
    assert out["block_steps"] == 400
    assert out["block_mean_gap_ms"][:2] == [1.0, 1.0]
    assert out["block_mean_gap_ms"][3:] == [3.0, 3.0]
    assert 1.0 < out["block_mean_gap_ms"][2] < 3.0
    assert out["block_ratio_last_first"] == 3.0
    assert out["block_ratio_max_min"] == 3.0


def test_gap_stats_blocks_take_the_remainder_in_the_last() -> None:
    """1,003 steps in 10 blocks: the last block runs to the final step, none is lost."""
    stamps = [2 * k for k in range(1003)]
    out = gap_stats(stamps, window=100, blocks=10)
    assert out["block_steps"] == 100
    assert out["block_mean_gap_ms"] == [2.0] * 10
    assert out["block_ratio_max_min"] == 1.0


def test_replicas_report_prints_both_modes_with_their_figures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``python -m bench.replicas``: one line per mode, each with its own figures; and the
    setting it sets for a block is put back after it."""

    def mode(acks: int, steady: float, p50: float) -> dict[str, object]:
        return {
            "replica_acks": acks,
            "throughput": {
                "steps_per_s": steady * 0.9,
                "steady_steps_per_s": steady,
                "cpu_us_per_step_steady": {"workers_total": 40.0 + acks, "redis": 30.0},
            },
            "latency_ms": {"p50_ms": p50, "p99_ms": p50 * 2},
        }

    data = {
        "at": "2026-12-02T01:00:00Z",
        "machine": {
            "nproc": 2,
            "cpu_model": "AMD EPYC",
            "load_avg_1m_5m_15m": [1.0, 0.5, 0.2],
            "python": "3.11.7",
            "redis": "7.0.15",
        },
        "figures": {"none": mode(0, 20000, 1.0), "replica_acks_1": mode(1, 9000, 1.5)},
    }
    out = lines(data)
    assert "nproc 2 | CPU AMD EPYC" in out[1]
    assert "WORKFLOW_REPLICA_ACKS=0: total 18,000 steps/s, steady 20,000" in out[2]
    assert "worker 40.0 µs" in out[2] and "p50 1.000 ms, p99 2.000 ms" in out[2]
    assert "WORKFLOW_REPLICA_ACKS=1: total 8,100 steps/s, steady 9,000" in out[3]
    assert "worker 41.0 µs" in out[3] and "p50 1.500 ms, p99 3.000 ms" in out[3]
    monkeypatch.setenv("WORKFLOW_REPLICA_ACKS", "2")
    with acks_env("1"):
        assert os.environ["WORKFLOW_REPLICA_ACKS"] == "1"
    assert os.environ["WORKFLOW_REPLICA_ACKS"] == "2"
