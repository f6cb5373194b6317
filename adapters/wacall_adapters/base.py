"""The one interface between a call and whatever the business side of its audio is.

The service owns the WhatsApp leg (ICE, DTLS, Opus, pacing, cleanup). An adapter sees only a `CallLeg`: it can
choose what the user hears (`play`), hear what the user says (`listen`, undone by the function it returns), and end
the call (`hangup`). It never touches the peer connection. A route that wants no media through the service (WebRTC
passthrough) supplies the offer itself instead and receives the platform's answer.

Lifecycle, called by the service: `attach` (before the offer goes out, or when a live call is rerouted to the
adapter) → `connected` (the user picked up, or audio from the user arrived first; at once for a rerouted call that
is already connected) → `close` (the call ended or moved to another route; must release everything). After a
reroute the old adapter's `CallLeg` is inert: what it plays or hangs up no longer reaches the call.
Audio is PCM16 mono 48 kHz in 20 ms frames (see wacall.media.tracks).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from wacall.media.tracks import AudioSource, FrameHandler, Unsubscribe


class CallLeg(Protocol):
    call_id: str

    def play(self, source: AudioSource) -> None:
        """Swap what the user hears (no renegotiation). Silence is sent when the source has nothing."""
        ...

    def listen(self, handler: FrameHandler) -> Unsubscribe:
        """Receive every 20 ms frame the user sends from now on, until the returned function is called."""
        ...

    async def hangup(self, reason: str) -> None:
        """End the call from the business side."""
        ...


class AudioStream(Protocol):
    """A route whose audio a program exchanges over the CallMedia stream."""

    def subscribe(self, listener: FrameHandler) -> Unsubscribe:
        """Frames from the user go to `listener` until the returned function is called."""
        ...

    def send(self, frame: bytes) -> None:
        """A frame for the user (audio written ahead of real time is dropped, the oldest first: see QueueSource)."""
        ...


class MediaAdapter:
    """Base class with the no-op defaults; routes override what they need."""

    # Set by routes that hand their own SDP offer to the platform (no media through the service).
    passthrough_offer: str | None = None

    async def attach(self, leg: CallLeg) -> None:
        """The WhatsApp leg exists; audio starts flowing as soon as ICE and DTLS complete."""

    async def connected(self) -> None:
        """The user picked up."""

    async def platform_answer(self, sdp: str) -> None:
        """Passthrough routes: the platform's SDP answer to `passthrough_offer`."""

    async def close(self) -> None:
        """The call ended. Release every task, track, file and peer connection the adapter holds."""

    def answer_sdp(self) -> str:
        """An SDP answer for the business-side peer, when the route has one (WebRTC)."""
        return ""

    def audio_stream(self) -> AudioStream | None:
        """The route's CallMedia stream, when a program exchanges the call's audio over one."""
        return None


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel an adapter's own task and wait for it; a no-op for the task that is closing the adapter itself
    (an announcement hanging up when it finishes)."""
    if task is None or task is asyncio.current_task() or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
