"""The engine legs toward a PBX, against a real rtpengine: an aiortc peer plays the WhatsApp user (Opus, WebRTC) and
a plain RTP endpoint written in the tests plays the PBX's phone (G.711 µ-law), each saying its own tone; each must
hear the other's at its pitch, through rtpengine's transcoding.

Both ways in: a user's call answered by the PBX (`accept_offer`), and a business call whose PBX is invited only
after the user picked up (`create_offer` with a placeholder, then `bridge`), where the WebRTC side the platform
holds must not change."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from conftest import eventually
from test_rtpengine import Heard, PlainRtpPeer, pitch, pitch_at, plain_rtp_peer

from wacall.clock import ManualClock
from wacall.media.engine_leg import EngineBridgeUnavailable
from wacall.media.engine_process import EngineSettings, LocalEngine
from wacall.media.engine_sip_legs import (
    PLACEHOLDER_ADDRESS,
    EngineSipLeg,
    placeholder_offer,
    toward_pbx,
    webrtc_identity,
)
from wacall.media.leg import AudioLeg
from wacall.media.rtp_tone import RINGBACK_HZ
from wacall.media.rtpengine import EnginePool, NgClient
from wacall.media.sdp import lines, with_crlf
from wacall.media.tracks import ToneSource, level

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

call_ids = (f"sip-leg-{n}" for n in itertools.count(1))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[LocalEngine]:
    async with LocalEngine(EngineSettings(port_count=100)) as local:
        yield local


def pool_of(engine: LocalEngine) -> EnginePool[NgClient]:
    return EnginePool([engine.client], ManualClock())


def with_session_ice_lite(sdp: str) -> str:
    """The SDP as the platform writes it: `a=ice-lite` at session level."""
    sdp_lines = lines(sdp)
    sdp_lines.insert(sdp_lines.index("t=0 0") + 1, "a=ice-lite")
    return with_crlf(sdp_lines)


class Pbx:
    """A PBX that answers every offer with its RTP endpoint's SDP and starts sending its tone where the offer says;
    the offers it was given are kept."""

    def __init__(self, phone: PlainRtpPeer) -> None:
        self.phone = phone
        self.offers: list[str] = []

    async def answer(self, offer: str) -> str:
        self.offers.append(offer)
        self.phone.send_to(offer)
        return self.phone.sdp()


async def hear_each_other(user: Heard, pbx: PlainRtpPeer, user_hz: float, pbx_hz: float) -> None:
    await eventually(lambda: len(user.frames) > 50 and len(pbx.heard) > 50, what="audio both ways")
    assert pitch(b"".join(user.frames[-40:])) == pytest.approx(pbx_hz, rel=0.03)
    heard_by_pbx = [frame for frame in pbx.heard[-60:] if level(frame) > 0.05]
    assert len(heard_by_pbx) >= 40
    assert pitch_at(b"".join(heard_by_pbx), 8000) == pytest.approx(user_hz, rel=0.03)


async def test_the_pbx_is_offered_the_trunks_codecs() -> None:
    assert toward_pbx(["PCMA", "PCMU"])["codec"] == {"transcode": ["PCMA", "PCMU"], "mask": ["opus"]}
    assert toward_pbx(["opus", "PCMU"])["codec"] == {"transcode": ["PCMU"]}
    offer = placeholder_offer(["PCMA", "opus"])
    assert f"m=audio {PLACEHOLDER_ADDRESS[1]} RTP/AVP 8\r\n" in offer and "a=rtpmap:8 PCMA/8000" in offer


async def test_what_the_platform_holds_of_our_side_is_compared_line_by_line() -> None:
    ours = with_crlf(
        ["v=0", "m=audio 30000 UDP/TLS/RTP/SAVPF 96", "a=ice-ufrag:abcd", "a=ice-pwd:secret", "a=setup:actpass"]
    )
    same = ours.replace("a=setup:actpass", "a=setup:passive").replace(" 96", " 96 97")
    assert webrtc_identity(same) == webrtc_identity(ours) == ["m=audio 30000", "a=ice-ufrag:abcd", "a=ice-pwd:secret"]
    assert webrtc_identity(ours.replace("abcd", "efgh")) != webrtc_identity(ours)
    assert webrtc_identity(ours.replace("30000", "30002")) != webrtc_identity(ours)


async def test_a_users_call_is_answered_by_the_pbx_with_audio_both_ways(engine: LocalEngine) -> None:
    before = await engine.client.session_count()
    heard_by_user = Heard()
    user = AudioLeg(name="user", source=ToneSource(600), handlers=[heard_by_user])
    pbx = Pbx(await plain_rtp_peer(1000))
    leg = EngineSipLeg(pool_of(engine), next(call_ids), ["PCMA", "PCMU"], pbx.answer)
    try:
        answer = await leg.accept_offer(with_session_ice_lite(await user.create_offer()))
        await user.apply_answer(answer)
        # The PBX got plain RTP with its first codec and nothing only a WebRTC peer reads.
        (offer,) = pbx.offers
        assert "RTP/AVP 8 0" in offer and "a=fingerprint" not in offer and "a=ssrc" not in offer
        assert "UDP/TLS/RTP/SAVPF" in answer and "opus/48000" in answer
        await hear_each_other(heard_by_user, pbx.phone, 600, 1000)
        assert await leg.first_audio()
        await eventually(lambda: leg.counters().audible_frames_received > 20, what="the engine's counters")
        assert leg.counters().frames_sent > 20  # what the engine received from the PBX, relayed to the user
    finally:
        await leg.close()
        await pbx.phone.close()
        await user.close()
    assert await engine.client.session_count() == before


async def test_a_pbx_that_refuses_a_users_call_leaves_nothing_in_the_engine(engine: LocalEngine) -> None:
    before = await engine.client.session_count()
    user = AudioLeg(name="user")

    async def busy(offer: str) -> str:
        raise LookupError("486 Busy Here")

    leg = EngineSipLeg(pool_of(engine), next(call_ids), ["PCMU"], busy)
    try:
        with pytest.raises(LookupError, match="486"):
            await leg.accept_offer(await user.create_offer())
        assert await engine.client.session_count() == before + 1
    finally:
        await leg.close()
        await user.close()
    assert await engine.client.session_count() == before
    assert not await leg.first_audio()


async def test_the_platforms_telephone_event_reaches_the_pbx_at_8000_hz(engine: LocalEngine) -> None:
    """RFC 4733 DTMF: the platform offers telephone-event/48000 beside Opus; the PBX is offered telephone-event/8000
    beside G.711. (The simulator's aiortc phones send no DTMF, so only the negotiation is shown here.)"""
    user = AudioLeg(name="user")
    offers: list[str] = []

    async def pbx_that_looks_and_refuses(offer: str) -> str:
        offers.append(offer)
        raise LookupError("603 Decline")

    leg = EngineSipLeg(pool_of(engine), next(call_ids), ["PCMU"], pbx_that_looks_and_refuses)
    try:
        offer = lines(await user.create_offer())
        media = next(i for i, line in enumerate(offer) if line.startswith("m=audio"))
        offer[media] += " 101"
        offer += ["a=rtpmap:101 telephone-event/48000", "a=fmtp:101 0-15"]
        with pytest.raises(LookupError):
            await leg.accept_offer(with_crlf(offer))
        (to_pbx,) = offers
        assert "a=rtpmap:0 PCMU/8000" in to_pbx and re.search(r"a=rtpmap:\d+ telephone-event/8000", to_pbx)
    finally:
        await leg.close()
        await user.close()


async def test_a_business_call_bridges_the_pbx_after_pickup_without_changing_the_platforms_side(
    engine: LocalEngine,
) -> None:
    before = await engine.client.session_count()
    heard_by_user = Heard()
    user = AudioLeg(name="user", source=ToneSource(700), handlers=[heard_by_user])
    pbx = Pbx(await plain_rtp_peer(400))

    async def no_dial_yet(offer: str) -> str:
        raise AssertionError("a business call dials the PBX only through bridge()")

    leg = EngineSipLeg(pool_of(engine), next(call_ids), ["PCMU", "PCMA"], no_dial_yet)
    try:
        offer = await leg.create_offer()
        assert "opus/48000" in offer and "PCMU" not in offer and "a=fingerprint:sha-256" in offer
        await leg.apply_answer(with_session_ice_lite(await user.accept_offer(offer)))
        # The user picks up and talks: the engine hears them before any PBX exists, and they hear ringback
        # (the platform drops a call without media), from the placeholder's own RTP source.
        assert await leg.first_audio()
        assert not pbx.offers
        await eventually(lambda: len(heard_by_user.frames) > 20, what="ringback")
        assert pitch(b"".join(heard_by_user.frames[-20:])) == pytest.approx(RINGBACK_HZ, rel=0.03)

        await leg.bridge(pbx.answer)
        (pbx_offer,) = pbx.offers
        assert "RTP/AVP 0 8" in pbx_offer and "a=candidate" not in pbx_offer
        assert not leg.ringback.sending  # the PBX's media takes over
        await hear_each_other(heard_by_user, pbx.phone, 700, 400)
        # The platform's side was kept across the re-offer (bridge() raises WebRtcSideChanged else).
        assert leg.bridged
    finally:
        await leg.close()
        await pbx.phone.close()
        await user.close()
    assert await engine.client.session_count() == before


async def test_bridging_before_the_platform_answered_is_refused(engine: LocalEngine) -> None:
    pbx = Pbx(await plain_rtp_peer(400))
    leg = EngineSipLeg(pool_of(engine), next(call_ids), ["PCMU"], pbx.answer)
    try:
        await leg.create_offer()
        with pytest.raises(EngineBridgeUnavailable, match="has not answered"):
            await leg.bridge(pbx.answer, answer_wait=0.2)
        assert not pbx.offers
    finally:
        await leg.close()
        await pbx.phone.close()


async def test_a_pickup_seen_before_the_platforms_answer_bridges_once_the_answer_is_in(engine: LocalEngine) -> None:
    pbx = Pbx(await plain_rtp_peer(400))
    user = AudioLeg(name="user", source=ToneSource(700))
    leg = EngineSipLeg(pool_of(engine), next(call_ids), ["PCMU"], pbx.answer)
    try:
        offer = await leg.create_offer()
        bridging = asyncio.ensure_future(leg.bridge(pbx.answer))  # CONNECT handled before ACCEPTED (HOOK-2)
        await asyncio.sleep(0.1)
        assert not bridging.done() and not pbx.offers
        await leg.apply_answer(with_session_ice_lite(await user.accept_offer(offer)))
        await bridging
        assert len(pbx.offers) == 1 and leg.bridged
    finally:
        await leg.close()
        await pbx.phone.close()
        await user.close()


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_ringback_reaches_the_user_in_the_trunks_codec_until_the_call_ends(
    engine: LocalEngine, codec: str
) -> None:
    heard_by_user = Heard()
    user = AudioLeg(name="user", handlers=[heard_by_user])

    async def no_dial(offer: str) -> str:
        raise AssertionError("no PBX in this test")

    leg = EngineSipLeg(pool_of(engine), next(call_ids), [codec], no_dial)
    try:
        offer = await leg.create_offer()
        assert f"RTP/AVP {8 if codec == 'PCMA' else 0}" in placeholder_offer([codec], leg.ringback.address)
        await leg.apply_answer(with_session_ice_lite(await user.accept_offer(offer)))
        await eventually(lambda: len(heard_by_user.frames) > 20, what="ringback")
        assert pitch(b"".join(heard_by_user.frames[-20:])) == pytest.approx(RINGBACK_HZ, rel=0.03)
    finally:
        await leg.close()
        await user.close()
    assert not leg.ringback.sending


@pytest.mark.parametrize("garbage", ["not an SDP at all", "v=0\r\nm=audio x RTP/AVP\r\n"])
async def test_a_pbx_answer_the_engine_cannot_read_is_refused_cleanly(engine: LocalEngine, garbage: str) -> None:
    before = await engine.client.session_count()
    user, placed_to = AudioLeg(name="user"), AudioLeg(name="user placed to")

    async def pbx(offer: str) -> str:
        return garbage

    answering = EngineSipLeg(pool_of(engine), next(call_ids), ["PCMU"], pbx)
    placing = EngineSipLeg(pool_of(engine), next(call_ids), ["PCMU"], pbx)
    try:
        with pytest.raises(EngineBridgeUnavailable):
            await answering.accept_offer(await user.create_offer())
        await placing.apply_answer(await placed_to.accept_offer(await placing.create_offer()))
        with pytest.raises(EngineBridgeUnavailable):
            await placing.bridge(pbx)
        assert not placing.bridged
    finally:
        for leg in (answering, placing):
            await leg.close()
        await user.close()
        await placed_to.close()
    assert await engine.client.session_count() == before
