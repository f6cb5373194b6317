"""Meta's wire: the JSON shapes of the Graph API and its webhooks, as pure builders and parsers.

The Graph client builds its requests and reads the answers here; the simulator reads those same requests, answers
and sends its webhooks here too, so both sides agree on one definition of each shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wacall.upstreams.base import PlatformLimit, PlatformPermission, SentMessage, TemplateRef
from wacall.upstreams.meta.accounts import MetaAccount

MESSAGING_PRODUCT = "whatsapp"
PERMISSION_REQUEST = "call_permission_request"
PERMISSIONS_USER_PARAM = "user_wa_id"


class WireShapeError(ValueError):
    """A body that lacks what its shape requires (an answer with no id, a request with no recipient)."""


# --- Graph requests ------------------------------------------------------------------------------------------------


def interactive_permission_request(to: str, body_text: str) -> dict[str, Any]:
    interactive: dict[str, Any] = {"type": PERMISSION_REQUEST, "action": {"name": PERMISSION_REQUEST}}
    if body_text:
        interactive["body"] = {"text": body_text}
    return {
        "messaging_product": MESSAGING_PRODUCT,
        "recipient_type": "individual",
        "to": to,
        "type": "interactive",
        "interactive": interactive,
    }


def template_permission_request(to: str, template: TemplateRef) -> dict[str, Any]:
    components: list[dict[str, Any]] = []
    if template.body_parameters:
        components.append(
            {"type": "body", "parameters": [{"type": "text", "text": value} for value in template.body_parameters]}
        )
    return {
        "messaging_product": MESSAGING_PRODUCT,
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": {"name": template.name, "language": {"code": template.language}, "components": components},
    }


def connect_call_request(to: str, offer_sdp: str, opaque: str = "") -> dict[str, Any]:
    payload: dict[str, Any] = {
        "messaging_product": MESSAGING_PRODUCT,
        "to": to,
        "action": "connect",
        "session": {"sdp_type": "offer", "sdp": offer_sdp},
    }
    if opaque:
        payload["biz_opaque_callback_data"] = opaque
    return payload


def call_action_request(call_id: str, action: str, answer_sdp: str = "") -> dict[str, Any]:
    payload: dict[str, Any] = {"messaging_product": MESSAGING_PRODUCT, "call_id": call_id, "action": action}
    if answer_sdp:
        payload["session"] = {"sdp_type": "answer", "sdp": answer_sdp}
    return payload


@dataclass(frozen=True, slots=True)
class MessageRequest:
    """A messages send as the platform reads it."""

    product_ok: bool
    to: str
    type: str
    interactive_type: str
    interactive_action: str
    body_text: str
    template_name: str
    template_language: str
    template_parameters: tuple[str, ...]


def read_message_request(body: Mapping[str, Any]) -> MessageRequest:
    interactive = body.get("interactive") or {}
    template = body.get("template") or {}
    return MessageRequest(
        product_ok=body.get("messaging_product") == MESSAGING_PRODUCT,
        to=str(body.get("to", "")),
        type=str(body.get("type") or ""),
        interactive_type=str(interactive.get("type") or ""),
        interactive_action=str((interactive.get("action") or {}).get("name") or ""),
        body_text=str((interactive.get("body") or {}).get("text", "")),
        template_name=str(template.get("name", "")),
        template_language=str((template.get("language") or {}).get("code", "")),
        template_parameters=tuple(
            str(p.get("text", ""))
            for c in template.get("components") or []
            if c.get("type") == "body"
            for p in c.get("parameters") or []
        ),
    )


@dataclass(frozen=True, slots=True)
class CallsRequest:
    """A calls action as the platform reads it. `session_type` is "" when there is no session object."""

    product_ok: bool
    action: str
    call_id: str
    to: str
    session_type: str
    sdp: str
    opaque: str
    has_session: bool


def read_calls_request(body: Mapping[str, Any]) -> CallsRequest:
    session = body.get("session") if isinstance(body.get("session"), Mapping) else None
    return CallsRequest(
        product_ok=body.get("messaging_product") == MESSAGING_PRODUCT,
        action=str(body.get("action") or ""),
        call_id=str(body.get("call_id", "")),
        to=str(body.get("to", "")),
        session_type=str(session.get("sdp_type") or "") if session is not None else "",
        sdp=str(session.get("sdp") or "") if session is not None else "",
        opaque=str(body.get("biz_opaque_callback_data", "")),
        has_session=session is not None,
    )


# --- Graph answers -----------------------------------------------------------------------------------------------


def message_sent(to: str, wa_id: str, message_id: str) -> dict[str, Any]:
    return {
        "messaging_product": MESSAGING_PRODUCT,
        "contacts": [{"input": to, "wa_id": wa_id}],
        "messages": [{"id": message_id}],
    }


def read_message_sent(body: Mapping[str, Any]) -> SentMessage:
    try:
        message_id = str(body["messages"][0]["id"])
    except (KeyError, IndexError, TypeError):
        raise WireShapeError("the platform's messages response has no message id") from None
    contacts = body.get("contacts") or [{}]
    return SentMessage(message_id, contacts[0].get("wa_id"))


def call_placed(call_id: str) -> dict[str, Any]:
    return {"messaging_product": MESSAGING_PRODUCT, "calls": [{"id": call_id}]}


def read_call_placed(body: Mapping[str, Any]) -> str:
    try:
        return str(body["calls"][0]["id"])
    except (KeyError, IndexError, TypeError):
        raise WireShapeError("the platform's calls response has no call id") from None


def success() -> dict[str, Any]:
    return {"messaging_product": MESSAGING_PRODUCT, "success": True}


def _from_unix(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    return datetime.fromtimestamp(int(value), UTC)


def read_call_permissions(body: Mapping[str, Any]) -> PlatformPermission:
    permission = body.get("permission") or {}
    actions: dict[str, tuple[bool, tuple[PlatformLimit, ...]]] = {}
    for action in body.get("actions") or []:
        limits = tuple(
            PlatformLimit(
                time_period=str(limit.get("time_period", "")),
                max_allowed=int(limit.get("max_allowed", 0)),
                current_usage=int(limit.get("current_usage", 0)),
                limit_expiration_time=_from_unix(limit.get("limit_expiration_time")),
            )
            for limit in action.get("limits") or []
        )
        actions[str(action.get("action_name"))] = (bool(action.get("can_perform_action")), limits)
    return PlatformPermission(
        status=str(permission.get("status", "no_permission")),
        # Meta's field table says "expiration", its samples "expiration_time": accept both.
        expires_at=_from_unix(permission.get("expiration_time", permission.get("expiration"))),
        actions=actions,
    )


def call_permissions_answer(permission: PlatformPermission) -> dict[str, Any]:
    body: dict[str, Any] = {"status": permission.status}
    if permission.expires_at is not None:
        body["expiration_time"] = int(permission.expires_at.timestamp())

    def limit(item: PlatformLimit) -> dict[str, Any]:
        out: dict[str, Any] = {
            "time_period": item.time_period,
            "max_allowed": item.max_allowed,
            "current_usage": item.current_usage,
        }
        if item.limit_expiration_time is not None:
            out["limit_expiration_time"] = int(item.limit_expiration_time.timestamp())
        return out

    return {
        "messaging_product": MESSAGING_PRODUCT,
        "permission": body,
        "actions": [
            {"action_name": name, "can_perform_action": allowed, "limits": [limit(item) for item in limits]}
            for name, (allowed, limits) in permission.actions.items()
        ],
    }


@dataclass(frozen=True, slots=True)
class ErrorBody:
    code: int
    message: str
    details: str
    error_data: Mapping[str, Any] | None


def read_error(body: Mapping[str, Any]) -> ErrorBody | None:
    """The error object of an answer; None when the answer carries none."""
    error = body.get("error")
    if not isinstance(error, Mapping):
        return None
    data = error.get("error_data") or {}
    return ErrorBody(
        int(error.get("code", 0) or 0),
        str(error.get("message", "")),
        str(data.get("details", "")) if isinstance(data, Mapping) else str(data),
        data if isinstance(data, Mapping) else None,
    )


# --- webhooks ----------------------------------------------------------------------------------------------------


def _unix(value: datetime) -> str:
    return str(int(value.timestamp()))


def envelope(account: MetaAccount, field: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": account.waba_id,
                "changes": [
                    {
                        "field": field,
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": account.business_number[1:],
                                "phone_number_id": account.phone_number_id,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def _contact(user_digits: str) -> list[dict[str, Any]]:
    return [{"profile": {"name": f"Sim user {user_digits[-4:]}"}, "wa_id": user_digits}]


def permission_reply(
    account: MetaAccount,
    user_digits: str,
    message_id: str,
    at: datetime,
    *,
    accept: bool,
    permanent: bool = False,
    expires_at: datetime | None = None,
    automatic: bool = False,
    context_id: str | None = None,
) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "response": "accept" if accept else "reject",
        "response_source": "automatic" if automatic else "user_action",
    }
    if accept:
        reply["is_permanent"] = permanent
    if accept and not permanent and expires_at is not None:
        reply["expiration_timestamp"] = _unix(expires_at)
    message: dict[str, Any] = {
        "from": user_digits,
        "id": message_id,
        "timestamp": _unix(at),
        "type": "interactive",
        "interactive": {"type": "call_permission_reply", "call_permission_reply": reply},
    }
    if context_id:
        message["context"] = {"from": account.business_number[1:], "id": context_id}
    return envelope(account, "messages", {"contacts": _contact(user_digits), "messages": [message]})


def text_message(account: MetaAccount, user_digits: str, message_id: str, at: datetime, text: str) -> dict[str, Any]:
    return envelope(
        account,
        "messages",
        {
            "contacts": _contact(user_digits),
            "messages": [
                {"from": user_digits, "id": message_id, "timestamp": _unix(at), "type": "text", "text": {"body": text}}
            ],
        },
    )


def message_status(
    account: MetaAccount,
    user_digits: str,
    message_id: str,
    at: datetime,
    status: str,
    error_code: int | None = None,
    error_title: str = "",
) -> dict[str, Any]:
    item: dict[str, Any] = {"id": message_id, "status": status, "timestamp": _unix(at), "recipient_id": user_digits}
    if error_code is not None:
        item["errors"] = [{"code": error_code, "title": error_title, "message": error_title}]
    return envelope(account, "messages", {"statuses": [item]})


def graph_error(
    code: int,
    message: str,
    *,
    details: str = "",
    error_type: str = "OAuthException",
    error_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"messaging_product": "whatsapp", "details": details or message}
    data.update(error_data or {})
    return {
        "error": {"message": message, "type": error_type, "code": code, "error_data": data, "fbtrace_id": "SimTrace"}
    }


def call_event(
    account: MetaAccount,
    user_digits: str,
    call: Any,
    event: str,
    at: datetime,
    *,
    sdp: str = "",
    sdp_type: str = "",
    status: str = "",
    error: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """A `calls` webhook: connect (with SDP) or terminate (with start_time/duration only if picked up)."""
    business_digits = account.business_number[1:]
    user_initiated = call.direction == "USER_INITIATED"
    item: dict[str, Any] = {
        "id": call.platform_call_id,
        "to": business_digits if user_initiated else user_digits,
        "from": user_digits if user_initiated else business_digits,
        "event": event,
        "direction": call.direction,
        "timestamp": _unix(at),
    }
    if sdp:
        item["session"] = {"sdp_type": sdp_type, "sdp": sdp}
    if event == "terminate":
        item["status"] = status
        if call.answered_at is not None:
            item["start_time"] = _unix(call.answered_at)
            item["end_time"] = _unix(at)
            item["duration"] = int((at - call.answered_at).total_seconds())
    if call.opaque:
        item["biz_opaque_callback_data"] = call.opaque
    value: dict[str, Any] = {"contacts": _contact(user_digits), "calls": [item]}
    if error is not None:
        value["errors"] = [{"code": error[0], "message": error[1], "error_data": {"details": error[1]}}]
    return envelope(account, "calls", value)


def call_status(account: MetaAccount, user_digits: str, call: Any, status: str, at: datetime) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": call.platform_call_id,
        "type": "call",
        "status": status,
        "timestamp": _unix(at),
        "recipient_id": user_digits,
    }
    if call.opaque:
        item["biz_opaque_callback_data"] = call.opaque
    return envelope(account, "calls", {"statuses": [item]})


def account_restriction(account: MetaAccount, at: datetime, until: datetime | None) -> dict[str, Any]:
    """An account_update ACCOUNT_RESTRICTION for the number; no business-initiated entry means lifted."""
    info = [] if until is None else [
        {"restriction_type": "RESTRICTED_BUSINESS_INITIATED_CALLING", "expiration": int(until.timestamp())}
    ]  # fmt: skip
    return {
        "object": "whatsapp_business_account",
        "entry": [{
            "id": account.waba_id,
            "time": int(at.timestamp()),
            "changes": [{
                "field": "account_update",
                "value": {"phone_number": account.business_number[1:], "event": "ACCOUNT_RESTRICTION",
                          "restriction_info": info},
            }],
        }],
    }  # fmt: skip
