"""Flow-control options parse or fail with FlowControlError naming the option and the value."""

from __future__ import annotations

from typing import Any

import pytest

from worker import FlowControlError, step, workflow
from worker._flow import Rate, check_priority, flow_spec, parse_rate


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/m", Rate(100, 60_000)),
        ("5/s", Rate(5, 1000)),
        ("20/10s", Rate(20, 10_000)),
        (" 1000 / h ", Rate(1000, 3_600_000)),
        ("7/day", Rate(7, 86_400_000)),
        ("3/500ms", Rate(3, 500)),
        ("2/minutes", Rate(2, 60_000)),
    ],
)
def test_rates_parse(text: str, rate: Rate) -> None:
    """'<count>/<unit>' and '<count>/<n><unit>' give the count and the window in ms."""
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "bad", ["abc", "0/m", "10", "10/", "/m", "-1/m", "5/0s", "1.5/m", 10, None]
)
def test_bad_rates_are_refused(bad: Any) -> None:
    """A rate that does not parse: FlowControlError (a ValueError) naming rate= and the value."""
    with pytest.raises(FlowControlError, match=r"invalid rate=") as info:
        parse_rate(bad)
    assert isinstance(info.value, ValueError)
    assert info.value.option == "rate"


def test_unknown_unit_is_named() -> None:
    """An unknown unit is named in the error, with the units there are."""
    with pytest.raises(FlowControlError, match="unknown unit 'fortnight'"):
        parse_rate("5/fortnight")


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, False])
def test_bad_concurrency_is_refused_at_decoration(bad: Any) -> None:
    """@step(concurrency=...) and @workflow(concurrency=...): a whole number >= 1, else the
    decorator raises, naming the option, the value and the function."""
    with pytest.raises(FlowControlError, match=r"invalid concurrency=.*of step 'flow_bad_s'"):
        step(name="flow_bad_s", concurrency=bad)(lambda: None)
    with pytest.raises(FlowControlError, match=r"invalid concurrency=.*of workflow 'flow_bad_w'"):

        @workflow(name="flow_bad_w", concurrency=bad)
        async def w() -> None:
            return None


def test_concurrency_key_needs_a_limit_and_a_function() -> None:
    """concurrency_key without concurrency/rate, or not callable: refused."""
    with pytest.raises(FlowControlError, match="needs concurrency= or rate="):
        step(name="flow_key_alone", concurrency_key=lambda x: x)(lambda x: x)
    with pytest.raises(FlowControlError, match="needs concurrency="):
        flow_spec("workflow", "w", concurrency_key=lambda x: x)
    with pytest.raises(FlowControlError, match="expected a function"):
        step(name="flow_key_str", concurrency=2, concurrency_key="customer")(lambda x: x)


def test_flow_control_and_a_pool_queue_are_refused() -> None:
    """A flow-controlled step runs where its run is held: queue= with it is refused."""
    with pytest.raises(FlowControlError, match="invalid queue='gpu'"):
        step(name="flow_pool", concurrency=2, queue="gpu")(lambda: None)


def test_spec_and_limit_ids() -> None:
    """A spec carries the options; limit ids name the kind, the name and the key (no braces,
    which would end a hash tag)."""
    spec = flow_spec("step", "m:s", 3, lambda a, b=0: a, "10/s")
    assert spec is not None
    assert (spec.concurrency, spec.rate) == (3, Rate(10, 1000))
    assert spec.limit_id(spec.key_of(["acme"], {})) == "s:m:s|acme"
    assert spec.limit_id("{x}") == "s:m:s|(x)"
    assert flow_spec("step", "plain") is None


def test_priority_range() -> None:
    """priority: None is 0; an int from -1000 to 1000; anything else FlowControlError."""
    assert check_priority(None) == 0
    assert check_priority(-1000) == -1000 and check_priority(1000) == 1000
    for bad in (1001, -1001, 1.0, "1", True):
        with pytest.raises(FlowControlError, match="invalid priority="):
            check_priority(bad)
