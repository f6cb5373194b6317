"""The SIP front door end to end: a real SIPp UAC (Debian `sip-tester`) plays the PBX against `wacall serve`'s SIP
endpoint, rtpengine bridges the media, and the simulator's phone is the WhatsApp user.

The PBX's SDP points at an RTP socket this test owns (`PlainRtpPeer`, PCMU): it sends a 1000 Hz tone to where the
200 OK says and decodes what comes back, while the phone says 600 Hz; each side must hear the other's pitch
(PCMU↔Opus transcoded in rtpengine). Every refusal arrives as a final response with its Warning (and Retry-After
for the call limit) and writes nothing; every ending has its status; the call is an ordinary `Call` with route
"sip" and its `sip` message.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import pytest
from conftest import BUSINESS, USER, Running, duration, eventually, wait_until
from sip_stack import FAST, Stack, make_request, self_signed_certificate, start_stack
from test_rtpengine import Heard, PlainRtpPeer, pitch, pitch_at, plain_rtp_peer
from test_sdp import platform_of
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.media.engine_leg import EngineBridgeLeg, PeerMedia
from wacall.media.tracks import SAMPLE_RATE, level
from wacall.sip.dialog import Dialog
from wacall.sip.digest import DigestAuth
from wacall.sip.message import Headers, Request, Response, Via, Warning, parse_datagram, response_to
from wacall.sipdoor.trunks import parse_trunks
from wacall.sipio.layer import ServerRequest, TransactionLayer, cancel_request
from wacall.sipio.transport import Target, Transports
from wacall.siptrunk.front_door import answer_again

ASSETS = Path(__file__).parent / "assets" / "sipp"
PBX_TONE = 1000.0
USER_TONE = 600.0
OTHER_BUSINESS = "+447911654321"

# Loopback addresses stand for PBXs at different places: each trunk allows one of them.
PBX = "127.0.0.1"  # trunk "pbx": no credentials, BUSINESS only
STRANGER = "127.0.0.2"  # no trunk allows it
SECURE_PBX = "127.0.0.3"  # trunk "secure": digest credentials, any business number
OPUS_ONLY_PBX = "127.0.0.4"  # trunk "opus-only": offers of G.711 have no common codec
TRUNKS = parse_trunks(
    [
        {
            "name": "pbx",
            "allowed_sources": [f"{PBX}/32"],
            "business_numbers": [BUSINESS],
            "target": "sip:contact-centre@127.0.0.1:5080",
        },
        {
            "name": "secure",
            "username": "pbx",
            "password": "s3cret",
            "allowed_sources": [f"{SECURE_PBX}/32"],
            "business_numbers": ["*"],
            "target": "sip:contact-centre@127.0.0.1:5080",
        },
        {
            "name": "opus-only",
            "allowed_sources": [f"{OPUS_ONLY_PBX}/32"],
            "business_numbers": [BUSINESS],
            "target": "sip:contact-centre@127.0.0.1:5080",
            "codecs": ["opus"],
        },
    ]
)

Make = Callable[..., Awaitable[Running]]


@pytest.fixture
async def front_door(make_service: Make) -> Running:
    """wacall with its SIP front door on a free port and a local rtpengine."""
    return await make_service(rtpengine="", sip_address="127.0.0.1:0", sip_trunks=TRUNKS)


@pytest.fixture
async def rtp() -> AsyncIterator[PlainRtpPeer]:
    """The PBX's phone: PCMU at 1000 Hz to wherever the 200 OK's SDP says."""
    peer = await plain_rtp_peer(PBX_TONE)
    try:
        yield peer
    finally:
        await peer.close()


@dataclass
class Sipp:
    """One SIPp run: its process and the messages it traced."""

    process: asyncio.subprocess.Process
    messages: Path

    def log(self) -> str:
        return self.messages.read_text(errors="replace") if self.messages.exists() else ""

    def received(self, status: int) -> Response:
        """The response with `status` SIPp received (the last one)."""
        found = re.findall(
            rf"message received \[\d+\] bytes :\n\n(SIP/2\.0 {status} .*?)(?:\n\n-{{5}}|\Z)", self.log(), re.S
        )
        assert found, f"SIPp received no {status}:\n{self.log()[-3000:]}"
        head, _, body = found[-1].partition("\n\n")
        first, *lines = head.splitlines()
        headers = Headers((name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines))
        return Response(status, first.split(" ", 2)[2], headers, body.replace("\n", "\r\n").encode())

    async def finish(self, timeout: float = 30.0) -> None:
        out, err = await asyncio.wait_for(self.process.communicate(), timeout)
        assert self.process.returncode == 0, (
            self.process.returncode,
            out.decode(errors="replace")[-1500:],
            err.decode(errors="replace")[-1500:],
            self.log()[-3000:],
        )


async def sipp(
    wacall: Running,
    tmp_path: Path,
    scenario: str,
    *,
    rtp_port: int,
    user: str = USER,
    business: str = BUSINESS,
    transport: str = "u1",
    source: str = PBX,
    status: int | None = None,
    pause_ms: int = 0,
    extra: tuple[str, ...] = (),
) -> Sipp:
    """Start SIPp's UAC with `scenario` (its `{status}` filled in) calling `user` from `business`."""
    binary = shutil.which("sipp")
    assert binary is not None, "SIPp is needed: apt-get install sip-tester (make system-deps installs it as root)"
    service = wacall.service
    assert service.sip is not None
    host, port = service.sip_addresses["UDP"]
    text = (ASSETS / scenario).read_text()
    path = tmp_path / f"{scenario}.{len(list(tmp_path.glob('*.xml')))}.xml"
    path.write_text(text.replace("{status}", str(status)))
    messages = path.with_suffix(".messages")
    process = await asyncio.create_subprocess_exec(
        binary,
        f"{host}:{port}",
        *("-sf", str(path), "-s", user.lstrip("+"), "-set", "business", business, "-set", "rtp_port", str(rtp_port)),
        *("-t", transport, "-i", source, "-p", str(free_port_on(source)), "-m", "1", "-d", str(pause_ms)),
        *("-nostdin", "-timeout", "20s", "-timeout_error", "-trace_msg", "-message_file", str(messages)),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    return Sipp(process, messages)


def free_port_on(host: str) -> int:
    """A port free for UDP and TCP on `host` for SIPp's own socket (its default, 5060, may be taken)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port


def warning_of(response: Response) -> str:
    value = response.headers.get("Warning")
    assert value is not None, f"{response.status_code} has no Warning"
    return Warning.parse(value).text


async def refusal(wacall: Running, tmp_path: Path, rtp: PlainRtpPeer, status: int, **options: object) -> Response:
    """Run a PBX INVITE that must end in `status`; the response SIPp got."""
    run = await sipp(wacall, tmp_path, "uac_refused.xml", rtp_port=rtp.port, status=status, **options)  # type: ignore[arg-type]
    await run.finish()
    return run.received(status)


async def calls_of(wacall: Running, user: str = USER) -> list[pb.Call]:
    reply = await wacall.calling.ListCalls(pb.ListCallsRequest(business_number=BUSINESS, user_number=user))
    return list(reply.calls)


async def the_call(wacall: Running, user: str = USER) -> pb.Call:
    calls = await wait_until(lambda: calls_of(wacall, user), lambda found: len(found) == 1, 10)
    return calls[0]


async def wait_for_200(run: Sipp) -> str:
    """The SDP of the 200 OK SIPp received, once it arrived."""
    await eventually(
        lambda: "SIP/2.0 200 OK" in run.log() and "m=audio" in run.log().split("SIP/2.0 200 OK")[1], 15, "the 200 OK"
    )
    return run.received(200).body.decode()


def heard_at_the_phone(wacall: Running, call: pb.Call) -> Heard:
    """What the simulator's phone hears from now on."""
    phone = platform_of(wacall).calls[call.platform_call_id]
    assert phone.leg is not None and phone.leg.consumer is not None
    heard = Heard()
    phone.leg.consumer.handlers.append(heard)
    return heard


# --- a call through the front door --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["UDP", "TCP"])
async def test_a_pbx_calls_a_granted_user_and_each_side_hears_the_others_tone(
    front_door: Running, tmp_path: Path, rtp: PlainRtpPeer, transport: str
) -> None:
    await front_door.grant(permanent=True)
    await front_door.phone(tone_hz=USER_TONE)
    engine = front_door.service.engines.engines[0]  # type: ignore[union-attr]
    sessions_before = await engine.session_count()
    run = await sipp(front_door, tmp_path, "uac_call_user_hangs_up.xml", rtp_port=rtp.port, transport=transport)
    toward_pbx = await wait_for_200(run)
    # Plain RTP toward the PBX: G.711 (the PBX offered no Opus), RFC 4733 events, nothing only WebRTC reads.
    assert re.search(r"^m=audio \d+ RTP/AVP 0 101\r?$", toward_pbx, re.M), toward_pbx
    assert "a=rtpmap:101 telephone-event/8000" in toward_pbx
    for webrtc_only in ("a=fingerprint", "a=ice-", "a=candidate", "a=msid", "a=ssrc", "a=mid", "a=setup"):
        assert webrtc_only not in toward_pbx
    rtp.send_to(toward_pbx)

    call = await the_call(front_door)
    # The WhatsApp side was offered Opus, and telephone-event too, by the engine.
    phone = platform_of(front_door).calls[call.platform_call_id]
    assert phone.leg is not None and phone.leg.pc.remoteDescription is not None
    offer_to_whatsapp = phone.leg.pc.remoteDescription.sdp
    assert "opus/48000" in offer_to_whatsapp and "telephone-event/48000" in offer_to_whatsapp
    assert "RTP/SAVPF" in offer_to_whatsapp and "a=fingerprint:sha-256" in offer_to_whatsapp

    heard_by_phone = heard_at_the_phone(front_door, call)
    await eventually(lambda: len(heard_by_phone.frames) > 50, 15, "the PBX's tone at the phone")
    assert pitch(b"".join(heard_by_phone.frames[-40:])) == pytest.approx(PBX_TONE, rel=0.03)
    await eventually(lambda: sum(level(f) > 0.05 for f in rtp.heard) > 50, 15, "the user's tone at the PBX")
    heard_by_pbx = [frame for frame in rtp.heard[-60:] if level(frame) > 0.05]
    assert pitch_at(b"".join(heard_by_pbx), 8000) == pytest.approx(USER_TONE, rel=0.03)

    connected = await front_door.get_call(call.call_id)
    assert connected.state == pb.CALL_STATE_CONNECTED and connected.route == "sip"
    assert connected.sip.trunk == "pbx" and connected.sip.direction == pb.SIP_DIRECTION_FRONT_DOOR
    assert connected.sip.call_id and connected.sip.call_id in run.log()
    assert connected.sip.last_status == 200

    # The user hangs up: wacall sends the PBX a BYE, which SIPp answers, and the scenario completes.
    await front_door.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=call.platform_call_id))
    await run.finish()
    ended = await front_door.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED and ended.end_reason.startswith("ended by the platform")
    assert ended.media.frames_received > 25 and ended.media.frames_sent > 25  # rtpengine's counts
    service = front_door.service
    assert service.sip is not None and service.front_door is not None
    await eventually(lambda: service.front_door is not None and service.front_door.active_calls == 0, 5, "no call")
    assert service.sip.dialog_count == 0
    await wait_until(engine.session_count, lambda count: count == sessions_before, 10)  # rtpengine's call deleted


