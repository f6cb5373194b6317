"""Call sessions: the live media of one call held by this process.

A session owns one platform leg (the user's side, for the call's whole life) and one business-side route at a time
(an adapter: an announcement, a media stream program, a WebRTC agent...). `reroute` moves a live call to another
route without touching the platform leg: no renegotiation toward the platform and no gap in what the user hears,
because the new route is attached (and plays) before the old one is let go. This is how hold audio hands a caller to
an agent.

Sessions are in-memory and belong to this process; the call's record (calls.py facts, the store) is the durable
truth. CallService is the one place that creates and closes sessions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from wacall.media.platform_leg import MediaCounters, PlatformLeg, Unsubscribe
from wacall.media.tracks import AudioSource, FrameHandler
from wacall.store import Pair
from wacall.upstreams.base import Account
from wacall_adapters.base import MediaAdapter

log = logging.getLogger(__name__)

Hangup = Callable[[str], Awaitable[None]]


class SessionClosed(Exception):
    """The call ended while the session was being changed."""


class AttachedRoute:
    """What one adapter sees of its call (wacall_adapters.base.CallLeg) while it is the call's route.

    Once the call moves to another route, or ends, the view goes inert: its listeners are unsubscribed, and what it
    plays or hangs up no longer reaches the call (an announcement that finishes after a reroute must not end the
    call the agent is now on). While a reroute is under way it is suspended, and resumed if the new route fails.
    """

    def __init__(self, session: CallSession) -> None:
        self.call_id = session.call_id
        self._session = session
        self._unsubscribes: list[Unsubscribe] = []
        self._active = True
        self._playing: AudioSource | None = None

    def play(self, source: AudioSource) -> None:
        self._playing = source
        if self._active and self._session.platform is not None:
            self._session.platform.play(source)

    def listen(self, handler: FrameHandler) -> Unsubscribe:
        if self._session.platform is None:
            return _nothing_to_undo
        unsubscribe = self._session.platform.listen(handler)
        self._unsubscribes.append(unsubscribe)
        return unsubscribe

    async def hangup(self, reason: str) -> None:
        if self._active:
            await self._session.hangup(reason)

    def suspend(self) -> None:
        self._active = False

    def resume(self) -> None:
        self._active = True
        if self._playing is not None and self._session.platform is not None:
            self._session.platform.play(self._playing)

    def detach(self) -> None:
        self._active = False
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
    route: MediaAdapter
    route_name: str
    hangup: Hangup  # ends the call from the business side
    platform: PlatformLeg | None = None  # None on a passthrough route: the media bypasses this process
    connected: bool = False
    closed: bool = False
    last_frames: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    pickup_watch: asyncio.Task[Any] | None = None
    _view: AttachedRoute | None = None

    async def attach_route(self) -> None:
        """Attach the first route to the platform leg (before the offer or answer goes to the platform)."""
        self._view = AttachedRoute(self)
        await self.route.attach(self._view)

    async def reroute(self, adapter: MediaAdapter, name: str) -> None:
        """Make `adapter` the call's route. The new route is attached before the old one lets go, so the user
        hears the old route until the new one plays; if the new route cannot attach, the old one carries on and
        the error is raised. The caller tells a connected call's new route that the user is on the line."""
        old_route, old_view = self.route, self._view
        if old_view is not None:
            old_view.suspend()
        view = AttachedRoute(self)
        try:
            await adapter.attach(view)
        except BaseException:
            view.detach()
            if old_view is not None:
                old_view.resume()
            await _close_route(adapter, self.call_id)
            raise
        if self.closed:  # the call ended while the new route attached; close() released the old one
            view.detach()
            await _close_route(adapter, self.call_id)
            raise SessionClosed(self.call_id)
        self.route, self.route_name, self._view = adapter, name, view
        if old_view is not None:
            old_view.detach()
        await _close_route(old_route, self.call_id)

    def counters(self) -> MediaCounters:
        return self.platform.counters() if self.platform is not None else MediaCounters()

    async def close(self) -> MediaCounters:
        """Release the route and the platform leg (whatever the route does while closing); the final counters."""
        self.closed = True
        if self.pickup_watch is not None:
            self.pickup_watch.cancel()
        counters = self.counters()
        if self._view is not None:
            self._view.detach()
        try:
            await _close_route(self.route, self.call_id)
        finally:
            if self.platform is not None:
                await self.platform.close()
        return counters


async def _close_route(route: MediaAdapter, call_id: str) -> None:
    try:
        await route.close()
    except Exception:  # the call's other resources are released whatever the route did
        log.exception("call %s: closing the route failed", call_id)
