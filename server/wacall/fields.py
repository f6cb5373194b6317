"""Checks of the fields a client sends, independent of the transport: each returns the value the service uses or
raises `InvalidField` naming the field and saying what it must be. The gRPC layer turns that into
INVALID_ARGUMENT with a BadRequest detail; routes (wacall_adapters) use the same checks for their own fields.
"""

from __future__ import annotations

import unicodedata
from datetime import timedelta

from google.protobuf import duration_pb2
from google.protobuf.message import Message

from wacall.confinement import OutsideDirectory, inside

# google.protobuf.Duration's own range (10,000 years); beyond it the value is not a Duration (and overflows
# Python's timedelta).
MAX_DURATION_SECONDS = 315_576_000_000
MAX_NANOS = 999_999_999


class InvalidField(ValueError):
    """A field of a request holds something the service cannot take."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why

    def within(self, prefix: str) -> InvalidField:
        """The same problem, named from an enclosing message (`route.announcement.` + `tone_hz`)."""
        return InvalidField(f"{prefix}{self.field}", self.why)


def span(value: timedelta) -> str:
    """A duration for people: '0 s', '90 s', '5 min', '24 h', '30 days'."""
    seconds = value.total_seconds()
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


def duration_value(value: duration_pb2.Duration, field: str) -> timedelta:
    """The Duration as a timedelta, if it is a valid Duration."""
    seconds, nanos = value.seconds, value.nanos
    valid = (
        abs(seconds) <= MAX_DURATION_SECONDS
        and abs(nanos) <= MAX_NANOS
        and not (seconds > 0 and nanos < 0)
        and not (seconds < 0 and nanos > 0)
    )
    if not valid:
        raise InvalidField(
            field, "not a valid Duration (seconds within ±315576000000, nanos within ±999999999, one sign)"
        )
    return value.ToTimedelta()


def duration_in(value: duration_pb2.Duration, field: str, *, minimum: timedelta, maximum: timedelta) -> timedelta:
    """The Duration as a timedelta, if it is valid and within [minimum, maximum]."""
    result = duration_value(value, field)
    if not minimum <= result <= maximum:
        raise InvalidField(field, f"between {span(minimum)} and {span(maximum)}")
    return result


def _control_characters(text: str, allowed: str) -> bool:
    return any(unicodedata.category(c) == "Cc" and c not in allowed for c in text)


def bounded_text(value: str, field: str, *, max_chars: int, multiline: bool = False) -> str:
    """Text a person or the platform will read (multiline) or an identifier: bounded, no control characters
    (NUL and the like; free text may keep line breaks and tabs)."""
    if len(value) > max_chars:
        raise InvalidField(field, f"at most {max_chars} characters (got {len(value)})")
    if value.isprintable():  # no control character at all (str.isprintable is False for every Cc): the common case
        return value
    if _control_characters(value, "\n\r\t" if multiline else ""):
        raise InvalidField(field, "control characters (such as NUL) are not allowed")
    return value


def server_file(value: str, field: str, directory: str, *, max_chars: int) -> str:
    """The real path of a server-side file named in a request, which must lie inside `directory` (a configured
    one)."""
    bounded_text(value, field, max_chars=max_chars)
    try:
        return inside(directory, value)
    except OutsideDirectory as error:
        raise InvalidField(field, str(error)) from None


def positive_duration(message: Message, name: str, field: str, *, default: timedelta, maximum: timedelta) -> timedelta:
    """The optional Duration field `name` of `message`: `default` when unset, else positive and at most `maximum`."""
    if not message.HasField(name):
        return default
    value = duration_in(getattr(message, name), field, minimum=timedelta(0), maximum=maximum)
    if value <= timedelta(0):
        raise InvalidField(field, "must be positive")
    return value
