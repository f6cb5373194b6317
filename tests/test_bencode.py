"""Bencode as the ng protocol uses it: every value round-trips, keys are written sorted, and the decoder refuses
anything that is not exactly one well-formed value with one error type."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wacall.media.bencode import MAX_DEPTH, BencodeError, Value, decode, encode

values: st.SearchStrategy[Value] = st.recursive(
    st.binary(max_size=40) | st.integers(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.binary(max_size=10), children, max_size=5),
    max_leaves=30,
)


@given(values)
def test_every_value_round_trips(value: Value) -> None:
    assert decode(encode(value)) == value


@given(values)
def test_encoding_is_deterministic_and_canonical(value: Value) -> None:
    encoded = encode(value)
    assert encode(decode(encoded)) == encoded


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_bencode_error_only(data: bytes) -> None:
    try:
        value = decode(data)
    except BencodeError:
        return
    # What was accepted is a value (its dictionaries may have come unsorted, as rtpengine writes them).
    assert decode(encode(value)) == value


@given(values, st.integers(min_value=0, max_value=1000), st.binary(min_size=1, max_size=3))
def test_corrupted_encodings_never_raise_anything_but_bencode_error(value: Value, at: int, junk: bytes) -> None:
    encoded = encode(value)
    at %= len(encoded) + 1
    for data in (encoded[:at], encoded[:at] + junk + encoded[at:]):
        try:
            decode(data)
        except BencodeError:
            pass


def test_the_ng_ping_from_the_protocol_documentation() -> None:
    assert encode({"command": "ping"}) == b"d7:command4:pinge"
    assert decode(b"d6:result4:ponge") == {b"result": b"pong"}


def test_keys_are_sorted_by_their_bytes_and_str_is_utf8() -> None:
    assert encode({"sdp": "é", "call-id": "x", "ICE": "force"}) == b"d3:ICE5:force7:call-id1:x3:sdp2:\xc3\xa9e"
    assert encode([1, -2, b"", ["a"]]) == b"li1ei-2e0:l1:aee"


def test_dictionaries_from_rtpengine_may_come_unsorted() -> None:
    assert decode(b"d1:bi1e1:ai2ee") == {b"b": 1, b"a": 2}


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "input ends"),
        (b"i12", "no end"),
        (b"i-0e", "not canonical"),
        (b"i012e", "not canonical"),
        (b"ie", "not a number"),
        (b"i1.5e", "not a number"),
        (b"5:abc", "claims 5 bytes"),
        (b"05:abcde", "not a canonical number"),
        (b"3abc", "no colon"),
        (b"l1:a", "input ends"),
        (b"d1:a", "input ends"),
        (b"d1:ai1e", "no end"),
        (b"di1ei2ee", "is not a string"),
        (b"d1:ai1e1:ai2ee", "appears twice"),
        (b"i1ei2e", "3 bytes after the value at offset 3"),
        (b"x", "unexpected byte"),
        (b"l" * (MAX_DEPTH + 2) + b"e" * (MAX_DEPTH + 2), "nested deeper"),
    ],
)
def test_malformed_input_gets_a_specific_error(data: bytes, says: str) -> None:
    with pytest.raises(BencodeError, match=says):
        decode(data)


def test_values_bencode_cannot_carry_are_refused() -> None:
    with pytest.raises(BencodeError, match="bool"):
        encode({"flag": True})
    with pytest.raises(BencodeError, match="float"):
        encode([1.5])  # type: ignore[list-item]
    with pytest.raises(BencodeError, match="appears twice"):
        encode({"a": 1, b"a": 2})
