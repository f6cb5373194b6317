"""The receive-side jitter buffer of every aiortc audio leg: frames handed on the moment they are complete.

aiortc's audio receiver holds each frame until 4 later packets have arrived (`JitterBuffer(prefetch=4)`): 80 ms
added to everything a leg hears, the first audible frame of a call included. The wait buys nothing: the buffer
counts packets, not time, so it absorbs no timing jitter (a late burst comes out at once all the same); it hands
frames on only in sequence order, so a gap blocks it and a reordered packet is put back in place whatever the
prefetch. One RTP packet of audio is one whole frame (Opus, RFC 7587 §4.2; G.711 and G.722 likewise), so a frame
is complete the moment its packet arrives: `AudioJitterBuffer` hands it on then, still in sequence order.

The receiver takes at most one frame per arriving packet, so whatever waits in the buffer is lasting delay. A gap is
given up on once `GIVE_UP_AFTER` (2) packets wait beyond it (aiortc has no retransmission for audio: a lost packet
never comes), so at most two frames are ever ready at once: one goes, one waits, and the delay a loss or a reorder
leaves behind is one frame (20 ms). Were more ever ready, the oldest are dropped: the decoder conceals a missing
frame, it cannot take back delay.
"""

from __future__ import annotations

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

CAPACITY = 16  # packets (320 ms), as aiortc's audio receiver: the most a reordered packet may be late by
GIVE_UP_AFTER = 2  # packets waiting beyond a gap (40 ms) before its packet is taken as lost
# Frames ready at once beyond which the oldest are dropped: one handed on now, one kept for the next packet.
MOST_READY = 2

# Where aiortc's receiver keeps its jitter buffer: a private attribute, since aiortc offers no setting for it.
RECEIVER_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"


class AudioJitterBuffer(JitterBuffer):
    """Hands on each packet, in sequence order, as soon as every earlier packet has been handed on or given up;
    never lets more than one frame wait behind the one it hands on."""

    def __init__(self) -> None:
        super().__init__(capacity=CAPACITY)

    def _stored(self, offset: int) -> bool:
        assert self._origin is not None
        return self._packets[(self._origin + offset) % self._capacity] is not None

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        # `add` has stored the packet; the origin is the next packet in sequence.
        if self._origin is None:
            return None
        if not self._stored(0):
            waiting = [offset for offset in range(1, self._capacity) if self._stored(offset)]
            if len(waiting) < GIVE_UP_AFTER:
                return None  # a gap: the missing packet may be merely late
            self.remove(waiting[0])  # given up on: the next packet that did arrive goes instead
        ready = 1
        while ready < self._capacity and self._stored(ready):
            ready += 1
        if ready > MOST_READY:
            self.remove(ready - MOST_READY)  # only one frame leaves per packet: the oldest would be lasting delay
        packet = self._packets[self._origin % self._capacity]
        assert packet is not None
        self.remove(1)
        data: bytes = packet._data  # type: ignore[attr-defined]  # the receiver's depayloaded payload, set before add
        return JitterFrame(data=data, timestamp=packet.timestamp)


def hand_on_complete_frames(receiver: RTCRtpReceiver) -> AudioJitterBuffer:
    """Give an audio receiver an `AudioJitterBuffer` (before its first packet arrives); returns it. Raises
    RuntimeError if aiortc no longer keeps its buffer where this expects, rather than leave its own in place."""
    current = getattr(receiver, RECEIVER_ATTRIBUTE, None)
    if not isinstance(current, JitterBuffer):
        raise RuntimeError(f"aiortc changed: its receiver holds no JitterBuffer at {RECEIVER_ATTRIBUTE}")
    if "_remove_frame" not in JitterBuffer.add.__code__.co_names:
        raise RuntimeError("aiortc changed: JitterBuffer.add no longer hands frames on through _remove_frame")
    buffer = AudioJitterBuffer()
    setattr(receiver, RECEIVER_ATTRIBUTE, buffer)
    return buffer
