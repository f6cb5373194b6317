import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
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

class GetPermissionRequest(_message.Message):
    __slots__ = ("business_number", "user_number")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("cursor", "kind", "business_number", "user_number", "occurred_at", "recorded_at", "source", "permission_state", "attributes")
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
    cursor: str
    kind: EventKind
    business_number: str
    user_number: str
    occurred_at: _timestamp_pb2.Timestamp
    recorded_at: _timestamp_pb2.Timestamp
    source: EventSource
    permission_state: PermissionState
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, cursor: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[EventSource, str]] = ..., permission_state: _Optional[_Union[PermissionState, str]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

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
    __slots__ = ("name", "version", "source", "permission_request_limits", "connected_call_limits", "temporary_grant_lifetime", "prompt_after_unanswered", "revoke_after_unanswered", "service_window", "denied_business_regions")
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
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., source: _Optional[str] = ..., permission_request_limits: _Optional[_Iterable[_Union[Limit, _Mapping]]] = ..., connected_call_limits: _Optional[_Iterable[_Union[Limit, _Mapping]]] = ..., temporary_grant_lifetime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., prompt_after_unanswered: _Optional[int] = ..., revoke_after_unanswered: _Optional[int] = ..., service_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., denied_business_regions: _Optional[_Iterable[str]] = ...) -> None: ...
