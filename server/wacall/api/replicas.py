"""What replicas sharing one database ask of each other over gRPC (`wacall.internal.v1.ReplicaService`, served
beside the public API on the same port and token, left out of reflection: it is not part of the public API).

An agent's session runs on one replica and a queued call's media on another (its owner). The router's `Accept` is
stepped where the agent is; moving the call's media to the agent must happen where the media is: `OwnerCalls`
(`queues.actions.OwnerActions`) sends `ConnectAgent` to the owner's advertised address (the replica registry's, the
channels of `api/forwarding.py`) and `ReplicaServicer` answers it there. The agent hanging up is the forwarded
`EndCall`. A request made here on the service's own behalf carries its own bearer token and the hop marker.
"""

from __future__ import annotations

from datetime import timedelta

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from wacall_client.internal.v1 import replicas_pb2 as pb
from wacall_client.internal.v1 import replicas_pb2_grpc
from wacall_client.v1 import calling_pb2, calling_pb2_grpc

from wacall.api.errors import Context, abort, abort_bad_request, duration_value, text_field
from wacall.api.forwarding import FORWARD_TIMEOUT, UNREACHED, OwnerForwarding
from wacall.calls.ownership import CallOwner
from wacall.queues.actions import AgentMedia, AgentMediaFailed, MediaStreamAgentMedia, WebRtcAgentMedia
from wacall.queues.router import Assigned
from wacall.queues.service import QueueService

AGENT_MEDIA_FAILED = "AGENT_MEDIA_FAILED"
MAX_ID = 128
MAX_SDP = 64 * 1024


def _waited(value: timedelta) -> duration_pb2.Duration:
    waited = duration_pb2.Duration()
    waited.FromTimedelta(value)
    return waited


class OwnerCalls:
    """`OwnerActions` over gRPC: what this replica asks of the replica that owns a call."""

    def __init__(self, forwarding: OwnerForwarding) -> None:
        self.forwarding = forwarding

    async def connect_agent(self, owner: CallOwner, assigned: Assigned, media: AgentMedia) -> str:
        try:
            address = self.forwarding.reachable_address(owner)
        except Exception as unreachable:  # CallOwnerUnreachable: the agent hears why
            raise AgentMediaFailed(str(unreachable)) from None
        request = pb.ConnectAgentRequest(
            call_id=assigned.call_id,
            agent_id=assigned.agent_id,
            queue_id=assigned.queue_id,
            offer_id=assigned.offer_id,
            waited=_waited(assigned.waited),
        )
        match media:
            case WebRtcAgentMedia(offer_sdp=offer_sdp):
                request.webrtc_offer_sdp = offer_sdp
            case MediaStreamAgentMedia():
                request.media_stream.SetInParent()
        stub = replicas_pb2_grpc.ReplicaServiceStub(self.forwarding.channel(address))
        try:
            reply: pb.ConnectAgentResponse = await stub.ConnectAgent(
                request, metadata=self.forwarding.own_metadata(), timeout=FORWARD_TIMEOUT.total_seconds()
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.FAILED_PRECONDITION:
                raise AgentMediaFailed(error.details() or "the call's owner could not move its media") from None
            raise AgentMediaFailed(
                f"call {assigned.call_id} is run by wacall instance {owner.instance} ({address}), which did not "
                f"answer ({error.code().name}: {error.details()})"
            ) from None
        return reply.webrtc_answer_sdp

    async def end_call(self, owner: CallOwner, call_id: str) -> None:
        stub = calling_pb2_grpc.CallingServiceStub(self.forwarding.channel(self.forwarding.reachable_address(owner)))
        try:
            await stub.EndCall(
                calling_pb2.EndCallRequest(call_id=call_id),
                metadata=self.forwarding.own_metadata(),
                timeout=FORWARD_TIMEOUT.total_seconds(),
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in UNREACHED:
                raise self.forwarding.calls.owner_unreachable(
                    owner, f"did not answer ({error.code().name}: {error.details()})"
                ) from None
            if error.code() is not grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: it ended and is gone meanwhile
                raise


class ReplicaServicer(replicas_pb2_grpc.ReplicaServiceServicer):
    """`ReplicaService` on the replica that owns the calls it is asked about."""

    def __init__(self, queues: QueueService) -> None:
        self.queues = queues

    async def ConnectAgent(self, request: pb.ConnectAgentRequest, context: Context) -> pb.ConnectAgentResponse:
        call_id = await text_field(context, request.call_id, "call_id", max_chars=MAX_ID)
        agent_id = await text_field(context, request.agent_id, "agent_id", max_chars=MAX_ID)
        if not call_id or not agent_id:
            await abort_bad_request(context, "call_id" if not call_id else "agent_id", "required")
        queue_id = await text_field(context, request.queue_id, "queue_id", max_chars=MAX_ID)
        offer_id = await text_field(context, request.offer_id, "offer_id", max_chars=MAX_ID)
        waited = await duration_value(context, request.waited, "waited")
        media: AgentMedia
        match request.WhichOneof("media"):
            case "webrtc_offer_sdp":
                offer_sdp = await text_field(
                    context, request.webrtc_offer_sdp, "webrtc_offer_sdp", max_chars=MAX_SDP, multiline=True
                )
                media = WebRtcAgentMedia(offer_sdp)
            case "media_stream":
                media = MediaStreamAgentMedia()
            case _:
                await abort_bad_request(context, "media", "webrtc_offer_sdp or media_stream is required")
        assigned = Assigned(call_id, agent_id, queue_id, offer_id, waited)
        try:
            answer = await self.queues.connect_agent_here(assigned, media)
        except AgentMediaFailed as failed:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                failed.message,
                error_details_pb2.ErrorInfo(reason=AGENT_MEDIA_FAILED, domain="wacall", metadata={"call_id": call_id}),
            )
        return pb.ConnectAgentResponse(webrtc_answer_sdp=answer)
