"""Deployment ids: the default one follows the workflow modules' source; ids are validated."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from worker import InvalidDeploymentIdError, WorkflowError
from worker._deployments import (
    base_queue,
    check_deployment_id,
    default_deployment_id,
    lane,
    lane_deployment,
    worker_deployment_id,
)

SOURCE = "async def flow() -> int:\n    return 1\n"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_id_changes_with_the_source_and_only_with_it(tmp_path: Path) -> None:
    """The same source gives the same id; one changed byte or another module name another."""
    path = tmp_path / "orders.py"
    path.write_text(SOURCE)
    first = default_deployment_id([load(path, "orders")])
    assert first == default_deployment_id([load(path, "orders")])
    assert first.startswith("dpl_") and len(first) == len("dpl_") + 12
    assert check_deployment_id(first) == first

    path.write_text(SOURCE.replace("return 1", "return 2"))
    changed = default_deployment_id([load(path, "orders")])
    assert changed != first
    assert default_deployment_id([load(path, "billing")]) != changed


def test_default_id_does_not_depend_on_import_order(tmp_path: Path) -> None:
    """Modules are hashed sorted by name."""
    (tmp_path / "a.py").write_text(SOURCE)
    (tmp_path / "b.py").write_text(SOURCE + "\n# b\n")
    a, b = load(tmp_path / "a.py", "a"), load(tmp_path / "b.py", "b")
    assert default_deployment_id([a, b]) == default_deployment_id([b, a])


@pytest.mark.parametrize("bad", ["", "a b", "x@y", "-lead", "v:1", "é", "a" * 65, "line\nbreak"])
def test_invalid_ids_are_refused_with_the_value_named(bad: str) -> None:
    """An id that cannot be part of a key or a command line is a typed error naming it."""
    with pytest.raises(InvalidDeploymentIdError) as err:
        check_deployment_id(bad)
    assert repr(bad) in str(err.value)
    assert isinstance(err.value, WorkflowError) and isinstance(err.value, ValueError)


def test_worker_id_explicit_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--deployment wins over WORKFLOW_DEPLOYMENT_ID, which wins over the source hash."""
    monkeypatch.setenv("WORKFLOW_DEPLOYMENT_ID", "from-env")
    assert worker_deployment_id("v2") == "v2"
    assert worker_deployment_id(None) == "from-env"
    monkeypatch.setenv("WORKFLOW_DEPLOYMENT_ID", "bad id")
    with pytest.raises(InvalidDeploymentIdError):
        worker_deployment_id(None)
    monkeypatch.delenv("WORKFLOW_DEPLOYMENT_ID")
    assert worker_deployment_id(None) == default_deployment_id()


def test_lanes_name_their_queue_and_deployment() -> None:
    """A lane is "<queue>@<deployment>"; a lane of a lane keeps only the queue."""
    assert lane("default", "v1") == "default@v1"
    assert lane("gpu@v1", "v2") == "gpu@v2"
    assert (base_queue("gpu@v2"), lane_deployment("gpu@v2")) == ("gpu", "v2")
    assert (base_queue("gpu"), lane_deployment("gpu")) == ("gpu", "")
