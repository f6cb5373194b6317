"""Media: SDP as the platform wants it, the paced audio plumbing, and a real aiortc leg pair.

References: whatsapp-calling.md §9 (media requirements); pitfalls SDP-1..SDP-8, ICE-1, MEDIA-1, MEDIA-4.
The aiortc tests use the machine's real host addresses (aioice skips 127.0.0.1, MEDIA-6).
"""

from __future__ import annotations

import asyncio
import math
import re
import struct
import time
import wave
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from wacall.media import sdp as sdp_mod
from wacall.media.leg import AudioLeg
from wacall.media.sdp import only_sha256_fingerprint, platform_problems
from wacall.media.tracks import (
    FRAME_BYTES,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SILENCE,
    BufferSource,
    Framer,
    PacedAudioTrack,
    PcmResampler,
    QueueSource,
    ToneSource,
    decode_file,
    level,
)

SHA256_LINE = re.compile(r"^a=fingerprint:sha-256 (?:[0-9A-F]{2}:){31}[0-9A-F]{2}$")
NO_FINGERPRINT = "No fingerprint found in SDP"
NOT_SHA256 = "Fingerprint algo is not SHA256"
NO_OPUS = "No Opus codec found in SDP"
ONE_AUDIO = "SDP must contain exactly one audio media section"


def tone_pcm(frequency: float, rate: int, seconds: float, amplitude: float = 0.3) -> bytes:
    count = int(rate * seconds)
    peak = int(32767 * amplitude)
    return struct.pack(f"<{count}h", *(int(peak * math.sin(2 * math.pi * frequency * i / rate)) for i in range(count)))


def sine_rms(amplitude: float) -> float:
    return int(32767 * amplitude) / math.sqrt(2) / 32768


def sdp_lines(sdp: str) -> list[str]:
    return sdp.split("\r\n")[:-1]


def fingerprint_lines(sdp: str) -> list[str]:
    return [line for line in sdp_lines(sdp) if line.startswith("a=fingerprint:")]


