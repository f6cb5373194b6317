"""The sync client (grpc sync channels): `SyncClient` and its services, the async `Client`'s methods.

Generated from _client.py by scripts/gen_sync_client.py: edit _client.py and run `make proto`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from wacall_client._errors import WacallError
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.sim.v1 import simulator_pb2_grpc
from wacall_client.testing.v1 import clock_pb2, clock_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc, contact_center_pb2_grpc
from wacall_client.v1 import contact_center_model_pb2 as model
from wacall_client.v1 import contact_center_pb2 as cc

Reply = TypeVar("Reply", bound=Message)
Request = TypeVar("Request", bound=Message)


def _duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


class _Invoker:
    """Calls one RPC with the client's metadata and deadline, and turns a failure into WacallError."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], timeout: float | None) -> None:
        self.metadata = metadata
        self.timeout = timeout

    def unary(self, rpc: Any, request: Message, reply_type: type[Reply]) -> Reply:
        try:
            reply = rpc(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as error:
            raise WacallError.from_rpc_error(error) from error
        return cast(Reply, reply)

    def replies(self, call: Any, reply_type: type[Reply]) -> Iterator[Reply]:
        """The replies of a streaming call (no deadline: streams follow the service as long as they are read);
        leaving the loop early cancels the call."""
        try:
            for reply in call:
                yield cast(Reply, reply)
        except grpc.RpcError as error:
            raise WacallError.from_rpc_error(error) from error
        finally:
            call.cancel()


def _first_then(first: Request, rest: Iterable[Request] | None) -> Iterator[Request]:
    yield first
    if rest is not None:
        yield from rest


def _open_channel(
    address: str,
    *,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
    credentials: grpc.ChannelCredentials | None,
    tls: bool,
    options: Sequence[tuple[str, Any]],
) -> grpc.Channel:
    if credentials is None and (
        tls or any(pem is not None for pem in (root_certificates, private_key, certificate_chain))
    ):
        credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=list(options))
    return grpc.insecure_channel(address, options=list(options))


