"""The benchmark's pure helpers: percentiles, gaps, steady-state rates, figure selection, rows."""

from __future__ import annotations

import pytest

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
