"""Event decoding on random log entries: a typed error or a valid event, never anything else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.props import bounded
from worker._errors import CorruptEventError
from worker._events import _PAYLOAD_FIELDS, EVENT_TYPES, Event, event_from_fields

FIELD_NAMES = sorted({"type", "id", "ts", "corr", "seq", *set().union(*_PAYLOAD_FIELDS.values())})
# text a stream field may hold: anything (lone surrogates stand for bytes that are not UTF-8),
# and the numbers, near-numbers and JSON that the int and payload fields expect
VALUES = st.one_of(
    st.text(max_size=40),
    st.integers().map(str),
    st.sampled_from(["", "1.5", "1e3", "0x10", " 7", "-0", "nan", "inf", "9" * 40, "null", "[]"]),
    st.text(alphabet=st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), min_size=1),
)
ENTRIES = st.dictionaries(
    st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=10)), VALUES, max_size=8
)


@bounded(400)
@given(
    etype=st.one_of(st.sampled_from(sorted(EVENT_TYPES)), st.text(max_size=12), st.none()),
    fields=ENTRIES,
    seq=st.integers(min_value=0, max_value=2**63),
)
def test_event_from_fields_raises_only_corrupt_event_error(
    etype: str | None, fields: dict[str, str], seq: int
) -> None:
    """Random entry fields give a well-typed event of the entry's type, or CorruptEventError."""
    if etype is not None:
        fields = {**fields, "type": etype}
    try:
        ev = event_from_fields(seq, fields, "wrun_fuzz")
    except CorruptEventError as exc:
        assert "wrun_fuzz" in str(exc)
        return
    assert isinstance(ev, EVENT_TYPES[fields["type"]]) and isinstance(ev, Event)
    assert ev.seq == seq
    for name in ev.__struct_fields__:
        value = getattr(ev, name)
        assert isinstance(value, int | str), (name, value)


def test_non_utf8_bytes_in_an_int_field_are_a_corrupt_event() -> None:
    """Bytes that are not UTF-8 in a number field (``ts``) raise CorruptEventError, not UnicodeEncodeError."""
    text = b"\xa8\xdd".decode("utf-8", "surrogateescape")  # as RedisWorld reads such bytes back
    with pytest.raises(CorruptEventError, match=r"log entry 3-0 \(wait_created\)"):
        event_from_fields(3, {"type": "wait_created", "ts": text}, "wrun_fuzz")


def test_an_event_id_is_its_entry_id_unless_an_older_writer_stored_one() -> None:
    """Entries carry no second id: an event's id is its stream entry id; an entry written by an
    earlier version with an ``evnt_`` ULID keeps that id."""
    fields = {"type": "step_started", "ts": "5", "corr": "step_1", "attempt": "1"}
    assert event_from_fields(7, fields).id == "7-0"
    legacy = {**fields, "id": "evnt_01M8PHZEAXYKEDPKDC2NERR9J3R"}
    assert event_from_fields(7, legacy).id == "evnt_01M8PHZEAXYKEDPKDC2NERR9J3R"
