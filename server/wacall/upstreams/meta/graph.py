"""Client for Meta's WhatsApp Cloud API (the Graph endpoints wacall uses). Async, httpx.

Only what permission handling needs: the interactive call_permission_request message, a template message with the
call-permission-request component, and GET call_permissions. Reads are retried with backoff; a send is retried
only when the request provably never reached the server (connection refused), so a message is never sent twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from wacall.upstreams.base import PlatformPermission, SentMessage, TemplateRef
from wacall.upstreams.meta import wire
from wacall.upstreams.meta.accounts import MetaAccount


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
        # Told when the platform refuses the access token (HTTP 401, error 190): a simulator in another process
        # may have restarted with a new one.
        self.on_unauthorized: Callable[[], None] | None = None

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        account: MetaAccount,
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
                if response.status_code == 401 and self.on_unauthorized is not None:
                    self.on_unauthorized()
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
        error = wire.read_error(body)
        if error is not None:
            raise GraphError(response.status_code, error.code, error.message, error.details, error.error_data)
        if response.status_code >= 400:
            raise unreadable
        return body

    async def _send_message(self, account: MetaAccount, payload: Mapping[str, Any]) -> SentMessage:
        body = await self._request(
            "POST", f"{account.phone_number_id}/messages", account, json=payload, idempotent=False
        )
        try:
            return wire.read_message_sent(body)
        except wire.WireShapeError as exc:
            raise GraphUnavailable(str(exc), maybe_sent=True) from None

    async def send_permission_request_interactive(
        self, account: MetaAccount, to_digits: str, body_text: str
    ) -> SentMessage:
        return await self._send_message(account, wire.interactive_permission_request(to_digits, body_text))

    async def send_permission_request_template(
        self, account: MetaAccount, to_digits: str, template: TemplateRef
    ) -> SentMessage:
        return await self._send_message(account, wire.template_permission_request(to_digits, template))

    async def call_permissions(self, account: MetaAccount, user_digits: str) -> PlatformPermission:
        body = await self._request(
            "GET",
            f"{account.phone_number_id}/call_permissions",
            account,
            params={wire.PERMISSIONS_USER_PARAM: user_digits},
            idempotent=True,
        )
        return wire.read_call_permissions(body)

    async def _calls(self, account: MetaAccount, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("POST", f"{account.phone_number_id}/calls", account, json=payload, idempotent=False)

    async def connect_call(self, account: MetaAccount, to_digits: str, offer_sdp: str, opaque: str = "") -> str:
        """Start a business-initiated call; returns the platform's call id (wacid)."""
        body = await self._calls(account, wire.connect_call_request(to_digits, offer_sdp, opaque))
        try:
            return wire.read_call_placed(body)
        except wire.WireShapeError as exc:
            raise GraphUnavailable(str(exc), maybe_sent=True) from None

    async def call_action(self, account: MetaAccount, call_id: str, action: str, answer_sdp: str = "") -> None:
        """terminate, reject, or (user-initiated calls) pre_accept / accept with our SDP answer."""
        await self._calls(account, wire.call_action_request(call_id, action, answer_sdp))