# DTMF digit 5 (ITU-T Q.23): a 770 Hz and a 1336 Hz tone together.
DIGIT_5 = (5, 770.0, 1336.0)


def energy_at(pcm: bytes, frequency: float, rate: int = SAMPLE_RATE) -> float:
    """How much of `frequency` the PCM16 holds (Goertzel), relative to the signal's own power."""
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm[: len(pcm) // 2 * 2])
    coefficient = 2 * math.cos(2 * math.pi * frequency / rate)
    previous = before = 0.0
    for sample in samples:
        previous, before = sample + coefficient * previous - before, previous
    power = previous * previous + before * before - coefficient * previous * before
    total = sum(s * s for s in samples) or 1
    return power / (total * len(samples) / 2)


async def send_digit(peer: PlainRtpPeer, event: int, *, lead_in: int = 10, packets: int = 40) -> None:
    """From the PBX's socket, one RTP stream of its own: `lead_in` packets of silence in PCMU, then RFC 4733 events
    for one digit (20 ms apart, one timestamp, the end packet three times, §2.5.1.4). The tone stops first."""
    assert peer.transport is not None and peer.remote is not None
    if peer.sender is not None:
        peer.sender.cancel()
        await asyncio.gather(peer.sender, return_exceptions=True)
    ssrc = 0x5EED
    for sequence in range(lead_in):
        header = struct.pack("!BBHII", 0x80, 0, sequence, sequence * 160, ssrc)
        peer.transport.sendto(header + b"\xff" * 160, peer.remote)  # µ-law silence
        await asyncio.sleep(0.02)
    start = lead_in * 160
    for index in range(packets):
        end = index >= packets - 3
        marker = 0x80 if index == 0 else 0
        header = struct.pack("!BBHII", 0x80, marker | 101, lead_in + index, start, ssrc)
        payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, min(index + 1, packets - 3) * 160)
        peer.transport.sendto(header + payload, peer.remote)
        await asyncio.sleep(0.02)


