"""Interoperability with SIPp (Debian `sip-tester`): SIPp's own UAC scenario (`sipp -sn uac`: INVITE, 180/200, ACK,
BYE) places calls to a tiny UAS built on wacall's SIP edge, over UDP and over TCP; SIPp must count every call
successful and exit 0."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import shutil
import socket
from pathlib import Path

import pytest
from sip_stack import start_stack

from wacall.sip.message import Request, response_to
from wacall.sipio.layer import ServerRequest

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
CALLS = 5


def free_port() -> int:
    """A port free for both UDP and TCP on loopback, for SIPp's own socket (its default, 5060, may be taken)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def local_tag(request: Request) -> str:
    """The UAS's To tag for a call: derived from its Call-ID, so the ACK can be checked against it."""
    return hashlib.sha256(request.call_id.encode()).hexdigest()[:12]


def last_stats(path: Path) -> dict[str, str]:
    """The last row of SIPp's statistics file (`-trace_stat`), by column name."""
    with path.open(newline="") as stats:
        rows = list(csv.DictReader(stats, delimiter=";"))
    assert rows, "SIPp wrote no statistics"
    return rows[-1]


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["UDP", "TCP"])
async def test_sipps_uac_scenario_completes_every_call_against_a_uas_on_the_sip_edge(
    transport: str, tmp_path: Path
) -> None:
    sipp = shutil.which("sipp")
    assert sipp is not None, "SIPp is needed: apt-get install sip-tester (make system-deps installs it as root)"
    contact_port = 0

    def uas(server: ServerRequest) -> None:
        request = server.request
        if request.method == "INVITE":
            server.respond(response_to(request, 180, to_tag=local_tag(request)))
            ok = response_to(
                request,
                200,
                to_tag=local_tag(request),
                headers=[("Contact", f"<sip:uas@127.0.0.1:{contact_port}>"), ("Content-Type", "application/sdp")],
                body=SDP,
            )
            server.respond(ok)
        else:
            server.respond(response_to(request, 200))

    stack = await start_stack(uas)
    host, contact_port = stack.transports.local_address("UDP")
    stats = tmp_path / "stats.csv"
    try:
        process = await asyncio.create_subprocess_exec(
            sipp,
            *("-sn", "uac", f"{host}:{contact_port}"),
            *("-t", transport, "-i", "127.0.0.1", "-p", str(free_port())),
            *("-m", str(CALLS), "-l", str(CALLS), "-r", "50", "-d", "20"),
            *("-nostdin", "-timeout", "15s", "-timeout_error"),
            *("-trace_stat", "-stf", str(stats)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=tmp_path,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30.0)
        assert process.returncode == 0, (out.decode(errors="replace")[-2000:], err.decode(errors="replace")[-2000:])
        row = last_stats(stats)
        assert int(row["SuccessfulCall(C)"]) == CALLS
        assert int(row["FailedCall(C)"]) == 0

        methods = [s.request.method for s in stack.requests]
        assert sorted(methods) == ["BYE"] * CALLS + ["INVITE"] * CALLS
        assert {s.source.transport for s in stack.requests} == {"UDP" if transport == "u1" else "TCP"}
        # Each 200 OK was acknowledged end to end: the ACKs match no transaction and reach the stray handler.
        acks = [m for m in stack.strays if isinstance(m, Request) and m.method == "ACK"]
        invites = {s.request.call_id for s in stack.requests if s.request.method == "INVITE"}
        assert {ack.call_id for ack in acks} == invites
        assert all(ack.to.tag == local_tag(ack) for ack in acks)
    finally:
        await stack.layer.close()
