"""gRPC servicer for wacall.v1.ContactCenterService: validate, call the queue service, map the result.

Bad fields are INVALID_ARGUMENT with a BadRequest naming the field; a command the router refuses is NOT_FOUND (an
unknown queue, agent or offer) or FAILED_PRECONDITION (a queue still in use, an agent on a call), with an ErrorInfo
whose reason is the router's code. `AgentSession` drives a `wacall.queues.sessions.AgentSession`: a refused request
becomes an `error` event and the stream stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import NoReturn

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from wacall_client.v1 import contact_center_model_pb2 as model_pb
from wacall_client.v1 import contact_center_pb2 as pb
from wacall_client.v1 import contact_center_pb2_grpc

from wacall.api.errors import Context, abort, abort_bad_request
from wacall.api.messages import CALL_OUTCOME, duration, view_message
from wacall.api.queue_messages import (
    PRESENCE,
    PRESENCE_IN,
    PRESENCE_WHY,
    WITHDRAWN_WHY,
    agent_message,
    identifier,
    put_agent,
    queue_config,
    queue_message,
    stats_message,
)
from wacall.fields import InvalidField, bounded_text
from wacall.queues.actions import MediaStreamAgentMedia, WebRtcAgentMedia
from wacall.queues.router import (
    Agent,
    DeleteAgent,
    DeleteQueue,
    Presence,
    PutQueue,
    QueueConfig,
    RouterState,
    RoutingRefused,
)
from wacall.queues.service import QueueService
from wacall.queues.sessions import (
    AgentSession,
    CallEnded,
    Connected,
    LoggedIn,
    OfferEvent,
    OfferWithdrawnEvent,
    PresenceEvent,
    SessionError,
    SessionEvent,
)

# The router's refusal codes → status. Every code it raises is here (a test checks); anything else is a bug.
REFUSAL_STATUS: Mapping[str, grpc.StatusCode] = {
    "unknown_queue": grpc.StatusCode.NOT_FOUND,
    "unknown_agent": grpc.StatusCode.NOT_FOUND,
    "offer_gone": grpc.StatusCode.NOT_FOUND,
    "queue_in_use": grpc.StatusCode.FAILED_PRECONDITION,
    "agent_busy": grpc.StatusCode.FAILED_PRECONDITION,
    "presence_refused": grpc.StatusCode.FAILED_PRECONDITION,
    "call_already_routed": grpc.StatusCode.FAILED_PRECONDITION,
    "agent_not_ready": grpc.StatusCode.FAILED_PRECONDITION,
    "offer_ringing": grpc.StatusCode.FAILED_PRECONDITION,
    "not_wrapping_up": grpc.StatusCode.FAILED_PRECONDITION,
    "invalid_queue": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_agent": grpc.StatusCode.INVALID_ARGUMENT,
    "unknown_overflow_queue": grpc.StatusCode.FAILED_PRECONDITION,
    "too_many_queues": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too_many_agents": grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Refusals of a quota: the status carries a QuotaFailure naming it.
QUOTA_OF: Mapping[str, str] = {"too_many_queues": "queues", "too_many_agents": "agents"}

# An SDP offer of one audio section is a few kilobytes; a browser's with many candidates stays well below this.
MAX_OFFER_SDP = 64 * 1024
MAX_CALL_ID = 128


async def abort_routing(context: Context, refused: RoutingRefused) -> NoReturn:
    status = REFUSAL_STATUS.get(refused.code, grpc.StatusCode.FAILED_PRECONDITION)
    details: list[Message] = [error_details_pb2.ErrorInfo(reason=refused.code, domain="wacall")]
    if refused.code in QUOTA_OF:
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=QUOTA_OF[refused.code], description=refused.message
        )
        details.append(error_details_pb2.QuotaFailure(violations=[violation]))
    await abort(context, status, refused.message, *details)


def session_event(event: SessionEvent) -> pb.AgentSessionEvent:
    """One session event as the stream sends it (the WebSocket mirror writes the same fields as JSON)."""
    E = pb.AgentSessionEvent
    match event:
        case LoggedIn(agent=agent):
            return E(logged_in=E.LoggedIn(agent=agent_message(agent)))
        case OfferEvent():
            return E(
                offer=E.Offer(
                    offer_id=event.offer_id,
                    call_id=event.call_id,
                    queue_id=event.queue_id,
                    customer_number=event.customer_number,
                    business_number=event.business_number,
                    waited=duration(event.waited),
                    permission=view_message(event.permission) if event.permission is not None else None,
                    expires_in=duration(event.expires_in),
                )
            )
        case OfferWithdrawnEvent(offer_id=offer_id, why=why):
            return E(offer_withdrawn=E.OfferWithdrawn(offer_id=offer_id, why=WITHDRAWN_WHY[why]))  # type: ignore[arg-type]
        case Connected(call_id=call_id, webrtc_answer_sdp=answer):
            return E(connected=E.Connected(call_id=call_id, webrtc_answer_sdp=answer))
        case CallEnded(call_id=call_id, outcome=outcome):
            return E(call_ended=E.CallEnded(call_id=call_id, outcome=CALL_OUTCOME[outcome] if outcome else None))
        case PresenceEvent(presence=presence, why=why):
            return E(presence=E.Presence(state=PRESENCE[presence], why=PRESENCE_WHY[why]))  # type: ignore[arg-type]
        case SessionError(code=code, message=message):
            return E(error=E.Error(code=code, message=message))
    raise AssertionError(f"unhandled session event {event!r}")  # pragma: no cover


async def drive_request(session: AgentSession, request: pb.AgentSessionRequest) -> None:
    """One request after login: checked, then handed to the session (which reports any refusal as an event). The
    gRPC stream and the softphone's WebSocket both use it."""
    kind = request.WhichOneof("kind")
    try:
        match kind:
            case "set_presence":
                presence = PRESENCE_IN.get(request.set_presence.presence)
                if presence not in (Presence.OFFLINE, Presence.AWAY, Presence.AVAILABLE):
                    raise InvalidField("set_presence.presence", "OFFLINE, AWAY or AVAILABLE")
                await session.set_presence(presence)
            case "accept":
                accept = request.accept
                offer_id = bounded_text(accept.offer_id, "accept.offer_id", max_chars=MAX_CALL_ID)
                match accept.WhichOneof("media"):
                    case "webrtc":
                        sdp = bounded_text(
                            accept.webrtc.offer_sdp, "accept.webrtc.offer_sdp", max_chars=MAX_OFFER_SDP, multiline=True
                        )
                        if not sdp.strip():
                            raise InvalidField("accept.webrtc.offer_sdp", "an SDP offer is required")
                        await session.accept(offer_id, WebRtcAgentMedia(sdp))
                    case "media_stream":
                        await session.accept(offer_id, MediaStreamAgentMedia())
                    case _:
                        raise InvalidField("accept.media", "say how the agent takes the audio: webrtc or media_stream")
            case "decline":
                await session.decline(bounded_text(request.decline.offer_id, "decline.offer_id", max_chars=MAX_CALL_ID))
            case "hang_up":
                await session.hang_up(bounded_text(request.hang_up.call_id, "hang_up.call_id", max_chars=MAX_CALL_ID))
            case "end_wrap_up":
                await session.end_wrap_up()
            case "login":
                session.refuse("already_logged_in", "this session is signed in already: open a new stream to switch")
            case _:
                session.refuse("invalid_argument", "empty request: set one of the request kinds")
    except InvalidField as bad:
        session.refuse("invalid_argument", str(bad))


