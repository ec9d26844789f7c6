"""Hypothesis settings shared by the property and fuzz tests.

CI runs the ``ci`` profile: derandomized (the same examples on every run, so a red build is
reproducible and a green one stays green) and without the example database, so the tests write
nothing into the working tree. It does not shrink a failing example either: each step of a
stateful example is a round trip to Redis and shrinking one can outlast the test timeout; the
failure is reported as found (steps and a reproduce blob). ``WF_HYPOTHESIS_PROFILE=explore`` draws fresh random examples and
ten times as many, for a longer hunt on a developer machine.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: see the docstring
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "explore",
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

PROFILE = os.environ.get("WF_HYPOTHESIS_PROFILE", "ci")
SCALE = 10 if PROFILE == "explore" else 1


def bounded(max_examples: int, stateful_step_count: int = 50) -> settings:
    """The profile's settings with ``max_examples`` (times the profile's scale)."""
    return settings(
        settings.get_profile(PROFILE),
        max_examples=max_examples * SCALE,
        stateful_step_count=stateful_step_count,
    )