async def test_a_dtmf_digit_from_the_pbx_reaches_the_phone_as_its_two_tones(
    front_door: Running, tmp_path: Path, rtp: PlainRtpPeer
) -> None:
    """The PBX's RFC 4733 events (negotiated on its side) reach the user, whose WhatsApp leg takes no
    telephone-event: rtpengine plays the digit in the audio, where the phone hears both of its frequencies."""
    await front_door.grant(permanent=True)
    await front_door.phone(tone_hz=USER_TONE)
    run = await sipp(front_door, tmp_path, "uac_call_user_hangs_up.xml", rtp_port=rtp.port)
    toward_pbx = await wait_for_200(run)
    assert "a=rtpmap:101 telephone-event/8000" in toward_pbx
    rtp.send_to(toward_pbx)
    call = await the_call(front_door)
    heard = heard_at_the_phone(front_door, call)
    await eventually(lambda: len(heard.frames) > 25, 15, "the PBX's tone at the phone")
    assert energy_at(b"".join(heard.frames[-10:]), PBX_TONE) > 0.5

    event, low, high = DIGIT_5
    before = len(heard.frames)
    await send_digit(rtp, event)
    await asyncio.sleep(0.2)
    during = b"".join(heard.frames[before + 5 : before + 30])
    assert during, "the phone heard nothing while the digit was sent"
    assert energy_at(during, low) > 0.2 and energy_at(during, high) > 0.2
    assert energy_at(during, PBX_TONE) < 0.05
    await front_door.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=call.platform_call_id))
    await run.finish()


async def test_a_bye_from_the_pbx_ends_the_call_as_ended_by_the_business(
    front_door: Running, tmp_path: Path, rtp: PlainRtpPeer
) -> None:
    await front_door.grant(permanent=True)
    await front_door.phone(tone_hz=USER_TONE)
    run = await sipp(front_door, tmp_path, "uac_call_pbx_hangs_up.xml", rtp_port=rtp.port, pause_ms=300)
    await run.finish()
    call = await the_call(front_door)
    ended = await front_door.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == pb.CALL_OUTCOME_ANSWERED
    assert ended.end_reason == "the PBX hung up (BYE)"
    assert ended.sip.last_status == 200
    phone = await front_door.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id))
    assert phone.state == "ended"


async def test_a_service_that_stops_ends_its_front_door_calls_with_a_bye(
    front_door: Running, tmp_path: Path, rtp: PlainRtpPeer
) -> None:
    await front_door.grant(permanent=True)
    await front_door.phone(tone_hz=USER_TONE)
    run = await sipp(front_door, tmp_path, "uac_call_user_hangs_up.xml", rtp_port=rtp.port)
    await wait_for_200(run)
    call = await the_call(front_door)
    assert call.state == pb.CALL_STATE_CONNECTED
    await front_door.service.stop(grace=0.5)
    await run.finish()  # the scenario ends with wacall's BYE, answered 200


async def test_a_cancel_before_the_answer_gets_487_and_the_call_counts_for_nothing(
    front_door: Running, tmp_path: Path, rtp: PlainRtpPeer
) -> None:
    await front_door.grant(permanent=True)
    await front_door.phone(ring=3600)  # rings until cancelled (the manual clock stands still)
    before = await front_door.permission()
    run = await sipp(front_door, tmp_path, "uac_cancel.xml", rtp_port=rtp.port)
    await run.finish()
    assert warning_of(run.received(487)).startswith("CANCELLED: ")
    call = await the_call(front_door)
    ended = await front_door.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == pb.CALL_OUTCOME_CANCELLED
    assert ended.end_reason == "the PBX cancelled the call (CANCEL)"
    await wait_until(lambda: front_door.get_call(call.call_id), lambda c: c.sip.last_status == 487)
    after = await front_door.permission()
    assert list(after.actions) == list(before.actions)


