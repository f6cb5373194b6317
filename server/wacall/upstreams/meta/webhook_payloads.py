"""Parse WhatsApp webhook bodies into the domain's inbound items (`wacall.inbound`). Pure: bytes (and the instant
of arrival) in, items out; Meta's vocabulary (phone_number_id, wacid, its error codes and status words) stops here.

Lenient only where the platform's payloads really drift (HOOK-7): timestamps as digit strings or integers,
`expiration_timestamp` as either, enum values in any case, unknown kinds kept as `Ignored`, and whatever does not
concern calling ignored rather than failing the whole delivery. Strict everywhere else: a value of the wrong type
is refused with a message naming the field, never coerced (`"is_permanent": "false"` is not a permanent grant),
and so is a timestamp the service cannot trust (further ahead than the allowed clock skew, older than the
platform's retries, or outside what can be stored).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from wacall.inbound import (
    BusinessRestriction,
    CallEventItem,
    CallEventKind,
    DeliveryStatus,
    Ignored,
    InboundItem,
    InboundMessage,
    MessageStatus,
    PermissionReply,
    ReplyTo,
)
from wacall.upstreams.meta.errors import CALL_SETUP_FAILURES, meta_error


class MalformedWebhook(ValueError):
    """The body is not a WhatsApp webhook we can read (HTTP 400)."""


class UntrustedTimestamp(MalformedWebhook):
    """A timestamp too far in the future or the past to be applied (HTTP 400, and the body is audited)."""


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """The instants a delivery arriving at `now` may carry.

    `max_ahead`: the clock skew tolerated between the platform and us. `max_age`: the platform retries
    deliveries for up to 7 days, so anything older is not a retry. `max_expiry_ahead`: how far ahead a permission
    or restriction may expire.
    """

    now: datetime
    max_ahead: timedelta
    max_age: timedelta
    max_expiry_ahead: timedelta


BIC_RESTRICTIONS = frozenset(
    {"RESTRICTED_BUSINESS_INITIATED_CALLING", "RESTRICTED_BIZ_INITIATED_AND_USER_INITIATED_CALLING"}
)
# Meta's words for what happened to a call: `calls[].event`, and a call status's `status`.
CALL_EVENTS = {"connect": CallEventKind.CONNECT, "terminate": CallEventKind.TERMINATE}
CALL_STATUSES = {
    "ringing": CallEventKind.RINGING,
    "accepted": CallEventKind.ACCEPTED,
    "rejected": CallEventKind.REJECTED,
}
DELIVERY_STATUSES = {status.value: status for status in DeliveryStatus if status is not DeliveryStatus.OTHER}
USER_INITIATED = "USER_INITIATED"

# Beyond any instant the service stores or adds margins to (datetime ends at year 9999).
LATEST_INSTANT = datetime(9000, 1, 1, tzinfo=UTC)
# Error codes and durations go into 32-bit fields of the API.
MAX_INT32 = 2**31 - 1


# --- values -------------------------------------------------------------------------------------------------------


def _instant(value: Any, what: str) -> datetime:
    """Unix seconds as an integer or a string of digits (HOOK-7); nothing else."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MalformedWebhook(f"{what} must be Unix seconds (an integer or a string of digits), got {value!r}")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise MalformedWebhook(f"{what} must be Unix seconds (digits only), got {value[:40]!r}")
        value = int(value)
    if value < 0 or value >= LATEST_INSTANT.timestamp():
        raise MalformedWebhook(f"{what} {value} is not an instant the service can store (Unix seconds expected)")
    return datetime.fromtimestamp(value, UTC)


def parse_timestamp(value: Any, what: str, window: TimeWindow | None = None) -> datetime:
    """An instant the platform says something happened at: refused when ahead of the skew or older than retries."""
    at = _instant(value, what)
    if window is not None:
        if at > window.now + window.max_ahead:
            raise UntrustedTimestamp(
                f"{what} {at.isoformat()} is more than {window.max_ahead} ahead of the service's clock "
                f"({window.now.isoformat()})"
            )
        if at < window.now - window.max_age:
            raise UntrustedTimestamp(
                f"{what} {at.isoformat()} is older than {window.max_age}: the platform retries no longer than that"
            )
    return at


def _expiry(value: Any, what: str, window: TimeWindow | None) -> datetime:
    at = _instant(value, what)
    if window is not None and at > window.now + window.max_expiry_ahead:
        raise UntrustedTimestamp(f"{what} {at.isoformat()} is more than {window.max_expiry_ahead} ahead")
    return at


def _optional_time(value: Any, what: str, window: TimeWindow | None) -> datetime | None:
    return None if value is None or value == "" else parse_timestamp(value, what, window)


