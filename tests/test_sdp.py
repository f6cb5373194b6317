"""SDP checks (media/sdp.py) and what a call does with SDP that cannot carry it.

The same check runs on the platform's SDP (wacall), on wacall's SDP (the simulator, like the platform) and on what
wacall produces before it sends it. Over gRPC: the platform's `connect` webhook (signed, fed to the real endpoint)
carrying a corrupt answer, and a user's call whose offer has no audio section, both end FAILED with a reason.
"""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import BUSINESS, OTHER_USER, USER, Running, eventually, wait_until
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.v1 import calling_pb2 as pb

from wacall.calls.service import SdpRefused, check_sdp
from wacall.media import sdp
from wacall.media.leg import AudioLeg
from wacall.numbers import parse_number
from wacall.simulator.phone import PhoneCall
from wacall.simulator.platform import SimulatedPlatform
from wacall.upstreams.meta import wire as payloads
from wacall.upstreams.meta.webhooks import SIGNATURE_HEADER, WEBHOOK_PATH, sign

STREAM = pb.Route(media_stream=pb.MediaStreamRoute())


async def offer_and_answer() -> tuple[str, str]:
    """What wacall sends (its offer) and what the simulated phone answers, recorded from real aiortc legs."""
    ours, phone = AudioLeg(name="ours"), AudioLeg(name="phone")
    try:
        offer = await ours.create_offer()
        return offer, await phone.accept_offer(offer)
    finally:
        await ours.close()
        await phone.close()


def without(text: str, *prefixes: str) -> str:
    return sdp.with_crlf([line for line in sdp.lines(text) if not line.startswith(prefixes)])


# --- the check, on recorded SDPs ----------------------------------------------------------------------------------


async def test_our_offer_and_the_phones_answer_pass_the_check() -> None:
    offer, answer = await offer_and_answer()
    assert sdp.platform_problems(offer, "offer") == []
    assert sdp.platform_problems(answer, "answer") == []
    assert sdp.peer_problems(offer, "offer") == []


async def test_sdp_without_ice_credentials_is_refused() -> None:
    offer, answer = await offer_and_answer()
    assert sdp.platform_problems(without(offer, "a=ice-ufrag"), "offer") == [sdp.NO_ICE_CREDENTIALS]
    assert sdp.platform_problems(without(answer, "a=ice-pwd"), "answer") == [sdp.NO_ICE_CREDENTIALS]
    assert sdp.peer_problems(without(offer, "a=ice-ufrag", "a=ice-pwd"), "offer") == [sdp.NO_ICE_CREDENTIALS]


async def test_sdp_without_an_audio_section_is_refused() -> None:
    offer, _ = await offer_and_answer()
    session_only = sdp.with_crlf(sdp.lines(offer)[: next(i for i, x in enumerate(sdp.lines(offer)) if x[:2] == "m=")])
    assert sdp.ONE_AUDIO in sdp.platform_problems(session_only, "offer")
    assert sdp.NO_AUDIO in sdp.peer_problems(session_only, "offer")


async def test_an_answer_must_choose_a_dtls_role_and_keep_rtcp_mux() -> None:
    _, answer = await offer_and_answer()
    actpass = sdp.with_crlf(["a=setup:actpass" if x.startswith("a=setup:") else x for x in sdp.lines(answer)])
    assert sdp.platform_problems(actpass, "answer") == [sdp.ANSWER_SETUP]
    assert sdp.platform_problems(without(answer, "a=rtcp-mux"), "answer") == [sdp.NO_RTCP_MUX]


async def test_a_refused_audio_section_is_refused() -> None:
    _, answer = await offer_and_answer()
    port_zero = sdp.with_crlf(
        [" ".join(["m=audio", "0", *x.split()[2:]]) if x.startswith("m=audio") else x for x in sdp.lines(answer)]
    )
    assert sdp.platform_problems(port_zero, "answer") == [sdp.AUDIO_REFUSED]


@pytest.mark.parametrize("text", ["", "garbage", "m=audio", "v=0\r\nm=audio x UDP 1\r\n", "v=0\r\nc=IN IP4\r\n"])
def test_text_that_is_not_an_sdp_is_refused(text: str) -> None:
    assert sdp.platform_problems(text, "offer") == [sdp.NOT_AN_SDP]


# --- over gRPC, with the simulator --------------------------------------------------------------------------------


def platform_of(running: Running) -> SimulatedPlatform:
    platform = running.service.platform
    assert platform is not None
    return platform


async def deliver_call_event(running: Running, call: PhoneCall, user: str, sdp_text: str, sdp_type: str) -> None:
    """The platform's `connect` webhook for `call`, signed with the app secret, to the real endpoint."""
    platform = platform_of(running)
    account = platform.provision(parse_number(BUSINESS))
    body = payloads.call_event(account, user[1:], call, "connect", await running.now(), sdp=sdp_text, sdp_type=sdp_type)
    raw = json.dumps(body, separators=(",", ":")).encode()
    async with httpx.AsyncClient(base_url=f"http://{running.addresses.http}", timeout=10.0) as client:
        response = await client.post(
            WEBHOOK_PATH,
            content=raw,
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(platform.app_secret.encode(), raw)},
        )
    assert response.status_code == 200, response.text