@pytest.mark.parametrize(
    ("on_call", "status", "outcome", "reason"),
    [
        (sim_pb.DECLINE, 603, pb.CALL_OUTCOME_REJECTED, "USER_DECLINED"),
        (sim_pb.NO_ANSWER, 480, pb.CALL_OUTCOME_UNANSWERED, "NO_ANSWER"),
    ],
    ids=["declined", "no answer"],
)
async def test_a_call_the_user_does_not_take_ends_with_its_status(
    front_door: Running, tmp_path: Path, rtp: PlainRtpPeer, on_call: int, status: int, outcome: int, reason: str
) -> None:
    await front_door.grant(permanent=True)
    await front_door.phone(on_call=on_call, ring=0)
    response = await refusal(front_door, tmp_path, rtp, status)
    assert warning_of(response).startswith(f"{reason}: ")
    call = await the_call(front_door)
    ended = await front_door.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == outcome and ended.route == "sip"
    await wait_until(lambda: front_door.get_call(call.call_id), lambda c: c.sip.last_status == status)


# --- refusals ---------------------------------------------------------------------------------------------------

Setup = Callable[[Running], Awaitable[None]]


async def nothing(wacall: Running) -> None:
    return None


async def expired(wacall: Running) -> None:
    await wacall.grant()
    await wacall.advance(8 * 24 * 3600)


async def revoked(wacall: Running) -> None:
    await wacall.grant()
    await wacall.sim.RevokePermission(sim_pb.RevokePermissionRequest(business_number=BUSINESS, user_number=USER))
    await wacall.wait_for_state(pb.PERMISSION_STATE_REVOKED)


