"""Nothing a PBX sends raises out of the SIP endpoint: INVITEs built header by header from arbitrary values (and raw
datagrams) go over real UDP to a running `wacall serve` with its front door and rtpengine.

Each must get a final 4xx with a Warning saying what is wrong, or, when the datagram cannot be read as a request
(no Via to answer to, not SIP at all), no reply; never a 5xx. Nothing is written: the user has no permission, so
even an INVITE that passes every check of the door is refused by the rules. Afterwards there is no call, no event,
no front-door call or transaction left over (checked after refused INVITEs of its own too, whatever order the
tests run in), and the endpoint still answers OPTIONS.

The service runs on its own event loop in a thread so that hypothesis drives a plain blocking UDP socket.
WACALL_FUZZ_EXAMPLES sets the number of datagrams (default 40).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import BUSINESS, USER, Running, settings_for, start_service, stop_service
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sip_stack import FAST
from test_sip_front_door import TRUNKS
from wacall_client.v1 import calling_pb2 as pb

from wacall.sip.message import Response, SipParseError, Warning, parse_datagram
from wacall.sip.transactions import server_key

pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

EXAMPLES = int(os.environ.get("WACALL_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    database=None,
)
# How long a readable INVITE may take to be refused (the rules run in a store transaction), and how long an
# unreadable datagram is watched for a reply (there must be none, or a 4xx).
REPLY_WAIT = 5.0
UNREADABLE_WAIT = 0.2
SDP = (
    "v=0\r\no=pbx 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)


@dataclass
class Served:
    running: Running
    loop: asyncio.AbstractEventLoop
    address: tuple[str, int]

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("sipfuzz")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-sip-service", daemon=True)
    thread.start()
    settings_ = settings_for(directory, rtpengine="", sip_address="127.0.0.1:0", sip_trunks=TRUNKS)
    running: Running = asyncio.run_coroutine_threadsafe(start_service(settings_), loop).result(60)
    served = Served(running, loop, running.service.sip_addresses["UDP"])
    # Short timers: a refused INVITE's server transaction (no ACK ever comes) ends within seconds, not 32.
    assert running.service.sip is not None
    running.service.sip.layer.timers = FAST
    try:
        yield served
    finally:
        served.run(stop_service(running))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --- what a PBX might send ------------------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~", min_size=1, max_size=20)
number = st.one_of(st.just(USER), st.just(USER.lstrip("+")), st.from_regex(r"\+?[0-9]{1,20}", fullmatch=True), text)
business = st.one_of(st.just(BUSINESS), st.from_regex(r"\+?[0-9]{1,16}", fullmatch=True), text)


def header(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    """A header's value: a valid one mostly, else anything, or the header left out."""
    return st.one_of(valid, valid, valid, text, st.none())


