"""The stored format of a compacted run (``<prefix>:{pN}:run:<id>:log``), written by
``_compact.py``.

A value is a version frame and one zstd frame:

    zstd skippable frame, payload b"wfl2"   (8-byte frame header + 4 bytes: the format version)
    zstd frame, compressed with the raw-content dictionary ``compact-wfl2.dict`` (this package),
    of the JSON document below

The document holds the run hash as stored (but DROPPED_FIELDS) and every stream entry's fields as
stored, so a reader builds the same run and events from it as from the hash and the stream. Three
things in a run's log are spelled shorter, because they are most of what zstd cannot compress:

- correlation ids: a run's step, sleep, hook and child ids come from one generator seeded by the
  run id (``worker._ids.DeterministicIds``: a time part shared by the run, then 80 bits of
  ``random.Random(f"{run_id}:ids")``). An id that is the k-th of that sequence is stored as ``k``
  (a step id) or ``[prefix, k]``; any other id stays as it is. ``c`` is the CRC-32 of the ids so
  spelled, checked when they are spelled back: a generator that no longer gives the same ids
  fails the read (CompactedLogError) instead of giving other ids;
- times: an event's ``ts`` is the number of ms since the previous event's (the first since
  ``t``), ``resume_at`` and ``retry_after`` count from their event's ``ts``, and the run's
  ``created_at``, ``updated_at``, ``started_at`` and ``completed_at`` from ``t``. Only values
  that are an integer's canonical text are so spelled (an int in the JSON); others stay text;
- field names and the log's structure: the dictionary holds a typical log in this format, so
  zstd refers to it for the names and shapes that every run repeats.

    {"h": <the ids' time part>, "t": <ms>, "c": <crc32>,
     "run": {field: text | int},
     "ev": [[<seq - previous seq>, <type>, <ts>, <corr>, {field: text | int}?], ...]}

(a ``null`` type, ts or corr: the entry has no such field; the last element is left out when the
entry has no other field). On a ten-step run of ``make bench`` this takes a value from about 730
bytes (format wfl1: plain JSON of the same entries) to about 150.

Reading a value with the zstd tool: ``redis-cli --raw GET <key> | head -c -1 | zstd -d -D
<this package>/compact-wfl2.dict`` (``python -m world_redis.compact_dictionary`` prints the
path); the README's cookbook shows it. Values of format wfl1, written by earlier versions, stay readable.
A reader refuses any other version with CompactedLogError, a CorruptEventError (it never
unpickles, never imports anything named in data).
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import msgspec
import zstandard

from worker.world import CorruptEventError

T = TypeVar("T")
Entry = tuple[str, dict[str, str]]
SKIPPABLE = 0x184D2A50  # zstd's skippable frame magic (0x184D2A50..5F): the zstd tool skips it


def _header(version: bytes) -> bytes:
    return struct.pack("<II", SKIPPABLE, len(version)) + version


FORMAT = b"wfl2"
HEADER = _header(FORMAT)
FORMAT_V1 = b"wfl1"
HEADER_V1 = _header(FORMAT_V1)
DICTIONARY_FILE = "compact-wfl2.dict"
# a ten-step run in about 20 us at level 6 (the compressor reused): 280 B where level 3 gives
# 320 (measured on runs of make bench); higher levels cost several times the CPU for no gain
LEVEL = 6
DROPPED_FIELDS = frozenset({"run_id", "lease_owner", "lease_until"})  # not kept in the value
RUN_TIMES = frozenset({"created_at", "updated_at", "started_at", "completed_at"})
EVENT_TIMES = frozenset({"resume_at", "retry_after"})  # counted from their event's ts
ID_LENGTH = 26  # a ULID's characters: 10 of time, 16 of randomness
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # every 10-bit value as 2 characters
_TAIL_SHIFTS = range(70, -1, -10)


class CompactedLogError(CorruptEventError):
    """A compacted log that cannot be read: an unknown format version, or a value that does not
    decode. A run whose log is unreadable fails to load like a run with a corrupt entry."""


class CompactedLog(msgspec.Struct, frozen=True):
    """What a compacted value holds: the run fields it took over and the log's entries."""

    run: dict[str, str]
    events: list[tuple[int, dict[str, str]]]

    def entries(self, after_seq: int = 0) -> list[Entry]:
        """The log's entries after ``after_seq``, as XRANGE gives them: (``<seq>-0``, fields)."""
        return [(f"{seq}-0", fields) for seq, fields in self.events if seq > after_seq]

    @property
    def last_seq(self) -> int:
        return self.events[-1][0] if self.events else 0


# -- the document ------------------------------------------------------------------------------

Text = str | int  # a value as the document spells it: text, or an int standing for a number


class _Doc(msgspec.Struct, frozen=True, omit_defaults=True):
    run: dict[str, Text]
    ev: list[list[Any]]
    h: str = ""
    t: int = 0
    c: int = 0