async def paused(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.sim.RestrictBusiness(
        sim_pb.RestrictBusinessRequest(business_number=BUSINESS, duration=duration(7 * 24 * 3600))
    )
    await wait_until(wacall.permission, lambda p: any(a.reason == pb.REASON_BUSINESS_RESTRICTED for a in p.actions), 5)


async def in_progress(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(ring=3600)
    call = await wacall.start_call()
    await wacall.wait_call(call.call_id, pb.CALL_STATE_RINGING)


@pytest.mark.parametrize(
    ("setup", "options", "status", "reason"),
    [
        (nothing, {}, 403, "NO_PERMISSION"),
        (expired, {}, 403, "PERMISSION_EXPIRED"),
        (revoked, {}, 403, "PERMISSION_REVOKED"),
        (paused, {}, 403, "BUSINESS_RESTRICTED"),
        (in_progress, {}, 486, "CALL_IN_PROGRESS"),
        (nothing, {"user": "+3461"}, 404, "INVALID_NUMBER"),
        (nothing, {"source": OPUS_ONLY_PBX}, 488, "NO_COMMON_CODEC"),
        (nothing, {"business": OTHER_BUSINESS}, 403, "BUSINESS_NUMBER_NOT_ALLOWED"),
        (nothing, {"source": STRANGER}, 403, "SOURCE_NOT_ALLOWED"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_a_refused_invite_gets_its_status_and_warning_and_changes_nothing(
    front_door: Running,
    tmp_path: Path,
    rtp: PlainRtpPeer,
    setup: Setup,
    options: dict[str, str],
    status: int,
    reason: str,
) -> None:
    await setup(front_door)
    calls_before = await calls_of(front_door)
    permission_before = await front_door.permission()
    response = await refusal(front_door, tmp_path, rtp, status, **options)
    text = warning_of(response)
    assert text.startswith(f"{reason}: ") and len(text) > len(reason) + 10
    assert Warning.parse(response.headers.get("Warning") or "").agent == "127.0.0.1"
    assert response.headers.get("Retry-After") is None
    assert [(c.call_id, c.state) for c in await calls_of(front_door)] == [(c.call_id, c.state) for c in calls_before]
    after = await front_door.permission()
    assert (after.state, list(after.actions)) == (permission_before.state, list(permission_before.actions))


async def test_a_call_the_platform_refuses_gets_the_rule_it_named_and_is_recorded_failed(
    front_door: Running, tmp_path: Path, rtp: PlainRtpPeer
) -> None:
    # The platform revokes the permission and its webhook is lost: wacall allows the call, the platform not.
    await front_door.grant(permanent=True)
    platform = platform_of(front_door)
    webhook_url, platform.webhook_url = platform.webhook_url, ""
    await front_door.sim.RevokePermission(sim_pb.RevokePermissionRequest(business_number=BUSINESS, user_number=USER))
    await platform.settle()
    platform.webhook_url = webhook_url
    response = await refusal(front_door, tmp_path, rtp, 403)
    assert warning_of(response).startswith("NO_PERMISSION: ")
    call = await the_call(front_door)
    assert call.state == pb.CALL_STATE_ENDED and call.outcome == pb.CALL_OUTCOME_FAILED
    await wait_until(lambda: front_door.get_call(call.call_id), lambda c: c.sip.last_status == 403)


async def test_the_call_limit_gets_480_with_the_seconds_until_the_next_allowed_call(
    make_service: Make, tmp_path: Path, rtp: PlainRtpPeer
) -> None:
    wacall = await make_service(
        rtpengine="",
        sip_address="127.0.0.1:0",
        sip_trunks=TRUNKS,
        policy_overrides={"connected_call_limits": [{"window_seconds": 86400, "max_allowed": 1}]},
    )
    await wacall.grant(permanent=True)
    await wacall.phone()
    first = await wacall.start_call()
    await wacall.wait_call(first.call_id, pb.CALL_STATE_CONNECTED)
    await wacall.calling.EndCall(pb.EndCallRequest(call_id=first.call_id))
    await wacall.advance(600)
    permission = await wacall.permission()
    start = next(a for a in permission.actions if a.action == pb.ACTION_START_CALL)
    assert not start.allowed and start.reason == pb.REASON_CALL_LIMIT_REACHED
    wait = start.next_allowed_at.ToDatetime().replace(tzinfo=UTC) - await wacall.now()

    response = await refusal(wacall, tmp_path, rtp, 480)
    assert warning_of(response).startswith("CALL_LIMIT_REACHED: ")
    assert response.headers.get("Retry-After") == str(math.ceil(wait.total_seconds()))  # retrying earlier fails
    assert len(await calls_of(wacall)) == 1


async def test_without_a_media_engine_the_front_door_answers_503_saying_so(
    make_service: Make, tmp_path: Path, rtp: PlainRtpPeer
) -> None:
    wacall = await make_service(rtpengine="off", sip_address="127.0.0.1:0", sip_trunks=TRUNKS)
    await wacall.grant(permanent=True)
    response = await refusal(wacall, tmp_path, rtp, 503)
    assert warning_of(response).startswith("MEDIA_ENGINE_UNAVAILABLE: ") and "rtpengine" in warning_of(response)
    assert await calls_of(wacall) == []


# --- digest ------------------------------------------------------------------------------------------------------
# A PBX built on the SIP core (its digest client, RFC 7616) over UDP from the secure trunk's address. (SIPp 3.6
# writes sip:<host:port> as the digest uri instead of the Request-URI, RFC 3261 §22.4, so it cannot log in here.)


@pytest.fixture
async def secure_pbx() -> AsyncIterator[TransactionLayer]:
    transports = Transports()
    layer = TransactionLayer(transports, lambda server: None, timers=FAST)
    await transports.listen(SECURE_PBX, 0)
    try:
        yield layer
    finally:
        await layer.close()


def invite_from(layer: TransactionLayer, wacall: Running, rtp: PlainRtpPeer) -> tuple[Request, Target]:
    assert wacall.service.sip is not None
    host, port = wacall.service.sip_addresses["UDP"]
    target = Target("UDP", host, port)
    invite = make_request(layer, "INVITE", target, body=rtp.sdp().encode())
    headers = invite.headers.replaced("From", f"<sip:{BUSINESS}@{SECURE_PBX}>;tag=secure")
    return Request("INVITE", f"sip:{USER}@{host}:{port}", headers, invite.body), target


async def test_a_trunk_with_credentials_challenges_once_per_algorithm_in_its_order(
    front_door: Running, secure_pbx: TransactionLayer, rtp: PlainRtpPeer
) -> None:
    invite, target = invite_from(secure_pbx, front_door, rtp)
    challenge = await secure_pbx.request(invite, target)
    assert challenge.status_code == 407
    offered = challenge.headers.get_all("Proxy-Authenticate")
    assert [re.search(r"algorithm=([\w-]+)", c).group(1) for c in offered] == ["SHA-256", "MD5"]  # type: ignore[union-attr]
    assert all('qop="auth"' in c and 'realm="wacall"' in c for c in offered)


@pytest.mark.parametrize(
    ("password", "reason"),
    [("s3cret", "NO_PERMISSION"), ("wrong", "BAD_CREDENTIALS")],
    ids=["good credentials reach the rules", "bad credentials"],
)
async def test_a_trunk_with_credentials_checks_them(
    front_door: Running, secure_pbx: TransactionLayer, rtp: PlainRtpPeer, password: str, reason: str
) -> None:
    invite, target = invite_from(secure_pbx, front_door, rtp)
    response = await secure_pbx.request_with_auth(invite, target, DigestAuth("pbx", password))
    assert response.status_code == 403
    assert warning_of(response).startswith(f"{reason}: ")
    assert await calls_of(front_door) == []


# --- TLS ---------------------------------------------------------------------------------------------------------


async def test_a_pbx_over_tls_places_a_call_and_hangs_up(make_service: Make, tmp_path: Path, rtp: PlainRtpPeer) -> None:
    import ssl

    cert, key = self_signed_certificate(tmp_path)
    wacall = await make_service(
        rtpengine="",
        sip_address="127.0.0.1:0",
        sip_tls_address="127.0.0.1:0",
        sip_tls_cert=str(cert),
        sip_tls_key=str(key),
        sip_trunks=TRUNKS,
    )
    await wacall.grant(permanent=True)
    await wacall.phone(tone_hz=USER_TONE)
    assert wacall.service.sip is not None
    host, port = wacall.service.sip_addresses["TLS"]
    client_ssl = ssl.create_default_context(cafile=str(cert))
    pbx = await start_stack(client_ssl=client_ssl, timers=FAST)
    try:
        target = Target("TLS", host, port)
        invite = make_request(pbx.layer, "INVITE", target, body=rtp.sdp().encode())
        invite = Request(
            "INVITE",
            f"sip:{USER}@{host}:{port};transport=tls",
            invite.headers.replaced("From", f"<sip:{BUSINESS}@127.0.0.1>;tag=tlspbx"),
            invite.body,
        )
        provisional: list[int] = []
        ok = await pbx.layer.request(invite, target, on_provisional=lambda r: provisional.append(r.status_code))
        assert ok.status_code == 200 and 100 in provisional and 180 in provisional
        assert "RTP/AVP" in ok.body.decode()
        dialog = Dialog.as_uac(invite, ok)
        await pbx.layer.send_stateless(dialog.ack(invite.cseq.seq, via=Via.parse(pbx.layer.via("TLS"))), target)
        rtp.send_to(ok.body.decode())
        await eventually(lambda: sum(level(f) > 0.05 for f in rtp.heard) > 25, 15, "the user's tone over TLS")

        call = await the_call(wacall)
        assert call.sip.call_id == invite.call_id and call.sip.last_status == 200
        # Inside the call: OPTIONS answered; a session-timer refresh (re-INVITE, UPDATE) gets the media already
        # given, the same o= version; a hold gets recvonly, one version up; the call goes on untouched.
        dialog, options = dialog.create_request("OPTIONS", via=Via.parse(pbx.layer.via("TLS")))
        assert (await pbx.layer.request(options, target)).status_code == 200
        dialog, reinvite = dialog.create_request("INVITE", via=Via.parse(pbx.layer.via("TLS")), body=invite.body)
        refreshed = await pbx.layer.request(reinvite, target)
        assert refreshed.status_code == 200 and refreshed.body == ok.body
        await pbx.layer.send_stateless(dialog.ack(reinvite.cseq.seq, via=Via.parse(pbx.layer.via("TLS"))), target)
        dialog, update = dialog.create_request("UPDATE", via=Via.parse(pbx.layer.via("TLS")))
        assert (await pbx.layer.request(update, target)).status_code == 200
        hold = invite.body.replace(b"a=sendrecv", b"a=sendonly")
        if b"a=sendonly" not in hold:
            hold += b"a=sendonly\r\n"
        dialog, reinvite = dialog.create_request("INVITE", via=Via.parse(pbx.layer.via("TLS")), body=hold)
        held = await pbx.layer.request(reinvite, target)
        await pbx.layer.send_stateless(dialog.ack(reinvite.cseq.seq, via=Via.parse(pbx.layer.via("TLS"))), target)
        assert held.status_code == 200 and "a=recvonly" in held.body.decode()
        assert sdp_version(held.body) == sdp_version(ok.body) + 1
        # §12.2.2: a CSeq not above the last one gets 500.
        stale = Request("OPTIONS", options.uri, options.headers.replaced("Via", pbx.layer.via("TLS")))
        assert (await pbx.layer.request(stale, target)).status_code == 500
        assert (await wacall.get_call(call.call_id)).state == pb.CALL_STATE_CONNECTED
        dialog, bye = dialog.create_request("BYE", via=Via.parse(pbx.layer.via("TLS")))
        assert (await pbx.layer.request(bye, target)).status_code == 200
        ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
        assert ended.outcome == pb.CALL_OUTCOME_ANSWERED and ended.end_reason == "the PBX hung up (BYE)"
    finally:
        await pbx.layer.close()


# --- dialogs: route set, connection, ACK before BYE, CANCEL crossing the answer -------------------------------------


async def requests_of(stack: Stack, method: str) -> list[ServerRequest]:
    return [server for server in stack.requests if server.request.method == method]


def bye_in(log: str) -> str:
    """The head of the BYE SIPp received."""
    found = re.findall(r"message received \[\d+\] bytes :\n\n(BYE .*?)\n\n", log, re.S)
    assert found, f"SIPp received no BYE:\n{log[-3000:]}"
    return str(found[-1])


async def test_a_record_routed_call_keeps_its_proxies_in_the_path_both_ways(
    front_door: Running, tmp_path: Path, rtp: PlainRtpPeer
) -> None:
    await front_door.grant(permanent=True)
    await front_door.phone(ring=5)
    run = await sipp(front_door, tmp_path, "uac_call_record_routed.xml", rtp_port=rtp.port)
    await eventually(lambda: "SIP/2.0 180 Ringing" in run.log(), 15, "the 180")
    await front_door.advance(10)  # the user answers
    await wait_for_200(run)
    routes = [f"<sip:proxy@{PBX}:", "<sip:edge.invalid;lr>"]
    for status in (180, 200):
        # §12.1.1: every Record-Route, in order, in each response that makes a dialog; and a Contact.
        response = run.received(status)
        record_routes = response.headers.get_all("Record-Route")
        assert len(record_routes) == 2
        assert record_routes[0].startswith(routes[0]) and record_routes[1] == routes[1]
        assert (response.headers.get("Contact") or "").startswith("<sip:wacall@127.0.0.1:")
    call = await the_call(front_door)
    await front_door.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=call.platform_call_id))
    await run.finish()  # the BYE reached SIPp, the nearer proxy, though the PBX's Contact is a dead port
    bye = bye_in(run.log())
    assert bye.startswith(f"BYE sip:pbx@{PBX}:9;transport=UDP SIP/2.0")  # loose routing: the remote target
    in_bye = re.findall(r"^Route: (.*)$", bye, re.M)
    assert len(in_bye) == 2 and in_bye[0].startswith(routes[0]) and in_bye[1] == routes[1]


async def test_the_users_hang_up_after_a_long_quiet_tcp_call_reaches_the_pbx(
    front_door: Running, rtp: PlainRtpPeer
) -> None:
    await front_door.grant(permanent=True)
    await front_door.phone(tone_hz=USER_TONE)
    endpoint = front_door.service.sip
    assert endpoint is not None
    endpoint.transports.idle_timeout = 0.2  # five quiet minutes, shortened
    pbx = await start_stack(lambda server: server.respond(response_to(server.request, 200, to_tag="pbx")))
    try:
        host, port = front_door.service.sip_addresses["TCP"]
        target = Target("TCP", host, port)
        invite = make_request(pbx.layer, "INVITE", target, body=rtp.sdp().encode())
        headers = invite.headers.replaced("From", f"<sip:{BUSINESS}@127.0.0.1>;tag=quiet")
        invite = Request("INVITE", f"sip:{USER}@{host}:{port};transport=tcp", headers, invite.body)
        ok = await pbx.layer.request(invite, target)
        assert ok.status_code == 200
        dialog = Dialog.as_uac(invite, ok)
        await pbx.layer.send_stateless(dialog.ack(invite.cseq.seq, via=Via.parse(pbx.layer.via("TCP"))), target)
        call = await the_call(front_door)
        await asyncio.sleep(1.0)  # five idle timeouts without a byte on the connection
        assert endpoint.connection_count == 1  # the dialog holds it open
        await front_door.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=call.platform_call_id))
        byes = await wait_until(lambda: requests_of(pbx, "BYE"), bool, 10)
        assert byes[0].request.call_id == invite.call_id
        assert byes[0].source.transport == "TCP"
        await front_door.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    finally:
        await pbx.layer.close()


async def pbx_invite(pbx: Stack, wacall: Running, rtp: PlainRtpPeer, transport: str = "UDP") -> tuple[Request, Target]:
    """An INVITE from `pbx` (trunk "pbx") to the granted user, and where it goes."""
    host, port = wacall.service.sip_addresses[transport]
    target = Target(transport, host, port)
    invite = make_request(pbx.layer, "INVITE", target, body=rtp.sdp().encode())
    headers = invite.headers.replaced("From", f"<sip:{BUSINESS}@127.0.0.1>;tag=pbx{transport}")
    return Request("INVITE", f"sip:{USER}@{host}:{port}", headers, invite.body), target


async def test_wacalls_bye_waits_for_the_pbxs_ack_of_the_200(front_door: Running, rtp: PlainRtpPeer) -> None:
    await front_door.grant(permanent=True)
    await front_door.phone(tone_hz=USER_TONE)
    pbx = await start_stack(lambda server: server.respond(response_to(server.request, 200, to_tag="pbx")))
    try:
        invite, target = await pbx_invite(pbx, front_door, rtp)
        ok = await pbx.layer.request(invite, target)
        assert ok.status_code == 200
        call = await the_call(front_door)
        # The user hangs up before the PBX's ACK came (it was slow, or lost): §15, no BYE before the ACK.
        await front_door.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=call.platform_call_id))
        await front_door.wait_call(call.call_id, pb.CALL_STATE_ENDED)
        await asyncio.sleep(1.0)
        assert await requests_of(pbx, "BYE") == []
        dialog = Dialog.as_uac(invite, ok)
        await pbx.layer.send_stateless(dialog.ack(invite.cseq.seq, via=Via.parse(pbx.layer.via("UDP"))), target)
        byes = await wait_until(lambda: requests_of(pbx, "BYE"), bool, 10)
        assert byes[0].request.call_id == invite.call_id and byes[0].request.to.tag == "pbxUDP"
        # The 200 is not resent once the dialog is over.
        resent = len(pbx.strays)
        await asyncio.sleep(1.2)
        assert len(pbx.strays) == resent
    finally:
        await pbx.layer.close()


