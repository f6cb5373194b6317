"""The ng client and the local engine against a real rtpengine (one per module, started by `LocalEngine`).

Audio is real both ways: aiortc peers (`AudioLeg`) with paced tones, and a plain RTP endpoint written here that
sends and hears G.711 µ-law. Pitch is measured by counting rising zero crossings.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import re
import signal
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import eventually

from wacall.clock import ManualClock
from wacall.media.bencode import decode
from wacall.media.engine_process import EngineSettings, EngineUnavailable, LocalEngine
from wacall.media.leg import AudioLeg
from wacall.media.rtpengine import (
    PLAIN_RTP_OFFER_TOWARD_WEBRTC_TRANSCODED,
    TOWARD_PLAIN_RTP,
    TOWARD_WEBRTC,
    WEBRTC_OFFER_TOWARD_PLAIN_RTP_TRANSCODED,
    EngineError,
    EnginePool,
    EngineTimeout,
    NgClient,
)
from wacall.media.sdp import ice_lite_in_media_sections, lines, with_crlf, without_webrtc_attributes
from wacall.media.tracks import SAMPLE_RATE, ToneSource, level

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

call_ids = (f"test-call-{n}" for n in itertools.count(1))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[LocalEngine]:
    async with LocalEngine(EngineSettings(port_count=200)) as local:
        yield local


def pitch(pcm: bytes) -> float:
    """The frequency of a tone in PCM16 mono at wacall's 48 kHz."""
    return pitch_at(pcm, SAMPLE_RATE)


