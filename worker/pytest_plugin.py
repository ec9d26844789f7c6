"""The pytest plugin ``workflows`` (registered through the ``pytest11`` entry point): the
``workflow_env`` fixture.

```python
async def test_reminder(workflow_env):
    async with workflow_env("myapp.flows") as env:
        run = await env.start(send_reminder, "ann", days=30)
        assert await run.result(timeout=10) == "sent"
```
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def workflow_env() -> Any:
    """:func:`worker.testing.workflow_env`: an isolated world with an in-process worker and
    durable time that skips ahead (an async context manager, one per test or several)."""
    from .testing import workflow_env as factory

    return factory
