"""The audio receivers' jitter buffer: each frame is handed on as soon as its packet and every earlier one arrived.

In memory, packet by packet (as aiortc's receiver feeds it), then wired into a real aiortc leg pair.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from wacall.media.jitter import GIVE_UP_AFTER, RECEIVER_ATTRIBUTE, AudioJitterBuffer, hand_on_complete_frames
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


def lags(buffer: JitterBuffer, indexes: list[int]) -> list[int | None]:
    """After each packet, how many frames behind the packet just arrived the frame handed on is (None: nothing)."""
    return [
        None if frame is None else index - frame
        for index, frame in zip(indexes, handed_on(buffer, *indexes), strict=True)
    ]


def test_a_lost_packet_is_given_up_on_once_two_later_packets_wait_and_the_lag_stays_at_most_one_frame() -> None:
    arriving = [n for n in range(40) if n != 5]  # packet 5 is lost: aiortc has no retransmission for audio
    assert GIVE_UP_AFTER == 2
    lag = lags(AudioJitterBuffer(), arriving)
    assert lag[:5] == [0] * 5
    assert lag[5] is None  # packet 6 waits: 5 may only be late
    assert lag[6:] == [1] * len(lag[6:])  # from packet 7 on, one frame behind, for the rest of the call
    assert max(lag[5 + 1 + 10 :]) <= 1  # ten packets after the loss, as at any time after it


def held_after_each(buffer: JitterBuffer, indexes: list[int]) -> list[int]:
    """How many packets the buffer holds after each one arrives: the delay it carries into what follows."""
    held = []
    for index in indexes:
        buffer.add(packet(index))
        held.append(sum(stored is not None for stored in buffer._packets))
    return held


def test_reordered_packets_do_not_add_up_to_lasting_delay() -> None:
    arriving = list(range(200))
    for k in range(10, 190, 10):  # a swap of neighbours every ten packets
        arriving[k], arriving[k + 1] = arriving[k + 1], arriving[k]
    assert max(held_after_each(AudioJitterBuffer(), arriving)) <= 1
    assert lags(AudioJitterBuffer(), arriving)[-10:] == [1] * 10  # after 18 reorders: one frame, as after the first
    handed = [frame for frame in handed_on(AudioJitterBuffer(), *arriving) if frame is not None]
    assert handed == list(range(199))  # every frame, in order (the last still waits for the next packet)


def test_under_random_loss_and_reordering_the_buffer_never_holds_more_than_one_frame() -> None:
    chance = random.Random(7)
    arriving = [n for n in range(3000) if chance.random() > 0.05]  # 5 % lost
    for k in range(len(arriving) - 1):
        if chance.random() < 0.05:  # 5 % arrive after their successor
            arriving[k], arriving[k + 1] = arriving[k + 1], arriving[k]
    assert max(held_after_each(AudioJitterBuffer(), arriving)) <= 1
    handed = [frame for frame in handed_on(AudioJitterBuffer(), *arriving) if frame is not None]
    assert handed == sorted(set(handed))
    assert len(handed) > 0.9 * len(arriving)  # giving up on gaps costs few of the packets that did arrive


async def test_the_buffer_is_replaced_only_where_aiortc_keeps_one() -> None:
    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    receiver = RTCRtpReceiver("audio", transport)
    original = getattr(receiver, RECEIVER_ATTRIBUTE)
    assert isinstance(original, JitterBuffer) and not isinstance(original, AudioJitterBuffer)
    replaced = hand_on_complete_frames(receiver)
    assert getattr(receiver, RECEIVER_ATTRIBUTE) is replaced
    delattr(receiver, RECEIVER_ATTRIBUTE)  # as if aiortc renamed its attribute
    with pytest.raises(RuntimeError, match="aiortc changed"):
        hand_on_complete_frames(receiver)
    await receiver.stop()


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
