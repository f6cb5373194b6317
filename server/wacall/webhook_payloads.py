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
class Ignored:
    field: str
    why: str


WebhookItem = PermissionReply | InboundMessage | MessageStatus | Ignored


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


def _user_of(message: Mapping[str, Any], contacts: list[Any]) -> str:
    user = message.get("from")
    if not user and contacts:
        user = _dict(contacts[0], "contacts[0]").get("wa_id")
    if not user:
        raise MalformedWebhook(
            "a message has neither 'from' nor a contact wa_id (username-only users are not supported yet)"
        )
    return str(user)


def _message(phone_number_id: str, message: Mapping[str, Any], contacts: list[Any]) -> WebhookItem:
    message_id = message.get("id")
    if not message_id:
        raise MalformedWebhook("a message has no id")
    timestamp = parse_timestamp(message.get("timestamp"), "messages[].timestamp")
    user = _user_of(message, contacts)
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


def _status(phone_number_id: str, status: Mapping[str, Any]) -> WebhookItem:
    if str(status.get("type", "")).lower() == "call":
        return Ignored("messages", "call status (handled with calls)")
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
            if field != "messages":
                yield Ignored(field, "not handled yet")
                continue
            metadata = _dict(value.get("metadata"), "value.metadata")
            phone_number_id = metadata.get("phone_number_id")
            if not phone_number_id:
                raise MalformedWebhook("value.metadata.phone_number_id is missing")
            contacts = _list(value.get("contacts"), "value.contacts")
            for message in _list(value.get("messages"), "value.messages"):
                yield _message(str(phone_number_id), _dict(message, "messages[]"), contacts)
            for status in _list(value.get("statuses"), "value.statuses"):
                yield _status(str(phone_number_id), _dict(status, "statuses[]"))
