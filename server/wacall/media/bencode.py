"""Bencode, the encoding of rtpengine's ng control protocol. Pure bytes in, values out.

Four kinds of value: byte strings, integers, lists and dictionaries keyed by byte strings. `encode` also takes
`str` (written as UTF-8) and writes dictionary keys in sorted order, as bencode requires. `decode` is strict: it
accepts exactly one value that spans the whole input, canonical integers only (no leading zeros, no `-0`), and raises
`BencodeError` for anything else. It keeps strings as bytes and does not insist on sorted keys, since rtpengine
itself does not sort them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

Value: TypeAlias = bytes | int | list["Value"] | dict[bytes, "Value"]
"""A decoded value."""

Encodable: TypeAlias = bytes | str | int | Sequence["Encodable"] | Mapping[str | bytes, "Encodable"]
"""What `encode` takes: a `Value`, with `str` allowed wherever bytes are."""

# Deeper nesting than this is refused rather than risk the interpreter's recursion limit on hostile input.
MAX_DEPTH = 64


class BencodeError(ValueError):
    """The input is not one well-formed bencoded value (or a value cannot be bencoded); the message says where."""


def encode(value: Encodable) -> bytes:
    """The bencoding of `value`; dictionary keys sorted by their bytes."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _encode(value: Encodable, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise BencodeError("a bool is not a bencode value; use 0 or 1")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | str):
        data = _as_bytes(value)
        out.append(b"%d:" % len(data))
        out.append(data)
    elif isinstance(value, Mapping):
        items: dict[bytes, Encodable] = {}
        for key, item in value.items():
            if not isinstance(key, bytes | str):
                raise BencodeError(f"a dictionary key must be bytes or str, not {type(key).__name__}")
            encoded_key = _as_bytes(key)
            if encoded_key in items:
                raise BencodeError(f"the key {encoded_key!r} appears twice")
            items[encoded_key] = item
        out.append(b"d")
        for key in sorted(items):
            _encode(key, out)
            _encode(items[key], out)
        out.append(b"e")
    elif isinstance(value, Sequence):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    else:
        raise BencodeError(f"{type(value).__name__} is not a bencode value")


def decode(data: bytes) -> Value:
    """The one value `data` holds; `BencodeError` if it holds anything else (trailing bytes included)."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} bytes after the value at offset {end}")
    return value


def _decode(data: bytes, at: int, depth: int) -> tuple[Value, int]:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nested deeper than {MAX_DEPTH} at offset {at}")
    if at >= len(data):
        raise BencodeError(f"input ends at offset {at} where a value should start")
    lead = data[at : at + 1]
    if lead == b"i":
        end = data.find(b"e", at + 1)
        if end < 0:
            raise BencodeError(f"the integer at offset {at} has no end")
        return _integer(data[at + 1 : end], at), end + 1
    if lead == b"l":
        items: list[Value] = []
        at += 1
        while data[at : at + 1] != b"e":
            item, at = _decode(data, at, depth + 1)
            items.append(item)
        return items, at + 1
    if lead == b"d":
        mapping: dict[bytes, Value] = {}
        start = at
        at += 1
        while data[at : at + 1] != b"e":
            if at >= len(data):
                raise BencodeError(f"the dictionary at offset {start} has no end")
            if not data[at : at + 1].isdigit():
                raise BencodeError(f"a dictionary key at offset {at} is not a string")
            key, at = _string(data, at)
            if key in mapping:
                raise BencodeError(f"the key {key!r} appears twice in the dictionary at offset {start}")
            mapping[key], at = _decode(data, at, depth + 1)
        return mapping, at + 1
    if lead.isdigit():
        return _string(data, at)
    raise BencodeError(f"unexpected byte {lead!r} at offset {at}")


def _integer(digits: bytes, at: int) -> int:
    body = digits[1:] if digits.startswith(b"-") else digits
    if not body or not body.isdigit() or not body.isascii():
        raise BencodeError(f"the integer at offset {at} is not a number: {digits!r}")
    if (body.startswith(b"0") and len(body) > 1) or digits == b"-0":
        raise BencodeError(f"the integer at offset {at} is not canonical: {digits!r}")
    return int(digits)


def _string(data: bytes, at: int) -> tuple[bytes, int]:
    colon = data.find(b":", at)
    if colon < 0:
        raise BencodeError(f"the string length at offset {at} has no colon")
    digits = data[at:colon]
    if not digits.isdigit() or not digits.isascii() or (digits.startswith(b"0") and len(digits) > 1):
        raise BencodeError(f"the string length at offset {at} is not a canonical number: {digits!r}")
    length = int(digits)
    end = colon + 1 + length
    if end > len(data):
        raise BencodeError(f"the string at offset {at} claims {length} bytes; {len(data) - colon - 1} remain")
    return data[colon + 1 : end], end