@st.composite
def invites(draw: st.DrawFn) -> bytes:
    user = draw(number)
    uri = draw(st.one_of(st.just(f"sip:{user}@127.0.0.1"), st.just(f"tel:{user}"), text))
    branch = draw(st.one_of(st.just(f"z9hG4bK{secrets.token_hex(6)}"), token))
    headers = {
        "Via": draw(header(st.just(f"SIP/2.0/UDP 127.0.0.1:{{port}};branch={branch};rport"))),
        "From": draw(header(st.builds(lambda b, t: f"<sip:{b}@127.0.0.1>;tag={t}", business, token))),
        "To": draw(header(st.just(f"<sip:{user}@127.0.0.1>"))),
        "Call-ID": draw(header(st.builds(lambda t: f"{t}@pbx", token))),
        "CSeq": draw(header(st.builds(lambda n: f"{n} INVITE", st.integers(0, 2**32)))),
        "Max-Forwards": draw(header(st.just("70"))),
        "P-Asserted-Identity": draw(st.one_of(st.none(), st.builds(lambda b: f"<sip:{b}@pbx>", business), text)),
        "Contact": draw(header(st.just("<sip:pbx@127.0.0.1>"))),
        "Content-Type": draw(header(st.just("application/sdp"))),
    }
    body = draw(st.one_of(st.just(SDP), st.just(""), text, st.just(SDP.replace("0 101", "9 97"))))
    lines = [f"INVITE {uri} SIP/2.0"]
    lines += [f"{name}: {value}" for name, value in headers.items() if value is not None]
    encoded = body.encode()
    lines.append(f"Content-Length: {draw(st.one_of(st.just(len(encoded)), st.integers(-5, 2000)))}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + encoded


datagrams = st.one_of(invites(), invites(), invites(), st.binary(max_size=300))


# --- the check ------------------------------------------------------------------------------------------------------


def readable_request(data: bytes) -> bool:
    """wacall can answer it: a request whose Via, CSeq and the rest a response needs parse."""
    try:
        message = parse_datagram(data)
        server_key(message)  # type: ignore[arg-type]
        return not isinstance(message, Response)
    except (SipParseError, ValueError, AttributeError):
        return False


def final_reply(sock: socket.socket, wait: float = REPLY_WAIT) -> Response | None:
    """The first final response to what `sock` sent, skipping 100 Trying; None when nothing comes in `wait`."""
    sock.settimeout(wait)
    while True:
        try:
            data = sock.recv(65535)
        except TimeoutError:
            return None
        reply = parse_datagram(data)
        assert isinstance(reply, Response), data
        if reply.status_code >= 200:
            return reply


@FUZZ
@given(datagram=datagrams)
def test_no_invite_raises_out_of_the_endpoint_or_changes_anything(served: Served, datagram: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        datagram = datagram.replace(b"{port}", str(sock.getsockname()[1]).encode())
        sock.sendto(datagram, served.address)
        reply = final_reply(sock, REPLY_WAIT if readable_request(datagram) else UNREADABLE_WAIT)
    if reply is None:
        assert not readable_request(datagram), f"no answer to a readable request:\n{datagram!r}"
        return
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.headers.get("Warning"), datagram)
    warning = reply.headers.get("Warning")
    assert warning is not None, (reply.status_code, datagram)
    assert Warning.parse(warning).text


def invite_datagram(port: int, uri: str, body: str = SDP) -> bytes:
    return (
        f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
        f"From: <sip:{BUSINESS}@127.0.0.1>;tag=a\r\nTo: <{uri}>\r\nCall-ID: {secrets.token_hex(6)}@pbx\r\n"
        f"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:pbx@127.0.0.1:{port}>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(body.encode())}\r\n\r\n{body}"
    ).encode()


def test_after_refused_invites_nothing_was_written_or_left_over(served: Served) -> None:
    # Whatever the fuzz test sent (if it ran first), and these, of every kind it draws: all refused, nothing kept.
    running = served.running
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        for datagram in (
            invite_datagram(port, f"sip:{USER}@127.0.0.1"),  # passes the door: the rules refuse (no permission)
            invite_datagram(port, "sip:not-a-number@127.0.0.1"),
            invite_datagram(port, f"sip:{USER}@127.0.0.1", body="v=0\r\n"),
        ):
            sock.sendto(datagram, served.address)
            reply = final_reply(sock)
            assert reply is not None and 400 <= reply.status_code < 500

    async def written() -> tuple[list[pb.Call], list[pb.Event]]:
        calls = await running.calling.ListCalls(pb.ListCallsRequest(business_number=BUSINESS))
        events = await running.calling.ListEvents(pb.ListEventsRequest(business_number=BUSINESS, user_number=USER))
        return list(calls.calls), list(events.events)

    assert served.run(written()) == ([], [])
    service = running.service
    assert service.front_door is not None and service.front_door.active_calls == 0
    assert service.sip is not None and service.sip.dialog_count == 0
    endpoint = service.sip

    async def transactions() -> int:
        for _ in range(500):
            if endpoint.transaction_count == 0:
                break
            await asyncio.sleep(0.02)
        return endpoint.transaction_count

    assert served.run(transactions()) == 0  # every refused INVITE's transaction ended (Timer H, short here)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        options = (
            f"OPTIONS sip:wacall@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKalive\r\n"
            f"From: <sip:pbx@127.0.0.1>;tag=a\r\nTo: <sip:wacall@127.0.0.1>\r\nCall-ID: alive@pbx\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(options.encode(), served.address)
        reply = final_reply(sock)
    assert reply is not None and reply.status_code == 200
