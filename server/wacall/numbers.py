"""Phone numbers: accept "+E164" or bare digits, keep canonical "+E164", know the region."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import phonenumbers


class InvalidNumber(ValueError):
    def __init__(self, field: str, value: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.value = value
        self.why = why


@dataclass(frozen=True, slots=True)
class PhoneNumber:
    e164: str  # "+14085551234"
    region: str  # ISO 3166 alpha-2, e.g. "US"; "001" for non-geographic numbers

    @property
    def digits(self) -> str:
        """The form WhatsApp uses for wa_id and `to`: digits without "+"."""
        return self.e164[1:]


@functools.lru_cache(maxsize=65536)
def parse_number(value: str, field: str = "number") -> PhoneNumber:
    """Parse an international number given as "+15551234567", "15551234567" or with spaces and dashes.

    Cached: libphonenumber's parse and validation cost ~50 µs, and the same numbers come back on every call.
    """
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise InvalidNumber(field, value, "a phone number in E.164 form is required, e.g. +447700900123")
    cleaned = text.replace(" ", "").replace("-", "").replace("(", "").replace(")", "").replace(".", "")
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]
    if not cleaned.startswith("+"):
        cleaned = "+" + cleaned
    if not cleaned[1:].isdigit():
        raise InvalidNumber(field, value, f"{value!r} is not a phone number: use digits with an optional leading +")
    try:
        parsed = phonenumbers.parse(cleaned, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(field, value, f"{value!r} is not an international number ({exc})") from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber(
            field, value, f"{value!r} is not a valid number for any region: include the country code, e.g. +44..."
        )
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    region = phonenumbers.region_code_for_number(parsed) or "001"
    return PhoneNumber(e164=e164, region=region)
