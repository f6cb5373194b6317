"""The softphone's HTTP edge: the page, `/agent/ws` and `/agent/api/{method}`.

`/agent/ws` is the `AgentSession` stream as JSON over a WebSocket: each text message the page sends is an
`AgentSessionRequest` and each one it receives an `AgentSessionEvent`, in the canonical JSON of
`google.protobuf.json_format`, so the page and the gRPC API share one schema. The first request is `login`; with
auth on it carries the bearer token beside it (`{"login": {"agentId": "ann"}, "token": "..."}`), never in the URL,
which proxies log. Anything malformed is answered with an `error` event and the socket stays open; the socket
closing ends the session (the agent goes OFFLINE and an offer ringing for it passes on), as the stream dropping does.

`/agent/api/{method}` is the customer panel's lookup: `POST` a request's canonical JSON to one of `LOOKUP_METHODS`
and get the response's, or `{"code", "message", "status"}` with an HTTP status for the gRPC one. It forwards the
call to wacall's own gRPC API over a loopback channel, with the page's `Authorization` header as the bearer token,
so the permission rules, validation and auth are exactly the API's: one place decides, not two.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import grpc
from aiohttp import WSCloseCode, WSMsgType, web
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2  # noqa: F401  (registers the detail types the JSON errors name)
from grpc_status import rpc_status
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc
from wacall_client.v1 import contact_center_pb2 as cc

from wacall.api.contact_center import drive_request, session_event
from wacall.api.queue_messages import identifier
from wacall.fields import InvalidField
from wacall.queues.router import RoutingRefused
from wacall.queues.service import QueueService
from wacall.queues.sessions import AgentSession

PAGE_PATH = "/agent/"
SOCKET_PATH = "/agent/ws"
LOOKUP_PATH = "/agent/api/{method}"
# The page's files, read from the package (a wheel may run from a zip: no directory to serve from), by name.
STATIC_TYPES = {
    "index.html": "text/html",
    "softphone.js": "text/javascript",
    "softphone.css": "text/css",
}


def _static(name: str) -> bytes:
    return (resources.files("wacall.softphone") / "static" / name).read_bytes()


# A request with a browser's SDP offer (at most 64 KiB, as the gRPC API takes it) fits with room to spare.
MAX_SOCKET_MESSAGE = 128 * 1024
MAX_LOOKUP_BODY = 96 * 1024  # a call back carries the page's SDP offer
LOOKUP_TIMEOUT = 30.0

# The calling methods the customer panel uses: look a customer up, ask for permission, call back.
_Unary = Callable[..., Awaitable[Message]]
LOOKUP_METHODS: dict[str, tuple[type[Message], Callable[[calling_pb2_grpc.CallingServiceStub], _Unary]]] = {
    "GetPermission": (pb.GetPermissionRequest, lambda stub: stub.GetPermission),
    "RequestPermission": (pb.RequestPermissionRequest, lambda stub: stub.RequestPermission),
    "StartCall": (pb.StartCallRequest, lambda stub: stub.StartCall),
}

# gRPC status → HTTP status for the lookup's errors.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

E = cc.AgentSessionEvent


@dataclass
class SoftphoneBackend:
    """What the softphone's handlers reach, filled in as the service starts (the HTTP server starts first, so a
    request that arrives before is answered 503)."""

    auth_token: str = ""
    # Why the customer lookup is off ("": on); the assembly decides (see app.lookup_refusal).
    lookup_refusal: str = ""
    queues: QueueService | None = None
    calling: calling_pb2_grpc.CallingServiceStub | None = None
    _channel: grpc.aio.Channel | None = field(default=None, repr=False)
    sockets: set[web.WebSocketResponse] = field(default_factory=set, repr=False)

    def connect(self, grpc_address: str) -> None:
        """Open the loopback channel to the service's own gRPC API (bound to every interface: dial loopback)."""
        host, _, port = grpc_address.rpartition(":")
        if host in ("", "0.0.0.0", "[::]", "::"):
            host = "127.0.0.1"
        self._channel = grpc.aio.insecure_channel(f"{host}:{port}")
        self.calling = calling_pb2_grpc.CallingServiceStub(self._channel)

    async def close(self) -> None:
        """Close every agent's socket (their sessions end) and the loopback channel: open WebSockets would otherwise
        hold the HTTP server's shutdown until its timeout."""
        await asyncio.gather(
            *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"service stopping") for ws in list(self.sockets)),
            return_exceptions=True,
        )
        self.calling = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def token_matches(self, given: object) -> bool:
        """With auth off, anything; with auth on, the token compared in constant time."""
        if not self.auth_token:
            return True
        return isinstance(given, str) and hmac.compare_digest(given.encode(), self.auth_token.encode())


