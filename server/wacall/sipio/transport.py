"""SIP over UDP, TCP and TLS with asyncio (RFC 3261 §18, RFC 3581): bytes in and out, one parsed message handed on
at a time.

UDP: one datagram is one message; bare CRLF keep-alives and oversized datagrams are dropped. TCP and TLS: each
connection cuts its stream with `StreamFramer`; connections are reused per peer (a request to an address we already
hold a connection with goes over it, and a response goes back over the connection its request came on), closed
after `idle_timeout` seconds without traffic, capped at `max_connections` in all, and a message larger than
`max_message_bytes` is answered 513 and ends its connection. A malformed request is answered 400 with a Warning
saying what is wrong when the headers a response needs can be read; on a stream it is then skipped by its
Content-Length and the connection goes on. Otherwise it is dropped (datagram) or its connection closed (stream: the
stream cannot be resynchronised). Nothing raises out of a receive path: the handler's own errors are logged.

A request's top Via is stamped on arrival with where it came from (§18.2.1, RFC 3581 §4), so a response built from
it (`response_to`) goes back to the right place (`Via.response_address`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import secrets
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from wacall.sip.message import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    CSeq,
    Headers,
    NameAddr,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    Via,
    Warning,
    canonical_name,
    parse_datagram,
    split_list,
)

__all__ = [
    "STREAM_TRANSPORTS",
    "Connection",
    "MessageHandler",
    "SipTransportError",
    "Source",
    "Target",
    "Transports",
    "salvage_error_response",
]

log = logging.getLogger(__name__)

STREAM_TRANSPORTS = frozenset({"TCP", "TLS"})
# A UDP read larger than any datagram: what is received is what was sent.
_MAX_DATAGRAM = 65535
# How long a host name resolved for UDP is trusted before it is looked up again.
RESOLVED_TTL = 60.0


class SipTransportError(Exception):
    """A message could not be sent: no route, a refused or failed connection, a TLS handshake that failed."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a message goes: a transport (`UDP`, `TCP`, `TLS`) and a host and port, and (stream) a connection to
    prefer while it is open: the one a dialog came on (RFC 3261 §18.1.1 lets a request reuse it)."""

    transport: str
    host: str
    port: int
    connection: Connection | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.transport not in ("UDP", *STREAM_TRANSPORTS):
            raise ValueError(f"unknown SIP transport {self.transport!r}")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from: its transport, the peer's address, and (stream) the connection it came on."""

    transport: str
    host: str
    port: int
    connection: Connection | None = None

    @property
    def reliable(self) -> bool:
        return self.transport in STREAM_TRANSPORTS


MessageHandler = Callable[[Request | Response, Source], None]


class Connection(asyncio.Protocol):
    """One TCP or TLS connection: frames what it receives, writes what it is given, closes itself when idle."""

    def __init__(self, owner: Transports, transport_name: str) -> None:
        self._owner = owner
        self.transport_name = transport_name
        self.peer: tuple[str, int] = ("", 0)
        self._transport: asyncio.Transport | None = None
        self._framer = StreamFramer()
        self._skipping = 0  # bytes still to drop: the body of a malformed message
        self._idle: asyncio.TimerHandle | None = None
        # Dialogs that still need this connection: while any does, idleness does not close it.
        self._holds = 0
        self.closed = asyncio.get_running_loop().create_future()

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = (host, port)
        if not self._owner._admit(self):
            log.warning("SIP %s connection from %s:%d refused: connection limit", self.transport_name, host, port)
            transport.abort()
            return
        self._touch()

    def data_received(self, data: bytes) -> None:
        self._touch()
        source = Source(self.transport_name, self.peer[0], self.peer[1], self)
        while data and self.is_open:
            if self._skipping:
                # The rest of a malformed message's body, already answered.
                dropped = min(self._skipping, len(data))
                self._skipping -= dropped
                data = data[dropped:]
            try:
                for message in self._framer.messages(data):
                    self._owner._deliver(message, source)
                data = b""
            except SipParseError as error:
                data = self._malformed(str(error))
        if self.is_open and self._framer.buffered_size > self._owner.max_message_bytes:
            self._refuse(513, "Message Too Large", f"message larger than {self._owner.max_message_bytes} bytes")

    def _malformed(self, text: str) -> bytes:
        """A message the framer refused: answer it, and skip it when its Content-Length says where it ends (returns
        the bytes after it); else the stream cannot be resynchronised and is closed."""
        buffered = self._framer.buffered
        end = buffered.find(b"\r\n\r\n")
        length = _lenient_content_length(buffered[:end]) if end >= 0 else None
        answer = salvage_error_response(buffered, 400, "Bad Request", text, self._owner.warn_agent)
        if length is None or end + 4 + length > self._owner.max_message_bytes or answer is None:
            self._refuse(400, "Bad Request", text)
            return b""
        log.info("SIP %s from %s:%d: %s", self.transport_name, self.peer[0], self.peer[1], text)
        self.write(answer)
        message_size = end + 4 + length
        self._framer = StreamFramer()
        self._skipping = max(0, message_size - len(buffered))
        return buffered[message_size:]

    def _refuse(self, status_code: int, reason: str, text: str) -> None:
        log.info("SIP %s from %s:%d: %s; closing", self.transport_name, self.peer[0], self.peer[1], text)
        answer = salvage_error_response(self._framer.buffered, status_code, reason, text, self._owner.warn_agent)
        if answer is not None:
            self.write(answer)
        self.close()

    def write(self, data: bytes) -> None:
        if not self.is_open:
            raise SipTransportError(f"the {self.transport_name} connection to {self.peer[0]}:{self.peer[1]} is closed")
        assert self._transport is not None
        self._touch()
        self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._owner._forget(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def hold(self) -> None:
        """Keep the connection open however long it stays quiet (a dialog's requests may come or go on it), until
        as many `release` calls."""
        self._holds += 1

    def release(self) -> None:
        self._holds = max(0, self._holds - 1)

    @property
    def held(self) -> bool:
        return self._holds > 0

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self._owner.idle_timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        if self._holds:
            self._touch()  # a dialog still lives on it
            return
        self.close()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: Transports) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        host, port = str(addr[0]), int(str(addr[1]))
        self._owner._datagram(data, host, port)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier datagram (port unreachable...): UDP gives no way to tell which; the
        # transactions' timers notice the silence.
        log.debug("SIP UDP error: %s", exc)


