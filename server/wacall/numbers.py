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


def _legacy_wa_id_forms(digits: str) -> list[str]:
    """E.164 digit strings a wa_id in one of the platform's legacy forms may stand for (HOOK-8).

    - Mexico: mobiles keep the old "1" after the country code in wa_ids (`521` + 10 digits); E.164 dropped it in
      2019 (`52` + 10 digits), and libphonenumber rejects the old form.
    - Brazil: mobiles gained a ninth digit (a leading 9 after the 2-digit area code); accounts created before that
      keep wa_ids without it (`55` + area + 8 digits starting 6-9), which libphonenumber rejects.
    - Argentina: wa_ids carry the mobile "9" after `54` (`549` + 10 digits), which is also the E.164 form of an
      Argentine mobile, so it parses as it is; `54` + 10 digits is a landline, a different number: never rewritten.
    """
    forms: list[str] = []
    if digits.startswith("521") and len(digits) == 13:
        forms.append("52" + digits[3:])
    if digits.startswith("55") and len(digits) == 12 and digits[4] in "6789":
        forms.append(digits[:4] + "9" + digits[4:])
    return forms


@functools.lru_cache(maxsize=65536)
def number_of_wa_id(wa_id: str, field: str = "user id") -> PhoneNumber:
    """The user's E.164 number for a wa_id the platform sent, including its legacy Mexican and Brazilian forms.

    The wa_id itself stays the platform's key for the user (an alias of the number, kept by the store).
    """
    try:
        return parse_number(wa_id, field)
    except InvalidNumber as invalid:
        digits = wa_id.strip() if isinstance(wa_id, str) else ""
        for form in _legacy_wa_id_forms(digits) if digits.isascii() and digits.isdigit() else []:
            try:
                return parse_number(form, field)
            except InvalidNumber:
                continue
        raise invalid from None