class _DocRun(msgspec.Struct, frozen=True):
    """A document's run fields alone: its events are skipped, not built."""

    run: dict[str, Text]
    t: int = 0


class _V1Run(msgspec.Struct, frozen=True):
    run: dict[str, str]


_ENCODER = msgspec.json.Encoder()
_DOC = msgspec.json.Decoder(_Doc)
_DOC_RUN = msgspec.json.Decoder(_DocRun)
_V1 = msgspec.json.Decoder(CompactedLog)
_V1_RUN = msgspec.json.Decoder(_V1Run)


def _number(value: str | None) -> int | None:
    """The int that ``value`` is the canonical text of (what ``str(int)`` gives), else None."""
    if value is None:
        return None
    if value.isdigit() and value.isascii():  # the common case: a time, in ms
        return int(value) if value[0] != "0" or len(value) == 1 else None
    if value[:1] == "-" and value[1:].isdigit() and value.isascii() and value[1:2] != "0":
        return int(value)
    return None


def id_tails(run_id: str) -> Iterator[str]:
    """The random parts (16 characters) of a run's correlation ids, in the order the workflow
    code takes them (``worker._ids.DeterministicIds``); the format spells an id by its place in
    this sequence, so the sequence is part of the format."""
    rng = random.Random(f"{run_id}:ids")
    while True:
        r = rng.getrandbits(80)
        yield "".join([_PAIRS[(r >> s) & 1023] for s in _TAIL_SHIFTS])


def _id_places(run_id: str, head: str, corrs: Sequence[str]) -> dict[str, int]:
    """For the random parts of ``corrs`` that have the run's time part ``head``, their place in
    the run's id sequence (those found among the first 2n + 64 ids; the others stay spelled)."""
    wanted = {c[-16:] for c in corrs if _time_part(c) == head}
    places: dict[str, int] = {}
    if not wanted:
        return places
    for k, tail in zip(range(2 * len(wanted) + 64), id_tails(run_id), strict=False):
        if tail in wanted:
            places[tail] = k
            if len(places) == len(wanted):
                break
    return places


def _time_part(corr: str) -> str:
    """The time part of ``corr`` when it is spelled as a correlation id (``<prefix>_<ULID>``),
    else ""."""
    return corr[-ID_LENGTH:-16] if len(corr) > ID_LENGTH and corr[-ID_LENGTH - 1] == "_" else ""


def _head_of(corrs: Sequence[str]) -> str:
    return next((head for c in corrs if (head := _time_part(c))), "")


def encode_log(
    run_id: str,
    run_fields: Mapping[str, str],
    stream: Sequence[Entry],
    compressor: zstandard.ZstdCompressor | None = None,
) -> bytes:
    """The compacted value of a run: its hash (but DROPPED_FIELDS) and its stream entries.
    UnicodeEncodeError when a stored value is not UTF-8 (such a run is left as it is).

    ``compressor``: one to reuse (a new one costs more than compressing a run); one thread at a
    time."""
    corrs = [f["corr"] for _, f in stream if "corr" in f]
    head = _head_of(corrs)
    places = _id_places(run_id, head, corrs) if head else {}
    spelled: dict[str, Any] = {}  # corr -> how it is spelled (False: as it is), worked out once
    t0 = next((n for _, f in stream if (n := _number(f.get("ts"))) is not None), 0)
    crc = 0
    events: list[list[Any]] = []
    prev_seq, prev_ts = 0, t0
    for eid, fields in stream:
        seq = int(eid.partition("-")[0])
        rest = fields.copy()
        kind = rest.pop("type", None)
        ts_value: Text | None = rest.pop("ts", None)
        ts = _number(ts_value)  # type: ignore[arg-type]
        if ts is not None:
            ts_value, prev_ts = ts - prev_ts, ts
            if "resume_at" in rest or "retry_after" in rest:
                for name in EVENT_TIMES & rest.keys():
                    n = _number(rest[name])
                    if n is not None:
                        rest[name] = n - ts  # type: ignore[assignment]  # an int: see the document
        corr: Any = rest.pop("corr", None)
        if corr is not None and places:
            short = spelled.get(corr)
            if short is None:
                k = places.get(corr[-16:])
                if k is not None and _time_part(corr) == head:
                    prefix = corr[: -ID_LENGTH - 1]
                    short = k if prefix == "step" else [prefix, k]
                else:
                    short = False
                spelled[corr] = short
            if short is not False:
                crc = zlib.crc32(corr.encode(), crc)
                corr = short
        event: list[Any] = [seq - prev_seq, kind, ts_value, corr]
        if rest:
            event.append(rest)
        events.append(event)
        prev_seq = seq
    run: dict[str, Text] = {}
    for name, value in run_fields.items():
        if name in DROPPED_FIELDS:
            continue
        n = _number(value) if name in RUN_TIMES else None
        run[name] = value if n is None else n - t0
    doc = _Doc(run=run, ev=events, h=head if places else "", t=t0, c=crc)
    compressor = compressor or new_compressor()
    return HEADER + compressor.compress(_ENCODER.encode(doc))


