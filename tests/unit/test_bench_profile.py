"""The profile tool's aggregation and the README section renderer, on made-up inputs."""

from __future__ import annotations

from bench.profile import normalise, parse_raw, render
from bench.report import section


def test_normalise_drops_line_numbers_and_install_prefixes() -> None:
    """Site-packages, interpreter and checkout prefixes go; the file relative to its root stays."""
    assert (
        normalise("f (/w/.venv/lib/python3.11/site-packages/redis/client.py:12)")
        == "f (redis/client.py)"
    )
    assert normalise("g (/usr/lib/python3.11/asyncio/events.py:80)") == "g (asyncio/events.py)"
    assert normalise("h (/work/main/worker/_worker.py:9)") == "h (worker/_worker.py)"
    assert normalise("k (worker/_replay.py:304)") == "k (worker/_replay.py)"


def test_parse_raw_counts_only_the_main_thread() -> None:
    """Stacks started by threading's _bootstrap (the watchdog) are left out and counted apart."""
    raw = [
        "<module> (wf:6);main (worker/_cli.py:1);a (worker/x.py:2) 3",
        "<module> (wf:6);main (worker/_cli.py:1);b (worker/y.py:2) 1",
        "Thread._bootstrap (threading.py:1002);watch (worker/_worker_loops.py:5) 4",
    ]
    profile = parse_raw(raw)
    assert (profile.total, profile.other_threads) == (4, 4)
    assert profile.self_time["a (worker/x.py)"] == 3
    assert profile.inclusive["main (worker/_cli.py)"] == 4
    text = render(profile)
    assert " 75.0% a (worker/x.py)" in text
    assert "watch" not in text


def test_section_links_the_runs_chart_and_says_what_is_missing() -> None:
    """The Markdown names the run's files by its start time and shows n/a for missing figures."""
    data = {
        "started_at": "2026-11-30T18:55:21Z",
        "machine": {"nproc": 2, "cpu_model": "x", "python": "3.11", "redis": "7.0"},
        "ours": {"throughput": {"steps_per_s": 1234.0, "steady_steps_per_s": 2345.0}},
        "peers": {"arq": {"version": "0.28", "throughput": {"jobs_per_s": 999.0}}},
    }
    text = section(data)
    assert "bench/results/20261130T185521Z.png" in text
    assert "| 1,234 / 2,345 | 999 jobs/s |" in text
    assert "n/a" in text
