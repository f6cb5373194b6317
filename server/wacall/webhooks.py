"""HTTP webhook ingress: /webhooks/whatsapp (Meta's GET handshake and signed POST deliveries).

POST order matters: size → signature over the raw bytes (constant time, any configured app secret) → JSON →
persist and apply in one transaction → 200. A forged or malformed delivery changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable

from aiohttp import web

from wacall.permissions import PermissionService
from wacall.webhook_payloads import MalformedWebhook, parse

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/whatsapp"
SIGNATURE_HEADER = "X-Hub-Signature-256"


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


def webhook_routes(
    permissions: PermissionService, verify_token: Callable[[], str | None], max_body_bytes: int
) -> list[web.RouteDef]:
    async def verify(request: web.Request) -> web.StreamResponse:
        expected = verify_token()
        mode = request.query.get("hub.mode")
        token = request.query.get("hub.verify_token", "")
        challenge = request.query.get("hub.challenge", "")
        if mode == "subscribe" and expected and hmac.compare_digest(token.encode(), expected.encode()):
            return web.Response(text=challenge, content_type="text/plain")
        return web.Response(status=403, text="verification failed: wrong hub.mode or hub.verify_token")

    async def deliver(request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > max_body_bytes:
            return json_error(413, f"body larger than {max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.content.iter_chunked(65536):
            body.extend(chunk)
            if len(body) > max_body_bytes:
                return json_error(413, f"body larger than {max_body_bytes} bytes")
        raw = bytes(body)
        if not signature_valid(request.headers.get(SIGNATURE_HEADER), raw, permissions.senders.app_secrets()):
            log.warning("webhook with a missing or wrong %s rejected", SIGNATURE_HEADER)
            return json_error(401, f"missing or invalid {SIGNATURE_HEADER}")
        try:
            items = parse(raw)
        except MalformedWebhook as exc:
            return json_error(400, f"malformed webhook: {exc}")
        result = await permissions.ingest(raw, items)
        return web.json_response(
            {"applied": result.applied, "duplicates": result.duplicates, "ignored": result.ignored}
        )

    return [web.get(WEBHOOK_PATH, verify), web.post(WEBHOOK_PATH, deliver)]