async def raw_aiortc_sdp(*kinds: str) -> str:
    """A local description straight from aiortc: one fingerprint line per digest, every default codec."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for kind in kinds or ("audio",):
            pc.addTransceiver(kind, direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def frame_pcm(frame: object) -> bytes:
    return bytes(frame.planes[0])[: frame.samples * 2]  # type: ignore[attr-defined]


# --- SDP (SDP-1..SDP-4, SDP-8, ICE-1) ---------------------------------------------------------------------------


async def test_our_offer_is_what_the_platform_accepts() -> None:
    leg = AudioLeg(name="t")
    try:
        offer = await leg.create_offer()
    finally:
        await leg.close()
    # SDP-3: CRLF everywhere, ending with CRLF, no bare LF or CR.
    assert offer.endswith("\r\n")
    assert "\n" not in offer.replace("\r\n", "") and "\r" not in offer.replace("\r\n", "")
    body = sdp_lines(offer)
    # SDP-1: exactly one fingerprint, sha-256, upper-case hex with colons.
    fingerprints = fingerprint_lines(offer)
    assert len(fingerprints) == 1
    assert SHA256_LINE.match(fingerprints[0]), fingerprints[0]
    # SDP-4 and §9: one audio m-line whose every payload type is opus/48000/2.
    m_lines = [line for line in body if line.startswith("m=")]
    assert len(m_lines) == 1 and m_lines[0].startswith("m=audio ")
    payload_types = m_lines[0].split()[3:]
    rtpmaps = {line.split()[0].removeprefix("a=rtpmap:"): line.split()[1] for line in body if "a=rtpmap:" in line}
    assert payload_types and all(rtpmaps[pt].lower() == "opus/48000/2" for pt in payload_types)
    assert set(rtpmaps) == set(payload_types)
    # SDP-8, §9 and ICE-1: sendrecv, rtcp-mux, and never ice-lite ourselves.
    assert "a=sendrecv" in body
    assert "a=rtcp-mux" in body
    assert not any(line.startswith("a=ice-lite") for line in body)
    assert platform_problems(offer, "offer") == []


async def test_raw_aiortc_sdp_has_extra_fingerprints_the_platform_refuses() -> None:
    raw = await raw_aiortc_sdp()
    algorithms = [line.split()[0].removeprefix("a=fingerprint:") for line in fingerprint_lines(raw)]
    assert sorted(algorithms) == ["sha-256", "sha-384", "sha-512"]
    assert platform_problems(raw, "offer") == [NOT_SHA256]


async def test_trimming_a_raw_aiortc_sdp_leaves_exactly_the_sha256_fingerprint() -> None:
    raw = await raw_aiortc_sdp()
    trimmed = only_sha256_fingerprint(raw)
    assert platform_problems(trimmed, "offer") == []
    fingerprints = fingerprint_lines(trimmed)
    assert len(fingerprints) == 1 and SHA256_LINE.match(fingerprints[0])
    # The fingerprint kept is aiortc's own sha-256 line, so it still matches the certificate.
    assert fingerprints[0] in raw.split("\r\n")


async def test_trimming_keeps_every_other_line_byte_identical() -> None:
    raw = await raw_aiortc_sdp()
    trimmed = only_sha256_fingerprint(raw)
    dropped = [
        line
        for line in raw.split("\r\n")
        if line.startswith("a=fingerprint:") and not line.startswith("a=fingerprint:sha-256 ")
    ]
    assert len(dropped) == 2
    assert sdp_lines(trimmed) == [line for line in sdp_lines(raw) if line not in dropped]
    assert trimmed == raw.replace("".join(f"{line}\r\n" for line in dropped), "")
    assert only_sha256_fingerprint(trimmed) == trimmed  # idempotent


async def test_trimming_writes_crlf_even_from_lf_input() -> None:
    raw = await raw_aiortc_sdp()
    trimmed = only_sha256_fingerprint(raw.replace("\r\n", "\n"))
    assert trimmed == only_sha256_fingerprint(raw)
    assert "\n" not in trimmed.replace("\r\n", "")


async def test_sdp_without_fingerprint_is_refused() -> None:
    raw = await raw_aiortc_sdp()
    stripped = sdp_mod.with_crlf([line for line in sdp_lines(raw) if not line.startswith("a=fingerprint:")])
    assert platform_problems(stripped, "offer") == [NO_FINGERPRINT]


async def test_sdp_without_opus_is_refused() -> None:
    trimmed = only_sha256_fingerprint(await raw_aiortc_sdp())
    no_opus = sdp_mod.with_crlf([line for line in sdp_lines(trimmed) if "opus/48000" not in line.lower()])
    assert platform_problems(no_opus, "offer") == [NO_OPUS]


@pytest.mark.parametrize("kinds", [("audio", "audio"), ("audio", "video")], ids=["two-audio", "audio-video"])
async def test_sdp_with_two_media_sections_is_refused(kinds: tuple[str, ...]) -> None:
    trimmed = only_sha256_fingerprint(await raw_aiortc_sdp(*kinds))
    assert len([line for line in sdp_lines(trimmed) if line.startswith("m=")]) == 2
    assert platform_problems(trimmed, "offer") == [ONE_AUDIO]


def test_lower_case_sha256_algorithm_name_counts_as_sha256() -> None:
    sdp = sdp_mod.with_crlf(
        [
            "v=0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=rtcp-mux",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:abcdefghijklmnopqrstuv",
            "a=rtpmap:111 opus/48000/2",
            "a=fingerprint:SHA-256 " + "AB:" * 31 + "AB",
        ]
    )
    assert platform_problems(sdp, "offer") == []
    assert only_sha256_fingerprint(sdp) == sdp


# --- sources ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amplitude", [0.1, 0.3, 0.8])
def test_tone_frames_are_20ms_of_pcm16_at_the_amplitudes_rms(amplitude: float) -> None:
    source = ToneSource(frequency=1000, amplitude=amplitude)  # 20 whole cycles per frame
    for _ in range(5):
        frame = source.next_frame()
        assert frame is not None and len(frame) == FRAME_BYTES == 1920
        assert level(frame) == pytest.approx(sine_rms(amplitude), rel=0.01)
    assert not source.finished


def test_tone_is_continuous_across_frames() -> None:
    source = ToneSource(frequency=440, amplitude=0.5)
    joined = b"".join(source.next_frame() or b"" for _ in range(3))
    assert joined == tone_pcm(440, SAMPLE_RATE, 3 * FRAME_SAMPLES / SAMPLE_RATE, amplitude=0.5)


@pytest.mark.parametrize("seconds", [0.02, 0.1, 0.5, 1.0, 0.58, 1.14, 2.3])
def test_a_timed_tone_finishes_after_seconds_over_20ms_frames(seconds: float) -> None:
    source = ToneSource(seconds=seconds)
    expected = round(seconds / 0.02)
    frames = 0
    while source.next_frame() is not None:
        frames += 1
        assert frames <= expected + 5, "never finished"
    assert frames == expected
    assert source.finished
    assert source.next_frame() is None


def test_buffer_source_plays_once_and_pads_the_last_frame() -> None:
    pcm = (bytes(range(256)) * 16)[: 2 * FRAME_BYTES + 100]  # two full frames and 100 bytes of a third
    source = BufferSource(pcm)
    frames = [source.next_frame(), source.next_frame(), source.next_frame()]
    assert all(f is not None and len(f) == FRAME_BYTES for f in frames)
    assert b"".join(f or b"" for f in frames) == pcm + bytes(FRAME_BYTES - 100)
    assert source.finished and source.next_frame() is None


def numbered_frames(count: int) -> list[bytes]:
    return [n.to_bytes(2, "little") * (FRAME_BYTES // 2) for n in range(count)]


def test_queue_source_drops_the_oldest_frames_when_full_and_counts_them() -> None:
    source = QueueSource(max_frames=3)
    assert source.next_frame() is None  # the track is taking frames: its leg is connected
    frames = numbered_frames(5)
    for frame in frames:
        source.push(frame)
    assert source.dropped == 2
    assert [source.next_frame() for _ in range(3)] == frames[2:]
    assert source.next_frame() is None
    assert not source.finished  # empty, but the producer has not closed it
    source.push(frames[0])
    source.closed = True
    assert not source.finished
    assert source.next_frame() == frames[0]
    assert source.finished
    assert source.dropped == 2


def test_queue_source_keeps_only_the_newest_frame_until_its_leg_connects() -> None:
    # The business talks while the user's leg is still connecting: none of that can be heard in time, and played
    # later it would lag everything the business says after it for the rest of the call.
    source = QueueSource(max_frames=10)
    frames = numbered_frames(8)
    for frame in frames:
        source.push(frame)
    assert source.waiting == 1 and source.dropped == 7
    assert source.next_frame() == frames[-1]  # the user hears the business from the moment the leg connects
    assert source.next_frame() is None
    later = numbered_frames(12)[8:]
    for frame in later:
        source.push(frame)
    assert [source.next_frame() for _ in range(4)] == later  # connected: nothing more is dropped
    assert source.dropped == 7


def test_queue_source_drops_a_standing_delay_after_a_burst() -> None:
    # A burst leaves 6 frames queued; the producer then keeps pace with the track (one frame pushed before each one
    # taken), so those 120 ms would be heard late for good. After a whole window (50 frames taken, 1 s) in which
    # the queue never ran shorter than 7, it is cut to the target: the frame pushed is the next one taken.
    source = QueueSource(max_frames=10, target_frames=1, window_frames=50)
    pushed = iter(numbered_frames(200))
    for _ in range(50):  # one window of a quiet producer
        source.next_frame()
    for _ in range(6):
        source.push(next(pushed))
    depths = []
    for _ in range(70):
        source.push(next(pushed))
        depths.append(source.waiting)
        source.next_frame()
    assert depths[:50] == [7] * 50  # the burst stands while the producer keeps pace
    assert depths[50:] == [1] * 20  # then no frame waits longer than the track's own 20 ms cadence
    assert source.dropped == 6


def test_queue_source_keeps_every_frame_of_a_program_writing_chunks_in_real_time() -> None:
    # 100 ms written at once every 100 ms: the queue empties before each chunk, so it holds no standing delay.
    source = QueueSource(max_frames=25, target_frames=1, window_frames=50)
    frames = numbered_frames(500)
    assert source.next_frame() is None  # the leg is connected when the program starts
    played = []
    for chunk in range(100):
        for frame in frames[chunk * 5 : chunk * 5 + 5]:
            source.push(frame)
        played += [source.next_frame() for _ in range(5)]
    assert played == frames and source.dropped == 0


def test_level_of_silence_is_zero_and_of_full_scale_is_one() -> None:
    assert level(SILENCE) == 0.0
    assert level(b"") == 0.0
    assert level(struct.pack("<4h", -32768, -32768, -32768, -32768)) == 1.0


# --- the paced track (MEDIA-1, SDP-6) ---------------------------------------------------------------------------


async def recv_pcm(track: PacedAudioTrack) -> bytes:
    # Generous bound: a frame is due every 20 ms; recv() must never wait on its source.
    frame = await asyncio.wait_for(track.recv(), timeout=1.0)
    assert frame.samples == FRAME_SAMPLES and frame.sample_rate == SAMPLE_RATE
    return frame_pcm(frame)


async def test_paced_track_sends_silence_when_the_source_has_nothing() -> None:
    track = PacedAudioTrack(QueueSource())
    try:
        for _ in range(3):
            pcm = await recv_pcm(track)
            assert len(pcm) == FRAME_BYTES and level(pcm) == 0.0
        assert track.frames_sent == 3 and track.audible_frames_sent == 0
    finally:
        track.stop()


async def test_paced_track_without_a_source_sends_silence() -> None:
    track = PacedAudioTrack()
    try:
        assert level(await recv_pcm(track)) == 0.0
    finally:
        track.stop()


async def test_paced_track_never_waits_on_an_empty_source() -> None:
    source = QueueSource()
    track = PacedAudioTrack(source)
    try:
        started = time.monotonic()
        for _ in range(10):
            await recv_pcm(track)
        # 10 frames are 200 ms of audio; only a gross stall would come near this bound.
        assert time.monotonic() - started < 5.0
        source.push(tone_pcm(1000, SAMPLE_RATE, 0.02))
        assert level(await recv_pcm(track)) > 0.1
    finally:
        track.stop()


async def test_paced_track_timestamps_advance_by_one_frame() -> None:
    track = PacedAudioTrack(ToneSource())
    try:
        stamps = [(await asyncio.wait_for(track.recv(), timeout=1.0)).pts for _ in range(4)]
        assert stamps == [0, FRAME_SAMPLES, 2 * FRAME_SAMPLES, 3 * FRAME_SAMPLES]
    finally:
        track.stop()


async def test_swapping_the_source_takes_effect_on_the_next_frame() -> None:
    track = PacedAudioTrack()
    try:
        assert level(await recv_pcm(track)) == 0.0
        track.set_source(ToneSource(frequency=1000, amplitude=0.5))
        assert level(await recv_pcm(track)) == pytest.approx(sine_rms(0.5), rel=0.01)
        track.set_source(ToneSource(frequency=1000, amplitude=0.1))
        assert level(await recv_pcm(track)) == pytest.approx(sine_rms(0.1), rel=0.01)
        track.set_source(QueueSource())
        assert level(await recv_pcm(track)) == 0.0
        assert track.audible_frames_sent == 2
    finally:
        track.stop()


async def test_a_stopped_track_ends_the_stream() -> None:
    track = PacedAudioTrack(ToneSource())
    await recv_pcm(track)
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(track.recv(), timeout=1.0)


# --- resampling, framing, decoding ------------------------------------------------------------------------------


def middle(pcm: bytes, fraction: float = 0.25) -> bytes:
    """The PCM without its first and last `fraction` (resampler start-up and tail)."""
    samples = len(pcm) // 2
    cut = int(samples * fraction)
    return pcm[cut * 2 : (samples - cut) * 2]


def test_resampling_down_and_up_keeps_a_tones_level_and_scales_sizes() -> None:
    original = tone_pcm(440, 48000, 1.0)
    down, up = PcmResampler(48000, 16000), PcmResampler(16000, 48000)
    low = b"".join(down.convert(original[i : i + FRAME_BYTES]) for i in range(0, len(original), FRAME_BYTES))
    assert len(low) % 2 == 0
    assert len(low) == pytest.approx(len(original) / 3, rel=0.05)
    chunk = FRAME_BYTES // 3  # 20 ms at 16 kHz
    high = b"".join(up.convert(low[i : i + chunk]) for i in range(0, len(low), chunk))
    assert len(high) == pytest.approx(len(low) * 3, rel=0.05)
    expected = level(original)
    assert level(middle(low)) == pytest.approx(expected, rel=0.2)
    assert level(middle(high)) == pytest.approx(expected, rel=0.2)


def test_resampler_is_the_identity_when_rates_match() -> None:
    pcm = tone_pcm(440, 16000, 0.1)
    assert PcmResampler(16000, 16000).convert(pcm) == pcm
    assert PcmResampler(48000, 16000).convert(b"") == b""


def test_framer_cuts_exact_frames_and_keeps_the_remainder() -> None:
    framer = Framer()
    data = bytes(i % 251 for i in range(3 * FRAME_BYTES + 500))
    frames = framer.push(data[:700])
    assert frames == []
    frames = framer.push(data[700 : 2 * FRAME_BYTES + 10])
    assert frames == [data[:FRAME_BYTES], data[FRAME_BYTES : 2 * FRAME_BYTES]]
    frames = framer.push(data[2 * FRAME_BYTES + 10 :])
    assert frames == [data[2 * FRAME_BYTES : 3 * FRAME_BYTES]]
    assert framer.push(bytes(FRAME_BYTES - 500)) == [data[3 * FRAME_BYTES :] + bytes(FRAME_BYTES - 500)]


def test_framer_with_a_custom_frame_size() -> None:
    framer = Framer(frame_bytes=640)
    frames = framer.push(bytes(2000))
    assert [len(f) for f in frames] == [640, 640, 640]


def test_decode_file_turns_a_16k_wav_into_48k_mono_pcm(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(tone_pcm(440, 16000, 1.0))
    pcm = decode_file(str(path))
    assert len(pcm) % 2 == 0
    assert len(pcm) == pytest.approx(SAMPLE_RATE * 2, rel=0.02)  # ~1 s of 48 kHz PCM16 mono
    assert level(middle(pcm)) == pytest.approx(level(tone_pcm(440, 16000, 1.0)), rel=0.2)


# --- a real aiortc leg pair (MEDIA-1, MEDIA-4, ICE-1, SDP-7, SDP-8) ---------------------------------------------


async def test_two_legs_exchange_audio_both_ways_and_the_offerer_controls_ice() -> None:
    business = AudioLeg(name="business", source=ToneSource(frequency=440))
    phone = AudioLeg(name="phone", source=ToneSource(frequency=660))
    try:
        offer = await business.create_offer()
        answer = await phone.accept_offer(offer)
        assert platform_problems(answer, "answer") == []
        assert "a=sendrecv" in sdp_lines(answer)
        assert any(line in ("a=setup:active", "a=setup:passive") for line in sdp_lines(answer))
        await business.apply_answer(answer)

        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            consumers = (business.consumer, phone.consumer)
            if all(c is not None and c.audible_frames > 20 for c in consumers):
                break
            await asyncio.sleep(0.1)
        assert business.consumer is not None and phone.consumer is not None
        assert business.consumer.audible_frames > 20, "the business leg heard nothing"
        assert phone.consumer.audible_frames > 20, "the phone leg heard nothing"
        assert business.outgoing.audible_frames_sent > 20 and phone.outgoing.audible_frames_sent > 20
        assert business.pc.connectionState == phone.pc.connectionState == "connected"
        assert business.ice_controlling is True
        assert phone.ice_controlling is False
    finally:
        await business.close()
        await phone.close()
    assert business.closed and phone.closed
    assert business.pc.connectionState == "closed"
    assert phone.pc.connectionState == "closed"
    assert business.consumer is not None and business.consumer.task.done()
    assert phone.consumer is not None and phone.consumer.task.done()
    await business.close()  # closing twice is harmless