class SyncClient:
    """wacall's API: `CallingService` as methods of the client (permissions, events, policy, calls, call media),
    `contact_center`, `simulator` and `clock` for the other services; `stub` is the generated CallingService stub.

    `token`: sent as `authorization: Bearer <token>` on every call (the service's `--auth-token`).
    TLS: `tls=True` (the system's roots), or `root_certificates` (PEM) and, for mutual TLS, `private_key` and
    `certificate_chain` (PEM), or ready `credentials` (e.g. from `grpc.ssl_channel_credentials`). Otherwise the
    channel is plaintext: keep it to loopback. `timeout`: a deadline in seconds for each unary call.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._channel = _open_channel(
            address,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            credentials=credentials,
            tls=tls,
            options=options,
        )
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._invoker = _Invoker(metadata, timeout)
        self.stub = calling_pb2_grpc.CallingServiceStub(self._channel)
        self.contact_center = SyncContactCenterClient(self._channel, self._invoker)
        self.simulator = SyncSimulatorClient(self._channel, self._invoker)
        self.clock = SyncClockClient(self._channel, self._invoker)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls in progress are cancelled."""
        self._channel.close()

    def get_permission(self, business_number: str, user_number: str, *, reconcile: bool = False) -> pb.Permission:
        """The pair's permission, with what each action may do now and when it next can. `reconcile` asks the
        platform first and corrects the ledger where it knows better."""
        request = pb.GetPermissionRequest(business_number=business_number, user_number=user_number, reconcile=reconcile)
        return self._invoker.unary(self.stub.GetPermission, request, pb.Permission)

    def request_permission(
        self,
        business_number: str,
        user_number: str,
        *,
        body_text: str = "",
        template: pb.Template | None = None,
        idempotency_key: str = "",
    ) -> pb.RequestPermissionResponse:
        """Sends a call-permission request (interactive while the user's window is open, else the template).
        Raises WacallError RESOURCE_EXHAUSTED (with `retry_after`) when a request limit is used up,
        FAILED_PRECONDITION when the rules refuse it, INVALID_ARGUMENT (BadRequest) for a bad field."""
        request = pb.RequestPermissionRequest(
            business_number=business_number,
            user_number=user_number,
            body_text=body_text,
            template=template,
            idempotency_key=idempotency_key,
        )
        return self._invoker.unary(self.stub.RequestPermission, request, pb.RequestPermissionResponse)

    def watch_events(
        self, *, business_number: str = "", user_number: str = "", after_cursor: str = "", only_new: bool = False
    ) -> Iterator[pb.Event]:
        """Every ledger change in order, then new ones as they happen (the stream stays open). Resume after an
        event's `cursor` with `after_cursor`; `only_new` skips what was recorded before the stream opened."""
        request = pb.WatchEventsRequest(
            business_number=business_number, user_number=user_number, after_cursor=after_cursor, only_new=only_new
        )
        call = self.stub.WatchEvents(request, metadata=self._invoker.metadata)
        yield from self._invoker.replies(call, pb.Event)

    def list_events(
        self, business_number: str, user_number: str, *, page_size: int = 0, after_cursor: str = ""
    ) -> pb.ListEventsResponse:
        """One pair's audit trail, oldest first, a page at a time (`next_cursor` is the next page's
        `after_cursor`)."""
        request = pb.ListEventsRequest(
            business_number=business_number, user_number=user_number, page_size=page_size, after_cursor=after_cursor
        )
        return self._invoker.unary(self.stub.ListEvents, request, pb.ListEventsResponse)

    def get_policy(self) -> pb.Policy:
        """The policy in force: every limit with its window."""
        return self._invoker.unary(self.stub.GetPolicy, pb.GetPolicyRequest(), pb.Policy)

    def start_call(
        self,
        business_number: str,
        user_number: str,
        *,
        route: pb.Route | None = None,
        biz_opaque_callback_data: str = "",
        idempotency_key: str = "",
    ) -> pb.Call:
        """Places a business-initiated call and returns it DIALING. Raises WacallError FAILED_PRECONDITION without
        permission, RESOURCE_EXHAUSTED (with `retry_after`) at the connected-call limit, ALREADY_EXISTS while a
        call with the user is active."""
        request = pb.StartCallRequest(
            business_number=business_number,
            user_number=user_number,
            route=route,
            biz_opaque_callback_data=biz_opaque_callback_data,
            idempotency_key=idempotency_key,
        )
        return self._invoker.unary(self.stub.StartCall, request, pb.Call)

    def get_call(self, call_id: str) -> pb.Call:
        """The call now. Raises WacallError NOT_FOUND for an unknown id."""
        return self._invoker.unary(self.stub.GetCall, pb.GetCallRequest(call_id=call_id), pb.Call)

    def end_call(self, call_id: str) -> pb.Call:
        """Ends the call (CANCELLED before the user answered) and returns it."""
        return self._invoker.unary(self.stub.EndCall, pb.EndCallRequest(call_id=call_id), pb.Call)

    def list_calls(
        self, *, business_number: str = "", user_number: str = "", page_size: int = 0, page_token: str = ""
    ) -> pb.ListCallsResponse:
        """Calls, newest first, a page at a time (`next_page_token` is the next page's `page_token`)."""
        request = pb.ListCallsRequest(
            business_number=business_number, user_number=user_number, page_size=page_size, page_token=page_token
        )
        return self._invoker.unary(self.stub.ListCalls, request, pb.ListCallsResponse)

    def call_media(
        self,
        call_id: str,
        requests: Iterable[pb.CallMediaRequest] | None = None,
        *,
        sample_rate: int = 0,
    ) -> Iterator[pb.CallMediaResponse]:
        """Attaches to a call on the media_stream route: yields what the user says (20 ms PCM16 frames at
        `sample_rate`, default 48000) and the call's updates; `requests` carry the audio to play (or a hangup).
        Ends when the call ends."""
        first = pb.CallMediaRequest(call_id=call_id, sample_rate=sample_rate)
        call = self.stub.CallMedia(_first_then(first, requests), metadata=self._invoker.metadata)
        yield from self._invoker.replies(call, pb.CallMediaResponse)


