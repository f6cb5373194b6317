"""Parse WhatsApp webhook bodies into typed items. Pure: bytes or dicts in, dataclasses out.

Lenient where Meta's payloads drift (HOOK-7): timestamps as strings or integers, enum values in any case, unknown
kinds kept as `Ignored` rather than failing the whole delivery. Strict where a wrong reading would corrupt the
ledger: a permission reply without a user or a timestamp is malformed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


class MalformedWebhook(ValueError):
    """The body is not a WhatsApp webhook we can read (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class PermissionReply:
    phone_number_id: str
    user_wa_id: str
    message_id: str
    timestamp: datetime
    accepted: bool
    permanent: bool
    expires_at: datetime | None
    automatic: bool  # response_source == "automatic"
    context_id: str | None  # wamid of our request, wacid of a user call, or None (profile / auto-revoke)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """Any other message from the user: it opens the customer-service window."""

    phone_number_id: str
    user_wa_id: str
    message_id: str
    timestamp: datetime
    type: str


@dataclass(frozen=True, slots=True)
class MessageStatus:
    phone_number_id: str
    message_id: str
    recipient_wa_id: str
    status: str  # sent | delivered | read | failed
    timestamp: datetime
    error_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CallEventItem:
    """A `calls` webhook item: connect (with SDP), terminate, or a call status (RINGING/ACCEPTED/REJECTED)."""

    phone_number_id: str
    call_id: str  # wacid
    kind: str  # connect | terminate | ringing | accepted | rejected | unknown
    timestamp: datetime
    user_wa_id: str
    direction: str  # BUSINESS_INITIATED | USER_INITIATED | ""
    sdp: str = ""
    sdp_type: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration_seconds: int | None = None
    status: str = ""  # terminate: completed | failed
    error_codes: tuple[int, ...] = ()
    error_message: str = ""
    biz_opaque_callback_data: str = ""


@dataclass(frozen=True, slots=True)
class BusinessRestriction:
    """An `account_update` ACCOUNT_RESTRICTION: business-initiated calling paused (or no longer) for a number.

    UNCERTAIN: Meta's samples name the number as `phone_number` (display form); `metadata.phone_number_id` is
    accepted too. A restriction event without a business-initiated-calling entry lifts the pause.
    """

    phone_number_id: str
    display_number: str
    timestamp: datetime | None  # entry time, when given
    restricted: bool
    until: datetime | None


@dataclass(frozen=True, slots=True)
class Ignored:
    field: str
    why: str


WebhookItem = PermissionReply | InboundMessage | MessageStatus | CallEventItem | BusinessRestriction | Ignored

BIC_RESTRICTIONS = frozenset(
    {"RESTRICTED_BUSINESS_INITIATED_CALLING", "RESTRICTED_BIZ_INITIATED_AND_USER_INITIATED_CALLING"}
)


def parse_timestamp(value: Any, what: str) -> datetime:
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        raise MalformedWebhook(f"{what} must be Unix seconds, got {value!r}") from None
    return datetime.fromtimestamp(seconds, UTC)


def _dict(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedWebhook(f"{what} must be an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedWebhook(f"{what} must be an array")
    return value


def decode(body: bytes) -> Mapping[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedWebhook(f"body is not JSON: {exc}") from None
    data = _dict(data, "the body")
    if data.get("object") != "whatsapp_business_account":
        raise MalformedWebhook(f"object must be 'whatsapp_business_account', got {data.get('object')!r}")
    return data


def _user_of(message: Mapping[str, Any], contacts: list[Any]) -> str | None:
    user = message.get("from")
    if not user and contacts:
        user = _dict(contacts[0], "contacts[0]").get("wa_id")
    return str(user) if user else None


def _message(phone_number_id: str, message: Mapping[str, Any], contacts: list[Any]) -> WebhookItem:
    message_id = message.get("id")
    if not message_id:
        raise MalformedWebhook("a message has no id")
    timestamp = parse_timestamp(message.get("timestamp"), "messages[].timestamp")
    user = _user_of(message, contacts)
    if user is None:
        # A username-only user (BSUID, no phone number): not supported yet, but the rest of the delivery is.
        return Ignored("messages", f"message {message_id} has no phone number (username-only user)")
    interactive = message.get("interactive")
    if (
        message.get("type") == "interactive"
        and isinstance(interactive, Mapping)
        and interactive.get("type") == "call_permission_reply"
    ):
        reply = _dict(interactive.get("call_permission_reply"), "call_permission_reply")
        response = str(reply.get("response", "")).lower()
        if response not in ("accept", "reject"):
            raise MalformedWebhook(f"call_permission_reply.response must be accept or reject, got {response!r}")
        expiration = reply.get("expiration_timestamp")
        context = message.get("context")
        return PermissionReply(
            phone_number_id=phone_number_id,
            user_wa_id=user,
            message_id=str(message_id),
            timestamp=timestamp,
            accepted=response == "accept",
            permanent=bool(reply.get("is_permanent", False)),
            expires_at=parse_timestamp(expiration, "expiration_timestamp") if expiration not in (None, "") else None,
            automatic=str(reply.get("response_source", "user_action")).lower() == "automatic",
            context_id=str(context["id"]) if isinstance(context, Mapping) and context.get("id") else None,
        )
    return InboundMessage(phone_number_id, user, str(message_id), timestamp, str(message.get("type", "unknown")))


def _opaque(item: Mapping[str, Any]) -> str:
    # Meta's field table spells it biz_opaque_callback_date (HOOK-7); the payloads use ..._data.
    return str(item.get("biz_opaque_callback_data", item.get("biz_opaque_callback_date", "")) or "")


def _optional_time(value: Any, what: str) -> datetime | None:
    return None if value in (None, "") else parse_timestamp(value, what)


def _call(phone_number_id: str, call: Mapping[str, Any], errors: list[Any], contacts: list[Any]) -> WebhookItem:
    call_id = call.get("id")
    if not call_id:
        raise MalformedWebhook("a call has no id")
    event = str(call.get("event", "")).lower()
    direction = str(call.get("direction", "")).upper()
    # The user is the far end: `to` of a business-initiated call, `from` of a user-initiated one.
    user = call.get("from") if direction == "USER_INITIATED" else call.get("to")
    if not user and contacts:
        user = _dict(contacts[0], "contacts[0]").get("wa_id")
    raw_session = call.get("session")
    session: Mapping[str, Any] = raw_session if isinstance(raw_session, Mapping) else {}
    codes = tuple(int(e.get("code", 0)) for e in errors if isinstance(e, Mapping))
    message = "; ".join(str(e.get("message", "")) for e in errors if isinstance(e, Mapping))
    duration = call.get("duration")
    return CallEventItem(
        phone_number_id=phone_number_id,
        call_id=str(call_id),
        kind=event if event in ("connect", "terminate") else "unknown",
        timestamp=parse_timestamp(call.get("timestamp"), "calls[].timestamp"),
        user_wa_id=str(user or ""),
        direction=direction,
        sdp=str(session.get("sdp", "")),
        sdp_type=str(session.get("sdp_type", "")).lower(),
        start_time=_optional_time(call.get("start_time"), "calls[].start_time"),
        end_time=_optional_time(call.get("end_time"), "calls[].end_time"),
        duration_seconds=int(duration) if duration not in (None, "") else None,
        status=str(call.get("status", "")).lower(),
        error_codes=codes,
        error_message=message,
        biz_opaque_callback_data=_opaque(call),
    )


def _call_status(phone_number_id: str, status: Mapping[str, Any]) -> WebhookItem:
    value = str(status.get("status", "")).lower()
    return CallEventItem(
        phone_number_id=phone_number_id,
        call_id=str(status.get("id", "")),
        kind=value if value in ("ringing", "accepted", "rejected") else "unknown",
        timestamp=parse_timestamp(status.get("timestamp"), "statuses[].timestamp"),
        user_wa_id=str(status.get("recipient_id", "")),
        direction="",
        biz_opaque_callback_data=_opaque(status),
    )


def _status(phone_number_id: str, status: Mapping[str, Any]) -> WebhookItem:
    if str(status.get("type", "")).lower() == "call":
        return _call_status(phone_number_id, status)
    errors = tuple(
        int(e.get("code", 0)) for e in _list(status.get("errors"), "statuses[].errors") if isinstance(e, Mapping)
    )
    return MessageStatus(
        phone_number_id=phone_number_id,
        message_id=str(status.get("id", "")),
        recipient_wa_id=str(status.get("recipient_id", "")),
        status=str(status.get("status", "")).lower(),
        timestamp=parse_timestamp(status.get("timestamp"), "statuses[].timestamp"),
        error_codes=errors,
    )


def _account_update(value: Mapping[str, Any], entry: Any) -> WebhookItem:
    if str(value.get("event", "")).upper() != "ACCOUNT_RESTRICTION":
        return Ignored("account_update", f"event {value.get('event')!r} not handled")
    metadata = value.get("metadata") if isinstance(value.get("metadata"), Mapping) else {}
    phone_number_id = str(metadata.get("phone_number_id", "")) if isinstance(metadata, Mapping) else ""
    display = str(value.get("phone_number", "") or "")
    if not phone_number_id and not display:
        raise MalformedWebhook("account_update names no phone number (phone_number or metadata.phone_number_id)")
    restrictions = [
        r for r in _list(value.get("restriction_info"), "restriction_info")
        if isinstance(r, Mapping) and str(r.get("restriction_type", "")).upper() in BIC_RESTRICTIONS
    ]  # fmt: skip
    expirations = [r.get("expiration") for r in restrictions]
    timestamp = entry.get("time") if isinstance(entry, Mapping) else None
    return BusinessRestriction(
        phone_number_id=phone_number_id,
        display_number=display,
        timestamp=parse_timestamp(timestamp, "entry[].time") if timestamp not in (None, "") else None,
        restricted=bool(restrictions),
        until=None
        if not expirations or any(e in (None, "") for e in expirations)
        else max(parse_timestamp(e, "restriction_info[].expiration") for e in expirations),
    )


def parse(body: bytes) -> list[WebhookItem]:
    """Every item in every entry and change of one delivery."""
    data = decode(body)
    return list(_items(data))


def _items(data: Mapping[str, Any]) -> Iterator[WebhookItem]:
    for entry in _list(data.get("entry"), "entry"):
        for change in _list(_dict(entry, "entry[]").get("changes"), "entry[].changes"):
            change = _dict(change, "changes[]")
            field = str(change.get("field", ""))
            value = _dict(change.get("value"), "changes[].value")
            if field == "account_update":
                yield _account_update(_dict(change.get("value"), "changes[].value"), entry)
                continue
            if field not in ("messages", "calls"):
                yield Ignored(field, "not handled yet")
                continue
            metadata = _dict(value.get("metadata"), "value.metadata")
            phone_number_id = metadata.get("phone_number_id")
            if not phone_number_id:
                raise MalformedWebhook("value.metadata.phone_number_id is missing")
            contacts = _list(value.get("contacts"), "value.contacts")
            errors = _list(value.get("errors"), "value.errors")
            for call in _list(value.get("calls"), "value.calls"):
                yield _call(str(phone_number_id), _dict(call, "calls[]"), errors, contacts)
            for message in _list(value.get("messages"), "value.messages"):
                yield _message(str(phone_number_id), _dict(message, "messages[]"), contacts)
            for status in _list(value.get("statuses"), "value.statuses"):
                yield _status(str(phone_number_id), _dict(status, "statuses[]"))
