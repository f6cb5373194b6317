import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from wacall_client.v1 import contact_center_model_pb2 as _contact_center_model_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PermissionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PERMISSION_STATE_UNSPECIFIED: _ClassVar[PermissionState]
    PERMISSION_STATE_NONE: _ClassVar[PermissionState]
    PERMISSION_STATE_REQUESTED: _ClassVar[PermissionState]
    PERMISSION_STATE_TEMPORARY: _ClassVar[PermissionState]
    PERMISSION_STATE_PERMANENT: _ClassVar[PermissionState]
    PERMISSION_STATE_REJECTED: _ClassVar[PermissionState]
    PERMISSION_STATE_REVOKED: _ClassVar[PermissionState]
    PERMISSION_STATE_EXPIRED: _ClassVar[PermissionState]

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_SEND_PERMISSION_REQUEST: _ClassVar[Action]
    ACTION_START_CALL: _ClassVar[Action]

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_INTERACTIVE: _ClassVar[Channel]
    CHANNEL_TEMPLATE: _ClassVar[Channel]

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    REASON_ALLOWED: _ClassVar[Reason]
    REASON_COUNTRY_UNSUPPORTED: _ClassVar[Reason]
    REASON_ALREADY_PERMANENT: _ClassVar[Reason]
    REASON_REQUEST_LIMIT_REACHED: _ClassVar[Reason]
    REASON_NO_TEMPLATE_FOR_CLOSED_WINDOW: _ClassVar[Reason]
    REASON_NO_PERMISSION: _ClassVar[Reason]
    REASON_PERMISSION_EXPIRED: _ClassVar[Reason]
    REASON_PERMISSION_REVOKED: _ClassVar[Reason]
    REASON_CALL_LIMIT_REACHED: _ClassVar[Reason]
    REASON_PERMISSION_REJECTED: _ClassVar[Reason]
    REASON_CALL_IN_PROGRESS: _ClassVar[Reason]
    REASON_BUSINESS_RESTRICTED: _ClassVar[Reason]

class EventSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_SOURCE_UNSPECIFIED: _ClassVar[EventSource]
    EVENT_SOURCE_BUSINESS: _ClassVar[EventSource]
    EVENT_SOURCE_USER_ACTION: _ClassVar[EventSource]
    EVENT_SOURCE_PLATFORM_AUTOMATIC: _ClassVar[EventSource]
    EVENT_SOURCE_WACALL_RULE: _ClassVar[EventSource]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_PERMISSION_REQUEST_SENT: _ClassVar[EventKind]
    EVENT_KIND_PERMISSION_REQUEST_FAILED: _ClassVar[EventKind]
    EVENT_KIND_PERMISSION_GRANTED: _ClassVar[EventKind]
    EVENT_KIND_PERMISSION_REJECTED: _ClassVar[EventKind]
    EVENT_KIND_PERMISSION_REVOKED: _ClassVar[EventKind]
    EVENT_KIND_USER_MESSAGE_RECEIVED: _ClassVar[EventKind]
    EVENT_KIND_CALL_CONNECTED: _ClassVar[EventKind]
    EVENT_KIND_CALL_UNANSWERED: _ClassVar[EventKind]
    EVENT_KIND_USER_PROMPTED: _ClassVar[EventKind]
    EVENT_KIND_CALL_UPDATED: _ClassVar[EventKind]
    EVENT_KIND_BUSINESS_RESTRICTION_CHANGED: _ClassVar[EventKind]
    EVENT_KIND_QUEUE_CHANGED: _ClassVar[EventKind]
    EVENT_KIND_AGENT_CHANGED: _ClassVar[EventKind]
    EVENT_KIND_AGENT_PRESENCE_CHANGED: _ClassVar[EventKind]
    EVENT_KIND_CALL_QUEUED: _ClassVar[EventKind]
    EVENT_KIND_OFFER_MADE: _ClassVar[EventKind]
    EVENT_KIND_OFFER_WITHDRAWN: _ClassVar[EventKind]
    EVENT_KIND_CALL_ASSIGNED: _ClassVar[EventKind]
    EVENT_KIND_CALL_OVERFLOWED: _ClassVar[EventKind]
    EVENT_KIND_QUEUE_TIMED_OUT: _ClassVar[EventKind]
    EVENT_KIND_QUEUE_MISSING: _ClassVar[EventKind]