async def test_a_cancel_crossing_the_answer_still_ends_the_call_and_frees_the_engine(
    front_door: Running, rtp: PlainRtpPeer
) -> None:
    await front_door.grant(permanent=True)
    await front_door.phone(tone_hz=USER_TONE)
    door = front_door.service.front_door
    assert door is not None and door.engine_legs is not None
    engine = front_door.service.engines.engines[0]  # type: ignore[union-attr]
    sessions_before = await engine.session_count()
    build, reached, release = door.engine_legs, asyncio.Event(), asyncio.Event()

    def held_at_the_answer(offer: str, peer: PeerMedia) -> EngineBridgeLeg:
        # The PBX's CANCEL lands while wacall builds its 200 (the engine's SDP for the PBX is on its way).
        leg = build(offer, peer)
        answer = leg.peer_answer
        asked = 0

        async def later() -> str:
            nonlocal asked
            asked += 1
            if asked > 1:  # the first is the call's start (its record shows the SDP); then the front door's 200
                reached.set()
                await release.wait()
            return await answer()

        leg.peer_answer = later  # type: ignore[method-assign]
        return leg

    door.engine_legs = held_at_the_answer
    pbx = await start_stack()
    try:
        invite, target = await pbx_invite(pbx, front_door, rtp)
        inviting = asyncio.ensure_future(pbx.layer.request(invite, target))
        await asyncio.wait_for(reached.wait(), 15)
        call = await the_call(front_door)
        assert call.state == pb.CALL_STATE_CONNECTED
        assert (await pbx.layer.request(cancel_request(invite), target)).status_code == 200
        assert (await inviting).status_code == 487
        release.set()
        ended = await front_door.wait_call(call.call_id, pb.CALL_STATE_ENDED)
        assert ended.end_reason == "the PBX cancelled the call (CANCEL)"
        await wait_until(lambda: front_door.get_call(call.call_id), lambda c: c.sip.last_status == 487)
        phone = await front_door.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id))
        assert phone.state == "ended"
        await wait_until(engine.session_count, lambda count: count == sessions_before, 10)
        assert door.active_calls == 0 and front_door.service.sip.dialog_count == 0  # type: ignore[union-attr]
    finally:
        await pbx.layer.close()


