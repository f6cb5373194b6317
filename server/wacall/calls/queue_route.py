"""The `queue` and `agent` routes' business side: the contact centre as those routes see it (`CallQueues`), and
what happens to a routed call's media when the router decides about it (`CallActions`, installed in
`QueueService`).

An assigned call moves from its hold adapter to the agent's media with `CallService.reroute`: the same platform leg,
no renegotiation with the platform, the hold audio heard until the agent's media plays. A WebRTC agent is bridged in
process (`WebRtcBridgeAdapter`): the caller's media already passes through this process for the hold audio, so a
media engine cannot take over the call without a new offer to the platform. A media-stream agent attaches with
`CallMedia` using the call id. A call whose agent's media cannot be attached is ended (the agent's session hears
`media_failed`): the agent accepted it, and putting the caller back at the end of the queue would be worse than a
clear ending they can call back after.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from wacall.calls.service import CallNotFound, CallNotLive, CallService, RerouteRefused
from wacall.media.sdp import peer_problems
from wacall.queues import router
from wacall.queues.actions import (
    AgentMedia,
    AgentMediaFailed,
    MediaStreamAgentMedia,
    WebRtcAgentMedia,
    end_call,
)
from wacall.queues.router import AgentCallStarted, Assigned, Overflowed, QueueGone, QueueTimedOut, RoutingRefused
from wacall.queues.service import QueueService
from wacall_adapters.announcement import AnnouncementAdapter
from wacall_adapters.media_stream import MediaStreamAdapter
from wacall_adapters.queue import HoldAdapter
from wacall_adapters.routes import HoldSound, RoutePlan, RouteRefused
from wacall_adapters.webrtc import WebRtcBridgeAdapter

log = logging.getLogger(__name__)

# What a caller hears before a queue that kept them waiting its maximum hangs up (no overflow queue): a short tone.
CLOSING_TONE_HZ = 660.0
CLOSING_TONE = timedelta(seconds=2)
# A call id no call has: asking the router whether an agent could start a call, without starting one.
_PROBE_CALL_ID = "call_probe"


class QueueCalls:
    """The contact centre for the `queue` and `agent` routes, and the actions on routed calls' media. Built before
    the call service (the inbound route is planned with it); `bind` joins it to the services once they exist."""

    def __init__(self, media_dir: str) -> None:
        self.media_dir = media_dir
        self._calls: CallService | None = None
        self._queues: QueueService | None = None

    def bind(self, calls: CallService, queues: QueueService) -> None:
        """Join the services and install these actions in the contact centre."""
        self._calls, self._queues = calls, queues
        queues.set_call_actions(self)

    def _services(self) -> tuple[CallService, QueueService]:
        if self._calls is None or self._queues is None:
            raise RouteRefused("CONTACT_CENTRE_UNAVAILABLE", "", "the contact centre is not running yet")
        return self._calls, self._queues

    # --- what the routes ask (wacall_adapters.routes.CallQueues) -----------------------------------------------

    async def hold_sound(self, queue_id: str) -> HoldSound | None:
        _, queues = self._services()
        config = (await queues.read()).queues.get(queue_id)
        if config is None:
            return None
        return HoldSound(config.hold_audio.audio_file, float(config.hold_audio.tone_hz))

    async def enqueue(self, call_id: str, queue_id: str, priority: int) -> None:
        _, queues = self._services()
        await queues.enqueue(call_id, queue_id, priority)

    async def check_agent_call(self, agent_id: str) -> None:
        calls, queues = self._services()
        state = await queues.read()
        try:  # the router's own rule, on a copy of the state: nothing is written
            router.step(state, AgentCallStarted(agent_id, _PROBE_CALL_ID), calls.clock.now())
        except RoutingRefused as refused:
            raise RouteRefused(refused.code.upper(), "agent_id", refused.message) from None

    async def agent_call_started(self, agent_id: str, call_id: str) -> None:
        _, queues = self._services()
        try:
            await queues.agent_call_started(agent_id, call_id)
        except RoutingRefused as refused:
            # An offer (or another call) reached the agent after `check_agent_call`: the same refusal as that check.
            raise RouteRefused(refused.code.upper(), "agent_id", refused.message) from None

    # --- what the router decided (wacall.queues.actions.CallActions) -------------------------------------------

    async def connect_agent(self, assigned: Assigned, media: AgentMedia) -> str:
        calls, _ = self._services()
        plan: RoutePlan
        match media:
            case WebRtcAgentMedia(offer_sdp=offer_sdp):
                if problems := peer_problems(offer_sdp, "offer"):
                    raise AgentMediaFailed("the agent's SDP offer: " + "; ".join(problems))
                plan = RoutePlan("webrtc", lambda: WebRtcBridgeAdapter(offer_sdp=offer_sdp), "")
            case MediaStreamAgentMedia():
                plan = RoutePlan("media_stream", MediaStreamAdapter, "")
        try:
            await calls.reroute(assigned.call_id, plan)
        except (CallNotFound, CallNotLive, RerouteRefused) as error:
            raise AgentMediaFailed(str(error)) from None
        except Exception as error:  # aiortc refuses an offer it cannot answer with ValueError and friends
            raise AgentMediaFailed(f"the agent's media cannot be attached: {error}") from None
        session = calls.session(assigned.call_id)
        return session.adapter.answer_sdp() if session is not None else ""

    async def queue_timed_out(self, decision: QueueTimedOut) -> None:
        calls, _ = self._services()
        closing = RoutePlan(
            "announcement",
            lambda: AnnouncementAdapter(tone_hz=CLOSING_TONE_HZ, tone_seconds=CLOSING_TONE.total_seconds()),
            "",
        )
        try:
            await calls.reroute(decision.call_id, closing)
        except (CallNotFound, CallNotLive):
            return  # ended meanwhile
        except Exception as error:  # the caller must not wait forever because a tone could not be played
            log.warning("call %s: no closing announcement (%s): hanging up", decision.call_id, error)
            await end_call(calls, decision.call_id, f"waited the maximum in queue {decision.queue_id}")

    async def queue_gone(self, decision: QueueGone) -> None:
        calls, _ = self._services()
        log.warning("call %s: no queue %r: the call is ended", decision.call_id, decision.queue_id)
        await end_call(calls, decision.call_id, f"no queue {decision.queue_id!r}")

    async def overflowed(self, decision: Overflowed) -> None:
        calls, _ = self._services()
        session = calls.session(decision.call_id)
        if session is not None and isinstance(session.adapter, HoldAdapter):
            await session.adapter.hold(await self.hold_sound(decision.to_queue) or HoldSound())
