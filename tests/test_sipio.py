"""The SIP I/O edge over real loopback sockets: two stacks exchanging requests over UDP, TCP and TLS; retransmission
of a lost INVITE; CANCEL; digest; malformed input answered 400 with the transport still serving; a TCP stream cut at
odd places; where UDP responses go (rport); the connection cap, idle close, size cap; a failed TLS handshake."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from sip_stack import LossyRelay, Stack, make_request, self_signed_certificate, start_stack

from wacall.sip.digest import AuthOutcome, DigestAuth, DigestVerifier
from wacall.sip.message import (
    Headers,
    Request,
    Response,
    StreamFramer,
    Warning,
    parse_datagram,
    response_to,
)
from wacall.sip.transactions import TimerValues
from wacall.sipio.layer import (
    ServerRequest,
    TransactionAbandoned,
    TransactionTimeout,
    TransportFailed,
    cancel_request,
)
from wacall.sipio.transport import Target

SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def answer_ok(server: ServerRequest) -> None:
    if server.request.method == "INVITE":
        server.respond(response_to(server.request, 180, to_tag="uas1"))
        server.respond(response_to(server.request, 200, to_tag="uas1", body=SDP))
    else:
        server.respond(response_to(server.request, 200, to_tag="uas1"))


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path)


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def client_context(certificate: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if certificate is not None:
        context.load_verify_locations(certificate[0])
    return context


@pytest.fixture
async def pair(certificate: tuple[Path, Path]) -> AsyncIterator[tuple[Stack, Stack]]:
    uas = await start_stack(answer_ok, tls=server_context(certificate))
    uac = await start_stack(client_ssl=client_context(certificate))
    yield uac, uas
    await uac.layer.close()
    await uas.layer.close()


def udp_client() -> socket.socket:
    """A non-blocking UDP socket on loopback, to send raw datagrams and read what comes back."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    return client


@pytest.mark.parametrize("transport", ["UDP", "TCP", "TLS"])
async def test_an_invite_gets_its_ringing_and_its_answer_between_two_stacks(
    pair: tuple[Stack, Stack], transport: str
) -> None:
    uac, uas = pair
    target = uas.target(transport)
    invite = make_request(uac.layer, "INVITE", target, body=SDP)
    provisional: list[Response] = []

    final = await uac.layer.request(invite, target, on_provisional=provisional.append)

    assert final.status_code == 200
    assert final.body == SDP
    assert final.call_id == invite.call_id
    assert [r.status_code for r in provisional] == [180]
    assert [s.request.call_id for s in uas.requests] == [invite.call_id]
    received = uas.requests[0]
    assert received.source.transport == transport
    assert received.request.body == SDP
    # The server recorded where the request came from (§18.2.1, RFC 3581: rport was asked for).
    via = received.request.top_via
    assert via.received == "127.0.0.1"
    assert via.rport == received.source.port


@pytest.mark.parametrize("transport", ["TCP", "TLS"])
async def test_requests_to_one_peer_share_one_connection(pair: tuple[Stack, Stack], transport: str) -> None:
    uac, uas = pair
    target = uas.target(transport)
    for _ in range(3):
        final = await uac.layer.request(make_request(uac.layer, "OPTIONS", target), target)
        assert final.status_code == 200
    assert uac.transports.connection_count == 1
    assert uas.transports.connection_count == 1
    assert len({s.source.port for s in uas.requests}) == 1


async def test_a_lost_invite_is_retransmitted_over_udp_and_the_duplicate_absorbed() -> None:
    uas = await start_stack(answer_ok)
    uac = await start_stack()
    # The relay loses the first datagram (the INVITE) and delivers the second (its retransmission, Timer A).
    relay, port = await LossyRelay.start(uas.transports.local_address("UDP"), lambda index, data: index == 0)
    try:
        target = Target("UDP", "127.0.0.1", port)
        final = await uac.layer.request(make_request(uac.layer, "INVITE", target), target)
        assert final.status_code == 200
        assert [d.split(b" ", 1)[0] for d in relay.seen] == [b"INVITE", b"INVITE"]
        assert len(uas.requests) == 1
    finally:
        relay.close()
        await uac.layer.close()
        await uas.layer.close()


