"""The compacted log format: it reads back exactly what it was given, and refuses what it does
not know."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess

import msgspec
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from worker._compactor import DEFAULT_COMPACT_AFTER_S, compact_after_s
from worker._errors import CorruptEventError, WorkflowError
from worker._ids import DeterministicIds
from world_redis._compact import HEADER, CompactedLogError, decode_log, decode_run, encode_log
from world_redis._compact_format import HEADER_V1, dictionary_path, document

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


RUN_ID = "wrun_01KB7XG3V0Q8W2E6R4T9Y1U3P5"
IDS = DeterministicIds(RUN_ID, 1_764_460_800_000)
RUN_IDS = [IDS.next(prefix) for prefix in ("step", "step", "wait", "hook", "chld", "step")]
# what the format spells shorter (the run's own ids, integer times) next to what it must keep
corrs = st.sampled_from(RUN_IDS) | texts | st.sampled_from(["step_", "x_" + RUN_IDS[0][5:]])
times = st.integers(min_value=-(10**14), max_value=10**14).map(str) | st.sampled_from(
    ["", "007", "-0", "1e3", "+5", "١٢", " 12", "--5"]
)
log_fields = st.fixed_dictionaries(
    {},
    optional={"type": texts, "ts": times, "corr": corrs, "resume_at": times, "retry_after": times},
).flatmap(lambda base: st.dictionaries(texts, texts, max_size=4).map(lambda more: more | base))
log_streams = st.lists(log_fields, min_size=1, max_size=30).map(
    lambda entries: [(f"{seq}-0", f) for seq, f in enumerate(entries, start=1)]
)
run_times = st.fixed_dictionaries(
    {}, optional={name: times for name in ("created_at", "updated_at", "started_at", "seq")}
)


@given(run_hashes, streams, st.integers(min_value=0, max_value=35))
def test_a_compacted_log_reads_back_as_the_stream_it_replaced(
    run: dict[str, str], stream: list[tuple[str, dict[str, str]]], after: int
) -> None:
    """Entries (ids, field names and values, order) and the moved run fields round-trip exactly."""
    value = encode_log("wrun_x", run, stream)
    log = decode_log("wrun_x", value)
    assert log.entries() == stream
    assert log.entries(after) == [(eid, f) for eid, f in stream if int(eid[:-2]) > after]
    assert log.run == {k: v for k, v in run.items() if k not in ("run_id", "lease_owner")}
    assert decode_run("wrun_x", value) == log.run
    assert log.last_seq == len(stream)


@given(run_hashes, run_times, log_streams)
def test_ids_and_times_spelled_shorter_read_back_exactly(
    run: dict[str, str], run_times: dict[str, str], stream: list[tuple[str, dict[str, str]]]
) -> None:
    """The run's own correlation ids, integer times and run times round-trip exactly, as do
    values that only look like them (other ids, non-canonical numbers)."""
    run = run | run_times
    value = encode_log(RUN_ID, run, stream)
    log = decode_log(RUN_ID, value)
    assert [(eid, dict(f)) for eid, f in log.entries()] == stream
    assert log.run == {k: v for k, v in run.items() if k not in ("run_id", "lease_owner")}
    assert decode_run(RUN_ID, value) == log.run


def ten_step_run() -> tuple[dict[str, str], list[tuple[str, dict[str, str]]]]:
    ids = DeterministicIds(RUN_ID, 1_764_460_800_100)
    ts = 1_764_460_800_000
    stream = [{"type": "run_created", "ts": str(ts), "workflow": "app.ten", "input": "[7]",
               "deployment": "", "seed": "3f9a1c0e7b2d4f68a1e5c9b3d7f20a4e"},
              {"type": "run_started", "ts": str(ts + 100)}]  # fmt: skip
    for i in range(10):
        corr = ids.next("step")
        stream += [{"type": "step_created", "ts": str(ts + 101 + 3 * i), "corr": corr,
                    "name": "app.add", "input": f'{{"args":[{i}]}}'},
                   {"type": "step_started", "ts": str(ts + 101 + 3 * i), "corr": corr,
                    "attempt": "1"},
                   {"type": "step_completed", "ts": str(ts + 102 + 3 * i), "corr": corr,
                    "attempt": "1", "result": str(i)}]  # fmt: skip
    stream.append({"type": "run_completed", "ts": str(ts + 140), "output": "52"})
    run = {"workflow": "app.ten", "status": "completed", "input": "[7]", "output": "52",
           "created_at": str(ts), "updated_at": str(ts + 140), "seq": str(len(stream))}  # fmt: skip
    return run, [(f"{n}-0", f) for n, f in enumerate(stream, start=1)]


def test_a_ten_step_run_takes_a_few_hundred_bytes() -> None:
    """Its step ids are spelled by their place in the run's id sequence, its times as deltas,
    and the rest refers to the dictionary: far less than the log's JSON compressed alone."""
    run, stream = ten_step_run()
    value = encode_log(RUN_ID, run, stream)
    plain = zstandard.ZstdCompressor(level=6).compress(
        json.dumps({"run": run, "events": stream}).encode()
    )
    assert len(value) < 300 < len(plain)
    doc = msgspec.json.decode(document(RUN_ID, value))
    assert doc["ev"][2][:4] == [1, "step_created", 1, 0]  # 1 ms after run_started; step id 0
    assert decode_log(RUN_ID, value).entries() == stream


