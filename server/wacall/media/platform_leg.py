"""The platform leg: the WhatsApp user's side of a call's media, as a call session sees it.

A call has exactly one platform leg for its whole life; the business side (a route) may change under it. The leg
owns signalling toward the platform (our offer and its answer, or its offer and our answer) and the user's audio:
what the user hears is whatever source was played last (silence until then, MEDIA-1), and every 20 ms frame the
user sends goes to the listeners subscribed at that moment. Swapping the source or the listeners needs no
renegotiation, which is what lets a live call move from hold audio to an agent.

`WebRtcPlatformLeg` is the in-process implementation (aiortc). A leg whose media lives in an external engine
implements the same protocol; the session never touches a peer connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from wacall.media.counters import MediaCounters
from wacall.media.leg import AudioLeg
from wacall.media.tracks import AudioSource, FrameHandler, Unsubscribe


class PlatformLeg(Protocol):
    async def create_offer(self) -> str:
        """Our SDP offer for a call we place (we are ICE-controlling, as the platform expects)."""
        ...

    async def accept_offer(self, sdp: str) -> str:
        """Our SDP answer to the platform's offer (a user's call)."""
        ...

    async def apply_answer(self, sdp: str) -> None:
        """The platform's SDP answer to our offer; applied at once (the platform fails late answers, 138007)."""
        ...

    def play(self, source: AudioSource) -> None:
        """From now on the user hears `source` (silence whenever it has nothing)."""
        ...

    def listen(self, handler: FrameHandler) -> Unsubscribe:
        """Every frame the user sends from now on goes to `handler`, until the returned function is called."""
        ...

    async def first_audio(self) -> bool:
        """Waits for the user's first audible frame (evidence of pickup, HOOK-3); False if no audio can come."""
        ...

    def counters(self) -> MediaCounters: ...

    async def close(self) -> None:
        """Release everything the leg holds (sockets, tasks, engine sessions); idempotent."""
        ...


PlatformLegFactory = Callable[[str], PlatformLeg]


class WebRtcPlatformLeg:
    """The platform leg as an aiortc peer connection in this process (Opus only, sha-256 fingerprint only)."""

    def __init__(self, name: str) -> None:
        self._listeners: list[FrameHandler] = []
        self.rtc = AudioLeg(name=name, handlers=[self._fan_out])

    def _fan_out(self, frame: bytes) -> None:
        for listener in tuple(self._listeners):
            listener(frame)

    async def create_offer(self) -> str:
        return await self.rtc.create_offer()

    async def accept_offer(self, sdp: str) -> str:
        return await self.rtc.accept_offer(sdp)

    async def apply_answer(self, sdp: str) -> None:
        await self.rtc.apply_answer(sdp)

    def play(self, source: AudioSource) -> None:
        self.rtc.set_source(source)

    def listen(self, handler: FrameHandler) -> Unsubscribe:
        self._listeners.append(handler)

        def unsubscribe() -> None:
            if handler in self._listeners:
                self._listeners.remove(handler)

        return unsubscribe

    async def first_audio(self) -> bool:
        await self.rtc.remote_track
        consumer = self.rtc.consumer
        if consumer is None:
            return False
        await consumer.first_frame
        return True

    def counters(self) -> MediaCounters:
        consumer = self.rtc.consumer
        return MediaCounters(
            frames_sent=self.rtc.outgoing.frames_sent,
            frames_received=consumer.frames if consumer else 0,
            audible_frames_received=consumer.audible_frames if consumer else 0,
            mean_level_received=consumer.mean_level if consumer else 0.0,
        )

    @property
    def ice_controlling(self) -> bool:
        return self.rtc.ice_controlling

    async def close(self) -> None:
        self._listeners.clear()
        await self.rtc.close()