def pitch_at(pcm: bytes, rate: int) -> float:
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm[: len(pcm) // 2 * 2])
    rising = sum(1 for a, b in itertools.pairwise(samples) if a < 0 <= b)
    return rising * rate / len(samples)


class Heard:
    """A frame handler for an `AudioLeg` that keeps the audible frames it is given."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def __call__(self, frame: bytes) -> None:
        if level(frame) > 0.05:
            self.frames.append(frame)


# G.711 µ-law (ITU-T G.711), written out: the test's RTP endpoint must not borrow the engine's codec.
ULAW_BIAS = 0x84
ULAW_CLIP = 32635


def ulaw_encode(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sign else sample, ULAW_CLIP) + ULAW_BIAS
    exponent = magnitude.bit_length() - 8
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | exponent << 4 | mantissa) & 0xFF


def ulaw_decode(byte: int) -> int:
    byte = ~byte & 0xFF
    magnitude = (((byte & 0x0F) << 3) + ULAW_BIAS) << ((byte >> 4) & 0x07)
    return ULAW_BIAS - magnitude if byte & 0x80 else magnitude - ULAW_BIAS


@dataclass
class PlainRtpPeer(asyncio.DatagramProtocol):
    """A plain RTP endpoint (a PBX's phone): PCMU, 20 ms packets of a tone at 8 kHz, and what it hears, decoded."""

    tone_hz: float
    heard: list[bytes] = field(default_factory=list)  # PCM16 at 8 kHz, one entry per PCMU packet received
    transport: asyncio.DatagramTransport | None = None
    remote: tuple[str, int] | None = None
    sender: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[1] & 0x7F != 0:  # PCMU only (telephone-event and others are not audio)
            return
        csrc_count = data[0] & 0x0F
        payload = data[12 + 4 * csrc_count :]
        self.heard.append(struct.pack(f"<{len(payload)}h", *(ulaw_decode(b) for b in payload)))

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def sdp(self) -> str:
        return with_crlf(
            [
                "v=0",
                "o=- 1 1 IN IP4 127.0.0.1",
                "s=-",
                "c=IN IP4 127.0.0.1",
                "t=0 0",
                f"m=audio {self.port} RTP/AVP 0",
                "a=rtpmap:0 PCMU/8000",
                "a=ptime:20",
                "a=sendrecv",
            ]
        )

    def send_to(self, sdp: str) -> None:
        """Start sending the tone to where `sdp` says, paced in real time."""
        port = re.search(r"^m=audio (\d+) ", sdp, re.MULTILINE)
        address = re.search(r"^c=IN IP4 (\S+)", sdp, re.MULTILINE)
        assert port and address, sdp
        self.remote = (address.group(1), int(port.group(1)))
        self.sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        assert self.transport is not None and self.remote is not None
        ssrc = random.getrandbits(32)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for sequence in itertools.count():
            samples = (
                round(0.3 * 32767 * math.sin(2 * math.pi * self.tone_hz * (sequence * 160 + i) / 8000))
                for i in range(160)
            )
            header = struct.pack("!BBHII", 0x80, 0, sequence & 0xFFFF, (sequence * 160) & 0xFFFFFFFF, ssrc)
            self.transport.sendto(header + bytes(ulaw_encode(s) for s in samples), self.remote)
            await asyncio.sleep(max(0.0, start + (sequence + 1) * 0.02 - loop.time()))

    async def close(self) -> None:
        if self.sender is not None:
            self.sender.cancel()
            await asyncio.gather(self.sender, return_exceptions=True)
        if self.transport is not None:
            self.transport.close()


async def plain_rtp_peer(tone_hz: float) -> PlainRtpPeer:
    _, peer = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: PlainRtpPeer(tone_hz), local_addr=("127.0.0.1", 0)
    )
    return peer


async def test_the_local_engine_answers_ping_from_its_own_ports(engine: LocalEngine) -> None:
    await engine.client.ping()
    assert engine.pid is not None
    assert engine.port_max - engine.port_min + 1 == 200


async def test_an_unknown_call_gets_rtpengines_own_error_reason(engine: LocalEngine) -> None:
    with pytest.raises(EngineError) as refused:
        await engine.client.query("no-such-call")
    assert refused.value.reason == "Unknown call-id"
    assert refused.value.command == "query"


async def test_webrtc_peers_relayed_through_the_engine_hear_each_other(engine: LocalEngine) -> None:
    before = await engine.client.session_count()
    call_id = next(call_ids)
    heard_by_caller, heard_by_callee = Heard(), Heard()
    caller = AudioLeg(name="caller", source=ToneSource(440), handlers=[heard_by_caller])
    callee = AudioLeg(name="callee", source=ToneSource(880), handlers=[heard_by_callee])
    try:
        offer = await engine.client.offer(call_id, "caller", await caller.create_offer(), TOWARD_WEBRTC)
        assert "127.0.0.1" in offer and "a=candidate" in offer
        answer = await callee.accept_offer(offer)
        await caller.apply_answer(await engine.client.answer(call_id, "caller", "callee", answer, TOWARD_WEBRTC))
        assert await engine.client.session_count() == before + 1
        assert call_id in await engine.client.list_calls()

        await eventually(lambda: len(heard_by_caller.frames) > 50 and len(heard_by_callee.frames) > 50, what="audio")
        assert caller.consumer is not None and callee.consumer is not None
        assert caller.consumer.mean_level > 0.05 and callee.consumer.mean_level > 0.05
        assert pitch(b"".join(heard_by_callee.frames[-40:])) == pytest.approx(440, rel=0.03)
        assert pitch(b"".join(heard_by_caller.frames[-40:])) == pytest.approx(880, rel=0.03)

        # The counters a no-audio watchdog reads grow while audio flows, from each party.
        first = await engine.client.query(call_id)
        await asyncio.sleep(0.5)
        second = await engine.client.query(call_id)
        assert set(second.tags) == {"caller", "callee"}
        for tag in ("caller", "callee"):
            assert second.rtp_packets_from(tag) >= first.rtp_packets_from(tag) + 15  # 25 frames in 0.5 s
            assert second.rtp_bytes_from(tag) > first.rtp_bytes_from(tag)

        await engine.client.delete(call_id)
        assert await engine.client.session_count() == before
        assert call_id not in await engine.client.list_calls()
        with pytest.raises(EngineError, match="Unknown call-id"):
            await engine.client.query(call_id)
    finally:
        await caller.close()
        await callee.close()


@pytest.mark.parametrize("offerer", ["plain RTP", "WebRTC"])
async def test_opus_and_pcmu_are_transcoded_and_each_side_hears_the_others_pitch(
    engine: LocalEngine, offerer: str
) -> None:
    before = await engine.client.session_count()
    call_id = next(call_ids)
    heard_by_webrtc = Heard()
    webrtc = AudioLeg(name="webrtc", source=ToneSource(600), handlers=[heard_by_webrtc])
    pbx = await plain_rtp_peer(1000)
    try:
        if offerer == "plain RTP":
            offer = await engine.client.offer(call_id, "pbx", pbx.sdp(), PLAIN_RTP_OFFER_TOWARD_WEBRTC_TRANSCODED)
            assert "opus/48000" in offer and "UDP/TLS/RTP/SAVPF" in offer
            answer = await webrtc.accept_offer(offer)
            toward_pbx = await engine.client.answer(call_id, "pbx", "webrtc", answer, TOWARD_PLAIN_RTP)
        else:
            offer = await webrtc.create_offer()
            toward_pbx = await engine.client.offer(call_id, "webrtc", offer, WEBRTC_OFFER_TOWARD_PLAIN_RTP_TRANSCODED)
            assert re.search(r"^m=audio \d+ RTP/AVP 0", toward_pbx, re.MULTILINE), toward_pbx
            answer = await engine.client.answer(call_id, "webrtc", "pbx", pbx.sdp(), TOWARD_WEBRTC)
            await webrtc.apply_answer(answer)
        toward_pbx = without_webrtc_attributes(toward_pbx)
        assert "a=fingerprint" not in toward_pbx and "a=candidate" not in toward_pbx
        pbx.send_to(toward_pbx)

        await eventually(lambda: len(heard_by_webrtc.frames) > 50 and len(pbx.heard) > 50, what="audio both ways")
        assert pitch(b"".join(heard_by_webrtc.frames[-40:])) == pytest.approx(1000, rel=0.03)
        heard_by_pbx = [frame for frame in pbx.heard[-60:] if level(frame) > 0.05]
        assert len(heard_by_pbx) >= 40
        assert pitch_at(b"".join(heard_by_pbx), 8000) == pytest.approx(600, rel=0.03)
    finally:
        await pbx.close()
        await webrtc.close()
        await engine.client.delete(call_id)
    assert await engine.client.session_count() == before


@pytest.mark.parametrize("fixed", [False, True])
async def test_an_ice_lite_offer_makes_the_engine_ice_controlling_only_with_the_fix(
    engine: LocalEngine, fixed: bool
) -> None:
    """An offerer that writes `a=ice-lite` at session level, as the platform does: rtpengine must take the
    controlling role toward it (a lite peer never nominates). rtpengine 10.5 sees the flag only in the media
    section. (aiortc cannot act as an ICE-lite agent, so the completion itself against a lite peer is not run.)"""
    call_id = next(call_ids)
    leg = AudioLeg(name="lite")
    try:
        sdp_lines = lines(await leg.create_offer())
        sdp_lines.insert(sdp_lines.index("t=0 0") + 1, "a=ice-lite")
        offer = with_crlf(sdp_lines)
        await engine.client.offer(
            call_id, "platform", ice_lite_in_media_sections(offer) if fixed else offer, TOWARD_WEBRTC
        )
        toward_platform = {
            flag for s in (await engine.client.query(call_id)).streams if s.tag == "platform" for flag in s.media_flags
        }
        assert ("ICE-lite peer" in toward_platform) is fixed
        assert ("ICE controlling" in toward_platform) is fixed
    finally:
        await engine.client.delete(call_id)
        await leg.close()


class DroppingProxy(asyncio.DatagramProtocol):
    """A UDP proxy in front of the engine's ng port that drops the first `drop` requests it is given."""

    def __init__(self, target: tuple[str, int], drop: int) -> None:
        self.target = target
        self.drop = drop
        self.requests: list[bytes] = []
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.target:
            if self.client is not None:
                self.transport.sendto(data, self.client)
            return
        self.client = addr
        self.requests.append(data)
        if len(self.requests) > self.drop:
            self.transport.sendto(data, self.target)


async def proxied_client(target: tuple[str, int], drop: int) -> tuple[NgClient, DroppingProxy]:
    transport, proxy = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: DroppingProxy(target, drop), local_addr=("127.0.0.1", 0)
    )
    client = await NgClient.connect(transport.get_extra_info("sockname"), retry_interval=0.05, attempts=3)
    return client, proxy


