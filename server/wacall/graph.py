"""Client for Meta's WhatsApp Cloud API (the Graph endpoints wacall uses). Async, httpx.

Only what permission handling needs: the interactive call_permission_request message, a template message with the
call-permission-request component, and GET call_permissions. Reads are retried with backoff; a send is retried
only when the request provably never reached the server (connection refused), so a message is never sent twice.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class SenderAccount:
    """What the platform knows a business number by."""

    business_number: str  # +E164
    phone_number_id: str
    waba_id: str
    access_token: str
    app_secret: str
    default_template: TemplateRef | None = None


@dataclass(frozen=True, slots=True)
class TemplateRef:
    name: str
    language: str
    body_parameters: tuple[str, ...] = ()


class GraphError(Exception):
    """The platform answered with an error object."""

    def __init__(
        self, http_status: int, code: int, message: str, details: str = "", error_data: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"platform error {code}: {message}" + (f" ({details})" if details else ""))
        self.http_status = http_status
        self.code = code
        self.message = message
        self.details = details
        self.error_data = dict(error_data or {})


class GraphUnavailable(Exception):
    """The platform could not be reached or answered garbage. `maybe_sent` is True when a send may have landed."""

    def __init__(self, message: str, *, maybe_sent: bool) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


@dataclass(frozen=True, slots=True)
class SentMessage:
    message_id: str
    wa_id: str | None


@dataclass(frozen=True, slots=True)
class PlatformLimit:
    time_period: str
    max_allowed: int
    current_usage: int
    limit_expiration_time: datetime | None


@dataclass(frozen=True, slots=True)
class PlatformPermission:
    status: str  # no_permission | temporary | permanent
    expires_at: datetime | None
    actions: Mapping[str, tuple[bool, tuple[PlatformLimit, ...]]]


def limit_window(time_period: str) -> timedelta | None:
    """A limit's `time_period` (ISO-8601: PT24H, P7D, PT90S) as a duration; None for a form we do not know."""
    match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", time_period)
    if match is None or not any(match.groups()):
        return None
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def _unix(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    return datetime.fromtimestamp(int(value), UTC)


def parse_call_permissions(body: Mapping[str, Any]) -> PlatformPermission:
    permission = body.get("permission") or {}
    actions: dict[str, tuple[bool, tuple[PlatformLimit, ...]]] = {}
    for action in body.get("actions") or []:
        limits = tuple(
            PlatformLimit(
                time_period=str(limit.get("time_period", "")),
                max_allowed=int(limit.get("max_allowed", 0)),
                current_usage=int(limit.get("current_usage", 0)),
                limit_expiration_time=_unix(limit.get("limit_expiration_time")),
            )
            for limit in action.get("limits") or []
        )
        actions[str(action.get("action_name"))] = (bool(action.get("can_perform_action")), limits)
    return PlatformPermission(
        status=str(permission.get("status", "no_permission")),
        # Meta's field table says "expiration", its samples "expiration_time": accept both.
        expires_at=_unix(permission.get("expiration_time", permission.get("expiration"))),
        actions=actions,
    )


class GraphClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        read_retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", timeout=timeout, transport=transport)
        self._read_retries = read_retries
        self._backoff = backoff

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        account: SenderAccount,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {account.access_token}"}
        attempts = self._read_retries + 1 if idempotent else 2
        for attempt in range(attempts):
            last_try = attempt == attempts - 1
            try:
                response = await self._http.request(method, path, json=json, params=params, headers=headers)
            except httpx.ConnectError as exc:
                # Nothing reached the server: safe to retry even a send.
                if last_try:
                    raise GraphUnavailable(f"cannot reach the platform: {exc}", maybe_sent=False) from exc
            except httpx.TimeoutException as exc:
                if not idempotent or last_try:
                    raise GraphUnavailable(
                        f"the platform did not answer in time: {exc}", maybe_sent=not idempotent
                    ) from exc
            except httpx.HTTPError as exc:
                if not idempotent or last_try:
                    raise GraphUnavailable(
                        f"transport error talking to the platform: {exc}", maybe_sent=not idempotent
                    ) from exc
            else:
                if response.status_code >= 500 and idempotent and not last_try:
                    pass  # retry a read
                else:
                    return self._decode(response, idempotent=idempotent)
            await asyncio.sleep(self._backoff * (2**attempt))
        raise GraphUnavailable("the platform kept failing", maybe_sent=not idempotent)  # pragma: no cover

    @staticmethod
    def _decode(response: httpx.Response, *, idempotent: bool) -> dict[str, Any]:
        # A send answered by anything but a well-formed error object may still have gone out: fail closed.
        unreadable = GraphUnavailable(
            f"the platform answered HTTP {response.status_code} with an unreadable body", maybe_sent=not idempotent
        )
        try:
            body = response.json()
        except ValueError:
            raise unreadable from None
        if not isinstance(body, dict):
            raise unreadable
        error = body.get("error")
        if isinstance(error, Mapping):
            data = error.get("error_data") or {}
            raise GraphError(
                response.status_code,
                int(error.get("code", 0) or 0),
                str(error.get("message", "")),
                str(data.get("details", "")) if isinstance(data, Mapping) else str(data),
                data if isinstance(data, Mapping) else None,
            )
        if response.status_code >= 400:
            raise unreadable
        return body

    async def _send_message(self, account: SenderAccount, payload: Mapping[str, Any]) -> SentMessage:
        body = await self._request(
            "POST", f"{account.phone_number_id}/messages", account, json=payload, idempotent=False
        )
        try:
            message_id = str(body["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise GraphUnavailable("the platform's messages response has no message id", maybe_sent=True) from None
        contacts = body.get("contacts") or [{}]
        return SentMessage(message_id, contacts[0].get("wa_id"))

    async def send_permission_request_interactive(
        self, account: SenderAccount, to_digits: str, body_text: str
    ) -> SentMessage:
        interactive: dict[str, Any] = {
            "type": "call_permission_request",
            "action": {"name": "call_permission_request"},
        }
        if body_text:
            interactive["body"] = {"text": body_text}
        return await self._send_message(
            account,
            {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to_digits,
                "type": "interactive",
                "interactive": interactive,
            },
        )

    async def send_permission_request_template(
        self, account: SenderAccount, to_digits: str, template: TemplateRef
    ) -> SentMessage:
        components: list[dict[str, Any]] = []
        if template.body_parameters:
            components.append(
                {"type": "body", "parameters": [{"type": "text", "text": value} for value in template.body_parameters]}
            )
        return await self._send_message(
            account,
            {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to_digits,
                "type": "template",
                "template": {"name": template.name, "language": {"code": template.language}, "components": components},
            },
        )

    async def call_permissions(self, account: SenderAccount, user_digits: str) -> PlatformPermission:
        body = await self._request(
            "GET",
            f"{account.phone_number_id}/call_permissions",
            account,
            params={"user_wa_id": user_digits},
            idempotent=True,
        )
        return parse_call_permissions(body)

    async def _calls(self, account: SenderAccount, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("POST", f"{account.phone_number_id}/calls", account, json=payload, idempotent=False)

    async def connect_call(self, account: SenderAccount, to_digits: str, offer_sdp: str, opaque: str = "") -> str:
        """Start a business-initiated call; returns the platform's call id (wacid)."""
        payload: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "to": to_digits,
            "action": "connect",
            "session": {"sdp_type": "offer", "sdp": offer_sdp},
        }
        if opaque:
            payload["biz_opaque_callback_data"] = opaque
        body = await self._calls(account, payload)
        try:
            return str(body["calls"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise GraphUnavailable("the platform's calls response has no call id", maybe_sent=True) from None

    async def call_action(self, account: SenderAccount, call_id: str, action: str, answer_sdp: str = "") -> None:
        """terminate, reject, or (user-initiated calls) pre_accept / accept with our SDP answer."""
        payload: dict[str, Any] = {"messaging_product": "whatsapp", "call_id": call_id, "action": action}
        if answer_sdp:
            payload["session"] = {"sdp_type": "answer", "sdp": answer_sdp}
        await self._calls(account, payload)
