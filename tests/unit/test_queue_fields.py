"""The fields of wake-up entries as the worker reads them from a script reply."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from world_redis._client import text_dict
from world_redis._queue import fields_dict, text_fields, undecodable

TEXT = st.text(alphabet=st.characters(codec="utf-8"))  # no surrogates
UTF8 = TEXT.map(str.encode)  # bytes as a client without decode_responses answers them
SURROGATE = st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)  # undecodable bytes


@given(st.lists(st.tuples(TEXT | UTF8, TEXT | UTF8 | st.integers())))
def test_text_fields_reads_a_flat_reply_as_the_two_step_conversion_does(
    pairs: list[tuple[object, object]],
) -> None:
    flat = [x for pair in pairs for x in pair]
    assert text_fields(flat) == text_dict(fields_dict(flat))


@given(st.dictionaries(TEXT, TEXT))
def test_text_is_decodable(fields: dict[str, str]) -> None:
    assert not undecodable(fields)


@given(st.dictionaries(TEXT, TEXT), TEXT, SURROGATE, st.booleans())
def test_a_surrogate_in_a_name_or_a_value_is_undecodable(
    fields: dict[str, str], text: str, bad: str, in_name: bool
) -> None:
    spoiled = text + bad
    fields = {**fields, **({spoiled: "x"} if in_name else {"x": spoiled})}
    assert undecodable(fields)