async def test_a_lost_request_is_sent_again_with_the_same_cookie(engine: LocalEngine) -> None:
    client, proxy = await proxied_client(("127.0.0.1", engine.ng_port), drop=1)
    try:
        await client.ping()
        assert len(proxy.requests) == 2
        assert proxy.requests[0] == proxy.requests[1]
        cookie, _, body = proxy.requests[0].partition(b" ")
        assert cookie and decode(body) == {b"command": b"ping"}
        await client.ping()  # the next request has a cookie of its own
        assert proxy.requests[2].partition(b" ")[0] != cookie
    finally:
        await client.close()
        assert proxy.transport is not None
        proxy.transport.close()


async def test_a_silent_engine_is_a_timeout_not_an_error_reply(engine: LocalEngine) -> None:
    client, proxy = await proxied_client(("127.0.0.1", engine.ng_port), drop=1000)
    try:
        with pytest.raises(EngineTimeout):
            await client.ping()
        assert len(proxy.requests) == 3 and len(set(proxy.requests)) == 1  # every attempt, one cookie
    finally:
        await client.close()
        assert proxy.transport is not None
        proxy.transport.close()


async def test_a_dead_engine_is_taken_out_of_rotation_and_its_calls_stay_pinned(engine: LocalEngine) -> None:
    silent, proxy = await proxied_client(("127.0.0.1", engine.ng_port), drop=1000)
    clock = ManualClock()
    pool = EnginePool([silent, engine.client], clock, ping_timeout=timedelta(seconds=1))
    try:
        assert pool.engine_for("early") is silent  # first in order while both are alive and idle
        assert pool.engine_for("second") is engine.client  # the least loaded
        await pool.check()
        assert not pool.alive(silent) and pool.alive(engine.client)
        assert pool.dead_since(silent) == clock.now()
        assert {pool.engine_for(f"later-{n}") for n in range(5)} == {engine.client}
        assert pool.engine_for("early") is silent  # its media lives there
        pool.release("early")
        proxy.drop = 0  # the engine answers again
        await pool.check()
        assert pool.alive(silent) and pool.dead_since(silent) is None
        assert pool.engine_for("after-recovery") is silent  # now the least loaded
    finally:
        await silent.close()
        assert proxy.transport is not None
        proxy.transport.close()