class CallState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALL_STATE_UNSPECIFIED: _ClassVar[CallState]
    CALL_STATE_DIALING: _ClassVar[CallState]
    CALL_STATE_RINGING: _ClassVar[CallState]
    CALL_STATE_CONNECTED: _ClassVar[CallState]
    CALL_STATE_ENDED: _ClassVar[CallState]

class CallOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALL_OUTCOME_UNSPECIFIED: _ClassVar[CallOutcome]
    CALL_OUTCOME_ANSWERED: _ClassVar[CallOutcome]
    CALL_OUTCOME_UNANSWERED: _ClassVar[CallOutcome]
    CALL_OUTCOME_REJECTED: _ClassVar[CallOutcome]
    CALL_OUTCOME_FAILED: _ClassVar[CallOutcome]
    CALL_OUTCOME_CANCELLED: _ClassVar[CallOutcome]

class CallDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALL_DIRECTION_UNSPECIFIED: _ClassVar[CallDirection]
    CALL_DIRECTION_BUSINESS_INITIATED: _ClassVar[CallDirection]
    CALL_DIRECTION_USER_INITIATED: _ClassVar[CallDirection]

class SipDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIP_DIRECTION_UNSPECIFIED: _ClassVar[SipDirection]
    SIP_DIRECTION_FRONT_DOOR: _ClassVar[SipDirection]
    SIP_DIRECTION_SIP_ROUTE: _ClassVar[SipDirection]
    SIP_DIRECTION_INBOUND: _ClassVar[SipDirection]
