"""A tiny plain-RTP source: ringback (ITU-T E.180: 425 Hz, 1 s on, 4 s off) in G.711, one packet every 20 ms.

Why: while a PBX rings, the business party of an engine call has no media of its own, and the platform drops a call
that carries no media for its first 20 s. This source stands in for that party on loopback: the engine transcodes
its packets to the WhatsApp user, who hears ringback (and the silent part of the cadence is still packets). It
sends only; what the engine sends back to its socket is dropped by the kernel once the buffer is full.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import socket
import struct

__all__ = ["PACKET_INTERVAL", "RINGBACK_HZ", "RtpTone", "alaw", "ulaw"]

RINGBACK_HZ = 425.0
PACKET_INTERVAL = 0.020
_RATE = 8000
_SAMPLES = int(_RATE * PACKET_INTERVAL)
_ON_PACKETS, _CYCLE_PACKETS = 50, 250  # 1 s of tone in every 5 s
_PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}
_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def ulaw(sample: int) -> int:
    """One 16-bit linear sample as G.711 µ-law."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent, mask = 7, 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent, mask = exponent - 1, mask >> 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | exponent << 4 | mantissa) & 0xFF


def alaw(sample: int) -> int:
    """One 16-bit linear sample as G.711 A-law."""
    value = sample >> 3
    if value >= 0:
        mask = 0xD5
    else:
        mask, value = 0x55, -value - 1
    segment = next((i for i, end in enumerate(_ALAW_SEGMENT_ENDS) if value <= end), 8)
    if segment >= 8:
        return 0x7F ^ mask
    low = (value >> 1) & 0x0F if segment < 2 else (value >> segment) & 0x0F
    return (segment << 4 | low) ^ mask


def _payloads(codec: str) -> tuple[bytes, bytes]:
    """One 20 ms packet's payload of tone (a whole number of periods would need 40 ms at 425 Hz: the phase runs on
    across packets instead, so two tone payloads alternate) and one of silence."""
    encode = ulaw if codec == "PCMU" else alaw
    tone = [
        bytes(
            encode(int(8000 * math.sin(2 * math.pi * RINGBACK_HZ * (n + k * _SAMPLES) / _RATE)))
            for n in range(_SAMPLES)
        )
        for k in range(2)
    ]
    return tone[0] + tone[1], bytes(encode(0) for _ in range(_SAMPLES))


class RtpTone:
    """Ringback as RTP from a socket on `host` (`address` is where it sends from: the SDP's c= and m= for it).
    `start(destination)` sends until `stop()`; `close()` stops and releases the socket."""

    def __init__(self, codec: str = "PCMU", host: str = "127.0.0.1") -> None:
        self.codec = codec if codec in _PAYLOAD_TYPES else "PCMU"
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((host, 0))
        self._socket.setblocking(False)
        self.address: tuple[str, int] = self._socket.getsockname()[:2]
        two_tones, self._silence = _payloads(self.codec)
        self._tones = (two_tones[:_SAMPLES], two_tones[_SAMPLES:])
        self._payload_type = _PAYLOAD_TYPES[self.codec]
        self._ssrc = secrets.randbits(32)
        self._sequence = secrets.randbits(16)
        self._timestamp = secrets.randbits(32)
        self._packets = 0
        self._destination: tuple[str, int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._next_at = 0.0

    @property
    def sending(self) -> bool:
        return self._timer is not None

    @property
    def packets_sent(self) -> int:
        return self._packets

    def start(self, destination: tuple[str, int]) -> None:
        """Send ringback to `destination` every 20 ms (from now on, or from there on if already sending)."""
        self._destination = destination
        if self._timer is None and self._socket.fileno() >= 0:
            loop = asyncio.get_running_loop()
            self._next_at = loop.time()
            self._send()

    def _send(self) -> None:
        destination = self._destination
        if destination is None:
            return
        phase = self._packets % _CYCLE_PACKETS
        payload = self._tones[phase % 2] if phase < _ON_PACKETS else self._silence
        header = struct.pack(
            "!BBHII", 0x80, self._payload_type, self._sequence & 0xFFFF, self._timestamp & 0xFFFFFFFF, self._ssrc
        )
        try:
            self._socket.sendto(header + payload, destination)
        except OSError:
            pass  # a full buffer or an unreachable port now: the next packet tries again
        self._packets += 1
        self._sequence += 1
        self._timestamp += _SAMPLES
        loop = asyncio.get_running_loop()
        # Paced from a fixed start, so a late wake-up does not slow the stream down.
        self._next_at += PACKET_INTERVAL
        self._timer = loop.call_at(max(self._next_at, loop.time()), self._send)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.stop()
        self._socket.close()
