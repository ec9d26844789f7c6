"""The performance targets ``make bench`` is held to, and the verdict of one run against them.

Each target is a bound on one of OUR figures in the results dict. The text report ends with the
verdicts, the chart draws each bound as a dashed line in its panel, and the README's section lists
them. A missed target does not change the exit code: the machine is shared and noisy, and a run is
read, not gated (the exit code says whether every figure was measured).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.summary import Result, value_at


@dataclass(frozen=True)
class Target:
    label: str
    path: tuple[str, ...]  # into results["ours"]
    bound: float
    at_least: bool  # True: the figure must be >= bound; False: <= bound
    unit: str
    chart: tuple[str, str] | None = None  # (metric, system) of the chart row it bounds

    def text(self) -> str:
        sign = ">=" if self.at_least else "<="
        places = 0 if self.bound >= 100 else (1 if self.bound == int(self.bound) else 2)
        return f"{sign} {self.bound:,.{places}f} {self.unit}".rstrip()


@dataclass(frozen=True)
class Verdict:
    target: Target
    value: float | None

    @property
    def met(self) -> bool | None:
        """None when the figure was not measured."""
        if self.value is None:
            return None
        t = self.target
        return self.value >= t.bound if t.at_least else self.value <= t.bound

    @property
    def shown(self) -> str:
        """The figure as the report prints it: whole numbers from 100 up, else 3 decimals."""
        if self.value is None:
            return "n/a"
        return f"{self.value:,.{0 if abs(self.value) >= 100 else 3}f}"

    def word(self, missed: str = "MISSED") -> str:
        return {True: "met", False: missed, None: "not measured"}[self.met]

    def line(self) -> str:
        return f"   {self.word():>12}: {self.target.label} {self.target.text()}: {self.shown}"


TARGETS = (
    Target(
        "durable steps/s, ONE worker, steady",
        ("throughput", "steady_steps_per_s"),
        25_000,
        True,
        "steps/s",
        ("throughput", "ours, 1 worker (steady)"),
    ),
    Target(
        "durable steps/s, ONE worker, AOF everysec, steady",
        ("aof", "steady_steps_per_s"),
        15_000,
        True,
        "steps/s",
        ("throughput", "ours, AOF everysec (steady)"),
    ),
    Target(
        "start-to-result p50, one-step run",
        ("latency", "p50_ms"),
        1.0,
        False,
        "ms",
        ("latency_p50", "ours"),
    ),
    Target(
        "start-to-result p99, one-step run",
        ("latency", "p99_ms"),
        2.0,
        False,
        "ms",
        ("latency_p99", "ours"),
    ),
    Target(
        "Redis memory per finished 10-step run, compacted",
        ("memory", "after_compaction", "bytes_per_run"),
        1_000,
        False,
        "B",
        ("memory", "ours, compacted"),
    ),
    Target(
        "10,000-step run, mean gap of the last 1,000-step block over the first's (flat cost)",
        ("long_run", "block_ratio_last_first"),
        1.5,
        False,
        "",
    ),
)


def verdicts(ours: Result, targets: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    return [Verdict(t, value_at(ours, t.path)[0]) for t in targets]


def lines(ours: Result) -> list[str]:
    """The report's last block: one line per target, and how many were met."""
    vs = verdicts(ours)
    met = sum(1 for v in vs if v.met)
    return [f"Targets: {met} of {len(vs)} met in this run", *(v.line() for v in vs)]
