"""HTTP webhook ingress: /webhooks/whatsapp (Meta's GET handshake and signed POST deliveries).

POST order matters: size → signature over the raw bytes (constant time, any configured app secret) → JSON →
the domain's items, each with the business number it is for → persisted and applied in one transaction by the
dispatcher (wacall.ingest) → 200. A forged or malformed delivery changes nothing; a signed one that is refused is
kept apart for audit, with the reason.

The HTTP server itself is guarded (`start_http_server`): a connection must deliver its request line and headers
within a time limit and its body within another, an idle keep-alive connection is closed, and connections beyond
a cap are answered 503 and closed, so slow or idle clients cannot hold the service's sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from wacall.inbound import BusinessRestriction, Ignored, InboundItem
from wacall.ingest import Dispatcher
from wacall.numbers import parse_number
from wacall.store.base import StoreUnavailable
from wacall.upstreams.base import UnknownSender
from wacall.upstreams.meta.senders import MetaSenderDirectory
from wacall.upstreams.meta.webhook_payloads import MalformedWebhook, TimeWindow, parse

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/whatsapp"
SIGNATURE_HEADER = "X-Hub-Signature-256"


@dataclass(frozen=True, slots=True)
class WebhookLimits:
    """What a delivery may carry: its size and how far its timestamps may stray from our clock."""

    max_body_bytes: int = 1024 * 1024
    max_clock_skew: timedelta = timedelta(minutes=5)
    max_age: timedelta = timedelta(days=8)
    max_expiry_ahead: timedelta = timedelta(days=366)
    body_timeout: timedelta = timedelta(seconds=30)


def sign(secret: bytes, body: bytes) -> str:
    """The X-Hub-Signature-256 value for `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_valid(header: str | None, body: bytes, secrets: list[bytes]) -> bool:
    if not header or not header.startswith("sha256="):
        return False
    given = header.encode()
    valid = False
    # Check every secret (several apps can share a WABA) without short-circuiting on the first match.
    for secret in secrets:
        valid |= hmac.compare_digest(given, sign(secret, body).encode())
    return valid


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# How long the platform is asked to wait before it delivers again while the database is unreachable.
STORE_RETRY_AFTER_SECONDS = 5


def store_unavailable(error: StoreUnavailable) -> web.Response:
    """Nothing was kept: 503 with Retry-After, so the platform delivers the webhook again (it retries any 5xx)."""
    log.warning("webhook not accepted, the store is unavailable: %s", error)
    response = json_error(503, "the ledger is unavailable; deliver again later")
    response.headers["Retry-After"] = str(STORE_RETRY_AFTER_SECONDS)
    return response


async def _read_body(request: web.Request, max_body_bytes: int) -> bytes | None:
    """The raw body, or None when it is larger than allowed."""
    if request.content_length is not None and request.content_length > max_body_bytes:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body.extend(chunk)
        if len(body) > max_body_bytes:
            return None
    return bytes(body)


def business_of(senders: MetaSenderDirectory, item: InboundItem) -> str | None:
    """The business number a webhook item is for; None when it is not one of ours."""
    if isinstance(item, Ignored):
        return None
    if isinstance(item, BusinessRestriction) and not item.business_account:
        try:
            number = parse_number(item.display_number, "phone_number")
            return senders.account_for(number).business_number
        except (ValueError, UnknownSender):
            log.warning("account_update for unknown number %s ignored", item.display_number)
            return None
    account = senders.by_phone_number_id(item.business_account)
    if account is None:
        log.warning("webhook for unknown phone_number_id %s ignored", item.business_account)
        return None
    return account.business_number


def webhook_routes(
    dispatcher: Dispatcher,
    senders: MetaSenderDirectory,
    verify_token: Callable[[], str | None],
    max_body_bytes: int,
    limits: WebhookLimits | None = None,
    on_bad_signature: Callable[[], None] | None = None,
) -> list[web.RouteDef]:
    """The webhook endpoint's routes; `on_bad_signature` is told of each body refused for its signature (a
    simulator that restarted with another secret: the service asks for the new one)."""
    limits = limits or WebhookLimits(max_body_bytes=max_body_bytes)

    async def verify(request: web.Request) -> web.StreamResponse:
        expected = verify_token()
        mode = request.query.get("hub.mode")
        token = request.query.get("hub.verify_token", "")
        challenge = request.query.get("hub.challenge", "")
        if mode == "subscribe" and expected and hmac.compare_digest(token.encode(), expected.encode()):
            return web.Response(text=challenge, content_type="text/plain")
        return web.Response(status=403, text="verification failed: wrong hub.mode or hub.verify_token")

    async def deliver(request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(limits.body_timeout.total_seconds()):
                raw = await _read_body(request, max_body_bytes)
        except TimeoutError:
            timed_out = web.Response(status=408, text="request body not received in time")
            await timed_out.prepare(request)
            await timed_out.write_eof()
            # Not drained: the client stalled. close() still flushes the answer first.
            if request.transport is not None:
                request.transport.close()
            return timed_out
        if raw is None:
            return json_error(413, f"body larger than {max_body_bytes} bytes")
        if not signature_valid(request.headers.get(SIGNATURE_HEADER), raw, senders.app_secrets()):
            log.warning("webhook with a missing or wrong %s rejected", SIGNATURE_HEADER)
            if on_bad_signature is not None:
                on_bad_signature()
            return json_error(401, f"missing or invalid {SIGNATURE_HEADER}")
        now = dispatcher.clock.now()
        window = TimeWindow(now, limits.max_clock_skew, limits.max_age, limits.max_expiry_ahead)
        try:
            items = parse(raw, window)
        except MalformedWebhook as exc:
            # Signed by the platform but refused: kept (not applied) so an operator can see what came and why.
            reason = str(exc)
            log.warning("signed webhook refused: %s", reason)
            try:
                await dispatcher.refuse(raw, now, reason)
            except StoreUnavailable as error:
                return store_unavailable(error)
            return json_error(400, f"malformed webhook: {reason}")
        # Sender lookups may provision (simulator mode): do them here, not on the store's thread.
        try:
            result = await dispatcher.deliver(raw, [(item, business_of(senders, item)) for item in items])
        except StoreUnavailable as error:
            return store_unavailable(error)
        return web.json_response(
            {"applied": result.applied, "duplicates": result.duplicates, "ignored": result.ignored}
        )

    return [web.get(WEBHOOK_PATH, verify), web.post(WEBHOOK_PATH, deliver)]


# --- the guarded HTTP server --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: timedelta = timedelta(seconds=10)
    idle_timeout: timedelta = timedelta(seconds=75)
    max_connections: int = 1000


SHED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 29\r\n\r\ntoo many connections; retry\r\n"
)


class _GuardedConnection(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: the cap on open connections and the header timeout.

    The idle keep-alive timeout is aiohttp's own (it also closes a connection that never completes a request); the
    header timeout runs from a request's first byte until it is dispatched (the guard's middleware says when).
    """

    def __init__(self, guard: HttpGuard) -> None:
        self._guard = guard
        self._inner: RequestHandler | None = None
        self._transport: asyncio.Transport | None = None
        self._header_deadline: asyncio.TimerHandle | None = None
        self.in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if len(self._guard.open) >= self._guard.limits.max_connections:
            self._guard.shed += 1
            transport.write(SHED_RESPONSE)
            transport.close()
            return
        assert self._guard.factory is not None
        self._guard.open[transport] = self
        self._inner = self._guard.factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if not self.in_request and self._header_deadline is None:
            loop = asyncio.get_running_loop()
            self._header_deadline = loop.call_later(self._guard.limits.header_timeout.total_seconds(), self._too_slow)
        self._inner.data_received(data)

    def request_started(self) -> None:
        self.in_request = True
        self._cancel_deadline()

    def request_done(self) -> None:
        self.in_request = False

    def _too_slow(self) -> None:
        self._header_deadline = None
        if self._transport is not None and not self.in_request:
            self._guard.timed_out += 1
            self._transport.close()

    def _cancel_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._transport is not None:
            self._guard.open.pop(self._transport, None)
        if self._inner is not None:
            self._inner.connection_lost(exc)


@dataclass
class HttpGuard:
    """The connection limits of one HTTP server, and what they did (for tests and logs)."""

    limits: ConnectionLimits
    factory: Callable[[], RequestHandler] | None = None  # aiohttp's protocol factory, set when the server starts
    open: dict[asyncio.BaseTransport, _GuardedConnection] = field(default_factory=dict)
    shed: int = 0
    timed_out: int = 0

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        connection = self.open.get(request.transport) if request.transport is not None else None
        if connection is not None:
            connection.request_started()
        try:
            return await handler(request)
        finally:
            if connection is not None:
                connection.request_done()


def guarded_runner(app: web.Application, limits: ConnectionLimits) -> tuple[web.AppRunner, HttpGuard]:
    """An AppRunner whose idle keep-alive timeout is the configured one, and the guard for its server."""
    guard = HttpGuard(limits)
    app.middlewares.append(guard.middleware)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=limits.idle_timeout.total_seconds())
    return runner, guard


async def start_http_server(runner: web.AppRunner, guard: HttpGuard, host: str, port: int) -> asyncio.Server:
    """Listen on host:port with the guard in front of every connection. Close the returned server on stop."""
    server = runner.server
    assert server is not None, "call runner.setup() first"
    guard.factory = server
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _GuardedConnection(guard), host, port)
