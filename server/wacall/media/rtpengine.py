"""A client of rtpengine's ng control protocol over UDP, and a pool of engines that pins each call to one.

The ng protocol: each request is a cookie, a space and a bencoded dictionary with a `command`; the reply echoes the
cookie and carries `result` (`ok`, `pong`, or `error` with an `error-reason`). UDP loses datagrams, so a request is
a `NgTransaction` in the shape of aioice's STUN transaction: sent again with the SAME cookie after a growing
interval (rtpengine keeps a cache of cookies and answers a retransmission with its first reply rather than running
the command twice), and failed with `EngineTimeout` when every attempt went unanswered. A reply with
`result: error` raises `EngineError`, which carries rtpengine's reason.

The flag sets are the ones proven against rtpengine 10.5 on loopback: toward a WebRTC side (the platform, a browser,
aiortc), toward a plain-RTP side (a PBX), and the codec flags that make rtpengine transcode Opus and G.711.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar, cast

from wacall.clock import Clock
from wacall.media.bencode import BencodeError, Encodable, Value, decode, encode

log = logging.getLogger(__name__)

Address = tuple[str, int]
Flags = Mapping[str, Encodable]
"""Keys of an ng `offer`/`answer` request beyond the call's identity and SDP."""

# Toward a WebRTC side: rtpengine is the only ICE candidate, DTLS-SRTP (no SDES: without `off` it adds a dozen
# a=crypto lines to a DTLS offer), RTP and RTCP on one port. A flag set names the side that receives the SDP
# rtpengine returns: the same set for an offer toward that side and for an answer toward it.
TOWARD_WEBRTC: Flags = MappingProxyType(
    {
        "ICE": "force",
        "SDES": ["off"],
        "transport-protocol": "UDP/TLS/RTP/SAVPF",
        "rtcp-mux": ["require"],
        "replace": ["origin", "session-connection"],
    }
)
# Toward a plain-RTP side (a PBX): no ICE, no DTLS, RTCP on its own port.
TOWARD_PLAIN_RTP: Flags = MappingProxyType(
    {
        "ICE": "remove",
        "DTLS": "off",
        "transport-protocol": "RTP/AVP",
        "rtcp-mux": ["demux"],
        "replace": ["origin", "session-connection"],
    }
)
# A WebRTC side offers Opus; the plain-RTP side is offered PCMU only, and rtpengine transcodes.
WEBRTC_OFFER_TOWARD_PLAIN_RTP_TRANSCODED: Flags = MappingProxyType(
    {**TOWARD_PLAIN_RTP, "codec": {"transcode": ["PCMU"], "mask": ["opus"]}}
)
# A plain-RTP side offers G.711; the WebRTC side is offered Opus (and telephone-event/48000), and rtpengine transcodes.
PLAIN_RTP_OFFER_TOWARD_WEBRTC_TRANSCODED: Flags = MappingProxyType(
    {**TOWARD_WEBRTC, "codec": {"transcode": ["opus"], "mask": ["PCMU", "PCMA"]}}
)

# Retransmission schedule: the first retry after RETRY_INTERVAL, each next one after twice the previous wait.
RETRY_INTERVAL = 0.25
ATTEMPTS = 4  # 0.25 + 0.5 + 1 + 2: a request fails after 3.75 s without a reply


class EngineTimeout(Exception):
    """No reply to a request after every retransmission: the engine is unreachable or dead."""


class EngineError(Exception):
    """rtpengine answered `result: error`; `reason` is its `error-reason`."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"rtpengine refused {command!r}: {reason}")
        self.command = command
        self.reason = reason


class EngineProtocolError(Exception):
    """rtpengine's reply is not what the ng protocol promises (a missing or malformed field)."""


