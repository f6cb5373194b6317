"""The `sip` route and inbound calls to a trunk, end to end: a real wacall (gRPC, webhooks, SQLite, the simulator's
phones), a local rtpengine, wacall's SIP endpoint, and SIPp playing the PBX (tests/assets/sipp) with its RTP at a
µ-law endpoint written in the tests, which says its own tone and hears the user's: pitch is measured both ways.

StartCall with `route { sip {...} }`: the PBX is invited once the user picks up; audio both ways; the call ends from
wacall, from the user or from the PBX (BYE each way); the PBX's digest challenge is answered; a PBX that refuses or
never answers ends the answered call with its SIP status recorded. A user's call with `--inbound-route sip:<trunk>`
is answered when the PBX answers and rejected when it refuses or rings past the bound on users' calls (its INVITE
cancelled). Bad route fields, and a service without SIP or without a media engine, are refused before anything is
recorded; so is a bad inbound setting at start-up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import (
    BUSINESS,
    USER,
    Running,
    eventually,
    refused,
    settings_for,
    start_service,
    stop_service,
    wait_until,
)
from sipp_pbx import SippPbx, sipp_pbx
from test_engine_bridge import engine_of
from test_rtpengine import Heard, PlainRtpPeer, pitch, pitch_at
from test_sdp import platform_of
from wacall_client import error_details
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.app import Service
from wacall.calls.sip_route import SipBridgedRoute
from wacall.config import ConfigError, load_settings
from wacall.media.rtp_tone import RINGBACK_HZ
from wacall.media.tracks import level
from wacall.sip.message import SipURI
from wacall.sipdoor.trunks import Trunk

pytestmark = pytest.mark.slow

MakeService = Callable[..., Awaitable[Running]]
PBX_TONE = 400
USER_TONE = 880


@dataclass
class PbxPhone(PlainRtpPeer):
    """The PBX's phone: a µ-law endpoint that answers where the engine's RTP comes from (symmetric RTP: the SDP the
    PBX got stays with SIPp)."""

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        super().datagram_received(data, addr)
        if self.sender is None:
            self.send_to(f"c=IN IP4 {addr[0]}\r\nm=audio {addr[1]} RTP/AVP 0\r\n")


async def pbx_phone() -> PbxPhone:
    _, phone = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: PbxPhone(PBX_TONE), local_addr=("127.0.0.1", 0)
    )
    return phone


def trunk_for(pbx: SippPbx, **changes: object) -> Trunk:
    values: dict[str, object] = {
        "name": "pbx",
        "target": SipURI.parse(pbx.uri),
        "business_numbers": (BUSINESS,),
        "username": "wacall",
        "password": "s3cret",
        "codecs": ("PCMU", "PCMA"),
    }
    values.update(changes)
    return Trunk(**values)  # type: ignore[arg-type]


async def with_sip(make_service: MakeService, pbx: SippPbx, **changes: object) -> Running:
    settings: dict[str, object] = {
        "rtpengine": "",
        "sip_address": "127.0.0.1:0",
        "sip_trunks": (trunk_for(pbx),),
        "sip_answer_timeout_seconds": 1.5,
    }
    settings.update(changes)
    return await make_service(**settings)


def sip_route(**fields: object) -> pb.Route:
    return pb.Route(sip=pb.SipRoute(trunk="pbx", **fields))  # type: ignore[arg-type]


async def ended(wacall: Running, call_id: str) -> pb.Call:
    return await wacall.wait_call(call_id, pb.CALL_STATE_ENDED, timeout=15)


async def phone_heard(wacall: Running, platform_call_id: str) -> Heard:
    """What the simulated phone of the call hears from now on."""
    heard = Heard()
    platform = platform_of(wacall)

    def listening() -> bool:
        phone = platform.calls.get(platform_call_id)
        return phone is not None and phone.leg is not None and phone.leg.consumer is not None

    await eventually(listening, what="the phone's audio")
    phone = platform.calls[platform_call_id]
    assert phone.leg is not None and phone.leg.consumer is not None
    phone.leg.consumer.handlers.append(heard)
    return heard


async def hear_each_other(heard_by_user: Heard, pbx: PbxPhone) -> None:
    await eventually(lambda: len(heard_by_user.frames) > 50 and len(pbx.heard) > 60, 15, "audio both ways")
    assert pitch(b"".join(heard_by_user.frames[-40:])) == pytest.approx(PBX_TONE, rel=0.03)
    heard_by_pbx = [frame for frame in pbx.heard[-60:] if level(frame) > 0.05]
    assert len(heard_by_pbx) >= 40
    assert pitch_at(b"".join(heard_by_pbx), 8000) == pytest.approx(USER_TONE, rel=0.03)


# --- the sip route ---------------------------------------------------------------------------------------------------


async def test_the_pbx_is_invited_at_pickup_and_each_side_hears_the_other(
    make_service: MakeService, tmp_path: Path
) -> None:
    phone = await pbx_phone()
    try:
        async with sipp_pbx("pbx_answers.xml", tmp_path, rtp_port=phone.port) as pbx:
            wacall = await with_sip(make_service, pbx)
            engine = engine_of(wacall)
            sessions_before = await engine.session_count()
            await wacall.grant(permanent=True)
            await wacall.phone(tone_hz=USER_TONE)
            call = await wacall.start_call(route=sip_route(target=pbx.uri, headers={"X-Queue": "billing"}))
            assert call.route == "sip" and call.state == pb.CALL_STATE_DIALING
            heard_by_user = await phone_heard(wacall, call.platform_call_id)

            bridged = await wait_until(lambda: wacall.get_call(call.call_id), lambda c: c.sip.last_status == 200, 15)
            assert bridged.sip.trunk == "pbx" and bridged.sip.direction == pb.SIP_DIRECTION_SIP_ROUTE
            assert bridged.sip.call_id and "@" in bridged.sip.call_id
            await hear_each_other(heard_by_user, phone)
            assert await engine.session_count() == sessions_before + 1

            done = await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
            assert done.outcome == pb.CALL_OUTCOME_ANSWERED
            assert done.media.audible_frames_received > 40 and done.media.frames_sent > 40  # rtpengine's counts
            code, err = await pbx.outcome()
            assert code == 0, err  # SIPp saw X-Wacall-Call-Id, the ACK and wacall's BYE
            assert await engine.session_count() == sessions_before
    finally:
        await phone.close()


async def test_the_user_hears_ringback_while_the_pbx_rings_past_the_platforms_no_media_window(
    make_service: MakeService, tmp_path: Path
) -> None:
    async with sipp_pbx("pbx_rings.xml", tmp_path) as pbx:
        # The platform drops a call with no media for 3 s here (20 s for real); the PBX rings for longer.
        wacall = await with_sip(make_service, pbx, sip_answer_timeout_seconds=30, sim_no_media_at_start_seconds=3)
        await wacall.grant(permanent=True)
        await wacall.phone(tone_hz=USER_TONE)
        call = await wacall.start_call(route=sip_route())
        heard_by_user = await phone_heard(wacall, call.platform_call_id)
        await wait_until(lambda: wacall.get_call(call.call_id), lambda c: bool(c.sip.call_id), 15)
        await asyncio.sleep(5)  # longer than the platform's window, the PBX still ringing
        ringing = await wacall.get_call(call.call_id)
        assert ringing.state == pb.CALL_STATE_CONNECTED and ringing.sip.last_status == 0, ringing.end_reason
        assert len(heard_by_user.frames) >= 40  # ringback's 1 s bursts
        assert pitch(b"".join(heard_by_user.frames[-20:])) == pytest.approx(RINGBACK_HZ, rel=0.03)
        await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
        await wait_until(lambda: wacall.get_call(call.call_id), lambda c: c.sip.last_status == 487, 15)
        code, err = await pbx.outcome()
        assert code == 0, err  # the CANCEL came when the business ended the call, not before


async def test_the_pbxs_early_media_reaches_the_user_before_it_answers(
    make_service: MakeService, tmp_path: Path
) -> None:
    phone = await pbx_phone()
    try:
        async with sipp_pbx("pbx_answers_early.xml", tmp_path, rtp_port=phone.port, hold_ms=4000) as pbx:
            wacall = await with_sip(make_service, pbx, sip_answer_timeout_seconds=30)
            await wacall.grant(permanent=True)
            await wacall.phone(tone_hz=USER_TONE)
            call = await wacall.start_call(route=sip_route())
            heard_by_user = await phone_heard(wacall, call.platform_call_id)
            await wait_until(lambda: wacall.get_call(call.call_id), lambda c: bool(c.sip.call_id), 15)
            # The 183's SDP went into the engine: the PBX's tone reaches the user while the INVITE is unanswered.
            await eventually(
                lambda: len([f for f in heard_by_user.frames[-20:] if abs(pitch(f) - PBX_TONE) < 20]) >= 15,
                10,
                "the PBX's early media",
            )
            assert (await wacall.get_call(call.call_id)).sip.last_status == 0
            await wait_until(lambda: wacall.get_call(call.call_id), lambda c: c.sip.last_status == 200, 15)
            await hear_each_other(heard_by_user, phone)
            await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
            code, err = await pbx.outcome()
            assert code == 0, err
    finally:
        await phone.close()


async def test_the_user_hanging_up_sends_bye_to_the_pbx(make_service: MakeService, tmp_path: Path) -> None:
    async with sipp_pbx("pbx_answers.xml", tmp_path, rtp_port=9) as pbx:
        wacall = await with_sip(make_service, pbx)
        await wacall.grant(permanent=True)
        await wacall.phone(tone_hz=USER_TONE)
        call = await wacall.start_call(route=sip_route())  # the trunk's own target
        await wait_until(lambda: wacall.get_call(call.call_id), lambda c: c.sip.last_status == 200, 15)
        await wacall.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=call.platform_call_id))
        final = await ended(wacall, call.call_id)
        assert final.outcome == pb.CALL_OUTCOME_ANSWERED and final.sip.last_status == 200
        code, err = await pbx.outcome()
        assert code == 0, err  # the BYE came


async def test_a_bye_from_the_pbx_ends_the_whatsapp_call(make_service: MakeService, tmp_path: Path) -> None:
    async with sipp_pbx("pbx_hangs_up.xml", tmp_path, rtp_port=9, hold_ms=1000) as pbx:
        wacall = await with_sip(make_service, pbx)
        await wacall.grant(permanent=True)
        await wacall.phone(tone_hz=USER_TONE)
        call = await wacall.start_call(route=sip_route())
        final = await ended(wacall, call.call_id)
        assert final.outcome == pb.CALL_OUTCOME_ANSWERED
        assert final.end_reason == "the PBX hung up (BYE)" and final.sip.last_status == 200
        phone = await wait_until(
            lambda: wacall.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id)),
            lambda p: p.state == "ended",
        )
        assert phone.state == "ended"
        code, err = await pbx.outcome()
        assert code == 0, err  # its BYE was answered 200


async def test_stopping_the_service_says_bye_to_the_pbx(tmp_path: Path) -> None:
    async with sipp_pbx("pbx_answers.xml", tmp_path, rtp_port=9) as pbx:
        wacall = await start_service(
            settings_for(tmp_path, rtpengine="", sip_address="127.0.0.1:0", sip_trunks=(trunk_for(pbx),))
        )
        try:
            await wacall.grant(permanent=True)
            await wacall.phone(tone_hz=USER_TONE)
            call = await wacall.start_call(route=sip_route())
            await wait_until(lambda: wacall.get_call(call.call_id), lambda c: c.sip.last_status == 200, 15)
        finally:
            await stop_service(wacall)
        code, err = await pbx.outcome()
        assert code == 0, err  # the BYE went out before the SIP endpoint closed


async def test_the_pbxs_digest_challenge_is_answered_with_the_trunks_credentials(
    make_service: MakeService, tmp_path: Path
) -> None:
    async with sipp_pbx("pbx_challenges.xml", tmp_path, rtp_port=9) as pbx:
        wacall = await with_sip(make_service, pbx)
        await wacall.grant(permanent=True)
        await wacall.phone(tone_hz=USER_TONE)
        call = await wacall.start_call(route=sip_route())
        await wait_until(lambda: wacall.get_call(call.call_id), lambda c: c.sip.last_status == 200, 15)
        await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
        code, err = await pbx.outcome()
        assert code == 0, err


@pytest.mark.parametrize(("scenario", "status"), [("pbx_refuses.xml", 486), ("pbx_rings.xml", 408)])
async def test_a_pbx_that_refuses_or_never_answers_ends_the_answered_call_with_its_status(
    make_service: MakeService, tmp_path: Path, scenario: str, status: int
) -> None:
    async with sipp_pbx(scenario, tmp_path) as pbx:
        wacall = await with_sip(make_service, pbx)
        engine = engine_of(wacall)
        sessions_before = await engine.session_count()
        await wacall.grant(permanent=True)
        await wacall.phone(tone_hz=USER_TONE)
        call = await wacall.start_call(route=sip_route())
        final = await ended(wacall, call.call_id)
        assert final.outcome == pb.CALL_OUTCOME_ANSWERED  # the user picked up
        assert final.sip.last_status == status and final.sip.direction == pb.SIP_DIRECTION_SIP_ROUTE
        assert final.end_reason.startswith(f"the PBX did not take the call: {status}")
        code, err = await pbx.outcome()
        assert code == 0, err  # 486 ACKed / CANCEL sent and its 487 ACKed
        await eventually(lambda: not wacall.service.calls.sessions, what="the session released")
        assert await engine.session_count() == sessions_before


async def test_ending_the_call_while_the_pbx_rings_cancels_its_invite(
    make_service: MakeService, tmp_path: Path
) -> None:
    async with sipp_pbx("pbx_rings.xml", tmp_path) as pbx:
        wacall = await with_sip(make_service, pbx, sip_answer_timeout_seconds=30)
        await wacall.grant(permanent=True)
        await wacall.phone(tone_hz=USER_TONE)
        call = await wacall.start_call(route=sip_route())
        ringing = await wait_until(lambda: wacall.get_call(call.call_id), lambda c: bool(c.sip.call_id), 15)
        assert ringing.sip.last_status == 0  # invited, no final answer yet
        done = await wacall.calling.EndCall(pb.EndCallRequest(call_id=call.call_id))
        assert done.outcome == pb.CALL_OUTCOME_ANSWERED
        final = await wait_until(lambda: wacall.get_call(call.call_id), lambda c: c.sip.last_status == 487, 15)
        assert final.end_reason == "ended by the business"
        code, err = await pbx.outcome()
        assert code == 0, err  # SIPp got the CANCEL, answered 487 and had it ACKed


async def test_a_user_who_never_answers_never_reaches_the_pbx(make_service: MakeService, tmp_path: Path) -> None:
    # The trunk's PBX is a socket that keeps whatever reaches it.
    received: list[bytes] = []

    class Keeps(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received.append(data)

    socket_pbx, _ = await asyncio.get_running_loop().create_datagram_endpoint(Keeps, local_addr=("127.0.0.1", 0))
    port = socket_pbx.get_extra_info("sockname")[1]
    try:
        pbx = SippPbx(process=None, port=port, transport="UDP")  # type: ignore[arg-type]  # no SIPp: a bare socket
        wacall = await with_sip(make_service, pbx)
        await wacall.grant(permanent=True)
        await wacall.phone(on_call=sim_pb.NO_ANSWER)
        call = await wacall.start_call(route=sip_route())
        await wacall.advance(60)  # the platform gives up ringing
        final = await ended(wacall, call.call_id)
        assert final.outcome == pb.CALL_OUTCOME_UNANSWERED and not final.HasField("sip")
        await asyncio.sleep(0.3)
        assert received == []  # no INVITE (nor anything else) reached the PBX
    finally:
        socket_pbx.close()


# --- refused before anything is recorded ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "field"),
    [
        (pb.SipRoute(trunk=""), "route.sip.trunk"),
        (pb.SipRoute(trunk="nope"), "route.sip.trunk"),
        (pb.SipRoute(trunk="pbx", target="http://pbx.example"), "route.sip.target"),
        (pb.SipRoute(trunk="pbx", target="sip:q@pbx.example;transport=sctp"), "route.sip.target"),
        # Another host (or port, or transport) than the trunk's: no INVITE, and no credentials, go there.
        (pb.SipRoute(trunk="pbx", target="sip:x@203.0.113.9"), "route.sip.target"),
        (pb.SipRoute(trunk="pbx", target="sip:x@127.0.0.1:5998"), "route.sip.target"),
        (pb.SipRoute(trunk="pbx", target="sip:x@127.0.0.1:5999;transport=tcp"), "route.sip.target"),
        (pb.SipRoute(trunk="pbx", headers={"X-Evil": "a\r\nVia: x"}), "route.sip.headers['X-Evil']"),
        (pb.SipRoute(trunk="pbx", headers={"Via": "SIP/2.0/UDP h"}), "route.sip.headers['Via']"),
        (pb.SipRoute(trunk="pbx", headers={"content-type": "text/plain"}), "route.sip.headers['content-type']"),
        (pb.SipRoute(trunk="pbx", headers={"Bad Name": "x"}), "route.sip.headers['Bad Name']"),
        (pb.SipRoute(trunk="pbx", headers={"X-Empty": " "}), "route.sip.headers['X-Empty']"),
        # A trailing newline is not part of a token: "Via\n" would otherwise slip past the reserved names.
        (pb.SipRoute(trunk="pbx", headers={"Via\n": "SIP/2.0/UDP h"}), "route.sip.headers['Via\\n']"),
        (pb.SipRoute(trunk="pbx", headers={"Require": "100rel"}), "route.sip.headers['Require']"),
        (pb.SipRoute(trunk="pbx", headers={"k": "timer"}), "route.sip.headers['k']"),
        (pb.SipRoute(trunk="pbx", headers={"Session-Expires": "90"}), "route.sip.headers['Session-Expires']"),
        (pb.SipRoute(trunk="pbx", headers={"Replaces": "a;to-tag=b;from-tag=c"}), "route.sip.headers['Replaces']"),
    ],
)
async def test_bad_route_fields_are_refused_naming_the_field_and_nothing_is_recorded(
    make_service: MakeService, tmp_path: Path, route: pb.SipRoute, field: str
) -> None:
    pbx = SippPbx(process=None, port=5999, transport="UDP")  # type: ignore[arg-type]  # never contacted
    wacall = await with_sip(make_service, pbx, rtpengine="off")
    await wacall.grant(permanent=True)
    error = await refused(wacall.start_call(route=pb.Route(sip=route)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert [v.field for v in error_details(error).field_violations] == [field]
    listed = await wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER))
    assert list(listed.calls) == []


@pytest.mark.parametrize(
    ("changes", "why"),
    [({"sip_address": ""}, "--sip-address"), ({"rtpengine": "off"}, "rtpengine")],
    ids=["no SIP endpoint", "no media engine"],
)
async def test_without_sip_or_an_engine_the_route_is_a_failed_precondition(
    make_service: MakeService, changes: dict[str, object], why: str
) -> None:
    pbx = SippPbx(process=None, port=5999, transport="UDP")  # type: ignore[arg-type]  # never contacted
    wacall = await with_sip(make_service, pbx, **changes)
    await wacall.grant(permanent=True)
    error = await refused(wacall.start_call(route=sip_route()))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    (violation,) = error_details(error).precondition_violations
    assert violation.type == "SIP_ROUTE_UNAVAILABLE" and why in violation.description
    listed = await wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER))
    assert list(listed.calls) == []


# --- a user's call handed to the trunk ------------------------------------------------------------------------------


async def test_a_users_call_is_answered_when_the_pbx_answers_with_audio_both_ways(
    make_service: MakeService, tmp_path: Path
) -> None:
    phone = await pbx_phone()
    try:
        async with sipp_pbx("pbx_answers.xml", tmp_path, rtp_port=phone.port) as pbx:
            wacall = await with_sip(make_service, pbx, inbound_route="sip:pbx")
            engine = engine_of(wacall)
            sessions_before = await engine.session_count()
            await wacall.phone(tone_hz=USER_TONE, talk=0)
            placed = await wacall.sim.PlaceUserCall(
                sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=USER)
            )
            heard_by_user = await phone_heard(wacall, placed.platform_call_id)
            calls = await wait_until(
                lambda: wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER)),
                lambda r: len(r.calls) == 1 and r.calls[0].state == pb.CALL_STATE_CONNECTED,
                15,
            )
            call = calls.calls[0]
            assert call.direction == pb.CALL_DIRECTION_USER_INITIATED and call.route == "sip"
            assert call.sip.direction == pb.SIP_DIRECTION_INBOUND and call.sip.last_status == 200
            # The PBX was called from the user's number, to the business number the user called.
            route = wacall.service.calls.sessions[call.call_id].adapter
            assert isinstance(route, SipBridgedRoute) and route.outbound is not None
            assert (route.outbound.caller, route.outbound.callee) == (USER, f"sip:{BUSINESS}@127.0.0.1")
            await hear_each_other(heard_by_user, phone)

            await wacall.sim.HangUp(sim_pb.HangUpRequest(platform_call_id=placed.platform_call_id))
            final = await ended(wacall, call.call_id)
            assert final.outcome == pb.CALL_OUTCOME_ANSWERED
            code, err = await pbx.outcome()
            assert code == 0, err  # the BYE reached the PBX
            await eventually(lambda: not wacall.service.calls.sessions, what="the session released")
            assert await engine.session_count() == sessions_before
    finally:
        await phone.close()


async def test_a_users_call_the_pbx_refuses_is_rejected_on_the_platform(
    make_service: MakeService, tmp_path: Path
) -> None:
    async with sipp_pbx("pbx_refuses.xml", tmp_path) as pbx:
        wacall = await with_sip(make_service, pbx, inbound_route="sip:pbx")
        engine = engine_of(wacall)
        sessions_before = await engine.session_count()
        placed = await wacall.sim.PlaceUserCall(sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=USER))
        phone = await wait_until(
            lambda: wacall.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=placed.platform_call_id)),
            lambda p: p.state == "ended",
            15,
        )
        assert phone.state == "ended" and phone.audible_frames_received == 0
        calls = await wait_until(
            lambda: wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER)),
            lambda r: len(r.calls) == 1 and r.calls[0].state == pb.CALL_STATE_ENDED,
        )
        call = calls.calls[0]
        assert call.outcome != pb.CALL_OUTCOME_ANSWERED
        assert call.sip.direction == pb.SIP_DIRECTION_INBOUND and call.sip.last_status == 486
        code, err = await pbx.outcome()
        assert code == 0, err
        await eventually(lambda: not wacall.service.calls.sessions, what="the session released")
        assert await engine.session_count() == sessions_before


async def test_a_users_call_the_pbx_lets_ring_is_cancelled_and_rejected_before_the_platform_gives_up(
    make_service: MakeService, tmp_path: Path
) -> None:
    async with sipp_pbx("pbx_rings.xml", tmp_path) as pbx:
        # The sip route's own wait is long: only the bound on users' calls can end this one.
        wacall = await with_sip(
            make_service,
            pbx,
            inbound_route="sip:pbx",
            sip_answer_timeout_seconds=30,
            sip_inbound_answer_timeout_seconds=1.5,
        )
        engine = engine_of(wacall)
        endpoint = wacall.service.sip
        assert endpoint is not None
        sessions_before, dialogs_before = await engine.session_count(), endpoint.dialog_count
        placed = await wacall.sim.PlaceUserCall(sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=USER))
        ringing = await wait_until(
            lambda: wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER)),
            lambda r: len(r.calls) == 1 and bool(r.calls[0].sip.call_id),
            15,
        )
        assert ringing.calls[0].sip.last_status == 0  # the PBX was invited and has not answered yet
        phone = await wait_until(
            lambda: wacall.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=placed.platform_call_id)),
            lambda p: p.state == "ended",
            15,
        )
        assert not phone.HasField("answered_at") and phone.audible_frames_received == 0  # rejected, never accepted
        calls = await wait_until(
            lambda: wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER)),
            lambda r: len(r.calls) == 1 and r.calls[0].state == pb.CALL_STATE_ENDED,
        )
        call = calls.calls[0]
        assert call.outcome != pb.CALL_OUTCOME_ANSWERED
        assert call.sip.direction == pb.SIP_DIRECTION_INBOUND and call.sip.last_status == 408
        assert call.end_reason == "setup failed: 408 Request Timeout (no answer from the PBX within 1.5 s)"
        code, err = await pbx.outcome()
        assert code == 0, err  # SIPp got the CANCEL, answered 487 and had it ACKed
        await eventually(lambda: not wacall.service.calls.sessions, what="the session released")
        assert await engine.session_count() == sessions_before
        assert endpoint.dialog_count == dialogs_before
        await eventually(lambda: endpoint.task_count == 0, what="the SIP endpoint's tasks done")


async def test_a_users_call_the_sip_route_cannot_take_is_rejected_not_left_ringing(
    make_service: MakeService, tmp_path: Path
) -> None:
    pbx = SippPbx(process=None, port=5999, transport="UDP")  # type: ignore[arg-type]  # never contacted
    wacall = await with_sip(make_service, pbx, inbound_route="sip:pbx")
    routes = wacall.service.calls.sip_routes
    assert routes is not None
    routes.endpoint = None  # as while serve is still bringing the SIP endpoint up
    placed = await wacall.sim.PlaceUserCall(sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=USER))
    phone = await wait_until(
        lambda: wacall.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=placed.platform_call_id)),
        lambda p: p.state == "ended",
        15,
    )
    assert phone.state == "ended"
    calls = await wait_until(
        lambda: wacall.calling.ListCalls(pb.ListCallsRequest(user_number=USER)),
        lambda r: len(r.calls) == 1 and r.calls[0].state == pb.CALL_STATE_ENDED,
    )
    assert calls.calls[0].outcome != pb.CALL_OUTCOME_ANSWERED
    await eventually(lambda: not wacall.service.calls.sessions, what="no session left")


def test_an_inbound_sip_route_names_a_configured_trunk(tmp_path: Path) -> None:
    config = tmp_path / "wacall.toml"
    config.write_text(
        '[[sip_trunks]]\nname = "pbx"\ntarget = "sip:cc@127.0.0.1:5080"\nbusiness_numbers = ["*"]\n'
        'allowed_sources = ["127.0.0.1/32"]\n'
    )
    assert load_settings(str(config), {"inbound_route": "sip:pbx"}, environ={}).inbound_route == "sip:pbx"
    with pytest.raises(ConfigError, match="no \\[\\[sip_trunks\\]\\] entry is named 'other'"):
        load_settings(str(config), {"inbound_route": "sip:other"}, environ={})
    with pytest.raises(ConfigError, match="'sip:<trunk>'"):
        load_settings(str(config), {"inbound_route": "sip"}, environ={})


@pytest.mark.parametrize("value", ["0", "-1", "30.5", "60", "nan"])
def test_the_wait_for_a_pbx_on_a_users_call_is_bounded_by_the_platforms_window(value: str) -> None:
    environ = {"WACALL_SIP_INBOUND_ANSWER_TIMEOUT_SECONDS": value}
    with pytest.raises(ConfigError, match="sip_inbound_answer_timeout_seconds must be greater than 0 and at most 30 "):
        load_settings(None, {}, environ=environ)
    assert load_settings(None, {}, environ={}).sip_inbound_answer_timeout_seconds == 25
    assert (
        load_settings(None, {"sip_inbound_answer_timeout_seconds": 30.0}, environ={}).sip_inbound_answer_timeout_seconds
        == 30
    )


@pytest.mark.parametrize(
    ("changes", "why"),
    [({"sip_address": ""}, "give --sip-address"), ({"rtpengine": "off"}, "rtpengine")],
    ids=["no SIP endpoint", "no media engine"],
)
async def test_an_inbound_sip_route_needs_the_sip_endpoint_and_an_engine_at_start(
    tmp_path: Path, changes: dict[str, object], why: str
) -> None:
    trunk = Trunk("pbx", SipURI.parse("sip:cc@127.0.0.1:5080"), ("*",))
    values: dict[str, object] = {"sip_address": "127.0.0.1:0", "sip_trunks": (trunk,), "inbound_route": "sip:pbx"}
    values.update(changes)
    service = Service(settings_for(tmp_path, **values))
    with pytest.raises(ConfigError, match=why):
        await service.start()
    await service.stop(grace=0)