def _text(value: Any, what: str, default: str = "") -> str:
    """A string field; absent (or null) gives `default`. Any other type is refused, not converted."""
    if value is None:
        return default
    if not isinstance(value, str):
        raise MalformedWebhook(f"{what} must be a string, got {type(value).__name__}")
    return value


def _required_text(value: Any, what: str) -> str:
    text = _text(value, what)
    if not text:
        raise MalformedWebhook(f"{what} is required")
    return text


def _flag(value: Any, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MalformedWebhook(f"{what} must be true or false, got {value!r}")
    return value


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT32:
        raise MalformedWebhook(f"{what} must be a whole number from 0 to {MAX_INT32}, got {value!r}")
    return value


def _dict(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedWebhook(f"{what} must be an object")
    return value


def _optional_dict(value: Any, what: str) -> Mapping[str, Any]:
    return {} if value is None else _dict(value, what)


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedWebhook(f"{what} must be an array")
    return value


def _error_codes(errors: list[Any], what: str) -> tuple[int, ...]:
    return tuple(_count(_dict(e, what).get("code", 0), f"{what}.code") for e in errors)


# --- the body -----------------------------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise MalformedWebhook(f"body is not JSON: {name} is not a JSON number")


# What can put a lone surrogate in what `json.loads` returns for a UTF-8 body: a \u escape of one, or one encoded
# in the bytes (json decodes with "surrogatepass"). A body with neither needs no walk over its strings.
_SURROGATE_SOURCE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _check_strings(data: Any) -> None:
    """Every string must be storable text: JSON escapes can spell lone surrogates, which UTF-8 cannot encode."""
    pending = [data]
    while pending:
        value = pending.pop()
        strings: tuple[str, ...]
        if isinstance(value, str):
            strings = (value,)
        elif isinstance(value, dict):
            strings = tuple(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            strings = ()
            pending.extend(value)
        else:
            continue
        for text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise MalformedWebhook(f"a string is not valid Unicode (lone surrogate): {text[:40]!r}") from None


def decode(body: bytes) -> Mapping[str, Any]:
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedWebhook(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise MalformedWebhook("body is nested too deeply") from None
    data = _dict(data, "the body")
    if json.detect_encoding(body) not in ("utf-8", "utf-8-sig") or _SURROGATE_SOURCE.search(body) is not None:
        _check_strings(data)
    if data.get("object") != "whatsapp_business_account":
        raise MalformedWebhook(f"object must be 'whatsapp_business_account', got {data.get('object')!r}")
    return data


# --- messages -----------------------------------------------------------------------------------------------------


def _user_of(message: Mapping[str, Any], contacts: list[Any]) -> str | None:
    user = _text(message.get("from"), "messages[].from")
    if not user and contacts:
        user = _text(_dict(contacts[0], "contacts[0]").get("wa_id"), "contacts[0].wa_id")
    return user or None


def _permission_reply(
    phone_number_id: str,
    message: Mapping[str, Any],
    user: str,
    message_id: str,
    timestamp: datetime,
    interactive: Mapping[str, Any],
    window: TimeWindow | None,
) -> PermissionReply:
    reply = _dict(interactive.get("call_permission_reply"), "call_permission_reply")
    response = _text(reply.get("response"), "call_permission_reply.response").lower()
    if response not in ("accept", "reject"):
        raise MalformedWebhook(f"call_permission_reply.response must be accept or reject, got {response!r}")
    source = _text(reply.get("response_source"), "call_permission_reply.response_source", "user_action")
    expiration = reply.get("expiration_timestamp")
    context = message.get("context")
    # Some replies carry no context, or an empty one: no request behind it (profile grant, automatic revoke).
    context_id = _text(context.get("id"), "context.id") if isinstance(context, Mapping) else ""
    return PermissionReply(
        business_account=phone_number_id,
        user_id=user,
        message_id=message_id,
        timestamp=timestamp,
        accepted=response == "accept",
        permanent=_flag(reply.get("is_permanent"), "call_permission_reply.is_permanent"),
        expires_at=None
        if expiration is None or expiration == ""
        else _expiry(expiration, "expiration_timestamp", window),
        automatic=source.lower() == "automatic",
        context_id=context_id or None,
        via=_reply_to(context_id),
    )


def _reply_to(context_id: str) -> ReplyTo:
    """A reply's context is the wamid of our request, the wacid of a user's call (the callback grant), or none."""
    if not context_id:
        return ReplyTo.PROFILE
    return ReplyTo.CALLBACK if context_id.startswith("wacid.") else ReplyTo.REQUEST


def _message(
    phone_number_id: str, message: Mapping[str, Any], contacts: list[Any], window: TimeWindow | None
) -> InboundItem:
    message_id = _required_text(message.get("id"), "messages[].id")
    timestamp = parse_timestamp(message.get("timestamp"), "messages[].timestamp", window)
    user = _user_of(message, contacts)
    if user is None:
        # A username-only user (BSUID, no phone number): not supported yet, but the rest of the delivery is.
        return Ignored("messages", f"message {message_id} has no phone number (username-only user)")
    kind = _text(message.get("type"), "messages[].type", "unknown")
    interactive = message.get("interactive")
    # Recognised by the interactive type alone: the calling docs' examples carry no `messages[].type`.
    if isinstance(interactive, Mapping) and interactive.get("type") == "call_permission_reply":
        return _permission_reply(phone_number_id, message, user, message_id, timestamp, interactive, window)
    return InboundMessage(phone_number_id, user, message_id, timestamp, kind)


# --- calls and statuses -------------------------------------------------------------------------------------------


def _opaque(item: Mapping[str, Any]) -> str:
    # The platform's field table spells it biz_opaque_callback_date (HOOK-7); the payloads use ..._data.
    value = item.get("biz_opaque_callback_data", item.get("biz_opaque_callback_date"))
    return _text(value, "biz_opaque_callback_data")


def _call(
    phone_number_id: str, call: Mapping[str, Any], errors: list[Any], contacts: list[Any], window: TimeWindow | None
) -> InboundItem:
    call_id = _required_text(call.get("id"), "calls[].id")
    event = _text(call.get("event"), "calls[].event").lower()
    direction = _text(call.get("direction"), "calls[].direction").upper()
    session = _optional_dict(call.get("session"), "calls[].session")
    duration = call.get("duration")
    timestamp = parse_timestamp(call.get("timestamp"), "calls[].timestamp", window)
    sdp = _text(session.get("sdp"), "calls[].session.sdp")
    sdp_type = _text(session.get("sdp_type"), "calls[].session.sdp_type").lower()
    start_time = _optional_time(call.get("start_time"), "calls[].start_time", window)
    end_time = _optional_time(call.get("end_time"), "calls[].end_time", window)
    duration_seconds = None if duration is None or duration == "" else _count(duration, "calls[].duration")
    # Read for its type only: a call's outcome follows from its codes and times, not from this word.
    _text(call.get("status"), "calls[].status")
    error_codes = _error_codes(errors, "value.errors[]")
    error_message = "; ".join(_text(_dict(e, "errors[]").get("message"), "errors[].message") for e in errors)
    opaque = _opaque(call)
    kind = CALL_EVENTS.get(event, CallEventKind.UNKNOWN)
    # A connect offers a call from the user when USER_INITIATED, or with no direction (as on the platform's
    # user-initiated calls page) and an SDP offer, which the platform sends only for a user's call (a business
    # call's connect carries its answer).
    user_calling = kind is CallEventKind.CONNECT and (
        direction == USER_INITIATED or (not direction and sdp_type == "offer")
    )
    # The user is the far end: `from` of a user's call, `to` of a business call.
    side = "from" if user_calling or direction == USER_INITIATED else "to"
    user = _text(call.get(side), f"calls[].{side}")
    if not user and contacts:
        user = _text(_dict(contacts[0], "contacts[0]").get("wa_id"), "contacts[0].wa_id")
    return CallEventItem(
        business_account=phone_number_id,
        call_id=call_id,
        kind=kind,
        timestamp=timestamp,
        user_id=user,
        is_user_calling=user_calling,
        sdp=sdp,
        sdp_type=sdp_type,
        start_time=start_time,
        end_time=end_time,
        duration_seconds=duration_seconds,
        error_codes=error_codes,
        error_message=error_message,
        # The call never got set up (§6.6): FAILED, and it counts for nothing.
        setup_failed=not CALL_SETUP_FAILURES.isdisjoint(error_codes),
        opaque=opaque,
    )


def _call_status(phone_number_id: str, status: Mapping[str, Any], window: TimeWindow | None) -> InboundItem:
    value = _text(status.get("status"), "statuses[].status").lower()
    return CallEventItem(
        business_account=phone_number_id,
        call_id=_required_text(status.get("id"), "statuses[].id"),
        kind=CALL_STATUSES.get(value, CallEventKind.UNKNOWN),
        timestamp=parse_timestamp(status.get("timestamp"), "statuses[].timestamp", window),
        user_id=_text(status.get("recipient_id"), "statuses[].recipient_id"),
        opaque=_opaque(status),
    )


def _status(phone_number_id: str, status: Mapping[str, Any], window: TimeWindow | None) -> InboundItem:
    if _text(status.get("type"), "statuses[].type").lower() == "call":
        return _call_status(phone_number_id, status, window)
    message_id = _text(status.get("id"), "statuses[].id")
    recipient = _text(status.get("recipient_id"), "statuses[].recipient_id")
    value = _text(status.get("status"), "statuses[].status").lower()
    timestamp = parse_timestamp(status.get("timestamp"), "statuses[].timestamp", window)
    error_codes = _error_codes(_list(status.get("errors"), "statuses[].errors"), "statuses[].errors[]")
    return MessageStatus(
        business_account=phone_number_id,
        message_id=message_id,
        user_id=recipient,
        status=DELIVERY_STATUSES.get(value, DeliveryStatus.OTHER),
        timestamp=timestamp,
        error_codes=error_codes,
        error_meaning=meta_error(error_codes[0]).meaning if error_codes else "undeliverable",
    )


# --- account updates ----------------------------------------------------------------------------------------------


def _account_update(value: Mapping[str, Any], entry: Mapping[str, Any], window: TimeWindow | None) -> InboundItem:
    """An `account_update` ACCOUNT_RESTRICTION about calling: business-initiated calling paused, or no longer.

    UNCERTAIN: the platform's samples name the number as `phone_number` (display form); `metadata.phone_number_id`
    is accepted too. An event that lists calling restrictions but none of business-initiated calling, or lists
    no restriction at all, lifts the pause; one that lists only other restrictions (messaging) is not about
    calling and is ignored.
    """
    event = value.get("event")
    if not isinstance(event, str) or event.upper() != "ACCOUNT_RESTRICTION":
        return Ignored("account_update", f"event {event!r} not handled")
    restrictions = [_dict(r, "restriction_info[]") for r in _list(value.get("restriction_info"), "restriction_info")]
    types = [_text(r.get("restriction_type"), "restriction_info[].restriction_type").upper() for r in restrictions]
    if types and not any("CALLING" in t for t in types):
        # A messaging restriction (say): only an event about calling changes the calling pause.
        return Ignored("account_update", f"restrictions {', '.join(types)} do not concern calling")
    metadata = value.get("metadata")
    phone_number_id = (
        _text(metadata.get("phone_number_id"), "metadata.phone_number_id") if isinstance(metadata, Mapping) else ""
    )
    display = _text(value.get("phone_number"), "account_update.phone_number")
    if not phone_number_id and not display:
        # Account-level: it names no number, so no calling pause of ours can follow from it.
        return Ignored("account_update", "a restriction that names no phone number")
    paused = [r for r, t in zip(restrictions, types, strict=True) if t in BIC_RESTRICTIONS]
    expirations = [r.get("expiration") for r in paused]
    timestamp = entry.get("time")
    return BusinessRestriction(
        business_account=phone_number_id,
        display_number=display,
        timestamp=_optional_time(timestamp, "entry[].time", window),
        restricted=bool(paused),
        until=None
        if not expirations or any(e is None or e == "" for e in expirations)
        else max(_expiry(e, "restriction_info[].expiration", window) for e in expirations),
    )


# --- the delivery -------------------------------------------------------------------------------------------------


def parse(body: bytes, window: TimeWindow | None = None) -> list[InboundItem]:
    """Every item in every entry and change of one delivery.

    With a `window`, every timestamp must fall inside it (the endpoint always passes one); without, only
    instants the service cannot represent are refused.
    """
    data = decode(body)
    return list(_items(data, window))


def _items(data: Mapping[str, Any], window: TimeWindow | None) -> Iterator[InboundItem]:
    for raw_entry in _list(data.get("entry"), "entry"):
        entry = _dict(raw_entry, "entry[]")
        for raw_change in _list(entry.get("changes"), "entry[].changes"):
            change = _dict(raw_change, "changes[]")
            field = change.get("field")
            if field not in ("messages", "calls", "account_update"):
                yield Ignored(str(field)[:100], "not handled")
                continue
            value = _dict(change.get("value"), "changes[].value")
            if field == "account_update":
                yield _account_update(value, entry, window)
                continue
            metadata = _dict(value.get("metadata"), "value.metadata")
            phone_number_id = _required_text(metadata.get("phone_number_id"), "value.metadata.phone_number_id")
            contacts = _list(value.get("contacts"), "value.contacts")
            calls = _list(value.get("calls"), "value.calls")
            errors = _list(value.get("errors"), "value.errors") if calls else []  # they describe the calls
            for call in calls:
                yield _call(phone_number_id, _dict(call, "calls[]"), errors, contacts, window)
            for message in _list(value.get("messages"), "value.messages"):
                yield _message(phone_number_id, _dict(message, "messages[]"), contacts, window)
            for status in _list(value.get("statuses"), "value.statuses"):
                yield _status(phone_number_id, _dict(status, "statuses[]"), window)