class ContactCenterServicer(contact_center_pb2_grpc.ContactCenterServiceServicer):
    def __init__(self, queues: QueueService, media_dir: str) -> None:
        self.queues = queues
        self.media_dir = media_dir

    async def PutQueue(self, request: model_pb.Queue, context: Context) -> model_pb.Queue:
        try:
            config = queue_config(request, self.media_dir)
        except InvalidField as bad:
            await abort_bad_request(context, bad.field, bad.why)
        try:
            step = await self.queues.apply(PutQueue(config))
        except RoutingRefused as refused:
            await abort_routing(context, refused)
        return queue_message(step.state.queues[config.queue_id])

    async def _queue_id(self, context: Context, value: str) -> str:
        try:
            return identifier(value, "queue_id")
        except InvalidField as bad:
            await abort_bad_request(context, bad.field, bad.why)

    async def _agent_id(self, context: Context, value: str) -> str:
        try:
            return identifier(value, "agent_id")
        except InvalidField as bad:
            await abort_bad_request(context, bad.field, bad.why)

    async def GetQueue(self, request: pb.GetQueueRequest, context: Context) -> model_pb.Queue:
        queue_id = await self._queue_id(context, request.queue_id)
        config = (await self.queues.read()).queues.get(queue_id)
        if config is None:
            await abort_routing(context, RoutingRefused("unknown_queue", f"no queue {queue_id!r}"))
        return queue_message(config)

    async def ListQueues(self, request: pb.ListQueuesRequest, context: Context) -> pb.ListQueuesResponse:
        state = await self.queues.read()
        return pb.ListQueuesResponse(queues=[queue_message(state.queues[q]) for q in sorted(state.queues)])

    async def DeleteQueue(self, request: pb.DeleteQueueRequest, context: Context) -> model_pb.Queue:
        queue_id = await self._queue_id(context, request.queue_id)
        deleted: list[QueueConfig] = []

        def keep(before: RouterState) -> None:
            # What is deleted is what the step saw: a read before it could miss a queue put meanwhile.
            if queue_id in before.queues:
                deleted.append(before.queues[queue_id])

        try:
            await self.queues.apply(DeleteQueue(queue_id), guard=keep)
        except RoutingRefused as refused:
            await abort_routing(context, refused)
        return queue_message(deleted[-1])

    async def PutAgent(self, request: model_pb.Agent, context: Context) -> model_pb.Agent:
        try:
            event = put_agent(request)
        except InvalidField as bad:
            await abort_bad_request(context, bad.field, bad.why)
        try:
            step = await self.queues.apply(event)
        except RoutingRefused as refused:
            await abort_routing(context, refused)
        return agent_message(step.state.agents[event.agent_id])

    async def GetAgent(self, request: pb.GetAgentRequest, context: Context) -> model_pb.Agent:
        agent_id = await self._agent_id(context, request.agent_id)
        agent = (await self.queues.read()).agents.get(agent_id)
        if agent is None:
            await abort_routing(context, RoutingRefused("unknown_agent", f"no agent {agent_id!r}"))
        return agent_message(agent)

    async def ListAgents(self, request: pb.ListAgentsRequest, context: Context) -> pb.ListAgentsResponse:
        queue_id = await self._queue_id(context, request.queue_id) if request.queue_id else ""
        state = await self.queues.read()
        agents = [state.agents[a] for a in sorted(state.agents)]
        return pb.ListAgentsResponse(agents=[agent_message(a) for a in agents if not queue_id or queue_id in a.queues])

    async def DeleteAgent(self, request: pb.DeleteAgentRequest, context: Context) -> model_pb.Agent:
        agent_id = await self._agent_id(context, request.agent_id)
        deleted: list[Agent] = []

        def keep(before: RouterState) -> None:
            if agent_id in before.agents:
                deleted.append(before.agents[agent_id])

        try:
            await self.queues.apply(DeleteAgent(agent_id), guard=keep)
        except RoutingRefused as refused:
            await abort_routing(context, refused)
        return agent_message(deleted[-1])

    async def GetQueueStats(self, request: pb.GetQueueStatsRequest, context: Context) -> pb.QueueStats:
        queue_id = await self._queue_id(context, request.queue_id)
        try:
            stats = await self.queues.stats(queue_id)
        except RoutingRefused as refused:
            await abort_routing(context, refused)
        return stats_message(queue_id, stats, self.queues.state.queues[queue_id].service_level)

    async def AgentSession(
        self, request_iterator: AsyncIterator[pb.AgentSessionRequest], context: Context
    ) -> AsyncIterator[pb.AgentSessionEvent]:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("kind") != "login":
            await abort_bad_request(context, "login", "the first request of a session is login {agent_id}")
        agent_id = await self._agent_id(context, first.login.agent_id)
        try:
            session = await self.queues.login(agent_id)
        except RoutingRefused as refused:
            await abort_routing(context, refused)

        async def read_requests() -> None:
            try:
                async for request in requests:
                    await drive_request(session, request)
                    if session.overflowed:
                        break  # the client stopped reading its events: the session is over
            finally:
                # The client closing its side (or the stream dropping) ends the session.
                await asyncio.shield(session.close())

        reader = asyncio.create_task(read_requests(), name=f"agent-session-{agent_id}")
        try:
            async for event in session.events():
                yield session_event(event)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError, Exception):
                await reader
            await asyncio.shield(session.close())