def test_ids_that_the_generator_no_longer_gives_fail_the_read() -> None:
    """A value read under another run id (or a changed id generator) gives other ids: the
    checksum refuses it instead of handing out wrong correlation ids."""
    run, stream = ten_step_run()
    value = encode_log(RUN_ID, run, stream)
    with pytest.raises(CompactedLogError, match=r"wrun_other.*checksum"):
        decode_log("wrun_other", value)


def test_values_written_by_earlier_versions_stay_readable() -> None:
    """Format wfl1: plain JSON of the run hash and the entries behind its version frame."""
    run, stream = ten_step_run()
    body = json.dumps({"run": run, "events": [[int(e[:-2]), f] for e, f in stream]}).encode()
    value = HEADER_V1 + zstandard.ZstdCompressor().compress(body)
    assert decode_log(RUN_ID, value).entries() == stream
    assert decode_run(RUN_ID, value) == run
    assert document(RUN_ID, value) == body


def test_the_dictionary_is_the_one_values_were_written_with() -> None:
    """Every value of format wfl2 needs this exact dictionary to decode: a changed file is a new
    format version, never an edit."""
    with open(dictionary_path(), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert digest == "aed8cb54429b79639c3fa931c4fcd8e1b1f5c88fd3befbe527eee2445701ab4d"


def test_the_zstd_tool_reads_the_value_past_its_version_frame() -> None:
    """The version is a zstd skippable frame: zstd with the package's dictionary prints the JSON
    document (the README's cookbook)."""
    run, stream = ten_step_run()
    value = encode_log(RUN_ID, run, stream)
    assert struct.unpack("<I", value[:4])[0] & 0xFFFFFFF0 == 0x184D2A50
    assert value.startswith(HEADER)
    tool = shutil.which("zstd")
    if tool is None:  # the tool's own behaviour, through the library that ships with it
        with open(dictionary_path(), "rb") as f:
            raw = zstandard.ZstdCompressionDict(f.read(), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        body = (
            zstandard.ZstdDecompressor(dict_data=raw)
            .decompressobj()
            .decompress(value[len(HEADER) :])
        )
    else:
        body = subprocess.run(
            [tool, "-d", "-q", "-c", "-D", dictionary_path()], input=value, capture_output=True,
            check=True,
        ).stdout  # fmt: skip
    assert body == document(RUN_ID, value)
    assert msgspec.json.decode(body)["run"]["workflow"] == "app.ten"


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


def test_an_id_kept_as_it_is_reads_back_when_it_repeats() -> None:
    """An id that is not the run's own (another run's, say) stays spelled out, in every entry."""
    other = DeterministicIds("wrun_other", 1_764_460_800_000).next("step")
    stream = [
        (f"{n}-0", {"type": t, "ts": str(1_764_460_800_000 + n), "corr": "".join(corr)})
        for n, (t, corr) in enumerate(
            [
                ("step_created", [other]),
                ("step_started", list(other)),
                ("step_created", RUN_IDS[:1]),
            ],
            start=1,
        )
    ]
    assert decode_log(RUN_ID, encode_log(RUN_ID, {}, stream)).entries() == stream