class NgTransaction:
    """One request: sent, sent again with the same cookie until a reply resolves it or the attempts run out."""

    def __init__(
        self,
        request: bytes,
        address: Address,
        send: Callable[[bytes, Address], None],
        *,
        retry_interval: float = RETRY_INTERVAL,
        attempts: int = ATTEMPTS,
    ) -> None:
        self.request = request
        self.sent = 0
        self._address = address
        self._send = send
        self._interval = retry_interval
        self._attempts = attempts
        self._future: asyncio.Future[Value] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None

    def reply_received(self, reply: Value) -> None:
        if not self._future.done():
            self._future.set_result(reply)

    def connection_lost(self, error: Exception) -> None:
        if not self._future.done():
            self._future.set_exception(error)

    async def run(self) -> Value:
        try:
            self._retry()
            return await self._future
        finally:
            if self._timer is not None:
                self._timer.cancel()

    def _retry(self) -> None:
        if self.sent >= self._attempts:
            self._future.set_exception(
                EngineTimeout(f"no reply from rtpengine at {self._address} after {self.sent} tries")
            )
            return
        self._send(self.request, self._address)
        self._timer = asyncio.get_running_loop().call_later(self._interval * 2**self.sent, self._retry)
        self.sent += 1


class _NgProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transactions: dict[bytes, NgTransaction] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        cookie, space, body = data.partition(b" ")
        transaction = self.transactions.get(cookie)
        if not space or transaction is None:
            return  # a late reply to a finished request, or not a reply at all
        try:
            reply = decode(body)
        except BencodeError as error:
            log.warning("rtpengine at %s sent an undecodable reply: %s", addr, error)
            return
        transaction.reply_received(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        for transaction in self.transactions.values():
            transaction.connection_lost(exc or ConnectionError("the ng socket closed"))


@dataclass(frozen=True, slots=True)
class StreamCounters:
    """What rtpengine received on one of its ports: from the party `tag`, media section `media_index` (from 1)."""

    tag: str
    media_index: int
    rtcp: bool  # an RTCP-only port (with rtcp-mux, the one port carries both and counts as RTP)
    local_port: int
    packets: int
    bytes: int
    errors: int
    last_packet: int | None  # Unix seconds of the last packet, None before the first
    media_flags: frozenset[str] = frozenset()  # rtpengine's view of the media toward `tag` ("ICE controlling", …)


@dataclass(frozen=True, slots=True)
class CallCounters:
    """The per-stream counters of one call, from `query`."""

    call_id: str
    streams: tuple[StreamCounters, ...]

    def rtp_packets_from(self, tag: str) -> int:
        """RTP packets rtpengine has received from the party `tag` (what a no-audio watchdog compares over time)."""
        return sum(s.packets for s in self.streams if s.tag == tag and not s.rtcp)

    def rtp_bytes_from(self, tag: str) -> int:
        return sum(s.bytes for s in self.streams if s.tag == tag and not s.rtcp)

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.tag for s in self.streams))


def _field(mapping: Mapping[bytes, Value], key: str, kind: type) -> object:
    value = mapping.get(key.encode())
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EngineProtocolError(f"{key!r} is missing or not a {kind.__name__}")
    return value


def _text(mapping: Mapping[bytes, Value], key: str) -> str:
    value = _field(mapping, key, bytes)
    assert isinstance(value, bytes)
    return value.decode(errors="replace")


def _dict(value: Value | None, what: str) -> dict[bytes, Value]:
    if not isinstance(value, dict):
        raise EngineProtocolError(f"{what} is not a dictionary")
    return value


def _list(mapping: Mapping[bytes, Value], key: str) -> list[Value]:
    value = mapping.get(key.encode(), [])
    if not isinstance(value, list):
        raise EngineProtocolError(f"{key!r} is not a list")
    return value


def _int(mapping: Mapping[bytes, Value], key: str) -> int:
    value = _field(mapping, key, int)
    assert isinstance(value, int)
    return value


