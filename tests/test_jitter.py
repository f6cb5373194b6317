"""The audio receivers' jitter buffer: each frame is handed on as soon as its packet and every earlier one arrived.

In memory, packet by packet (as aiortc's receiver feeds it), then wired into a real aiortc leg pair.
"""

from __future__ import annotations

import asyncio

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from wacall.media.jitter import CAPACITY, AudioJitterBuffer
from wacall.media.leg import AudioLeg
from wacall.media.tracks import FRAME_SAMPLES, ToneSource

FIRST = 65530  # sequence numbers wrap at 2**16 within these tests


def packet(index: int) -> RtpPacket:
    """The index-th 20 ms Opus packet of a stream, depayloaded as aiortc's receiver leaves it for the buffer."""
    rtp = RtpPacket(payload_type=111, sequence_number=(FIRST + index) % 65536, timestamp=1000 + index * FRAME_SAMPLES)
    rtp._data = bytes([index % 256]) * 40  # type: ignore[attr-defined]
    return rtp


def handed_on(buffer: JitterBuffer, *indexes: int) -> list[int | None]:
    """What the buffer hands on after each packet, as the index of the frame's packet (None: nothing)."""
    out: list[int | None] = []
    for index in indexes:
        _, frame = buffer.add(packet(index))
        out.append(None if frame is None else index_of(frame))
    return out


def index_of(frame: JitterFrame) -> int:
    return (frame.timestamp - 1000) // FRAME_SAMPLES


def test_every_packet_in_order_is_handed_on_the_moment_it_arrives() -> None:
    assert handed_on(AudioJitterBuffer(), *range(20)) == list(range(20))


def test_the_frame_carries_the_packets_payload_and_timestamp() -> None:
    _, frame = AudioJitterBuffer().add(packet(3))
    assert frame is not None and frame.data == bytes([3]) * 40 and frame.timestamp == 1000 + 3 * FRAME_SAMPLES


def test_aiortcs_own_audio_buffer_holds_each_frame_until_four_later_packets_arrived() -> None:
    # What the receivers had before (aiortc's audio default): 80 ms before anything is heard.
    assert handed_on(JitterBuffer(capacity=16, prefetch=4), *range(6)) == [None, None, None, None, 0, 1]


def test_a_reordered_packet_is_put_back_in_place_and_nothing_is_lost() -> None:
    assert handed_on(AudioJitterBuffer(), 0, 2, 1, 3, 4) == [0, None, 1, 2, 3]


def test_a_packet_older_than_what_was_handed_on_is_dropped() -> None:
    buffer = AudioJitterBuffer()
    assert handed_on(buffer, 0, 1, 2) == [0, 1, 2]
    assert handed_on(buffer, 1) == [None]


def test_a_lost_packet_holds_the_audio_back_until_the_buffer_gives_up_on_it() -> None:
    buffer = AudioJitterBuffer()
    assert handed_on(buffer, 0) == [0]
    # Packet 1 never comes: the buffer waits for it while later packets fill its capacity...
    assert handed_on(buffer, *range(2, CAPACITY + 1)) == [None] * (CAPACITY - 1)
    # ...then skips the gap and carries on with what it holds, in order.
    assert handed_on(buffer, CAPACITY + 1) == [2]
    assert handed_on(buffer, CAPACITY + 2) == [3]


async def test_a_leg_pairs_receivers_are_fed_through_the_audio_jitter_buffer() -> None:
    business = AudioLeg(name="business", source=ToneSource(frequency=440))
    phone = AudioLeg(name="phone", source=ToneSource(frequency=660))
    try:
        await business.apply_answer(await phone.accept_offer(await business.create_offer()))
        for leg in (business, phone):
            await asyncio.wait_for(leg.remote_track, 20)
            assert leg.consumer is not None
            await asyncio.wait_for(leg.consumer.first_frame, 20)
            (transceiver,) = leg.pc.getTransceivers()
            buffer = transceiver.receiver._RTCRtpReceiver__jitter_buffer
            # The receiver holds our buffer and has fed it: it stores its first sequence number on the first add.
            assert isinstance(buffer, AudioJitterBuffer), f"{leg.name}: {type(buffer).__name__}"
            assert buffer._origin is not None, f"{leg.name}: the receiver never fed the buffer"
    finally:
        await business.close()
        await phone.close()
