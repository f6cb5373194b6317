"""Call sessions: the live media of one call held by this process.

A session owns one platform leg (the user's side, for the call's whole life) and one business-side adapter at a
time (the call's route: an announcement, a media stream program, a WebRTC agent...). `reroute` moves a live call to
another adapter without touching the platform leg: no renegotiation toward the platform and no gap in what the user
hears, because the new adapter is attached (and plays) before the old one is let go. This is how hold audio hands a
caller to an agent.

Sessions are in-memory and belong to this process; the call's record (`calls/record.py`, in the store) is the
durable truth. CallService creates sessions and ends them; a session closes the adapters it lets go itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from wacall.media.counters import MediaCounters
from wacall.media.platform_leg import PlatformLeg
from wacall.media.tracks import AudioSource, FrameHandler, Unsubscribe
from wacall.store import Pair
from wacall.upstreams.base import Account
from wacall_adapters.base import MediaAdapter

log = logging.getLogger(__name__)

Hangup = Callable[[str], Awaitable[None]]


class SessionClosed(Exception):
    """The call ended while the session was being changed."""


class AttachedRoute:
    """What one adapter sees of its call (wacall_adapters.base.CallLeg) while it is the call's route.

    Three states. *Active*: it plays, listens and hangs up for real. *Suspended* (a reroute is attaching the next
    adapter): what it plays is remembered, not heard, and a hang-up waits; if the next adapter fails, the view is
    active again and a hang-up asked for meanwhile happens then. *Detached* (let go, or the call ended): inert for
    good: nothing it plays or hangs up reaches the call, and it hears nothing.
    """

    def __init__(self, session: CallSession) -> None:
        self.call_id = session.call_id
        self._session = session
        self._unsubscribes: list[Unsubscribe] = []
        self._active = True
        self._detached = False
        self._playing: AudioSource | None = None
        self._hangup_asked: str | None = None

    def play(self, source: AudioSource) -> None:
        self._playing = source
        if self._active and self._session.platform is not None:
            self._session.platform.play(source)

    def listen(self, handler: FrameHandler) -> Unsubscribe:
        if self._detached or self._session.platform is None:
            return _nothing_to_undo
        unsubscribe = self._session.platform.listen(handler)
        self._unsubscribes.append(unsubscribe)
        return unsubscribe

    async def hangup(self, reason: str) -> None:
        if self._active:
            await self._session.hangup(reason)
        elif not self._detached and self._hangup_asked is None:
            self._hangup_asked = reason

    def suspend(self) -> None:
        self._active = False

    async def resume(self) -> None:
        if self._detached:
            return
        self._active = True
        if self._playing is not None and self._session.platform is not None:
            self._session.platform.play(self._playing)
        if self._hangup_asked is not None:
            await self._session.hangup(self._hangup_asked)

    def detach(self) -> None:
        self._active = False
        self._detached = True
        for unsubscribe in self._unsubscribes:
            unsubscribe()
        self._unsubscribes.clear()


def _nothing_to_undo() -> None:
    return None


@dataclass(eq=False)
class CallSession:
    call_id: str
    pair: Pair
    account: Account
    adapter: MediaAdapter
    route_name: str
    hangup: Hangup  # ends the call from the business side
    platform: PlatformLeg | None = None  # None on a passthrough route: the media bypasses this process
    connected: bool = False
    closed: bool = False
    # The platform's SDP answer was taken (applied, or being applied): by the webhook's own handler or, when the
    # webhook landed on another replica, by the owner following its calls in the store; never twice.
    answer_taken: bool = False
    last_frames: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    pickup_watch: asyncio.Task[Any] | None = None
    _view: AttachedRoute | None = None
    # One reroute at a time: two overlapping ones would both let go of the same adapter and keep the other.
    _rerouting: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def attach_adapter(self) -> None:
        """Attach the first adapter to the platform leg (before the offer or answer goes to the platform)."""
        self._view = AttachedRoute(self)
        await self.adapter.attach(self._view)

    async def reroute(self, adapter: MediaAdapter, name: str) -> None:
        """Make `adapter` the call's route. The new adapter is attached before the old one lets go, so the user
        hears the old route until the new one plays; if the new adapter cannot attach, it is closed, the old one
        carries on and the error is raised. SessionClosed if the call ends meanwhile (the new adapter is released
        too). The caller tells a connected call's new route that the user is on the line."""
        async with self._rerouting:
            if self.closed:
                await _close_adapter(adapter, self.call_id)
                raise SessionClosed(self.call_id)
            old_adapter, old_view = self.adapter, self._view
            if old_view is not None:
                old_view.suspend()
            view = AttachedRoute(self)
            try:
                await adapter.attach(view)
            except BaseException:
                view.detach()
                await _close_adapter(adapter, self.call_id)
                if old_view is not None:
                    await old_view.resume()
                raise
            if self.closed:  # the call ended while the new adapter attached; close() released the old one
                view.detach()
                await _close_adapter(adapter, self.call_id)
                raise SessionClosed(self.call_id)
            self.adapter, self.route_name, self._view = adapter, name, view
            if old_view is not None:
                old_view.detach()
            await _close_adapter(old_adapter, self.call_id)
            if self.closed:  # the call ended while the old adapter closed; close() released the new one
                raise SessionClosed(self.call_id)

    def counters(self) -> MediaCounters:
        return self.platform.counters() if self.platform is not None else MediaCounters()

    async def close(self) -> MediaCounters:
        """Release the adapter and the platform leg (whatever the adapter does while closing); the final
        counters."""
        self.closed = True
        if self.pickup_watch is not None:
            self.pickup_watch.cancel()
        counters = self.counters()
        if self._view is not None:
            self._view.detach()
        try:
            await _close_adapter(self.adapter, self.call_id)
        finally:
            if self.platform is not None:
                await self.platform.close()
        return counters


async def _close_adapter(adapter: MediaAdapter, call_id: str) -> None:
    try:
        await adapter.close()
    except Exception:  # the call's other resources are released whatever the adapter did
        log.exception("call %s: closing the route's adapter failed", call_id)