class Transports:
    """The SIP transports of one endpoint: listen on them, send through them, hear every message they receive.

    `on_message(message, source)` is called for each message received (set it before listening).
    `client_ssl` is the context for TLS connections this endpoint opens.
    """

    def __init__(
        self,
        on_message: MessageHandler | None = None,
        *,
        client_ssl: ssl.SSLContext | None = None,
        max_connections: int = 1024,
        max_message_bytes: int = MAX_HEADER_BYTES + MAX_BODY_BYTES,
        idle_timeout: float = 300.0,
        warn_agent: str = "wacall",
    ) -> None:
        self.on_message = on_message
        self.client_ssl = client_ssl
        self.max_connections = max_connections
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.warn_agent = warn_agent
        self._udp: asyncio.DatagramTransport | None = None
        self._servers: list[asyncio.Server] = []
        self._addresses: dict[str, tuple[str, int]] = {}
        self._connections: set[Connection] = set()
        # Stream connections by (transport, peer host, peer port): reused for every message to that peer.
        self._by_peer: dict[tuple[str, str, int], Connection] = {}
        self._connecting: dict[tuple[str, str, int], asyncio.Future[Connection]] = {}
        # Host names resolved for UDP (name, port) -> (address, expires at): resolved off the event loop.
        self._resolved: dict[tuple[str, int], tuple[tuple[str, int], float]] = {}
        self._resolving: dict[tuple[str, int], asyncio.Future[tuple[str, int]]] = {}

    # --- Listening ------------------------------------------------------------------------------------------------

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Listen for UDP and TCP on `host:port` (port 0: one free port for both). Returns the address."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            server = await loop.create_server(lambda: Connection(self, "TCP"), host, port, reuse_address=True)
            bound = server.sockets[0].getsockname()[:2]
            try:
                udp, _protocol = await loop.create_datagram_endpoint(
                    lambda: _Datagrams(self), local_addr=(host, bound[1])
                )
            except OSError as error:
                server.close()
                await server.wait_closed()
                if port == 0 and error.errno == errno.EADDRINUSE:
                    continue  # the free TCP port is taken for UDP: try another
                raise
            self._servers.append(server)
            self._udp = udp
            self._addresses["TCP"] = self._addresses["UDP"] = (str(bound[0]), int(bound[1]))
            return self._addresses["UDP"]
        raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {host}")

    async def listen_tls(self, host: str, port: int, context: ssl.SSLContext) -> tuple[str, int]:
        """Listen for TLS on `host:port` with `context` (its certificate and key loaded). Returns the address."""
        server = await asyncio.get_running_loop().create_server(
            lambda: Connection(self, "TLS"), host, port, ssl=context, reuse_address=True, ssl_handshake_timeout=10.0
        )
        self._servers.append(server)
        bound = server.sockets[0].getsockname()[:2]
        self._addresses["TLS"] = (str(bound[0]), int(bound[1]))
        return self._addresses["TLS"]

    def local_address(self, transport: str) -> tuple[str, int]:
        """The address this endpoint listens on for `transport`."""
        try:
            return self._addresses[transport]
        except KeyError:
            raise SipTransportError(f"not listening on {transport}") from None

    @property
    def listening(self) -> frozenset[str]:
        """The transports this endpoint listens on."""
        return frozenset(self._addresses)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._connections:
            await asyncio.wait([c.closed for c in self._connections], timeout=2.0)

    # --- Sending --------------------------------------------------------------------------------------------------

    async def send(self, data: bytes, target: Target) -> None:
        """Send `data` to `target`: over `target.connection` while it is open, else over a connection to the peer if
        one is open, else a new one (stream). A host name is resolved without blocking the event loop."""
        if target.transport == "UDP":
            self._sendto(data, await self.resolve(target.host, target.port))
            return
        preferred = target.connection
        if preferred is not None and preferred.is_open and preferred.transport_name == target.transport:
            preferred.write(data)
            return
        connection = await self._connection_to(target)
        connection.write(data)

    def open_connection(self, target: Target) -> Connection | None:
        """The open connection messages to `target` would go over now, if any (stream transports)."""
        connection = self._by_peer.get((target.transport, target.host, target.port))
        return connection if connection is not None and connection.is_open else None

    async def resolve(self, host: str, port: int) -> tuple[str, int]:
        """The address a UDP datagram for `host:port` goes to: an IP literal as it is, a name looked up with
        `loop.getaddrinfo` (in a thread, never blocking the loop) and remembered for `RESOLVED_TTL` seconds.
        Raises `SipTransportError` when the name does not resolve."""
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            return host, port
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        cached = self._resolved.get((host, port))
        if cached is not None and cached[1] > loop.time():
            return cached[0]
        pending = self._resolving.get((host, port))
        if pending is None:
            # One lookup at a time per name: the retransmissions sent meanwhile wait for its answer.
            pending = asyncio.ensure_future(self._look_up(host, port))
            self._resolving[(host, port)] = pending
            pending.add_done_callback(partial(self._resolved_one, (host, port)))
        return await asyncio.shield(pending)

    def _resolved_one(self, key: tuple[str, int], done: asyncio.Future[tuple[str, int]]) -> None:
        self._resolving.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here: every waiter may have given up

    async def _look_up(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        family = socket.AF_UNSPEC
        if self._udp is not None and (sock := self._udp.get_extra_info("socket")) is not None:
            family = sock.family
        try:
            infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
        except OSError as error:
            raise SipTransportError(f"cannot resolve {host}: {error}") from error
        if not infos:
            raise SipTransportError(f"cannot resolve {host}: no address")
        address = (str(infos[0][4][0]), int(infos[0][4][1]))
        self._resolved[(host, port)] = (address, loop.time() + RESOLVED_TTL)
        return address

    async def send_response(self, response: Response, source: Source) -> None:
        """Send `response` to a request that came from `source` (§18.2.2): back over its connection while it is open,
        else to the request's top Via (received / rport, sent-by)."""
        data = response.serialize()
        if source.connection is not None and source.connection.is_open:
            source.connection.write(data)
            return
        via = response.top_via
        if source.reliable:
            # The old connection's port (rport) is gone with it: a new one goes to where sent-by says the client
            # listens, at the address it was seen from (§18.2.2).
            host, port = via.received or via.host, via.port or (5061 if source.transport == "TLS" else 5060)
        else:
            host, port = via.response_address()
        await self.send(data, Target(source.transport, host.strip("[]"), port))

    def _sendto(self, data: bytes, address: tuple[str, int]) -> None:
        if self._udp is None:
            raise SipTransportError("not listening on UDP")
        try:
            self._udp.sendto(data, address)
        except OSError as error:
            raise SipTransportError(f"UDP send to {address[0]}:{address[1]} failed: {error}") from error

    async def _connection_to(self, target: Target) -> Connection:
        key = (target.transport, target.host, target.port)
        existing = self._by_peer.get(key)
        if existing is not None and existing.is_open:
            return existing
        pending = self._connecting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        self._connecting[key] = future
        try:
            connection = await self._connect(target)
        except SipTransportError as error:
            future.set_exception(error)
            future.exception()  # retrieved here: other waiters may not exist
            raise
        finally:
            del self._connecting[key]
        future.set_result(connection)
        return connection

    async def _connect(self, target: Target) -> Connection:
        if len(self._connections) >= self.max_connections:
            raise SipTransportError(f"connection limit ({self.max_connections}) reached")
        context: ssl.SSLContext | None = None
        if target.transport == "TLS":
            context = self.client_ssl if self.client_ssl is not None else ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            _transport, connection = await loop.create_connection(
                lambda: Connection(self, target.transport),
                target.host,
                target.port,
                ssl=context,
                server_hostname=target.host if context is not None else None,
                ssl_handshake_timeout=10.0 if context is not None else None,
            )
        except (TimeoutError, OSError) as error:
            raise SipTransportError(
                f"{target.transport} connection to {target.host}:{target.port} failed: {error}"
            ) from error
        if not connection.is_open:
            raise SipTransportError(f"{target.transport} connection to {target.host}:{target.port} was closed")
        # Filed under the address we dialled too, which may be spelled unlike the peer name the socket reports.
        self._by_peer[(target.transport, target.host, target.port)] = connection
        return connection

    # --- Receiving ------------------------------------------------------------------------------------------------

    def _admit(self, connection: Connection) -> bool:
        if len(self._connections) >= self.max_connections:
            return False
        self._connections.add(connection)
        self._by_peer[(connection.transport_name, *connection.peer)] = connection
        return True

    def _forget(self, connection: Connection) -> None:
        self._connections.discard(connection)
        for key in [k for k, c in self._by_peer.items() if c is connection]:
            del self._by_peer[key]

    def _datagram(self, data: bytes, host: str, port: int) -> None:
        if not data.strip(b"\r\n"):
            return  # a keep-alive (RFC 5626 §4.4.1)
        if len(data) > self.max_message_bytes:
            log.info("SIP UDP from %s:%d: datagram of %d bytes dropped", host, port, len(data))
            return
        try:
            message = parse_datagram(data)
        except SipParseError as error:
            log.info("SIP UDP from %s:%d: %s", host, port, error)
            answer = salvage_error_response(data, 400, "Bad Request", str(error), self.warn_agent)
            if answer is not None:
                with contextlib.suppress(SipTransportError):
                    self._sendto(answer, (host, port))
            return
        self._deliver(message, Source("UDP", host, port))

    def _deliver(self, message: Request | Response, source: Source) -> None:
        if isinstance(message, Request):
            message = _stamped(message, source)
        if self.on_message is None:
            return
        try:
            self.on_message(message, source)
        except Exception:
            log.exception("SIP message handler failed on a message from %s:%d", source.host, source.port)


def _stamped(request: Request, source: Source) -> Request:
    """`request` with its top Via recording where it came from (§18.2.1, RFC 3581 §4)."""
    top = request.top_via
    stamped = top.stamped(source.host, source.port)
    if stamped == top:
        return request
    items: list[tuple[str, str]] = []
    done = False
    for name, value in request.headers:
        if name == "Via" and not done:
            rest = split_list(value)[1:]
            value = ", ".join([str(stamped), *rest])
            done = True
        items.append((name, value))
    return Request(request.method, request.uri, Headers(items), request.body)


def _lenient_content_length(head: bytes) -> int | None:
    """The one Content-Length a header block states, read without validating the rest; None if absent, repeated
    with different values, or not a number."""
    values = set()
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            values.add(value.strip())
    if len(values) != 1:
        return None
    (value,) = values
    return int(value) if value.isdigit() and len(value) <= 9 else None


# The headers a response copies from its request (§8.2.6.2): without all of them no response can be built.
_COPIED = ("Via", "From", "To", "Call-ID", "CSeq")


def salvage_error_response(data: bytes, status_code: int, reason: str, text: str, agent: str) -> bytes | None:
    """The bytes of an error response (with `Warning: 399 agent "text"`) to the malformed request in `data`, read as
    leniently as it takes to find the headers a response copies; None when `data` is a response, an ACK (never
    answered, §17.1.1.3), or lacks one of those headers or cannot read it."""
    head = data[:MAX_HEADER_BYTES].split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    start = lines[0].split(" ")
    if not start[0] or start[0].startswith("SIP/") or start[0] == "ACK":
        return None
    found: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or any(c in name for c in " \t"):
            continue
        canonical = canonical_name(name)
        if canonical in _COPIED and value.strip() and "\x00" not in value:
            found.setdefault(canonical, []).append(value.strip())
    if any(name not in found for name in _COPIED):
        return None
    try:
        # What is copied must itself be readable, or the peer could not match the response to its request.
        for via in found["Via"]:
            for item in split_list(via):
                Via.parse(item)
        NameAddr.parse(found["From"][0])
        NameAddr.parse(found["To"][0])
        CSeq.parse(found["CSeq"][0])
    except SipParseError:
        return None
    to = found["To"][0]
    if "tag=" not in to.lower():
        # §8.2.6.2: a response outside a dialog gets a To tag.
        to = f"{to};tag={secrets.token_hex(6)}"
    warning = Warning(399, agent, text.replace("\r", " ").replace("\n", " ")[:200])
    out = [f"SIP/2.0 {status_code} {reason}"]
    out += [f"Via: {via}" for via in found["Via"]]
    out += [f"From: {found['From'][0]}", f"To: {to}", f"Call-ID: {found['Call-ID'][0]}", f"CSeq: {found['CSeq'][0]}"]
    out += [f"Warning: {warning}", "Content-Length: 0"]
    return ("\r\n".join(out) + "\r\n\r\n").encode()