async def ringing_without_its_connect(running: Running) -> tuple[pb.Call, PhoneCall]:
    """A business call whose phone answered the offer, with the phone's own connect webhook lost on the way."""
    platform = platform_of(running)
    webhook_url, platform.webhook_url = platform.webhook_url, ""  # the simulator drops what it would deliver
    call = await running.start_call(route=STREAM)
    phone = platform.calls[call.platform_call_id]
    await eventually(lambda: phone.leg is not None and phone.leg.pc.localDescription is not None, what="phone answer")
    await platform.settle()
    platform.webhook_url = webhook_url
    return call, phone


async def test_a_connect_answer_without_ice_credentials_ends_the_call_failed(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(ring=60)
    call, phone = await ringing_without_its_connect(wacall)
    assert phone.leg is not None
    corrupt = without(phone.leg.pc.localDescription.sdp, "a=ice-ufrag", "a=ice-pwd")
    await deliver_call_event(wacall, phone, USER, corrupt, "answer")
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == pb.CALL_OUTCOME_FAILED
    assert "the platform's SDP answer cannot carry the call" in ended.end_reason
    assert sdp.NO_ICE_CREDENTIALS in ended.end_reason
    # The platform was told (terminate): the user's phone stops ringing.
    await wait_until(
        lambda: wacall.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=call.platform_call_id)),
        lambda p: p.state == "ended",
    )
    events = await wacall.calling.ListEvents(pb.ListEventsRequest(user_number=USER))
    assert events.events[-1].call.outcome == pb.CALL_OUTCOME_FAILED
    assert events.events[-1].call.end_reason == ended.end_reason
    assert not wacall.service.calls.sessions  # type: ignore[union-attr]


async def test_a_connect_answer_that_cannot_be_applied_ends_the_call_failed(wacall: Running) -> None:
    await wacall.grant(permanent=True)
    await wacall.phone(ring=60)
    call, phone = await ringing_without_its_connect(wacall)
    assert phone.leg is not None
    # Passes the text checks, but names a media section our offer does not have: aiortc refuses to apply it.
    mismatched = phone.leg.pc.localDescription.sdp.replace("a=mid:0", "a=mid:7").replace("BUNDLE 0", "BUNDLE 7")
    await deliver_call_event(wacall, phone, USER, mismatched, "answer")
    ended = await wacall.wait_call(call.call_id, pb.CALL_STATE_ENDED)
    assert ended.outcome == pb.CALL_OUTCOME_FAILED
    assert ended.end_reason.startswith("setup failed: ")
    fetched = await wacall.get_call(call.call_id)
    assert fetched.end_reason == ended.end_reason


async def test_a_user_call_whose_offer_has_no_audio_is_rejected_and_failed(wacall: Running) -> None:
    platform = platform_of(wacall)
    webhook_url, platform.webhook_url = platform.webhook_url, ""
    phone_call = await wacall.sim.PlaceUserCall(
        sim_pb.PlaceUserCallRequest(business_number=BUSINESS, user_number=OTHER_USER)
    )
    await platform.settle()
    platform.webhook_url = webhook_url
    phone = platform.calls[phone_call.platform_call_id]
    assert phone.leg is not None
    offer = phone.leg.pc.localDescription.sdp
    lines = sdp.lines(offer)
    no_audio = sdp.with_crlf(lines[: next(i for i, line in enumerate(lines) if line.startswith("m="))])
    await deliver_call_event(wacall, phone, OTHER_USER, no_audio, "offer")
    ended = await wait_until(
        lambda: wacall.calling.ListCalls(pb.ListCallsRequest(user_number=OTHER_USER)),
        lambda r: bool(r.calls) and r.calls[0].state == pb.CALL_STATE_ENDED,
    )
    call = ended.calls[0]
    assert call.outcome == pb.CALL_OUTCOME_FAILED and call.direction == pb.CALL_DIRECTION_USER_INITIATED
    assert "the platform's SDP offer cannot carry the call" in call.end_reason
    assert sdp.ONE_AUDIO in call.end_reason
    # Never answered: the call was rejected on the platform, and the user's phone is hung up.
    await wait_until(
        lambda: wacall.sim.GetPhoneCall(sim_pb.GetPhoneCallRequest(platform_call_id=phone_call.platform_call_id)),
        lambda p: p.state == "ended" and not p.HasField("answered_at"),
    )


async def test_our_own_sdp_is_held_to_the_same_check_before_it_is_sent() -> None:
    offer, answer = await offer_and_answer()
    assert check_sdp(offer, "offer", "our") == offer
    with pytest.raises(SdpRefused, match=r"our SDP answer cannot carry the call: .*ICE credentials"):
        check_sdp(without(answer, "a=ice-ufrag"), "answer", "our")
