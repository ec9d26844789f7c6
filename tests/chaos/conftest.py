"""The chaos figures of this session, printed again as a table at the end."""

from __future__ import annotations

import json
from typing import Any

from tests.chaos.harness import RESULTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    try:
        scenarios = json.loads(RESULTS.read_text()).get("scenarios", {})
    except (OSError, ValueError):
        return
    if scenarios:
        terminalreporter.section(f"chaos figures ({RESULTS.name})")
        for entry in scenarios.values():
            terminalreporter.write_line(f"{entry['at']}  {entry['line']}")