PERMISSION_STATE_UNSPECIFIED: PermissionState
PERMISSION_STATE_NONE: PermissionState
PERMISSION_STATE_REQUESTED: PermissionState
PERMISSION_STATE_TEMPORARY: PermissionState
PERMISSION_STATE_PERMANENT: PermissionState
PERMISSION_STATE_REJECTED: PermissionState
PERMISSION_STATE_REVOKED: PermissionState
PERMISSION_STATE_EXPIRED: PermissionState
ACTION_UNSPECIFIED: Action
ACTION_SEND_PERMISSION_REQUEST: Action
ACTION_START_CALL: Action
CHANNEL_UNSPECIFIED: Channel
CHANNEL_INTERACTIVE: Channel
CHANNEL_TEMPLATE: Channel
REASON_UNSPECIFIED: Reason
REASON_ALLOWED: Reason
REASON_COUNTRY_UNSUPPORTED: Reason
REASON_ALREADY_PERMANENT: Reason
REASON_REQUEST_LIMIT_REACHED: Reason
REASON_NO_TEMPLATE_FOR_CLOSED_WINDOW: Reason
REASON_NO_PERMISSION: Reason
REASON_PERMISSION_EXPIRED: Reason
REASON_PERMISSION_REVOKED: Reason
REASON_CALL_LIMIT_REACHED: Reason
REASON_PERMISSION_REJECTED: Reason
REASON_CALL_IN_PROGRESS: Reason
REASON_BUSINESS_RESTRICTED: Reason
EVENT_SOURCE_UNSPECIFIED: EventSource
EVENT_SOURCE_BUSINESS: EventSource
EVENT_SOURCE_USER_ACTION: EventSource
EVENT_SOURCE_PLATFORM_AUTOMATIC: EventSource
EVENT_SOURCE_WACALL_RULE: EventSource
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_PERMISSION_REQUEST_SENT: EventKind
EVENT_KIND_PERMISSION_REQUEST_FAILED: EventKind
EVENT_KIND_PERMISSION_GRANTED: EventKind
EVENT_KIND_PERMISSION_REJECTED: EventKind
EVENT_KIND_PERMISSION_REVOKED: EventKind
EVENT_KIND_USER_MESSAGE_RECEIVED: EventKind
EVENT_KIND_CALL_CONNECTED: EventKind
EVENT_KIND_CALL_UNANSWERED: EventKind
EVENT_KIND_USER_PROMPTED: EventKind
EVENT_KIND_CALL_UPDATED: EventKind
EVENT_KIND_BUSINESS_RESTRICTION_CHANGED: EventKind
EVENT_KIND_QUEUE_CHANGED: EventKind
EVENT_KIND_AGENT_CHANGED: EventKind
EVENT_KIND_AGENT_PRESENCE_CHANGED: EventKind
EVENT_KIND_CALL_QUEUED: EventKind
EVENT_KIND_OFFER_MADE: EventKind
EVENT_KIND_OFFER_WITHDRAWN: EventKind
EVENT_KIND_CALL_ASSIGNED: EventKind
EVENT_KIND_CALL_OVERFLOWED: EventKind
EVENT_KIND_QUEUE_TIMED_OUT: EventKind
EVENT_KIND_QUEUE_MISSING: EventKind
CALL_STATE_UNSPECIFIED: CallState
CALL_STATE_DIALING: CallState
CALL_STATE_RINGING: CallState
CALL_STATE_CONNECTED: CallState
CALL_STATE_ENDED: CallState
CALL_OUTCOME_UNSPECIFIED: CallOutcome
CALL_OUTCOME_ANSWERED: CallOutcome
CALL_OUTCOME_UNANSWERED: CallOutcome
CALL_OUTCOME_REJECTED: CallOutcome
CALL_OUTCOME_FAILED: CallOutcome
CALL_OUTCOME_CANCELLED: CallOutcome
CALL_DIRECTION_UNSPECIFIED: CallDirection
CALL_DIRECTION_BUSINESS_INITIATED: CallDirection
CALL_DIRECTION_USER_INITIATED: CallDirection
SIP_DIRECTION_UNSPECIFIED: SipDirection
SIP_DIRECTION_FRONT_DOOR: SipDirection
SIP_DIRECTION_SIP_ROUTE: SipDirection
SIP_DIRECTION_INBOUND: SipDirection

class GetPermissionRequest(_message.Message):
    __slots__ = ("business_number", "user_number", "reconcile")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    RECONCILE_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    reconcile: bool
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., reconcile: _Optional[bool] = ...) -> None: ...