def softphone_routes(backend: SoftphoneBackend) -> list[web.AbstractRouteDef]:
    """The page, its static files, the WebSocket and the lookup."""

    files = {name: _static(name) for name in STATIC_TYPES}

    async def page(request: web.Request) -> web.StreamResponse:
        return web.Response(body=files["index.html"], content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "index.html" or name not in files:
            raise web.HTTPNotFound(text=f"no file {name!r} in the agent page")
        return web.Response(
            body=files[name], content_type=STATIC_TYPES[name], charset="utf-8", headers={"Cache-Control": "no-cache"}
        )

    async def to_page(request: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect(PAGE_PATH)

    async def socket(request: web.Request) -> web.StreamResponse:
        return await agent_socket(backend, request)

    async def lookup(request: web.Request) -> web.StreamResponse:
        return await customer_lookup(backend, request)

    return [
        web.get("/agent", to_page),
        web.get(PAGE_PATH, page),
        web.get("/agent/static/{name}", static),
        web.get(SOCKET_PATH, socket),
        web.post(LOOKUP_PATH, lookup),
    ]


# The page loads nothing from elsewhere and runs only its own script.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; "
        "img-src 'self' data:; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


# --- the WebSocket mirror of AgentSession -------------------------------------------------------------------------


def event_json(event: cc.AgentSessionEvent) -> str:
    return json.dumps(json_format.MessageToDict(event), separators=(",", ":"))


def error_json(code: str, message: str) -> str:
    return event_json(E(error=E.Error(code=code, message=message)))


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    request: cc.AgentSessionRequest
    token: object  # the bearer token beside a login (None when absent)


class BadSocketMessage(Exception):
    """A WebSocket message that is not an `AgentSessionRequest` in JSON: `str(error)` says what is wrong."""


def parse_request(text: str) -> ParsedRequest:
    """One text message as an `AgentSessionRequest` (and the token beside a login). Raises `BadSocketMessage`."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise BadSocketMessage(f"not JSON: {error}") from None
    except RecursionError:  # "[" * 100000 fits in a message and nests deeper than the parser recurses
        raise BadSocketMessage("not JSON this service reads: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadSocketMessage('a request is a JSON object with one request kind, e.g. {"login": {"agentId": …}}')
    token = data.pop("token", None)
    request = cc.AgentSessionRequest()
    try:
        json_format.ParseDict(data, request)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as error:
        raise BadSocketMessage(f"not an AgentSessionRequest: {error}") from None
    if token is not None and request.WhichOneof("kind") != "login":
        raise BadSocketMessage("the token goes with login only")
    return ParsedRequest(request, token)


async def agent_socket(backend: SoftphoneBackend, request: web.Request) -> web.StreamResponse:
    """One agent's WebSocket (see the module): login first, then the session's requests and events."""
    queues = backend.queues
    if queues is None:
        raise web.HTTPServiceUnavailable(text="the contact centre is starting")
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        # A browser says which page opens the socket: only the agent page this service serves may drive a session
        # (with auth off, any site the agent visits could otherwise).
        raise web.HTTPForbidden(text=f"the agent socket is for the agent page at {request.host}, not {origin}")
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_SOCKET_MESSAGE)
    await ws.prepare(request)
    backend.sockets.add(ws)
    session: AgentSession | None = None
    writer: asyncio.Task[None] | None = None
    try:
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                if message.type is WSMsgType.BINARY:
                    await _send(ws, error_json("invalid_argument", "send requests as JSON text messages"))
                continue
            try:
                parsed = parse_request(message.data)
            except BadSocketMessage as bad:
                await _send(ws, error_json("invalid_argument", str(bad)))
                continue
            if session is not None:
                await drive_request(session, parsed.request)
                if session.overflowed:
                    break  # the page stopped reading its events: the session is over
                continue
            session = await _login(backend, queues, ws, parsed)
            if session is not None:
                writer = asyncio.create_task(_write_events(ws, session), name=f"agent-socket-{session.agent_id}")
    finally:
        backend.sockets.discard(ws)
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if session is not None:
            await asyncio.shield(session.close())
    return ws


async def _login(
    backend: SoftphoneBackend, queues: QueueService, ws: web.WebSocketResponse, parsed: ParsedRequest
) -> AgentSession | None:
    """The session a login opens, or None with an error event saying why (the socket stays open to try again)."""
    request = parsed.request
    if request.WhichOneof("kind") != "login":
        await _send(ws, error_json("not_logged_in", "the first request of a session is login {agentId}"))
        return None
    if not backend.token_matches(parsed.token):
        await _send(ws, error_json("unauthenticated", 'missing or wrong token: send it beside login as "token"'))
        return None
    try:
        agent_id = identifier(request.login.agent_id, "login.agent_id")
    except InvalidField as bad:
        await _send(ws, error_json("invalid_argument", str(bad)))
        return None
    try:
        return await queues.login(agent_id)
    except RoutingRefused as refused:
        await _send(ws, error_json(refused.code, refused.message))
        return None


async def _write_events(ws: web.WebSocketResponse, session: AgentSession) -> None:
    async for event in session.events():
        await _send(ws, event_json(session_event(event)))
    # The session ended (replaced by a newer sign-in, or the agent deleted): so does the socket.
    await ws.close(code=1000, message=b"session ended")


async def _send(ws: web.WebSocketResponse, text: str) -> None:
    if not ws.closed:
        with contextlib.suppress(ConnectionError):
            await ws.send_str(text)


# --- the customer panel's lookup ----------------------------------------------------------------------------------


def _json_error(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["status"] = details
    return web.json_response(body, status=status)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The request's body up to `limit` bytes, however many segments (or chunks) it arrives in: `read(n)` returns
    only what is buffered so far."""
    body = bytearray()
    while len(body) < limit:
        chunk = await request.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


async def customer_lookup(backend: SoftphoneBackend, request: web.Request) -> web.StreamResponse:
    """`POST /agent/api/{method}`: the request's JSON forwarded to the gRPC API, its answer as JSON (see the module)."""
    method = request.match_info["method"]
    known = LOOKUP_METHODS.get(method)
    if known is None:
        return _json_error(404, "NOT_FOUND", f"no lookup {method!r}: one of {', '.join(LOOKUP_METHODS)}")
    if backend.lookup_refusal:
        return _json_error(403, "PERMISSION_DENIED", f"the customer lookup is off: {backend.lookup_refusal}")
    if backend.calling is None:
        return _json_error(503, "UNAVAILABLE", "the service is starting")
    if request.content_length is not None and request.content_length > MAX_LOOKUP_BODY:
        return _json_error(413, "INVALID_ARGUMENT", f"a lookup request is at most {MAX_LOOKUP_BODY} bytes")
    message_type, method_of = known
    try:
        body = await _read_body(request, MAX_LOOKUP_BODY + 1)
        if len(body) > MAX_LOOKUP_BODY:
            return _json_error(413, "INVALID_ARGUMENT", f"a lookup request is at most {MAX_LOOKUP_BODY} bytes")
        message = json_format.Parse(body.decode() or "{}", message_type())
    except (json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError) as error:
        return _json_error(400, "INVALID_ARGUMENT", f"not a {message_type.DESCRIPTOR.name} in JSON: {error}")
    metadata: tuple[tuple[str, str], ...] = ()
    if authorization := request.headers.get("Authorization", ""):
        metadata = (("authorization", authorization),)
    try:
        reply = await method_of(backend.calling)(message, metadata=metadata, timeout=LOOKUP_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        status = rpc_status.from_call(error)
        details = json_format.MessageToDict(status) if status is not None else None
        return _json_error(HTTP_STATUS.get(error.code(), 502), error.code().name, error.details() or "", details)
    return web.json_response(json_format.MessageToDict(reply))
