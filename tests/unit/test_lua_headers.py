"""Each Lua script documents every KEYS[i] and ARGV[i] it uses, and Python calls every script."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

LUA = Path(__file__).resolve().parents[2] / "world_redis" / "lua"
CALLERS = sorted((Path(__file__).resolve().parents[2] / "world_redis").glob("*.py"))
SCRIPTS = sorted(LUA.glob("*.lua"))


def split(path: Path) -> tuple[str, str]:
    lines = path.read_text().splitlines()
    header = [ln for ln in lines if ln.startswith("--")]
    body = [ln for ln in lines if not ln.lstrip().startswith("--")]
    return "\n".join(header), "\n".join(body)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_header_documents_every_literal_key_and_argument(path: Path) -> None:
    """Every literal KEYS[n] / ARGV[n] in a script's code appears in its header."""
    header, body = split(path)
    assert header.startswith(f"-- {path.name}:"), "the header starts with the script's name"
    for kind in ("KEYS", "ARGV"):
        used = set(re.findall(rf"{kind}\[(\d+)\]", body))
        documented = set(re.findall(rf"{kind}\[(\d+)(?:\.\.\d*)?\]", header))
        ranges = re.findall(rf"{kind}\[(\d+)\.\.(\d*)\]", header)
        for n in used - documented:
            covered = any(int(lo) <= int(n) and (not hi or int(n) <= int(hi)) for lo, hi in ranges)
            assert covered, f"{path.name}: {kind}[{n}] is used but not documented in the header"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_header_names_replies_and_events(path: Path) -> None:
    """Every header says what the script replies and which events it emits."""
    header, _ = split(path)
    assert "Reply" in header
    assert "Events emitted" in header


def test_every_script_is_called_and_every_call_has_a_script() -> None:
    """The Python World calls each script file by name, and only those."""
    called = {
        name for path in CALLERS for name in re.findall(r'_eval\(\s*"(\w+)"', path.read_text())
    }
    assert called == {p.stem for p in SCRIPTS}
