"""An agent's live session, in no transport's vocabulary: the gRPC `AgentSession` stream and the softphone's
WebSocket both drive this object the same way.

`QueueService.login(agent_id)` opens it (an older session of the same agent is ended with `SessionError
"session_replaced"`, as softphones expect when an agent signs in elsewhere). `events()` yields what the agent must
see, in the order the router decided it; the request methods (`set_presence`, `accept`, `decline`, `hang_up`,
`end_wrap_up`) never raise for anything an agent can send: a refused request becomes a `SessionError` event and
changes nothing. `close()` ends the session: its agent goes OFFLINE (SESSION_ENDED) and an offer ringing for it goes
to the next agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from wacall.calls.machine import CallOutcome
from wacall.queues import router
from wacall.queues.actions import AgentMedia, AgentMediaFailed
from wacall.queues.router import (
    Accept,
    Assigned,
    Decline,
    EndWrapUp,
    OfferMade,
    OfferWithdrawn,
    Presence,
    PresenceChanged,
    PresenceWhy,
    RouterState,
    RoutingRefused,
    SetPresence,
    WithdrawnWhy,
)

if TYPE_CHECKING:
    from wacall.permissions import PermissionView
    from wacall.queues.service import QueueService

log = logging.getLogger(__name__)


# --- what a session shows -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoggedIn:
    agent: router.Agent


@dataclass(frozen=True, slots=True)
class OfferEvent:
    offer_id: str
    call_id: str
    queue_id: str
    customer_number: str
    business_number: str
    waited: timedelta
    expires_in: timedelta
    permission: PermissionView | None  # the customer's permission summary (None: a call this service does not know)


@dataclass(frozen=True, slots=True)
class OfferWithdrawnEvent:
    offer_id: str
    why: WithdrawnWhy


@dataclass(frozen=True, slots=True)
class Connected:
    """The agent won the call; `webrtc_answer_sdp` answers its WebRTC offer ("" for a media stream)."""

    call_id: str
    webrtc_answer_sdp: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    call_id: str
    outcome: CallOutcome | None


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    presence: Presence
    why: PresenceWhy


@dataclass(frozen=True, slots=True)
class SessionError:
    """A request was refused and nothing changed (or, `session_replaced`, the session is over)."""

    code: str
    message: str


SessionEvent = LoggedIn | OfferEvent | OfferWithdrawnEvent | Connected | CallEnded | PresenceEvent | SessionError


@dataclass(frozen=True, slots=True)
class _CallOver:
    call_id: str


class _End:
    pass


_Item = SessionEvent | OfferMade | OfferWithdrawn | PresenceChanged | _CallOver | _End

SESSION_REPLACED = "session_replaced"
TOO_MANY_PENDING_EVENTS = "too_many_pending_events"
# Far more than a live agent's events between two reads; a few hundred kilobytes at most.
MAX_PENDING_EVENTS = 1000
SESSION_ENDED = "session_ended"
NOT_YOUR_OFFER = "offer_gone"


class AgentSession:
    """One agent's connection (see the module). Made by `QueueService.login`."""

    def __init__(self, service: QueueService, agent_id: str) -> None:
        self.service = service
        self.agent_id = agent_id
        self._items: asyncio.Queue[_Item] = asyncio.Queue()
        self.ended = False
        # The client stopped reading while events piled up: the session is over (see `_put`).
        self.overflowed = False
        # Offers shown, and withdrawn: another replica's decision may reach this session after the state it left
        # (an offer already announced at login, or one withdrawn before it was shown) and is not shown again.
        self._shown_offers: set[str] = set()
        self._withdrawn_offers: set[str] = set()

    def _put(self, item: _Item) -> None:
        """Queue an event for the agent. A client that sends requests but never reads its events (each refusal is
        an event) would grow this without bound: past `MAX_PENDING_EVENTS` the pending events are dropped, the
        session's last event says why, and the transport closes it (its agent goes OFFLINE)."""
        if self.overflowed:
            return
        if self._items.qsize() >= MAX_PENDING_EVENTS:
            self.overflowed = True
            while not self._items.empty():
                self._items.get_nowait()
            message = f"more than {MAX_PENDING_EVENTS} events waited for the client to read them: session closed"
            self._items.put_nowait(SessionError(TOO_MANY_PENDING_EVENTS, message))
            self._items.put_nowait(_End())
            return
        self._items.put_nowait(item)

    # --- what the service hands over (synchronously, in commit order) ----------------------------------------------

    def decided(self, decision: OfferMade | OfferWithdrawn | PresenceChanged) -> None:
        if not self.ended:
            self._put(decision)

    def call_ended(self, call_id: str) -> None:
        if not self.ended:
            self._put(_CallOver(call_id))

    def logged_in(self, state: RouterState) -> None:
        """The answer to login, ahead of what the login step itself decided: the agent as it is, then any offer
        already ringing for it (a session that replaced another must see it)."""
        agent = state.agents.get(self.agent_id)
        if agent is None:
            return
        pending: list[_Item] = []
        while not self._items.empty():
            pending.append(self._items.get_nowait())
        announced = {item.offer.offer_id for item in pending if isinstance(item, OfferMade)}
        self._put(LoggedIn(agent))
        now = self.service.clock.now()
        for offer in state.offers.values():
            waiting = state.waiting.get(offer.call_id)
            if offer.agent_id == self.agent_id and waiting is not None and offer.offer_id not in announced:
                self._put(OfferMade(offer, now - waiting.arrived_at))
        for item in pending:
            self._put(item)

    def replaced(self) -> None:
        """A newer session of the same agent took over: this one ends, the agent's presence is the new one's."""
        self.end_with(SESSION_REPLACED, "the agent signed in from another session; this one is closed")

    def end_with(self, code: str, message: str) -> None:
        """End the session with a last error event saying why (its agent's presence is left as it is)."""
        if not self.ended:
            self.ended = True
            self._put(SessionError(code, message))
            self._put(_End())

    # --- what the agent sees ------------------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[SessionEvent]:
        """The session's events until it ends."""
        while True:
            item = await self._items.get()
            match item:
                case _End():
                    return
                case OfferMade(offer=offer) if offer.offer_id in self._shown_offers or (
                    offer.offer_id in self._withdrawn_offers
                ):
                    continue
                case OfferWithdrawn(offer=offer) if offer.offer_id in self._withdrawn_offers:
                    continue
                case OfferMade(offer=offer, waited=waited):
                    self._shown_offers.add(offer.offer_id)
                    parties = await self.service.parties(offer.call_id)
                    yield OfferEvent(
                        offer.offer_id,
                        offer.call_id,
                        offer.queue_id,
                        parties.customer_number,
                        parties.business_number,
                        waited,
                        max(offer.expires_at - self.service.clock.now(), timedelta(0)),
                        parties.permission,
                    )
                case OfferWithdrawn(offer=offer, why=why):
                    self._withdrawn_offers.add(offer.offer_id)
                    yield OfferWithdrawnEvent(offer.offer_id, why)
                case PresenceChanged(presence=presence, why=why):
                    yield PresenceEvent(presence, why)
                case _CallOver(call_id=call_id):
                    yield CallEnded(call_id, await self.service.call_outcome(call_id))
                case _:
                    yield item

    # --- what the agent asks ------------------------------------------------------------------------------------------

    async def _step(
        self, event: router.Event, guard: Callable[[RouterState], None] | None = None
    ) -> router.Step | None:
        if self.ended or self.overflowed:
            self._put(SessionError(SESSION_ENDED, "this session has ended: sign in again"))
            return None
        try:
            return await self.service.apply(event, guard=guard)
        except RoutingRefused as refused:
            self._put(SessionError(refused.code, refused.message))
            return None

    def refuse(self, code: str, message: str) -> None:
        """Report a request refused before it reached the router (a malformed request, say)."""
        self._put(SessionError(code, message))

    async def set_presence(self, presence: Presence) -> None:
        await self._step(SetPresence(self.agent_id, presence))

    def _owns_offer(self, offer_id: str) -> Callable[[RouterState], None]:
        def guard(state: RouterState) -> None:
            offer = state.offers.get(offer_id)
            if offer is None or offer.agent_id != self.agent_id:
                raise RoutingRefused(
                    NOT_YOUR_OFFER,
                    f"offer {offer_id!r} is not open for agent {self.agent_id!r} "
                    "(answered elsewhere, withdrawn, timed out, or another agent's)",
                )

        return guard

    async def accept(self, offer_id: str, media: AgentMedia) -> None:
        """Win the call (exactly one accept of a call wins), then move its media to the agent."""
        step = await self._step(Accept(offer_id), self._owns_offer(offer_id))
        if step is None:
            return
        assigned = next(d for d in step.decisions if isinstance(d, Assigned))
        # The call is the agent's now: its media moves even if the transport cancels this (the stream dropped
        # mid-accept); otherwise the caller would hear hold audio forever, waiting in no queue.
        moving = asyncio.ensure_future(self._move_media(assigned, media))
        moving.add_done_callback(_log_failure)
        await asyncio.shield(moving)

    async def _move_media(self, assigned: Assigned, media: AgentMedia) -> None:
        try:
            answer = await self.service.connect_agent(assigned, media)
        except AgentMediaFailed as failed:
            self._put(SessionError("media_failed", failed.message))
            await self.service.end_call(assigned.call_id, f"the agent's media failed: {failed.message}")
            return
        except BaseException as error:  # any other failure leaves no one on the call: end it with the reason
            await self.service.end_call(assigned.call_id, f"the agent's media could not be attached: {error!r}")
            raise
        self._put(Connected(assigned.call_id, answer))

    async def decline(self, offer_id: str) -> None:
        await self._step(Decline(offer_id), self._owns_offer(offer_id))

    async def hang_up(self, call_id: str) -> None:
        agent = self.service.state.agents.get(self.agent_id)
        if self.ended or agent is None or agent.presence is not Presence.BUSY or agent.call_id != call_id:
            self.refuse("not_on_call", f"agent {self.agent_id!r} is not on call {call_id!r}")
            return
        await self.service.end_call(call_id, "hung up by the agent")

    async def end_wrap_up(self) -> None:
        await self._step(EndWrapUp(self.agent_id))

    async def close(self) -> None:
        """End the session; if it was the agent's live one, the agent goes OFFLINE (SESSION_ENDED)."""
        was_live = self.service.forget(self) and not self.ended
        self.ended = True
        self._put(_End())
        if was_live:
            with contextlib.suppress(RoutingRefused):  # the agent was deleted meanwhile
                await self.service.apply(SetPresence(self.agent_id, Presence.OFFLINE, PresenceWhy.SESSION_ENDED))


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("moving a call's media to its agent failed", exc_info=task.exception())
