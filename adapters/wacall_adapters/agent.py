"""`agent`: a call an agent places itself (a call back). The agent's media is what it would take an offered call
with: its WebRTC offer, bridged by the service (the SDP answer in `Call.webrtc_answer_sdp`), or, without an offer,
its program on `CallMedia` with the call's id. The agent is BUSY from the moment the call exists until it ends, then
returns to the presence it had before the call, with no wrap-up (a call back belongs to no queue). A call back that
never connects (the platform refuses it, its media fails, the customer does not pick up) leaves the agent as it was:
not a call handled, its idle time kept. The permission rules are the call's, as for any business-initiated call.
"""

from __future__ import annotations

from wacall_client.v1 import calling_pb2 as pb

from wacall.fields import InvalidField, bounded_text
from wacall.media.sdp import peer_problems
from wacall_adapters.base import AudioStream, CallLeg, MediaAdapter
from wacall_adapters.media_stream import MediaStreamAdapter
from wacall_adapters.queue import contact_centre, identifier
from wacall_adapters.routes import CallQueues, RoutePlan, RouteSpec, ServerFiles
from wacall_adapters.webrtc import MAX_SDP, WebRtcBridgeAdapter


class AgentCallAdapter(MediaAdapter):
    """The agent's own media for the call; the contact centre hears of the call before any of it is set up."""

    def __init__(self, *, agent_id: str, media: MediaAdapter, queues: CallQueues) -> None:
        self.agent_id = agent_id
        self.media = media
        self.queues = queues

    async def attach(self, leg: CallLeg) -> None:
        await self.queues.agent_call_started(self.agent_id, leg.call_id)
        await self.media.attach(leg)

    async def connected(self) -> None:
        await self.media.connected()

    async def close(self) -> None:
        await self.media.close()

    def answer_sdp(self) -> str:
        return self.media.answer_sdp()

    def audio_stream(self) -> AudioStream | None:
        return self.media.audio_stream()


# --- the route: `agent` in wacall.v1.Route -------------------------------------------------------------------------


async def plan(route: pb.AgentRoute, files: ServerFiles) -> RoutePlan:
    agent_id = identifier(route.agent_id, "agent_id")
    offer = ""
    if route.offer_sdp:
        offer = bounded_text(route.offer_sdp, "offer_sdp", max_chars=MAX_SDP, multiline=True)
        if problems := peer_problems(offer, "offer"):
            raise InvalidField("offer_sdp", "an SDP offer with one audio section: " + "; ".join(problems))
    queues = contact_centre(files)
    await queues.check_agent_call(agent_id)

    def build() -> AgentCallAdapter:
        media = WebRtcBridgeAdapter(offer_sdp=offer) if offer else MediaStreamAdapter()
        return AgentCallAdapter(agent_id=agent_id, media=media, queues=queues)

    return RoutePlan("agent", build, route.SerializeToString().hex())


ROUTE = RouteSpec("agent", plan)