async def test_a_pool_with_every_engine_dead_refuses_new_calls(engine: LocalEngine) -> None:
    from wacall.media.rtpengine import NoEngineAvailable

    silent, proxy = await proxied_client(("127.0.0.1", engine.ng_port), drop=1000)
    pool = EnginePool([silent], ManualClock(), ping_timeout=timedelta(seconds=1))
    try:
        await pool.check()
        with pytest.raises(NoEngineAvailable):
            pool.engine_for("any")
    finally:
        await silent.close()
        assert proxy.transport is not None
        proxy.transport.close()


async def test_a_missing_binary_says_what_to_install() -> None:
    with pytest.raises(EngineUnavailable, match="apt-get install --no-install-recommends rtpengine-daemon"):
        await LocalEngine(EngineSettings(binary="rtpengine-not-installed-here")).start()


async def test_an_engine_that_dies_is_started_again_on_the_same_ng_port() -> None:
    async with LocalEngine(EngineSettings(port_count=50, restart_backoff=(0.1,))) as local:
        first = local.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: local.restarts == 1 and local.pid not in (None, first), what="a restart")
        await local.client.ping()
        pid = local.pid
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped on leaving the context


async def test_several_engines_run_side_by_side(engine: LocalEngine) -> None:
    async with LocalEngine(EngineSettings(port_count=50)) as other:
        assert other.ng_port != engine.ng_port
        assert other.port_max < engine.port_min or other.port_min > engine.port_max
        await other.client.ping()
        await engine.client.ping()


async def test_an_engine_that_never_answers_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    """A process that ignores SIGTERM and never answers ping (a stand-in for a wedged rtpengine)."""
    pidfile = tmp_path / "pid"
    wedged = tmp_path / "wedged-rtpengine"
    wedged.write_text(f"#!/bin/sh\ntrap '' TERM\necho $$ > {pidfile}\nwhile :; do sleep 0.1; done\n")
    wedged.chmod(0o755)
    settings = EngineSettings(binary=str(wedged), port_count=10, start_timeout=0.5, stop_grace=0.3)
    with pytest.raises(EngineUnavailable, match=r"did not answer ping within 0\.5 s"):
        await LocalEngine(settings).start()
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