def parse_query(call_id: str, reply: Mapping[bytes, Value]) -> CallCounters:
    """The counters of a `query` reply (`tags` → `medias` → `streams` → `stats`), RTP and RTCP ports alike."""
    streams: list[StreamCounters] = []
    for tag, party in _dict(reply.get(b"tags", {}), "'tags'").items():
        party = _dict(party, f"tag {tag!r}")
        for media in _list(party, "medias"):
            media = _dict(media, "a media")
            media_flags = frozenset(f.decode(errors="replace") for f in _list(media, "flags") if isinstance(f, bytes))
            for stream in _list(media, "streams"):
                stream = _dict(stream, "a stream")
                stats = _dict(stream.get(b"stats"), "'stats'")
                flags = _list(stream, "flags")
                last = stream.get(b"last packet")
                streams.append(
                    StreamCounters(
                        tag=tag.decode(errors="replace"),
                        media_index=_int(media, "index"),
                        rtcp=b"RTCP" in flags and b"RTP" not in flags,
                        local_port=_int(stream, "local port"),
                        packets=_int(stats, "packets"),
                        bytes=_int(stats, "bytes"),
                        errors=_int(stats, "errors"),
                        last_packet=last if isinstance(last, int) and last > 0 else None,
                        media_flags=media_flags,
                    )
                )
    return CallCounters(call_id=call_id, streams=tuple(streams))


class NgClient:
    """One rtpengine, controlled over its ng port. Open with `await NgClient.connect(address)`; `close()` ends it."""

    def __init__(
        self,
        address: Address,
        transport: asyncio.DatagramTransport,
        protocol: _NgProtocol,
        *,
        retry_interval: float,
        attempts: int,
    ) -> None:
        self.address = address
        self._transport = transport
        self._protocol = protocol
        self._retry_interval = retry_interval
        self._attempts = attempts
        # A per-client prefix keeps cookies unique across clients and restarts (rtpengine caches them).
        self._prefix = secrets.token_hex(4)
        self._serial = itertools.count(1)

    @classmethod
    async def connect(
        cls, address: Address, *, retry_interval: float = RETRY_INTERVAL, attempts: int = ATTEMPTS
    ) -> NgClient:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        transport, protocol = await loop.create_datagram_endpoint(_NgProtocol, family=family)
        return cls(address, transport, protocol, retry_interval=retry_interval, attempts=attempts)

    async def close(self) -> None:
        self._transport.close()
        await asyncio.sleep(0)

    def _next_cookie(self) -> bytes:
        return f"{self._prefix}_{next(self._serial)}".encode()

    async def request(self, command: str, fields: Mapping[str, Encodable] | None = None) -> dict[bytes, Value]:
        """Send one command with its `fields` (ng keys as rtpengine spells them); the reply dictionary when
        `result` is not `error`."""
        cookie = self._next_cookie()
        message: dict[str | bytes, Encodable] = dict((fields or {}).items())
        message["command"] = command
        transaction = NgTransaction(
            cookie + b" " + encode(message),
            self.address,
            self._transport.sendto,
            retry_interval=self._retry_interval,
            attempts=self._attempts,
        )
        self._protocol.transactions[cookie] = transaction
        try:
            reply = _dict(await transaction.run(), "the reply")
        finally:
            del self._protocol.transactions[cookie]
        result = reply.get(b"result")
        if result == b"error":
            reason = reply.get(b"error-reason")
            raise EngineError(command, reason.decode(errors="replace") if isinstance(reason, bytes) else "(no reason)")
        if not isinstance(result, bytes):
            raise EngineProtocolError(f"the reply to {command!r} has no result")
        return reply

    async def ping(self) -> None:
        """Returns when the engine answered `pong`."""
        reply = await self.request("ping")
        if reply.get(b"result") != b"pong":
            raise EngineProtocolError(f"ping answered {reply.get(b'result')!r}, not pong")

    async def offer(self, call_id: str, from_tag: str, sdp: str, flags: Flags) -> str:
        """Hand the offerer's SDP to the engine; the SDP to give the other side."""
        reply = await self.request("offer", {**flags, "call-id": call_id, "from-tag": from_tag, "sdp": sdp})
        return _text(reply, "sdp")

    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str, flags: Flags) -> str:
        """Hand the answerer's SDP to the engine; the SDP to give the offerer."""
        reply = await self.request(
            "answer", {**flags, "call-id": call_id, "from-tag": from_tag, "to-tag": to_tag, "sdp": sdp}
        )
        return _text(reply, "sdp")

    async def delete(self, call_id: str) -> None:
        """End the call in the engine and free its ports (query first for its final counters)."""
        await self.request("delete", {"call-id": call_id})

    async def query(self, call_id: str) -> CallCounters:
        return parse_query(call_id, await self.request("query", {"call-id": call_id}))

    async def list_calls(self) -> list[str]:
        """The call ids the engine holds now."""
        calls = _list(await self.request("list"), "calls")
        return [call.decode(errors="replace") for call in calls if isinstance(call, bytes)]

    async def session_count(self) -> int:
        """How many calls the engine holds (its own `statistics`: sessions it owns)."""
        reply = await self.request("statistics")
        current = _dict(_dict(reply.get(b"statistics"), "'statistics'").get(b"currentstatistics"), "'current'")
        return _int(current, "sessionsown")