class SyncContactCenterClient:
    """`ContactCenterService`: queues, agents, and an agent's live session."""

    def __init__(self, channel: grpc.Channel, invoker: _Invoker) -> None:
        self._invoker = invoker
        self.stub = contact_center_pb2_grpc.ContactCenterServiceStub(channel)

    def put_queue(self, queue: model.Queue) -> model.Queue:
        """Creates or replaces the queue with `queue.queue_id`. Raises WacallError INVALID_ARGUMENT (BadRequest
        naming the field) for a bad field."""
        return self._invoker.unary(self.stub.PutQueue, queue, model.Queue)

    def get_queue(self, queue_id: str) -> model.Queue:
        """The queue. Raises WacallError NOT_FOUND (ErrorInfo reason `unknown_queue`) for an unknown id."""
        return self._invoker.unary(self.stub.GetQueue, cc.GetQueueRequest(queue_id=queue_id), model.Queue)

    def list_queues(self) -> cc.ListQueuesResponse:
        """Every queue."""
        return self._invoker.unary(self.stub.ListQueues, cc.ListQueuesRequest(), cc.ListQueuesResponse)

    def delete_queue(self, queue_id: str) -> model.Queue:
        """Deletes the queue and returns it. Raises WacallError FAILED_PRECONDITION while calls wait in it."""
        return self._invoker.unary(self.stub.DeleteQueue, cc.DeleteQueueRequest(queue_id=queue_id), model.Queue)

    def put_agent(self, agent: model.Agent) -> model.Agent:
        """Creates or replaces the agent with `agent.agent_id` (skills, queues, penalties)."""
        return self._invoker.unary(self.stub.PutAgent, agent, model.Agent)

    def get_agent(self, agent_id: str) -> model.Agent:
        """The agent, with its presence. Raises WacallError NOT_FOUND for an unknown id."""
        return self._invoker.unary(self.stub.GetAgent, cc.GetAgentRequest(agent_id=agent_id), model.Agent)

    def list_agents(self, *, queue_id: str = "") -> cc.ListAgentsResponse:
        """Every agent, or those serving `queue_id`."""
        request = cc.ListAgentsRequest(queue_id=queue_id)
        return self._invoker.unary(self.stub.ListAgents, request, cc.ListAgentsResponse)

    def delete_agent(self, agent_id: str) -> model.Agent:
        """Deletes the agent and returns it. Raises WacallError FAILED_PRECONDITION while it is on a call."""
        return self._invoker.unary(self.stub.DeleteAgent, cc.DeleteAgentRequest(agent_id=agent_id), model.Agent)

    def get_queue_stats(self, queue_id: str) -> cc.QueueStats:
        """The queue's figures now: waiting calls, agents, answered, abandoned, service level."""
        request = cc.GetQueueStatsRequest(queue_id=queue_id)
        return self._invoker.unary(self.stub.GetQueueStats, request, cc.QueueStats)

    def agent_session(self, requests: Iterable[cc.AgentSessionRequest]) -> Iterator[cc.AgentSessionEvent]:
        """An agent's session: `requests` start with a login, then presence, accept, decline, hang-up; yields its
        events (offers, connected, call ended, presence, and an `error` event for a refused request). The agent
        goes OFFLINE when `requests` ends or the loop is left."""
        call = self.stub.AgentSession(requests, metadata=self._invoker.metadata)
        yield from self._invoker.replies(call, cc.AgentSessionEvent)


