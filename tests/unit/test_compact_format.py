"""The compacted log format: it reads back exactly what it was given, and refuses what it does
not know."""

from __future__ import annotations

import struct

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from worker._compactor import DEFAULT_COMPACT_AFTER_S, compact_after_s
from worker._errors import CorruptEventError, WorkflowError
from world_redis._compact import HEADER, CompactedLogError, decode_log, encode_log

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
fields = st.dictionaries(texts, texts, min_size=1, max_size=6)
streams = st.lists(fields, min_size=1, max_size=30).map(
    lambda entries: [(f"{seq}-0", f) for seq, f in enumerate(entries, start=1)]
)
run_hashes = st.fixed_dictionaries(
    {},
    optional={
        "input": texts,
        "output": texts,
        "status": texts,
        "run_id": texts,
        "lease_owner": texts,
    },
)


@given(run_hashes, streams, st.integers(min_value=0, max_value=35))
def test_a_compacted_log_reads_back_as_the_stream_it_replaced(
    run: dict[str, str], stream: list[tuple[str, dict[str, str]]], after: int
) -> None:
    """Entries (ids, field names and values, order) and the moved run fields round-trip exactly."""
    log = decode_log("wrun_x", encode_log(run, stream))
    assert log.entries() == stream
    assert log.entries(after) == [(eid, f) for eid, f in stream if int(eid[:-2]) > after]
    assert log.run == {k: v for k, v in run.items() if k not in ("run_id", "lease_owner")}
    assert log.last_seq == len(stream)


def test_the_zstd_tool_reads_the_value_past_its_version_frame() -> None:
    """The version is a zstd skippable frame: plain zstd decoding yields the JSON document."""
    value = encode_log({"output": "1"}, [("1-0", {"type": "run_created"})])
    body = zstandard.ZstdDecompressor().decompressobj().decompress(value[len(HEADER) :])
    assert body == b'{"run":{"output":"1"},"events":[[1,{"type":"run_created"}]]}'
    assert struct.unpack("<I", value[:4])[0] & 0xFFFFFFF0 == 0x184D2A50


@pytest.mark.parametrize(
    "value",
    [
        struct.pack("<II", 0x184D2A50, 4) + b"wfl9" + b"\x28\xb5\x2f\xfd",  # a newer version
        b"\x80\x04\x95",  # a pickle is never unpickled
        HEADER + b"not zstd",
        HEADER + zstandard.ZstdCompressor().compress(b'{"run": 1}'),
    ],
)
def test_an_unknown_or_damaged_value_is_refused_with_a_typed_error(value: bytes) -> None:
    """CompactedLogError (a CorruptEventError) names the run; nothing is guessed."""
    with pytest.raises(CompactedLogError, match="wrun_x") as caught:
        decode_log("wrun_x", value)
    assert isinstance(caught.value, CorruptEventError)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (None, DEFAULT_COMPACT_AFTER_S),
        ("", DEFAULT_COMPACT_AFTER_S),
        ("0", 0.0),
        ("2.5", 2.5),
        ("off", None),
        (" OFF ", None),
        ("-1", None),
    ],
)
def test_compact_after_setting(raw: str | None, seconds: float | None) -> None:
    """WORKFLOW_COMPACT_AFTER_S: seconds, 0 at once, off or negative disables, default 300."""
    assert compact_after_s(raw) == seconds


def test_compact_after_setting_refuses_other_text() -> None:
    """A typo is an error naming the variable, not a silent default."""
    with pytest.raises(WorkflowError, match="WORKFLOW_COMPACT_AFTER_S"):
        compact_after_s("5m")
