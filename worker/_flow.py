"""Flow control options: ``concurrency``, ``concurrency_key`` and ``rate`` of steps and workflows,
and the ``priority`` of runs. Parsing and checking only (no I/O); the worker's side is
``_flow_gate.py``, the Redis side ``world_redis/_flow.py``.

A *limit* is one step or workflow name, or one value of its ``concurrency_key`` (a function of
the call's arguments): ``s:<step name>``, ``s:<step name>|<key>``, ``w:<workflow name>``... Each
limit caps how many executions hold a slot at once (``concurrency``) and, for steps, how many
start within any sliding window (``rate``, e.g. ``"100/m"``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import FlowControlError, WorkflowError

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([A-Za-z]+)\s*$")
_UNIT_MS = {
    "ms": 1,
    "s": 1000,
    "sec": 1000,
    "second": 1000,
    "seconds": 1000,
    "m": 60_000,
    "min": 60_000,
    "minute": 60_000,
    "minutes": 60_000,
    "h": 3_600_000,
    "hr": 3_600_000,
    "hour": 3_600_000,
    "hours": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
    "days": 86_400_000,
}
_RATE_HELP = "expected '<count>/<unit>' with count >= 1, e.g. '100/m', '5/s', '20/10s', '1000/h'"


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` starts within any window of ``window_ms``."""

    limit: int
    window_ms: int


def parse_rate(value: object, where: str = "") -> Rate:
    """``"100/m"`` -> Rate(100, 60000); FlowControlError naming the value when it does not parse."""
    if not isinstance(value, str):
        raise FlowControlError("rate", value, _RATE_HELP, where)
    match = _RATE.match(value)
    if match is None:
        raise FlowControlError("rate", value, _RATE_HELP, where)
    count, times, unit = int(match.group(1)), match.group(2), match.group(3).lower()
    if unit not in _UNIT_MS:
        units = "ms, s, m, h, d"
        raise FlowControlError("rate", value, f"unknown unit {unit!r} (use {units})", where)
    if count < 1:
        raise FlowControlError("rate", value, _RATE_HELP, where)
    multiple = int(times) if times else 1
    if multiple < 1:
        raise FlowControlError("rate", value, "the window must be longer than 0", where)
    return Rate(count, multiple * _UNIT_MS[unit])


def check_concurrency(value: object, where: str = "") -> int:
    """``value`` when it is a whole number >= 1 (not a bool), else FlowControlError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FlowControlError("concurrency", value, "expected a whole number >= 1", where)
    return value


def check_priority(value: object) -> int:
    """The priority of a run: None is 0; an int within PRIORITY_MIN..PRIORITY_MAX."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise FlowControlError(
            "priority", value, f"expected an int from {PRIORITY_MIN} to {PRIORITY_MAX}"
        )
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise FlowControlError(
            "priority", value, f"expected an int from {PRIORITY_MIN} to {PRIORITY_MAX}"
        )
    return value


def _safe(text: str) -> str:
    # a limit id becomes a hash tag: braces would end it early
    return text.replace("{", "(").replace("}", ")")


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """The flow control of one step or workflow."""

    kind: Literal["step", "workflow"]
    name: str
    concurrency: int = 0  # 0: no concurrency limit
    rate: Rate | None = None
    key: Callable[..., Any] | None = None

    def limit_id(self, key: str | None) -> str:
        base = f"{self.kind[0]}:{self.name}"
        return _safe(base if key is None else f"{base}|{key}")

    def key_of(self, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
        """The ``concurrency_key`` of a call as text (None without a key function)."""
        if self.key is None:
            return None
        return str(self.key(*args, **kwargs))

    def check_key(self, args: list[Any], kwargs: dict[str, Any], where: str) -> None:
        """FlowControlError when the ``concurrency_key`` fails on these arguments."""
        try:
            self.key_of(args, kwargs)
        except Exception as exc:
            raise FlowControlError(
                "concurrency_key", self.key, f"it raised {type(exc).__name__}: {exc}", where
            ) from None


def flow_spec(
    kind: Literal["step", "workflow"],
    name: str,
    concurrency: object = None,
    concurrency_key: object = None,
    rate: object = None,
) -> FlowSpec | None:
    """The checked options of a decorator (None when it has none); FlowControlError naming the
    option and its value otherwise."""
    where = f"{kind} {name!r}"
    if concurrency is None and rate is None:
        if concurrency_key is not None:
            needs = "concurrency= or rate=" if kind == "step" else "concurrency="
            raise FlowControlError(
                "concurrency_key", concurrency_key, f"it needs {needs} to key", where
            )
        return None
    if concurrency_key is not None and not callable(concurrency_key):
        raise FlowControlError(
            "concurrency_key",
            concurrency_key,
            "expected a function of the call's arguments (e.g. lambda order: order.customer)",
            where,
        )
    limit = check_concurrency(concurrency, where) if concurrency is not None else 0
    parsed = parse_rate(rate, where) if rate is not None else None
    key = concurrency_key if callable(concurrency_key) else None
    return FlowSpec(kind, name, limit, parsed, key)


FlowCode = Literal["ok", "wait", "later"]
FLOW_CODES: tuple[FlowCode, ...] = ("ok", "wait", "later")


def flow_code(text: str) -> FlowCode:
    """The code flow_acquire.lua replied; WorkflowError for any other text (a script mismatch)."""
    for code in FLOW_CODES:
        if text == code:
            return code
    raise WorkflowError(f"flow_acquire.lua replied {text!r}, not one of {', '.join(FLOW_CODES)}")


@dataclass(frozen=True, slots=True)
class FlowGrant:
    """What flow_acquire.lua answered: ``ok`` (a slot held), ``wait`` (parked until woken),
    ``later`` (over the rate until ``retry_at_ms``); ``woken``: members whose runs to wake."""

    code: FlowCode
    retry_at_ms: int = 0
    woken: tuple[str, ...] = ()