class Limit(_message.Message):
    __slots__ = ("window", "max_allowed", "used", "resets_at")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MAX_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    RESETS_AT_FIELD_NUMBER: _ClassVar[int]
    window: _duration_pb2.Duration
    max_allowed: int
    used: int
    resets_at: _timestamp_pb2.Timestamp
    def __init__(self, window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_allowed: _Optional[int] = ..., used: _Optional[int] = ..., resets_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ActionStatus(_message.Message):
    __slots__ = ("action", "allowed", "reason", "next_allowed_at", "limits", "channel", "detail")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NEXT_ALLOWED_AT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    action: Action
    allowed: bool
    reason: Reason
    next_allowed_at: _timestamp_pb2.Timestamp
    limits: _containers.RepeatedCompositeFieldContainer[Limit]
    channel: Channel
    detail: str
    def __init__(self, action: _Optional[_Union[Action, str]] = ..., allowed: _Optional[bool] = ..., reason: _Optional[_Union[Reason, str]] = ..., next_allowed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limits: _Optional[_Iterable[_Union[Limit, _Mapping]]] = ..., channel: _Optional[_Union[Channel, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class Permission(_message.Message):
    __slots__ = ("business_number", "user_number", "state", "expires_at", "consecutive_unanswered_calls", "user_prompted", "service_window_expires_at", "actions", "updated_at", "policy")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_UNANSWERED_CALLS_FIELD_NUMBER: _ClassVar[int]
    USER_PROMPTED_FIELD_NUMBER: _ClassVar[int]
    SERVICE_WINDOW_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    state: PermissionState
    expires_at: _timestamp_pb2.Timestamp
    consecutive_unanswered_calls: int
    user_prompted: bool
    service_window_expires_at: _timestamp_pb2.Timestamp
    actions: _containers.RepeatedCompositeFieldContainer[ActionStatus]
    updated_at: _timestamp_pb2.Timestamp
    policy: str
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., state: _Optional[_Union[PermissionState, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., consecutive_unanswered_calls: _Optional[int] = ..., user_prompted: _Optional[bool] = ..., service_window_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actions: _Optional[_Iterable[_Union[ActionStatus, _Mapping]]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., policy: _Optional[str] = ...) -> None: ...

class Template(_message.Message):
    __slots__ = ("name", "language", "body_parameters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    BODY_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    language: str
    body_parameters: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., language: _Optional[str] = ..., body_parameters: _Optional[_Iterable[str]] = ...) -> None: ...

class RequestPermissionRequest(_message.Message):
    __slots__ = ("business_number", "user_number", "body_text", "template", "idempotency_key")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    BODY_TEXT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    body_text: str
    template: Template
    idempotency_key: str
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., body_text: _Optional[str] = ..., template: _Optional[_Union[Template, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RequestPermissionResponse(_message.Message):
    __slots__ = ("message_id", "channel", "permission", "replayed")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    channel: Channel
    permission: Permission
    replayed: bool
    def __init__(self, message_id: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., permission: _Optional[_Union[Permission, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("business_number", "user_number", "after_cursor", "only_new")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    ONLY_NEW_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    after_cursor: str
    only_new: bool
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., after_cursor: _Optional[str] = ..., only_new: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("cursor", "kind", "business_number", "user_number", "occurred_at", "recorded_at", "source", "permission_state", "attributes", "call", "contact_center")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_STATE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    CONTACT_CENTER_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    kind: EventKind
    business_number: str
    user_number: str
    occurred_at: _timestamp_pb2.Timestamp
    recorded_at: _timestamp_pb2.Timestamp
    source: EventSource
    permission_state: PermissionState
    attributes: _containers.ScalarMap[str, str]
    call: Call
    contact_center: _contact_center_model_pb2.ContactCenterChange
    def __init__(self, cursor: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[EventSource, str]] = ..., permission_state: _Optional[_Union[PermissionState, str]] = ..., attributes: _Optional[_Mapping[str, str]] = ..., call: _Optional[_Union[Call, _Mapping]] = ..., contact_center: _Optional[_Union[_contact_center_model_pb2.ContactCenterChange, _Mapping]] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("business_number", "user_number", "page_size", "after_cursor")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    page_size: int
    after_cursor: str
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., page_size: _Optional[int] = ..., after_cursor: _Optional[str] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "next_cursor")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    next_cursor: str
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Policy(_message.Message):
    __slots__ = ("name", "version", "source", "permission_request_limits", "connected_call_limits", "temporary_grant_lifetime", "prompt_after_unanswered", "revoke_after_unanswered", "service_window", "denied_business_regions", "request_lifetime", "boundary_margin", "window_margin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_REQUEST_LIMITS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_CALL_LIMITS_FIELD_NUMBER: _ClassVar[int]
    TEMPORARY_GRANT_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    PROMPT_AFTER_UNANSWERED_FIELD_NUMBER: _ClassVar[int]
    REVOKE_AFTER_UNANSWERED_FIELD_NUMBER: _ClassVar[int]
    SERVICE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    DENIED_BUSINESS_REGIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_MARGIN_FIELD_NUMBER: _ClassVar[int]
    WINDOW_MARGIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    source: str
    permission_request_limits: _containers.RepeatedCompositeFieldContainer[Limit]
    connected_call_limits: _containers.RepeatedCompositeFieldContainer[Limit]
    temporary_grant_lifetime: _duration_pb2.Duration
    prompt_after_unanswered: int
    revoke_after_unanswered: int
    service_window: _duration_pb2.Duration
    denied_business_regions: _containers.RepeatedScalarFieldContainer[str]
    request_lifetime: _duration_pb2.Duration
    boundary_margin: _duration_pb2.Duration
    window_margin: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., source: _Optional[str] = ..., permission_request_limits: _Optional[_Iterable[_Union[Limit, _Mapping]]] = ..., connected_call_limits: _Optional[_Iterable[_Union[Limit, _Mapping]]] = ..., temporary_grant_lifetime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., prompt_after_unanswered: _Optional[int] = ..., revoke_after_unanswered: _Optional[int] = ..., service_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., denied_business_regions: _Optional[_Iterable[str]] = ..., request_lifetime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., boundary_margin: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., window_margin: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AnnouncementRoute(_message.Message):
    __slots__ = ("audio_file", "tone_hz", "tone_duration", "record_to", "max_duration")
    AUDIO_FILE_FIELD_NUMBER: _ClassVar[int]
    TONE_HZ_FIELD_NUMBER: _ClassVar[int]
    TONE_DURATION_FIELD_NUMBER: _ClassVar[int]
    RECORD_TO_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    audio_file: str
    tone_hz: float
    tone_duration: _duration_pb2.Duration
    record_to: str
    max_duration: _duration_pb2.Duration
    def __init__(self, audio_file: _Optional[str] = ..., tone_hz: _Optional[float] = ..., tone_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., record_to: _Optional[str] = ..., max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WebRtcRoute(_message.Message):
    __slots__ = ("offer_sdp", "passthrough", "ice_servers")
    OFFER_SDP_FIELD_NUMBER: _ClassVar[int]
    PASSTHROUGH_FIELD_NUMBER: _ClassVar[int]
    ICE_SERVERS_FIELD_NUMBER: _ClassVar[int]
    offer_sdp: str
    passthrough: bool
    ice_servers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, offer_sdp: _Optional[str] = ..., passthrough: _Optional[bool] = ..., ice_servers: _Optional[_Iterable[str]] = ...) -> None: ...

class MediaStreamRoute(_message.Message):
    __slots__ = ("max_duration",)
    MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    max_duration: _duration_pb2.Duration
    def __init__(self, max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SipRoute(_message.Message):
    __slots__ = ("trunk", "target", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRUNK_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    trunk: str
    target: str
    headers: _containers.ScalarMap[str, str]
    def __init__(self, trunk: _Optional[str] = ..., target: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class QueueRoute(_message.Message):
    __slots__ = ("queue_id", "priority")
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    queue_id: str
    priority: int
    def __init__(self, queue_id: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class AgentRoute(_message.Message):
    __slots__ = ("agent_id", "offer_sdp")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_SDP_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    offer_sdp: str
    def __init__(self, agent_id: _Optional[str] = ..., offer_sdp: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("announcement", "webrtc", "media_stream", "sip", "queue", "agent")
    ANNOUNCEMENT_FIELD_NUMBER: _ClassVar[int]
    WEBRTC_FIELD_NUMBER: _ClassVar[int]
    MEDIA_STREAM_FIELD_NUMBER: _ClassVar[int]
    SIP_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    announcement: AnnouncementRoute
    webrtc: WebRtcRoute
    media_stream: MediaStreamRoute
    sip: SipRoute
    queue: QueueRoute
    agent: AgentRoute
    def __init__(self, announcement: _Optional[_Union[AnnouncementRoute, _Mapping]] = ..., webrtc: _Optional[_Union[WebRtcRoute, _Mapping]] = ..., media_stream: _Optional[_Union[MediaStreamRoute, _Mapping]] = ..., sip: _Optional[_Union[SipRoute, _Mapping]] = ..., queue: _Optional[_Union[QueueRoute, _Mapping]] = ..., agent: _Optional[_Union[AgentRoute, _Mapping]] = ...) -> None: ...

class PlatformError(_message.Message):
    __slots__ = ("code", "message", "details")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    details: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., details: _Optional[str] = ...) -> None: ...

class MediaStats(_message.Message):
    __slots__ = ("frames_sent", "frames_received", "audible_frames_received", "mean_level_received")
    FRAMES_SENT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    AUDIBLE_FRAMES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    MEAN_LEVEL_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    frames_sent: int
    frames_received: int
    audible_frames_received: int
    mean_level_received: float
    def __init__(self, frames_sent: _Optional[int] = ..., frames_received: _Optional[int] = ..., audible_frames_received: _Optional[int] = ..., mean_level_received: _Optional[float] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ("call_id", "platform_call_id", "business_number", "user_number", "direction", "state", "outcome", "created_at", "answered_at", "ended_at", "duration_seconds", "route", "platform_error", "biz_opaque_callback_data", "webrtc_answer_sdp", "media", "end_reason", "sip")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_ERROR_FIELD_NUMBER: _ClassVar[int]
    BIZ_OPAQUE_CALLBACK_DATA_FIELD_NUMBER: _ClassVar[int]
    WEBRTC_ANSWER_SDP_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    SIP_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    platform_call_id: str
    business_number: str
    user_number: str
    direction: CallDirection
    state: CallState
    outcome: CallOutcome
    created_at: _timestamp_pb2.Timestamp
    answered_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    duration_seconds: int
    route: str
    platform_error: PlatformError
    biz_opaque_callback_data: str
    webrtc_answer_sdp: str
    media: MediaStats
    end_reason: str
    sip: SipCall
    def __init__(self, call_id: _Optional[str] = ..., platform_call_id: _Optional[str] = ..., business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., direction: _Optional[_Union[CallDirection, str]] = ..., state: _Optional[_Union[CallState, str]] = ..., outcome: _Optional[_Union[CallOutcome, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., answered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration_seconds: _Optional[int] = ..., route: _Optional[str] = ..., platform_error: _Optional[_Union[PlatformError, _Mapping]] = ..., biz_opaque_callback_data: _Optional[str] = ..., webrtc_answer_sdp: _Optional[str] = ..., media: _Optional[_Union[MediaStats, _Mapping]] = ..., end_reason: _Optional[str] = ..., sip: _Optional[_Union[SipCall, _Mapping]] = ...) -> None: ...

class SipCall(_message.Message):
    __slots__ = ("trunk", "call_id", "direction", "last_status")
    TRUNK_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_FIELD_NUMBER: _ClassVar[int]
    trunk: str
    call_id: str
    direction: SipDirection
    last_status: int
    def __init__(self, trunk: _Optional[str] = ..., call_id: _Optional[str] = ..., direction: _Optional[_Union[SipDirection, str]] = ..., last_status: _Optional[int] = ...) -> None: ...

class StartCallRequest(_message.Message):
    __slots__ = ("business_number", "user_number", "route", "biz_opaque_callback_data", "idempotency_key")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    BIZ_OPAQUE_CALLBACK_DATA_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    route: Route
    biz_opaque_callback_data: str
    idempotency_key: str
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., route: _Optional[_Union[Route, _Mapping]] = ..., biz_opaque_callback_data: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GetCallRequest(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class EndCallRequest(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class ListCallsRequest(_message.Message):
    __slots__ = ("business_number", "user_number", "page_size", "page_token")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    page_size: int
    page_token: str
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCallsResponse(_message.Message):
    __slots__ = ("calls", "next_page_token")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[Call]
    next_page_token: str
    def __init__(self, calls: _Optional[_Iterable[_Union[Call, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CallMediaRequest(_message.Message):
    __slots__ = ("call_id", "audio", "hangup", "sample_rate")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    HANGUP_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    audio: bytes
    hangup: bool
    sample_rate: int
    def __init__(self, call_id: _Optional[str] = ..., audio: _Optional[bytes] = ..., hangup: _Optional[bool] = ..., sample_rate: _Optional[int] = ...) -> None: ...

class CallMediaResponse(_message.Message):
    __slots__ = ("audio", "call")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    call: Call
    def __init__(self, audio: _Optional[bytes] = ..., call: _Optional[_Union[Call, _Mapping]] = ...) -> None: ...