class Pingable(Protocol):
    address: Address

    async def ping(self) -> None: ...


@dataclass(slots=True)
class _EngineHealth:
    alive: bool = True
    calls: set[str] = field(default_factory=set)
    dead_since: datetime | None = None


class NoEngineAvailable(Exception):
    """Every engine in the pool is out of rotation."""


E = TypeVar("E", bound=Pingable)


class EnginePool(Generic[E]):
    """Several engines: each call pinned to one (the least loaded alive one when it starts), and an engine that
    does not answer a ping taken out of rotation until a later ping succeeds. Calls already pinned to a dead
    engine stay pinned: their media lives there, and only its owner can end them.

    Time comes from the injected clock; `check()` pings every engine once (run it periodically)."""

    def __init__(self, engines: Sequence[E], clock: Clock, *, ping_timeout: timedelta = timedelta(seconds=2)) -> None:
        if not engines:
            raise ValueError("an engine pool needs at least one engine")
        self.engines = tuple(engines)
        self._clock = clock
        self._ping_timeout = ping_timeout
        self._health = {id(engine): _EngineHealth() for engine in self.engines}
        self._pinned: dict[str, E] = {}

    def alive(self, engine: E) -> bool:
        return self._health[id(engine)].alive

    def dead_since(self, engine: E) -> datetime | None:
        return self._health[id(engine)].dead_since

    def engine_for(self, call_id: str) -> E:
        """The engine of `call_id`: the one it is pinned to, else the alive engine with the fewest calls (the
        first in the pool's order on a tie), to which it is then pinned."""
        pinned = self._pinned.get(call_id)
        if pinned is not None:
            return pinned
        candidates = [engine for engine in self.engines if self._health[id(engine)].alive]
        if not candidates:
            raise NoEngineAvailable(f"no rtpengine answers pings ({len(self.engines)} configured)")
        engine = min(candidates, key=lambda e: len(self._health[id(e)].calls))
        self._pinned[call_id] = engine
        self._health[id(engine)].calls.add(call_id)
        return engine

    def release(self, call_id: str) -> None:
        """Unpin a call that ended (a no-op for an unknown call)."""
        engine = self._pinned.pop(call_id, None)
        if engine is not None:
            self._health[id(engine)].calls.discard(call_id)

    def mark(self, engine: E, *, alive: bool) -> None:
        health = self._health[id(engine)]
        if alive:
            health.alive, health.dead_since = True, None
        elif health.alive:
            health.alive, health.dead_since = False, self._clock.now()
            log.warning("rtpengine at %s does not answer: out of rotation", engine.address)

    async def check(self) -> None:
        """Ping every engine at once; mark each alive or dead by whether it answered within the ping timeout."""

        async def probe(engine: E) -> None:
            try:
                # Not `asyncio.wait_for`: on Python 3.11 it drops a cancel that lands as the ping answers, and the
                # checking loop, cancelled once at shutdown, would run on.
                async with asyncio.timeout(self._ping_timeout.total_seconds()):
                    await engine.ping()
            except (TimeoutError, EngineTimeout, EngineError, EngineProtocolError, OSError):
                self.mark(engine, alive=False)
            else:
                self.mark(engine, alive=True)

        await asyncio.gather(*(probe(engine) for engine in self.engines))