@pytest.mark.parametrize(
    ("shared_secret", "second_answer"),
    [("", "BAD_CREDENTIALS"), ("one secret for every replica", "NO_PERMISSION")],
    ids=["no secret: each replica its own random key", "a shared secret"],
)
async def test_the_nonce_key_is_a_secret_of_its_own_never_the_trunks_passwords(
    make_service: Make, secure_pbx: TransactionLayer, rtp: PlainRtpPeer, shared_secret: str, second_answer: str
) -> None:
    # Two replicas with the same trunks. Were the key derived from the passwords, both would sign alike, and a 407's
    # nonce would be a test of password guesses anyone allowed to connect could run offline.
    first, second = [
        await make_service(rtpengine="", sip_address="127.0.0.1:0", sip_trunks=TRUNKS, sip_nonce_secret=shared_secret)
        for _ in range(2)
    ]
    invite, target = invite_from(secure_pbx, first, rtp)
    challenge = await secure_pbx.request(invite, target)
    assert challenge.status_code == 407
    flow = DigestAuth("pbx", "s3cret").auth_flow(invite)
    next(flow)
    answered = flow.send(challenge)
    _, elsewhere = invite_from(secure_pbx, second, rtp)
    response = await secure_pbx.request(answered, elsewhere)
    # A shared secret: the other replica takes the answer (and the rules refuse: no permission); else the nonce,
    # signed with another key, is not one it gave.
    assert response.status_code == 403 and warning_of(response).startswith(f"{second_answer}: ")