async def test_a_retransmitted_request_reaches_the_tu_once_and_gets_the_response_again() -> None:
    uas = await start_stack(answer_ok)
    client = udp_client()
    try:
        port = client.getsockname()[1]
        target = uas.target("UDP")
        options = raw_options(port, "z9hG4bKretx1")
        client.sendto(options, uas.transports.local_address("UDP"))
        first = parse_datagram(await receive(client))
        client.sendto(options, uas.transports.local_address("UDP"))
        again = parse_datagram(await receive(client))
        assert isinstance(first, Response) and isinstance(again, Response)
        assert first.status_code == again.status_code == 200
        assert first.to.tag == again.to.tag
        await asyncio.sleep(0.05)
        assert len(uas.requests) == 1
        assert target.port == uas.transports.local_address("UDP")[1]
    finally:
        client.close()
        await uas.layer.close()


async def receive(sock: socket.socket) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65535), 2.0)


def raw_options(port: int, branch: str, *, sent_by_port: int | None = None, rport: bool = False) -> bytes:
    via = f"SIP/2.0/UDP 127.0.0.1:{sent_by_port or port};branch={branch}" + (";rport" if rport else "")
    return (
        f"OPTIONS sip:wacall@127.0.0.1 SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:wacall@127.0.0.1>\r\nCall-ID: {branch}\r\n"
        "CSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def test_udp_responses_go_to_the_source_port_when_rport_is_asked_for() -> None:
    uas = await start_stack(answer_ok)
    client = udp_client()
    try:
        # sent-by names a port nobody listens on; rport asks for the response at the source port (RFC 3581 §4).
        client.sendto(
            raw_options(client.getsockname()[1], "z9hG4bKrport", sent_by_port=9, rport=True),
            uas.transports.local_address("UDP"),
        )
        response = parse_datagram(await receive(client))
        assert isinstance(response, Response) and response.status_code == 200
        assert response.top_via.rport == client.getsockname()[1]
        assert response.top_via.received == "127.0.0.1"
    finally:
        client.close()
        await uas.layer.close()


def heard(event: asyncio.Event, response: Response) -> None:
    event.set()


async def test_a_cancel_ends_its_unanswered_invite_with_487() -> None:
    ringing: list[ServerRequest] = []

    def ring(server: ServerRequest) -> None:
        ringing.append(server)
        server.respond(response_to(server.request, 180, to_tag="ring"))

    uas = await start_stack(ring)
    uac = await start_stack()
    try:
        for transport in ("UDP", "TCP"):
            target = uas.target(transport)
            invite = make_request(uac.layer, "INVITE", target)
            rung = asyncio.Event()
            ringing_heard = partial(heard, rung)
            outcome = asyncio.ensure_future(uac.layer.request(invite, target, on_provisional=ringing_heard))
            await asyncio.wait_for(rung.wait(), 2.0)

            cancelled = await uac.layer.request(cancel_request(invite), target)

            assert cancelled.status_code == 200
            final = await asyncio.wait_for(outcome, 2.0)
            assert final.status_code == 487
            assert final.to.tag == "ring"
            assert ringing[-1].cancelled.is_set()
            # The CANCEL went to the layer, not to the TU; the ACK of the 487 was absorbed by its transaction.
            assert [s.request.method for s in uas.requests] == ["INVITE"] * len(ringing)
            await asyncio.sleep(0.05)
            assert uas.strays == []
    finally:
        await uac.layer.close()
        await uas.layer.close()


async def test_a_cancel_matching_no_invite_gets_481() -> None:
    uas = await start_stack(answer_ok)
    uac = await start_stack()
    try:
        target = uas.target("UDP")
        invite = make_request(uac.layer, "INVITE", target)
        response = await uac.layer.request(cancel_request(invite), target)
        assert response.status_code == 481
        assert uas.requests == []
    finally:
        await uac.layer.close()
        await uas.layer.close()


async def test_a_cancel_after_the_answer_changes_nothing() -> None:
    uas = await start_stack(answer_ok)
    uac = await start_stack()
    try:
        target = uas.target("UDP")
        invite = make_request(uac.layer, "INVITE", target)
        assert (await uac.layer.request(invite, target)).status_code == 200
        # The 2xx ended the INVITE server transaction (§17.2.1): nothing left to cancel.
        assert (await uac.layer.request(cancel_request(invite), target)).status_code == 481
        assert not uas.requests[0].cancelled.is_set()
    finally:
        await uac.layer.close()
        await uas.layer.close()


async def test_a_digest_challenge_is_answered_once_with_credentials() -> None:
    verifier = DigestVerifier("wacall", b"nonce-secret", algorithms=("MD5", "SHA-256"))
    outcomes: list[AuthOutcome] = []

    def guarded(server: ServerRequest) -> None:
        outcome = verifier.verify(server.request, username="pbx", password="s3cret", now=0.0)
        outcomes.append(outcome)
        if outcome is AuthOutcome.ACCEPTED:
            server.respond(response_to(server.request, 200, to_tag="auth"))
            return
        code = 407 if outcome is AuthOutcome.MISSING else 403
        challenges = [("Proxy-Authenticate", str(c)) for c in verifier.challenges(0.0)] if code == 407 else []
        server.respond(response_to(server.request, code, to_tag="auth", headers=challenges))

    uas = await start_stack(guarded)
    uac = await start_stack()
    try:
        for transport in ("UDP", "TCP"):
            target = uas.target(transport)
            good = await uac.layer.request_with_auth(
                make_request(uac.layer, "INVITE", target), target, DigestAuth("pbx", "s3cret")
            )
            assert good.status_code == 200
            bad = await uac.layer.request_with_auth(
                make_request(uac.layer, "INVITE", target), target, DigestAuth("pbx", "wrong")
            )
            assert bad.status_code == 403
        assert outcomes == [AuthOutcome.MISSING, AuthOutcome.ACCEPTED, AuthOutcome.MISSING, AuthOutcome.REJECTED] * 2
        assert [s.request.cseq.seq for s in uas.requests[:2]] == [1, 2]
    finally:
        await uac.layer.close()
        await uas.layer.close()


async def test_a_request_nobody_answers_times_out_after_timer_f() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    uac = await start_stack(timers=TimerValues(t1=0.01, t2=0.08, t4=0.1))
    try:
        target = Target("UDP", "127.0.0.1", silent.getsockname()[1])
        started = asyncio.get_running_loop().time()
        with pytest.raises(TransactionTimeout):
            await uac.layer.request(make_request(uac.layer, "OPTIONS", target), target)
        assert asyncio.get_running_loop().time() - started >= 64 * 0.01
        silent.setblocking(False)
        copies = 0
        while True:
            try:
                silent.recv(65535)
            except BlockingIOError:
                break
            copies += 1
        assert copies > 3  # the request was retransmitted (Timer E) while waiting
        assert uac.layer.transaction_count == 0
    finally:
        silent.close()
        await uac.layer.close()


async def test_a_refused_tcp_connection_fails_the_request() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nobody listens there now
    uac = await start_stack()
    try:
        target = Target("TCP", "127.0.0.1", port)
        with pytest.raises(TransportFailed):
            await uac.layer.request(make_request(uac.layer, "OPTIONS", target), target)
        assert uac.layer.transaction_count == 0
    finally:
        await uac.layer.close()


async def test_a_malformed_udp_request_gets_400_with_a_warning_and_the_transport_keeps_serving() -> None:
    uas = await start_stack(answer_ok)
    client = udp_client()
    address = uas.transports.local_address("UDP")
    try:
        port = client.getsockname()[1]
        bad = raw_options(port, "z9hG4bKbad1").replace(b"Max-Forwards: 70", b"Max-Forwards: lots")
        client.sendto(bad, address)
        answer = parse_datagram(await receive(client))
        assert isinstance(answer, Response) and answer.status_code == 400
        warning = Warning.parse(answer.headers.get("Warning") or "")
        assert warning.code == 399 and "Max-Forwards" in warning.text
        assert answer.to.tag is not None
        # Garbage with no headers to answer with is dropped, as is a request whose CSeq (copied into any response)
        # cannot be read; a keep-alive is ignored; the next request is served.
        client.sendto(b"\x00\xffnot sip at all", address)
        client.sendto(raw_options(port, "z9hG4bKbad2").replace(b"CSeq: 7 OPTIONS", b"CSeq: seven OPTIONS"), address)
        client.sendto(b"\r\n\r\n", address)
        client.sendto(raw_options(port, "z9hG4bKgood1"), address)
        good = parse_datagram(await receive(client))
        assert isinstance(good, Response) and good.status_code == 200
        assert good.call_id == "z9hG4bKgood1"
        assert [s.request.call_id for s in uas.requests] == ["z9hG4bKgood1"]
    finally:
        client.close()
        await uas.layer.close()


async def read_messages(reader: asyncio.StreamReader, count: int) -> list[Response]:
    framer = StreamFramer()
    messages: list[Response] = []
    while len(messages) < count:
        data = await asyncio.wait_for(reader.read(65536), 2.0)
        assert data, "the connection closed early"
        for message in framer.feed(data):
            assert isinstance(message, Response)
            messages.append(message)
    return messages


async def test_a_malformed_tcp_request_gets_400_and_is_skipped_and_unframeable_bytes_close_the_connection() -> None:
    uas = await start_stack(answer_ok)
    host, port = uas.transports.local_address("TCP")
    try:
        reader, writer = await asyncio.open_connection(host, port)
        local_port = writer.get_extra_info("sockname")[1]
        bad = raw_options(local_port, "z9hG4bKbadtcp").replace(b"CSeq: 7 OPTIONS", b"CSeq: 7 INVITE")
        bad = bad.replace(b"Content-Length: 0", b"Content-Length: 5") + b"hello"
        writer.write(bad.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
        (answer,) = await read_messages(reader, 1)
        assert answer.status_code == 400
        assert "CSeq method" in Warning.parse(answer.headers.get("Warning") or "").text
        # Its Content-Length said where it ended: the same connection goes on.
        writer.write(raw_options(local_port, "z9hG4bKgoodtcp").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
        (good,) = await read_messages(reader, 1)
        assert (good.call_id, good.status_code) == ("z9hG4bKgoodtcp", 200)
        # Bytes with no Content-Length to frame them by: nothing to answer, the stream is lost, the connection closed.
        writer.write(b"GARBAGE\r\nno: framing\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        writer.close()
        assert [s.request.call_id for s in uas.requests] == ["z9hG4bKgoodtcp"]

        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw_options(local_port, "z9hG4bKnewconn").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
        (again,) = await read_messages(reader, 1)
        assert (again.call_id, again.status_code) == ("z9hG4bKnewconn", 200)
        writer.close()
    finally:
        await uas.layer.close()


async def test_a_good_request_before_a_bad_one_in_the_same_tcp_read_is_still_served() -> None:
    uas = await start_stack(answer_ok)
    host, port = uas.transports.local_address("TCP")
    try:
        reader, writer = await asyncio.open_connection(host, port)
        local_port = writer.get_extra_info("sockname")[1]
        good = raw_options(local_port, "z9hG4bKfirst").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        bad = raw_options(local_port, "z9hG4bKsecond").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        writer.write(good + bad.replace(b"Max-Forwards: 70", b"Max-Forwards: 7000"))
        # (Responses on a stream may come in any order: the 400 is the transport's own, the 200 the TU's.)
        answers = {r.call_id: r for r in await read_messages(reader, 2)}
        assert answers["z9hG4bKfirst"].status_code == 200
        assert answers["z9hG4bKsecond"].status_code == 400
        assert "Max-Forwards" in Warning.parse(answers["z9hG4bKsecond"].headers.get("Warning") or "").text
        assert [s.request.call_id for s in uas.requests] == ["z9hG4bKfirst"]
        writer.close()
    finally:
        await uas.layer.close()


async def test_many_requests_on_one_tcp_connection_split_at_odd_boundaries_are_all_answered_in_order() -> None:
    uas = await start_stack(answer_ok)
    host, port = uas.transports.local_address("TCP")
    try:
        reader, writer = await asyncio.open_connection(host, port)
        local_port = writer.get_extra_info("sockname")[1]
        call_ids = [f"z9hG4bKodd{i}" for i in range(25)]
        stream = b"\r\n\r\n".join(
            raw_options(local_port, call_id).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP") for call_id in call_ids
        )
        for start in range(0, len(stream), 7):  # 7-byte writes: every message split mid-line, many per write
            writer.write(stream[start : start + 7])
            await writer.drain()
        responses = await read_messages(reader, len(call_ids))
        assert [r.call_id for r in responses] == call_ids
        assert all(r.status_code == 200 for r in responses)
        assert uas.transports.connection_count == 1
        writer.close()
    finally:
        await uas.layer.close()


async def test_a_stream_message_over_the_size_cap_gets_513_and_its_connection_closes() -> None:
    uas = await start_stack(answer_ok, max_message_bytes=2048)
    host, port = uas.transports.local_address("TCP")
    try:
        reader, writer = await asyncio.open_connection(host, port)
        local_port = writer.get_extra_info("sockname")[1]
        big = raw_options(local_port, "z9hG4bKbig").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        big = big.replace(b"Content-Length: 0", b"Content-Length: 5000") + b"x" * 3000
        writer.write(big)
        (answer,) = await read_messages(reader, 1)
        assert answer.status_code == 513
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        assert uas.requests == []
        writer.close()
    finally:
        await uas.layer.close()


async def test_connections_over_the_cap_are_refused_and_idle_ones_closed() -> None:
    uas = await start_stack(answer_ok, max_connections=1, idle_timeout=0.3)
    host, port = uas.transports.local_address("TCP")
    try:
        first_reader, first = await asyncio.open_connection(host, port)
        await asyncio.sleep(0.05)
        assert uas.transports.connection_count == 1
        second_reader, second = await asyncio.open_connection(host, port)
        assert await asyncio.wait_for(second_reader.read(), 2.0) == b""  # refused: over the cap
        # The first, silent, is closed once idle.
        assert await asyncio.wait_for(first_reader.read(), 2.0) == b""
        await asyncio.sleep(0.05)
        assert uas.transports.connection_count == 0
        first.close()
        second.close()
    finally:
        await uas.layer.close()


async def test_a_failed_tls_handshake_fails_the_request_and_the_listener_keeps_serving(
    certificate: tuple[Path, Path],
) -> None:
    uas = await start_stack(answer_ok, tls=server_context(certificate))
    # This client does not trust the self-signed certificate: its handshake fails.
    distrustful = await start_stack(client_ssl=client_context(None))
    trusting = await start_stack(client_ssl=client_context(certificate))
    try:
        target = uas.target("TLS")
        with pytest.raises(TransportFailed):
            await distrustful.layer.request(make_request(distrustful.layer, "OPTIONS", target), target)
        # Plain TCP bytes to the TLS port: another failed handshake, on the server's side.
        reader, writer = await asyncio.open_connection(*uas.transports.local_address("TLS"))
        writer.write(raw_options(5060, "z9hG4bKplain"))
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
        writer.close()

        final = await trusting.layer.request(make_request(trusting.layer, "OPTIONS", target), target)
        assert final.status_code == 200
        assert [s.source.transport for s in uas.requests] == ["TLS"]
    finally:
        for stack in (uas, distrustful, trusting):
            await stack.layer.close()


async def test_a_resent_2xx_reaches_the_uacs_stray_handler_until_the_ack_stops_it() -> None:
    uas = await start_stack(answer_ok)
    uac = await start_stack()
    try:
        target = uas.target("UDP")
        invite = make_request(uac.layer, "INVITE", target)
        final = await uac.layer.request(invite, target)
        assert final.status_code == 200
        # The UAS core resends its 2xx until the ACK (§13.3.1.4); the client transaction is over, so the TU gets it.
        for _ in range(100):
            if uac.strays:
                break
            await asyncio.sleep(0.02)
        ack = Request(
            "ACK",
            invite.uri,
            Headers(
                [
                    ("Via", uac.layer.via("UDP")),
                    ("Max-Forwards", "70"),
                    ("From", invite.headers.get("From") or ""),
                    ("To", final.headers.get("To") or ""),
                    ("Call-ID", invite.call_id),
                    ("CSeq", f"{invite.cseq.seq} ACK"),
                ]
            ),
        )
        await uac.layer.send_stateless(ack, target)
        await asyncio.wait_for(uas.requests[0].acknowledged.wait(), 2.0)
        await asyncio.sleep(0.05)
        resent = list(uac.strays)
        assert resent and all(isinstance(m, Response) and m.status_code == 200 for m in resent)
        assert {m.call_id for m in resent if isinstance(m, Response)} == {invite.call_id}
        await asyncio.sleep(0.4)  # more than T2: no resend after the ACK
        assert uac.strays == resent
        assert [m.method for m in uas.strays if isinstance(m, Request)] == ["ACK"]
    finally:
        await uac.layer.close()
        await uas.layer.close()


async def test_the_2xx_to_an_invite_is_resent_over_udp_until_its_ack_comes() -> None:
    uas = await start_stack(answer_ok)
    client = udp_client()
    address = uas.transports.local_address("UDP")
    try:
        port = client.getsockname()[1]
        invite = raw_options(port, "z9hG4bKinv2xx").replace(b"OPTIONS", b"INVITE")
        client.sendto(invite, address)
        statuses = []
        while len([s for s in statuses if s == 200]) < 3:  # the 200 again and again: no ACK yet
            response = parse_datagram(await receive(client))
            assert isinstance(response, Response)
            statuses.append(response.status_code)
        assert statuses[0] == 180
        assert not uas.requests[0].acknowledged.is_set()
        ack = invite.replace(b"INVITE sip", b"ACK sip").replace(b"CSeq: 7 INVITE", b"CSeq: 7 ACK")
        ack = ack.replace(b"z9hG4bKinv2xx\r\nMax", b"z9hG4bKack2xx\r\nMax")  # the ACK of a 2xx: a new branch
        ack = ack.replace(b"To: <sip:wacall@127.0.0.1>", f"To: <sip:wacall@127.0.0.1>;tag={response.to.tag}".encode())
        client.sendto(ack, address)
        await asyncio.wait_for(uas.requests[0].acknowledged.wait(), 2.0)
        # Whatever was already in flight drains; then nothing more comes.
        await asyncio.sleep(0.2)
        while True:
            try:
                client.recv(65535)
            except BlockingIOError:
                break
        await asyncio.sleep(0.4)  # more than T2: a resend would have come by now
        with pytest.raises(BlockingIOError):
            client.recv(65535)
        assert [type(m).__name__ for m in uas.strays] == ["Request"]
    finally:
        client.close()
        await uas.layer.close()


async def test_a_connection_a_dialog_holds_outlives_the_idle_timeout_and_carries_the_dialogs_requests() -> None:
    uas = await start_stack(answer_ok, idle_timeout=0.2)
    uac = await start_stack(answer_ok)
    try:
        target = uas.target("TCP")
        assert (await uac.layer.request(make_request(uac.layer, "INVITE", target), target)).status_code == 200
        connection = uas.requests[0].source.connection
        assert connection is not None
        connection.hold()  # a dialog lives on it
        await asyncio.sleep(0.6)  # three idle timeouts
        assert connection.is_open
        # A request inside the dialog goes back over the connection the dialog came on, not to a new one.
        back = Target("TCP", "127.0.0.1", uac.transports.local_address("TCP")[1], connection)
        bye = make_request(uas.layer, "BYE", back)
        assert (await uas.layer.request(bye, back)).status_code == 200
        assert uac.transports.connection_count == 1 and uas.transports.connection_count == 1
        connection.release()
        await asyncio.wait_for(connection.closed, 2.0)  # quiet again, and nothing holds it: closed
    finally:
        await uac.layer.close()
        await uas.layer.close()


async def test_an_invite_resent_after_its_2xx_is_absorbed_not_taken_as_a_new_call() -> None:
    uas = await start_stack(answer_ok)
    client = udp_client()
    address = uas.transports.local_address("UDP")
    try:
        port = client.getsockname()[1]
        invite = raw_options(port, "z9hG4bKaccepted").replace(b"OPTIONS", b"INVITE")
        client.sendto(invite, address)
        while True:
            response = parse_datagram(await receive(client))
            assert isinstance(response, Response)
            if response.status_code == 200:
                break
        # The 100 and 180 were lost, so the PBX resends its INVITE after the 200 went (RFC 6026 §7.1: Accepted).
        client.sendto(invite, address)
        client.sendto(invite, address)
        await asyncio.sleep(0.2)
        assert len(uas.requests) == 1
        assert uas.layer.transaction_count == 0
    finally:
        client.close()
        await uas.layer.close()


async def test_an_invite_abandoned_after_its_cancel_got_no_final_fails_its_waiter() -> None:
    silent = await start_stack()  # takes the INVITE and never answers it, nor its CANCEL
    uac = await start_stack(timers=TimerValues(t1=0.5, t2=4.0, t4=5.0))  # Timer B: 32 s, far beyond the test
    try:
        target = silent.target("TCP")
        invite = make_request(uac.layer, "INVITE", target)
        waiting = asyncio.ensure_future(uac.layer.request(invite, target))
        while not silent.requests:
            await asyncio.sleep(0.01)
        assert uac.layer.transaction_count == 1
        uac.layer.abandon(invite, after=0.2)
        await asyncio.sleep(0.05)
        assert not waiting.done()  # not yet: a final response may still come
        with pytest.raises(TransactionAbandoned):
            await asyncio.wait_for(waiting, 2.0)
        assert uac.layer.transaction_count == 0
        uac.layer.abandon(invite)  # a transaction already over: nothing happens
    finally:
        await uac.layer.close()
        await silent.layer.close()


async def test_a_host_name_for_udp_is_resolved_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    uas = await start_stack(answer_ok)
    uac = await start_stack()
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def slow_getaddrinfo(host: str, *args: object, **kwargs: object) -> object:
        looked_up.append(host)
        threading.Event().wait(0.3)  # a slow resolver: the event loop must keep running meanwhile
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    running = asyncio.ensure_future(ticker())
    try:
        target = Target("UDP", "localhost", uas.transports.local_address("UDP")[1])
        final = await uac.layer.request(make_request(uac.layer, "OPTIONS", target), target)
        assert final.status_code == 200
        assert looked_up == ["localhost"]  # once: the retransmissions and the response reuse the answer
        assert ticks > 5
    finally:
        running.cancel()
        await uac.layer.close()
        await uas.layer.close()
