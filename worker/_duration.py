"""Durations as users write them: "10s", "1.5m", 2.5 (seconds), timedelta, or a datetime deadline."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")

Duration = str | int | float | timedelta | datetime


def to_seconds(value: Duration, *, now: float | None = None) -> float:
    """Seconds from now until ``value``; a datetime is a deadline (naive means UTC)."""
    if isinstance(value, bool):
        raise TypeError("a duration cannot be a bool")
    if isinstance(value, datetime):
        deadline = value if value.tzinfo else value.replace(tzinfo=UTC)
        base = now if now is not None else datetime.now(UTC).timestamp()
        return max(0.0, deadline.timestamp() - base)
    if isinstance(value, timedelta):
        return max(0.0, value.total_seconds())
    if isinstance(value, int | float):
        return max(0.0, float(value))
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if not match:
            raise ValueError(
                f"invalid duration {value!r}: use e.g. '10s', '500ms', '5m', '1h', '2d'"
            )
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    raise TypeError(f"invalid duration of type {type(value).__name__}")