def _dictionary_data() -> bytes:
    return resources.files(__package__).joinpath(DICTIONARY_FILE).read_bytes()


_DICTIONARY = zstandard.ZstdCompressionDict(
    _dictionary_data(), dict_type=zstandard.DICT_TYPE_RAWCONTENT
)


def new_compressor() -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=LEVEL, write_checksum=False, dict_data=_DICTIONARY)


def decode_log(run_id: str, value: bytes) -> CompactedLog:
    """The compacted value read back; CompactedLogError for an unknown version or bad data."""
    if value.startswith(HEADER_V1):
        return _decode(run_id, _V1, value[len(HEADER_V1) :], None)
    doc = _decode(run_id, _DOC, _body(run_id, value), _DICTIONARY)
    try:
        return _log_of(run_id, doc)
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise CompactedLogError(f"run {run_id}: compacted log does not decode: {exc}") from None


def decode_run(run_id: str, value: bytes) -> dict[str, str]:
    """The run hash fields of a compacted value (its events not built)."""
    if value.startswith(HEADER_V1):
        return _decode(run_id, _V1_RUN, value[len(HEADER_V1) :], None).run
    doc = _decode(run_id, _DOC_RUN, _body(run_id, value), _DICTIONARY)
    return _run_of(doc.run, doc.t)


def _body(run_id: str, value: bytes) -> bytes:
    if not value.startswith(HEADER):
        raise CompactedLogError(
            f"run {run_id}: compacted log of unknown format {value[: len(HEADER)]!r} "
            f"(this version reads {FORMAT.decode()} and {FORMAT_V1.decode()})"
        )
    return value[len(HEADER) :]


def _decode(
    run_id: str,
    decoder: msgspec.json.Decoder[T],
    body: bytes,
    dictionary: zstandard.ZstdCompressionDict | None,
) -> T:
    raw = _decompress(run_id, body, dictionary)
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise CompactedLogError(f"run {run_id}: compacted log does not decode: {exc}") from None


def _decompress(
    run_id: str, body: bytes, dictionary: zstandard.ZstdCompressionDict | None
) -> bytes:
    try:
        if dictionary is None:
            return zstandard.ZstdDecompressor().decompress(body)
        return zstandard.ZstdDecompressor(dict_data=dictionary).decompress(body)
    except zstandard.ZstdError as exc:
        raise CompactedLogError(f"run {run_id}: compacted log does not decode: {exc}") from None


def _run_of(run: Mapping[str, Text], t0: int) -> dict[str, str]:
    return {
        name: str(t0 + value) if isinstance(value, int) else value for name, value in run.items()
    }


def _log_of(run_id: str, doc: _Doc) -> CompactedLog:
    """The document's entries spelled back as stored (ids from their places, times from deltas)."""
    tails: list[str] = []
    source = id_tails(run_id)
    crc = 0
    events: list[tuple[int, dict[str, str]]] = []
    seq, ts = 0, doc.t
    for event in doc.ev:
        dseq, kind, ts_value, corr = event[:4]
        seq += int(dseq)
        fields: dict[str, str] = {}
        if kind is not None:
            fields["type"] = str(kind)
        if isinstance(ts_value, int):
            ts += ts_value
            fields["ts"] = str(ts)
        elif ts_value is not None:
            fields["ts"] = str(ts_value)
        if corr is not None:
            if isinstance(corr, str):
                fields["corr"] = corr
            else:
                prefix, k = ("step", corr) if isinstance(corr, int) else (str(corr[0]), corr[1])
                while len(tails) <= k:
                    tails.append(next(source))
                fields["corr"] = spelled = f"{prefix}_{doc.h}{tails[k]}"
                crc = zlib.crc32(spelled.encode(), crc)
        if len(event) > 4:
            for name, value in event[4].items():
                if isinstance(value, int):  # EVENT_TIMES, counted from the event's ts
                    fields[name] = str(ts + value)
                else:
                    fields[name] = value
        events.append((seq, fields))
    if crc != doc.c:
        raise CompactedLogError(
            f"run {run_id}: compacted log's correlation ids do not match their checksum: "
            "this version derives a run's ids differently from the one that compacted it"
        )
    return CompactedLog(run=_run_of(doc.run, doc.t), events=events)


def document(run_id: str, value: bytes) -> bytes:
    """A value's JSON document as stored (what ``zstd -d -D <dictionary>`` prints)."""
    if value.startswith(HEADER_V1):
        return _decompress(run_id, value[len(HEADER_V1) :], None)
    return _decompress(run_id, _body(run_id, value), _DICTIONARY)


def dictionary_path() -> str:
    """Where this package's dictionary file is (for ``zstd -D``)."""
    return str(resources.files(__package__).joinpath(DICTIONARY_FILE))