class SyncSimulatorClient:
    """`SimulatorService`: the simulated platform's users and their phones (embedded or standalone simulator)."""

    def __init__(self, channel: grpc.Channel, invoker: _Invoker) -> None:
        self._invoker = invoker
        self.stub = simulator_pb2_grpc.SimulatorServiceStub(channel)

    def set_user_behavior(
        self,
        user_number: str,
        *,
        on_permission_request: sim_pb.PermissionRequestResponse | None = None,
        reply_delay: timedelta | None = None,
        outdated_client: bool | None = None,
        wa_id: str | None = None,
        on_call: sim_pb.OnCall | None = None,
        ring_duration: timedelta | None = None,
        talk_duration: timedelta | None = None,
        tone_hz: float | None = None,
        say_file: str | None = None,
    ) -> sim_pb.UserBehavior:
        """Changes how the user reacts from now on: only the arguments given (the others keep their values).
        Returns the user's whole behaviour."""
        request = sim_pb.SetUserBehaviorRequest(
            user_number=user_number,
            on_permission_request=on_permission_request,
            reply_delay=_duration(reply_delay),
            outdated_client=outdated_client,
            wa_id=wa_id,
            on_call=on_call,
            ring_duration=_duration(ring_duration),
            talk_duration=_duration(talk_duration),
            tone_hz=tone_hz,
            say_file=say_file,
        )
        return self._invoker.unary(self.stub.SetUserBehavior, request, sim_pb.UserBehavior)

    def get_user_behavior(self, user_number: str) -> sim_pb.UserBehavior:
        """How the user reacts (the defaults for a user never configured)."""
        request = sim_pb.GetUserBehaviorRequest(user_number=user_number)
        return self._invoker.unary(self.stub.GetUserBehavior, request, sim_pb.UserBehavior)

    def send_user_message(self, business_number: str, user_number: str, text: str) -> sim_pb.SendUserMessageResponse:
        """The user writes to the business, opening the 24 h customer-service window."""
        request = sim_pb.SendUserMessageRequest(business_number=business_number, user_number=user_number, text=text)
        return self._invoker.unary(self.stub.SendUserMessage, request, sim_pb.SendUserMessageResponse)

    def grant_permission(
        self, business_number: str, user_number: str, *, permanent: bool = False
    ) -> sim_pb.SimPermission:
        """The user grants permission from the business profile (temporary unless `permanent`)."""
        request = sim_pb.GrantPermissionRequest(
            business_number=business_number, user_number=user_number, permanent=permanent
        )
        return self._invoker.unary(self.stub.GrantPermission, request, sim_pb.SimPermission)

    def revoke_permission(self, business_number: str, user_number: str) -> sim_pb.SimPermission:
        """The user revokes the permission from the business profile."""
        request = sim_pb.RevokePermissionRequest(business_number=business_number, user_number=user_number)
        return self._invoker.unary(self.stub.RevokePermission, request, sim_pb.SimPermission)

    def get_platform_permission(self, business_number: str, user_number: str) -> sim_pb.SimPermission:
        """The platform's own view of the pair's permission."""
        request = sim_pb.GetPlatformPermissionRequest(business_number=business_number, user_number=user_number)
        return self._invoker.unary(self.stub.GetPlatformPermission, request, sim_pb.SimPermission)

    def list_messages(self, user_number: str, *, business_number: str = "") -> sim_pb.ListMessagesResponse:
        """What the business sent the user, oldest first."""
        request = sim_pb.ListMessagesRequest(user_number=user_number, business_number=business_number)
        return self._invoker.unary(self.stub.ListMessages, request, sim_pb.ListMessagesResponse)

    def get_phone_call(self, platform_call_id: str) -> sim_pb.PhoneCall:
        """The phone's view of a call: its state, what it heard and sent."""
        request = sim_pb.GetPhoneCallRequest(platform_call_id=platform_call_id)
        return self._invoker.unary(self.stub.GetPhoneCall, request, sim_pb.PhoneCall)

    def place_user_call(self, business_number: str, user_number: str) -> sim_pb.PhoneCall:
        """The user calls the business."""
        request = sim_pb.PlaceUserCallRequest(business_number=business_number, user_number=user_number)
        return self._invoker.unary(self.stub.PlaceUserCall, request, sim_pb.PhoneCall)

    def hang_up(self, platform_call_id: str) -> sim_pb.PhoneCall:
        """The user hangs up the call."""
        request = sim_pb.HangUpRequest(platform_call_id=platform_call_id)
        return self._invoker.unary(self.stub.HangUp, request, sim_pb.PhoneCall)

    def restrict_business(self, business_number: str, duration: timedelta) -> sim_pb.RestrictBusinessResponse:
        """The platform pauses business-initiated calling for `duration` (zero lifts the pause)."""
        request = sim_pb.RestrictBusinessRequest(business_number=business_number, duration=_duration(duration))
        return self._invoker.unary(self.stub.RestrictBusiness, request, sim_pb.RestrictBusinessResponse)

    def get_platform_config(self) -> sim_pb.PlatformConfig:
        """The simulator's Graph URL, app secret, access token, accounts and webhook URLs (development and tests
        only: it hands out the secret)."""
        request = sim_pb.GetPlatformConfigRequest()
        return self._invoker.unary(self.stub.GetPlatformConfig, request, sim_pb.PlatformConfig)

    def provision_business(self, business_number: str) -> sim_pb.BusinessAccount:
        """Provisions the business number (idempotent): its phone number id, WABA id and approved templates."""
        request = sim_pb.ProvisionBusinessRequest(business_number=business_number)
        return self._invoker.unary(self.stub.ProvisionBusiness, request, sim_pb.BusinessAccount)


class SyncClockClient:
    """`ClockService`: the service's manual clock (`wacall serve --clock manual`)."""

    def __init__(self, channel: grpc.Channel, invoker: _Invoker) -> None:
        self._invoker = invoker
        self.stub = clock_pb2_grpc.ClockServiceStub(channel)

    def now(self) -> clock_pb2.NowResponse:
        """The service's time."""
        return self._invoker.unary(self.stub.Now, clock_pb2.NowRequest(), clock_pb2.NowResponse)

    def advance(self, duration: timedelta) -> clock_pb2.NowResponse:
        """Moves the clock forward by `duration`, running everything that falls due; returns the new time."""
        request = clock_pb2.AdvanceRequest(duration=_duration(duration))
        return self._invoker.unary(self.stub.Advance, request, clock_pb2.NowResponse)
