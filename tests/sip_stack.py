"""Helpers for tests of the SIP I/O edge: two real stacks on loopback, requests to send between them, a self-signed
certificate, and a UDP relay that loses the datagrams it is told to."""

from __future__ import annotations

import asyncio
import secrets
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from wacall.sip.message import Headers, Request
from wacall.sip.transactions import TimerValues
from wacall.sipio.layer import RequestHandler, ServerRequest, StrayHandler, TransactionLayer
from wacall.sipio.transport import Target, Transports

# Short timers so a retransmission or a timeout happens within a test's patience (T1 = 20 ms: Timer B/F = 1.28 s).
FAST = TimerValues(t1=0.02, t2=0.16, t4=0.2)


@dataclass
class Stack:
    """One endpoint: transports listening on loopback and a transaction layer; what its TU was handed."""

    layer: TransactionLayer
    requests: list[ServerRequest] = field(default_factory=list)
    strays: list[object] = field(default_factory=list)

    @property
    def transports(self) -> Transports:
        return self.layer.transports

    def target(self, transport: str) -> Target:
        host, port = self.transports.local_address(transport)
        return Target(transport, host, port)


async def start_stack(
    answer: Callable[[ServerRequest], object] | None = None,
    *,
    tls: ssl.SSLContext | None = None,
    client_ssl: ssl.SSLContext | None = None,
    timers: TimerValues = FAST,
    max_connections: int = 1024,
    idle_timeout: float = 300.0,
    max_message_bytes: int = 64 * 1024,
) -> Stack:
    """A stack listening for UDP and TCP (and TLS with `tls`) on 127.0.0.1; `answer` is its TU."""
    transports = Transports(
        client_ssl=client_ssl,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        max_message_bytes=max_message_bytes,
    )
    stack: Stack

    def on_request(server: ServerRequest) -> None:
        stack.requests.append(server)
        if answer is not None:
            answer(server)

    def on_stray(message: object, source: object) -> None:
        stack.strays.append(message)

    handler: RequestHandler = on_request
    stray: StrayHandler = on_stray
    stack = Stack(TransactionLayer(transports, handler, on_stray=stray, timers=timers))
    await transports.listen("127.0.0.1", 0)
    if tls is not None:
        await transports.listen_tls("127.0.0.1", 0, tls)
    return stack


def make_request(
    layer: TransactionLayer, method: str, target: Target, *, call_id: str | None = None, body: bytes = b""
) -> Request:
    """A new out-of-dialog request from `layer`'s endpoint to `target`."""
    uri = f"sip:+447911123456@{target.host}:{target.port}"
    if target.transport != "UDP":
        uri += f";transport={target.transport.lower()}"
    items = [
        ("Via", layer.via(target.transport)),
        ("Max-Forwards", "70"),
        ("From", f"<sip:pbx@127.0.0.1>;tag={secrets.token_hex(4)}"),
        ("To", "<sip:+447911123456@127.0.0.1>"),
        ("Call-ID", call_id or secrets.token_hex(8)),
        ("CSeq", f"1 {method}"),
        ("Contact", f"<sip:pbx@127.0.0.1:{layer.transports.local_address('UDP')[1]}>"),
    ]
    if body:
        items.append(("Content-Type", "application/sdp"))
    return Request(method, uri, Headers(items), body)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, made with the system's openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class LossyRelay(asyncio.DatagramProtocol):
    """A UDP relay between a client and `target`: what the client sends goes to `target` unless `drop(index, data)`
    says to lose it (index counts the client's datagrams from 0); what `target` sends goes back to the client."""

    def __init__(self, target: tuple[str, int], drop: Callable[[int, bytes], bool]) -> None:
        self.target = target
        self.drop = drop
        self.seen: list[bytes] = []  # the client's datagrams, lost ones included
        self._client: tuple[str, int] | None = None
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        assert self._transport is not None
        source = (str(addr[0]), int(str(addr[1])))
        if source == self.target:
            if self._client is not None:
                self._transport.sendto(data, self._client)
            return
        self._client = source
        index = len(self.seen)
        self.seen.append(data)
        if not self.drop(index, data):
            self._transport.sendto(data, self.target)

    @classmethod
    async def start(cls, target: tuple[str, int], drop: Callable[[int, bytes], bool]) -> tuple[LossyRelay, int]:
        _transport, relay = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: cls(target, drop), local_addr=("127.0.0.1", 0)
        )
        assert relay._transport is not None
        return relay, int(relay._transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
