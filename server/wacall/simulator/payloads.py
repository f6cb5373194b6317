"""Meta-shaped webhook bodies and Graph error bodies, as the simulator sends them. Pure builders."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from wacall.graph import SenderAccount


def _unix(value: datetime) -> str:
    return str(int(value.timestamp()))


def envelope(account: SenderAccount, field: str, value: dict[str, Any]) -> dict[str, Any]:
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
    account: SenderAccount,
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


def text_message(account: SenderAccount, user_digits: str, message_id: str, at: datetime, text: str) -> dict[str, Any]:
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
    account: SenderAccount,
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
    account: SenderAccount,
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


def call_status(account: SenderAccount, user_digits: str, call: Any, status: str, at: datetime) -> dict[str, Any]:
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


def account_restriction(account: SenderAccount, at: datetime, until: datetime | None) -> dict[str, Any]:
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