def sdp_version(body: bytes) -> int:
    found = re.search(r"^o=\S+ \S+ (\d+) ", body.decode(), re.M)
    assert found is not None, body
    return int(found.group(1))


def status_of(datagram: bytes) -> int:
    response = parse_datagram(datagram)
    assert isinstance(response, Response)
    return response.status_code


async def test_an_invite_resent_after_the_200_is_not_a_second_call(front_door: Running, rtp: PlainRtpPeer) -> None:
    await front_door.grant(permanent=True)
    await front_door.phone(tone_hz=USER_TONE)
    host, port = front_door.service.sip_addresses["UDP"]
    pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pbx.bind((PBX, 0))
    pbx.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        items = [
            ("Via", f"SIP/2.0/UDP {PBX}:{pbx.getsockname()[1]};branch=z9hG4bKresent;rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{BUSINESS}@{PBX}>;tag=resent"),
            ("To", f"<sip:{USER}@{host}>"),
            ("Call-ID", "resent-after-200"),
            ("CSeq", "1 INVITE"),
            ("Contact", f"<sip:pbx@{PBX}:{pbx.getsockname()[1]}>"),
            ("Content-Type", "application/sdp"),
        ]
        invite = Request("INVITE", f"sip:{USER}@{host}:{port}", Headers(items), rtp.sdp().encode()).serialize()
        pbx.sendto(invite, (host, port))
        statuses: list[int] = []
        while 200 not in statuses:
            statuses.append(status_of(await asyncio.wait_for(loop.sock_recv(pbx, 65535), 15)))
        # The 100 and 180 were lost on the way, so the PBX resends its INVITE, which crosses the 200.
        pbx.sendto(invite, (host, port))
        pbx.sendto(invite, (host, port))
        await asyncio.sleep(1.2)  # the 200 is resent (no ACK yet); nothing else may come
        while True:
            try:
                statuses.append(status_of(pbx.recv(65535)))
            except BlockingIOError:
                break
        assert all(status < 300 for status in statuses), statuses  # no 486 CALL_IN_PROGRESS for the same call
        call = await the_call(front_door)
        assert call.state == pb.CALL_STATE_CONNECTED
        assert front_door.service.front_door is not None and front_door.service.front_door.active_calls == 1
    finally:
        pbx.close()


GIVEN = "v=0\r\no=- 7 7 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n"


@pytest.mark.parametrize(
    ("offer", "direction", "version"),
    [
        ("v=0\r\nm=audio 5000 RTP/AVP 0\r\na=sendrecv\r\n", "sendrecv", 7),  # a refresh: exactly as given
        ("", "sendrecv", 7),  # a re-INVITE without an offer: what was given
        ("v=0\r\nm=audio 5000 RTP/AVP 0\r\na=sendonly\r\n", "recvonly", 8),  # hold
        ("v=0\r\nm=audio 5000 RTP/AVP 0\r\na=inactive\r\n", "inactive", 8),
    ],
    ids=["refresh", "no offer", "hold", "inactive"],
)
def test_a_new_offer_in_the_dialog_gets_the_same_media_its_direction_mirrored(
    offer: str, direction: str, version: int
) -> None:
    answer = answer_again(GIVEN, offer)
    assert f"a={direction}\r\n" in answer and answer.count("a=") == 1
    assert sdp_version(answer.encode()) == version
    if direction == "sendrecv":
        assert answer == GIVEN


@pytest.mark.parametrize(
    ("how", "status", "reason"),
    [("EndCall", 480, "ENDED_BY_BUSINESS"), ("shutdown", 503, "SHUTTING_DOWN")],
    ids=["EndCall", "shutdown"],
)
async def test_a_ringing_call_ended_on_wacalls_side_is_not_a_487_the_pbx_never_asked_for(
    front_door: Running, tmp_path: Path, rtp: PlainRtpPeer, how: str, status: int, reason: str
) -> None:
    await front_door.grant(permanent=True)
    await front_door.phone(ring=3600)
    run = await sipp(front_door, tmp_path, "uac_refused.xml", rtp_port=rtp.port, status=status)
    call = await wait_until(lambda: the_call(front_door), lambda c: c.state == pb.CALL_STATE_RINGING, 10)
    if how == "EndCall":
        await front_door.calling.EndCall(pb.EndCallRequest(call_id=call.call_id), metadata=front_door.metadata)
    else:
        await front_door.service.stop(grace=0.5)
    await run.finish()
    response = run.received(status)
    assert warning_of(response).startswith(f"{reason}: ")  # a PBX fails over, or retries; a 487 would stop it
    assert (response.headers.get("Retry-After") is not None) == (how == "shutdown")
