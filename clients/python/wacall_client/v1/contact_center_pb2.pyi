import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from wacall_client.v1 import calling_pb2 as _calling_pb2
from wacall_client.v1 import contact_center_model_pb2 as _contact_center_model_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetQueueRequest(_message.Message):
    __slots__ = ("queue_id",)
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    queue_id: str
    def __init__(self, queue_id: _Optional[str] = ...) -> None: ...

class ListQueuesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQueuesResponse(_message.Message):
    __slots__ = ("queues",)
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[_contact_center_model_pb2.Queue]
    def __init__(self, queues: _Optional[_Iterable[_Union[_contact_center_model_pb2.Queue, _Mapping]]] = ...) -> None: ...

class DeleteQueueRequest(_message.Message):
    __slots__ = ("queue_id",)
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    queue_id: str
    def __init__(self, queue_id: _Optional[str] = ...) -> None: ...

class GetAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("queue_id",)
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    queue_id: str
    def __init__(self, queue_id: _Optional[str] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[_contact_center_model_pb2.Agent]
    def __init__(self, agents: _Optional[_Iterable[_Union[_contact_center_model_pb2.Agent, _Mapping]]] = ...) -> None: ...

class DeleteAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class GetQueueStatsRequest(_message.Message):
    __slots__ = ("queue_id",)
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    queue_id: str
    def __init__(self, queue_id: _Optional[str] = ...) -> None: ...

class QueueStats(_message.Message):
    __slots__ = ("queue_id", "waiting", "longest_wait", "agents_available", "agents_busy", "offered", "answered", "abandoned", "overflowed", "average_wait", "service_level", "service_level_threshold")
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    LONGEST_WAIT_FIELD_NUMBER: _ClassVar[int]
    AGENTS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    AGENTS_BUSY_FIELD_NUMBER: _ClassVar[int]
    OFFERED_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_FIELD_NUMBER: _ClassVar[int]
    OVERFLOWED_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_WAIT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    queue_id: str
    waiting: int
    longest_wait: _duration_pb2.Duration
    agents_available: int
    agents_busy: int
    offered: int
    answered: int
    abandoned: int
    overflowed: int
    average_wait: _duration_pb2.Duration
    service_level: float
    service_level_threshold: _duration_pb2.Duration
    def __init__(self, queue_id: _Optional[str] = ..., waiting: _Optional[int] = ..., longest_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., agents_available: _Optional[int] = ..., agents_busy: _Optional[int] = ..., offered: _Optional[int] = ..., answered: _Optional[int] = ..., abandoned: _Optional[int] = ..., overflowed: _Optional[int] = ..., average_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., service_level: _Optional[float] = ..., service_level_threshold: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AgentSessionRequest(_message.Message):
    __slots__ = ("login", "set_presence", "accept", "decline", "hang_up", "end_wrap_up")
    class Login(_message.Message):
        __slots__ = ("agent_id",)
        AGENT_ID_FIELD_NUMBER: _ClassVar[int]
        agent_id: str
        def __init__(self, agent_id: _Optional[str] = ...) -> None: ...
    class SetPresence(_message.Message):
        __slots__ = ("presence",)
        PRESENCE_FIELD_NUMBER: _ClassVar[int]
        presence: _contact_center_model_pb2.AgentPresence
        def __init__(self, presence: _Optional[_Union[_contact_center_model_pb2.AgentPresence, str]] = ...) -> None: ...
    class WebRtcMedia(_message.Message):
        __slots__ = ("offer_sdp",)
        OFFER_SDP_FIELD_NUMBER: _ClassVar[int]
        offer_sdp: str
        def __init__(self, offer_sdp: _Optional[str] = ...) -> None: ...
    class MediaStreamMedia(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class Accept(_message.Message):
        __slots__ = ("offer_id", "webrtc", "media_stream")
        OFFER_ID_FIELD_NUMBER: _ClassVar[int]
        WEBRTC_FIELD_NUMBER: _ClassVar[int]
        MEDIA_STREAM_FIELD_NUMBER: _ClassVar[int]
        offer_id: str
        webrtc: AgentSessionRequest.WebRtcMedia
        media_stream: AgentSessionRequest.MediaStreamMedia
        def __init__(self, offer_id: _Optional[str] = ..., webrtc: _Optional[_Union[AgentSessionRequest.WebRtcMedia, _Mapping]] = ..., media_stream: _Optional[_Union[AgentSessionRequest.MediaStreamMedia, _Mapping]] = ...) -> None: ...
    class Decline(_message.Message):
        __slots__ = ("offer_id",)
        OFFER_ID_FIELD_NUMBER: _ClassVar[int]
        offer_id: str
        def __init__(self, offer_id: _Optional[str] = ...) -> None: ...
    class HangUp(_message.Message):
        __slots__ = ("call_id",)
        CALL_ID_FIELD_NUMBER: _ClassVar[int]
        call_id: str
        def __init__(self, call_id: _Optional[str] = ...) -> None: ...
    class EndWrapUp(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    LOGIN_FIELD_NUMBER: _ClassVar[int]
    SET_PRESENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    DECLINE_FIELD_NUMBER: _ClassVar[int]
    HANG_UP_FIELD_NUMBER: _ClassVar[int]
    END_WRAP_UP_FIELD_NUMBER: _ClassVar[int]
    login: AgentSessionRequest.Login
    set_presence: AgentSessionRequest.SetPresence
    accept: AgentSessionRequest.Accept
    decline: AgentSessionRequest.Decline
    hang_up: AgentSessionRequest.HangUp
    end_wrap_up: AgentSessionRequest.EndWrapUp
    def __init__(self, login: _Optional[_Union[AgentSessionRequest.Login, _Mapping]] = ..., set_presence: _Optional[_Union[AgentSessionRequest.SetPresence, _Mapping]] = ..., accept: _Optional[_Union[AgentSessionRequest.Accept, _Mapping]] = ..., decline: _Optional[_Union[AgentSessionRequest.Decline, _Mapping]] = ..., hang_up: _Optional[_Union[AgentSessionRequest.HangUp, _Mapping]] = ..., end_wrap_up: _Optional[_Union[AgentSessionRequest.EndWrapUp, _Mapping]] = ...) -> None: ...

class AgentSessionEvent(_message.Message):
    __slots__ = ("logged_in", "offer", "offer_withdrawn", "connected", "call_ended", "presence", "error")
    class LoggedIn(_message.Message):
        __slots__ = ("agent",)
        AGENT_FIELD_NUMBER: _ClassVar[int]
        agent: _contact_center_model_pb2.Agent
        def __init__(self, agent: _Optional[_Union[_contact_center_model_pb2.Agent, _Mapping]] = ...) -> None: ...
    class Offer(_message.Message):
        __slots__ = ("offer_id", "call_id", "queue_id", "customer_number", "business_number", "waited", "permission", "expires_in")
        OFFER_ID_FIELD_NUMBER: _ClassVar[int]
        CALL_ID_FIELD_NUMBER: _ClassVar[int]
        QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
        CUSTOMER_NUMBER_FIELD_NUMBER: _ClassVar[int]
        BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
        WAITED_FIELD_NUMBER: _ClassVar[int]
        PERMISSION_FIELD_NUMBER: _ClassVar[int]
        EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
        offer_id: str
        call_id: str
        queue_id: str
        customer_number: str
        business_number: str
        waited: _duration_pb2.Duration
        permission: _calling_pb2.Permission
        expires_in: _duration_pb2.Duration
        def __init__(self, offer_id: _Optional[str] = ..., call_id: _Optional[str] = ..., queue_id: _Optional[str] = ..., customer_number: _Optional[str] = ..., business_number: _Optional[str] = ..., waited: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., permission: _Optional[_Union[_calling_pb2.Permission, _Mapping]] = ..., expires_in: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
    class OfferWithdrawn(_message.Message):
        __slots__ = ("offer_id", "why")
        OFFER_ID_FIELD_NUMBER: _ClassVar[int]
        WHY_FIELD_NUMBER: _ClassVar[int]
        offer_id: str
        why: _contact_center_model_pb2.OfferWithdrawnWhy
        def __init__(self, offer_id: _Optional[str] = ..., why: _Optional[_Union[_contact_center_model_pb2.OfferWithdrawnWhy, str]] = ...) -> None: ...
    class Connected(_message.Message):
        __slots__ = ("call_id", "webrtc_answer_sdp")
        CALL_ID_FIELD_NUMBER: _ClassVar[int]
        WEBRTC_ANSWER_SDP_FIELD_NUMBER: _ClassVar[int]
        call_id: str
        webrtc_answer_sdp: str
        def __init__(self, call_id: _Optional[str] = ..., webrtc_answer_sdp: _Optional[str] = ...) -> None: ...
    class CallEnded(_message.Message):
        __slots__ = ("call_id", "outcome")
        CALL_ID_FIELD_NUMBER: _ClassVar[int]
        OUTCOME_FIELD_NUMBER: _ClassVar[int]
        call_id: str
        outcome: _calling_pb2.CallOutcome
        def __init__(self, call_id: _Optional[str] = ..., outcome: _Optional[_Union[_calling_pb2.CallOutcome, str]] = ...) -> None: ...
    class Presence(_message.Message):
        __slots__ = ("state", "why")
        STATE_FIELD_NUMBER: _ClassVar[int]
        WHY_FIELD_NUMBER: _ClassVar[int]
        state: _contact_center_model_pb2.AgentPresence
        why: _contact_center_model_pb2.PresenceWhy
        def __init__(self, state: _Optional[_Union[_contact_center_model_pb2.AgentPresence, str]] = ..., why: _Optional[_Union[_contact_center_model_pb2.PresenceWhy, str]] = ...) -> None: ...
    class Error(_message.Message):
        __slots__ = ("code", "message")
        CODE_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        code: str
        message: str
        def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
    LOGGED_IN_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    OFFER_WITHDRAWN_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    CALL_ENDED_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    logged_in: AgentSessionEvent.LoggedIn
    offer: AgentSessionEvent.Offer
    offer_withdrawn: AgentSessionEvent.OfferWithdrawn
    connected: AgentSessionEvent.Connected
    call_ended: AgentSessionEvent.CallEnded
    presence: AgentSessionEvent.Presence
    error: AgentSessionEvent.Error
    def __init__(self, logged_in: _Optional[_Union[AgentSessionEvent.LoggedIn, _Mapping]] = ..., offer: _Optional[_Union[AgentSessionEvent.Offer, _Mapping]] = ..., offer_withdrawn: _Optional[_Union[AgentSessionEvent.OfferWithdrawn, _Mapping]] = ..., connected: _Optional[_Union[AgentSessionEvent.Connected, _Mapping]] = ..., call_ended: _Optional[_Union[AgentSessionEvent.CallEnded, _Mapping]] = ..., presence: _Optional[_Union[AgentSessionEvent.Presence, _Mapping]] = ..., error: _Optional[_Union[AgentSessionEvent.Error, _Mapping]] = ...) -> None: ...
