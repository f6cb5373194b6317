"""The receive-side jitter buffer of every aiortc audio leg: frames handed on the moment they are complete.

aiortc's audio receiver holds each frame until 4 later packets have arrived (`JitterBuffer(prefetch=4)`): 80 ms
added to everything a leg hears, the first audible frame of a call included. The wait buys nothing: the buffer
counts packets, not time, so it absorbs no timing jitter (a late burst comes out at once all the same); it hands
frames on only in sequence order, so a gap blocks it and a reordered packet is put back in place whatever the
prefetch. One RTP packet of audio is one whole frame (Opus, RFC 7587 §4.2; G.711 and G.722 likewise), so a frame
is complete the moment its packet arrives: `AudioJitterBuffer` hands it on then, still in sequence order.
"""

from __future__ import annotations

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

CAPACITY = 16  # packets (320 ms), as aiortc's audio receiver: a gap is given up once this many packets wait


class AudioJitterBuffer(JitterBuffer):
    """Hands on each packet, in sequence order, as soon as every earlier packet has been handed on."""

    def __init__(self) -> None:
        super().__init__(capacity=CAPACITY)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        # `add` has stored the packet; the next one in sequence (at the origin) goes now if it is here.
        if self._origin is None:
            return None
        packet = self._packets[self._origin % self._capacity]
        if packet is None:
            return None  # a gap: wait for the missing packet, or for `add` to give up on it at capacity
        self.remove(1)
        data: bytes = packet._data  # type: ignore[attr-defined]  # the receiver's depayloaded payload, set before add
        return JitterFrame(data=data, timestamp=packet.timestamp)


def hand_on_complete_frames(receiver: RTCRtpReceiver) -> AudioJitterBuffer:
    """Give an audio receiver an `AudioJitterBuffer` (before its first packet arrives); returns it."""
    buffer = AudioJitterBuffer()
    receiver._RTCRtpReceiver__jitter_buffer = buffer  # type: ignore[attr-defined]  # aiortc offers no setting
    return buffer
