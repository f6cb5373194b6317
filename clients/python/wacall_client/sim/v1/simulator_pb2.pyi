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

class PermissionRequestResponse(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PERMISSION_REQUEST_RESPONSE_UNSPECIFIED: _ClassVar[PermissionRequestResponse]
    ACCEPT_TEMPORARY: _ClassVar[PermissionRequestResponse]
    ACCEPT_PERMANENT: _ClassVar[PermissionRequestResponse]
    REJECT: _ClassVar[PermissionRequestResponse]
    IGNORE: _ClassVar[PermissionRequestResponse]

class OnCall(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ON_CALL_UNSPECIFIED: _ClassVar[OnCall]
    ANSWER: _ClassVar[OnCall]
    NO_ANSWER: _ClassVar[OnCall]
    DECLINE: _ClassVar[OnCall]

class MessageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_TYPE_UNSPECIFIED: _ClassVar[MessageType]
    MESSAGE_TYPE_INTERACTIVE: _ClassVar[MessageType]
    MESSAGE_TYPE_TEMPLATE: _ClassVar[MessageType]
PERMISSION_REQUEST_RESPONSE_UNSPECIFIED: PermissionRequestResponse
ACCEPT_TEMPORARY: PermissionRequestResponse
ACCEPT_PERMANENT: PermissionRequestResponse
REJECT: PermissionRequestResponse
IGNORE: PermissionRequestResponse
ON_CALL_UNSPECIFIED: OnCall
ANSWER: OnCall
NO_ANSWER: OnCall
DECLINE: OnCall
MESSAGE_TYPE_UNSPECIFIED: MessageType
MESSAGE_TYPE_INTERACTIVE: MessageType
MESSAGE_TYPE_TEMPLATE: MessageType

class SetUserBehaviorRequest(_message.Message):
    __slots__ = ("user_number", "on_permission_request", "reply_delay", "outdated_client", "wa_id", "on_call", "ring_duration", "talk_duration", "tone_hz", "say_file")
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ON_PERMISSION_REQUEST_FIELD_NUMBER: _ClassVar[int]
    REPLY_DELAY_FIELD_NUMBER: _ClassVar[int]
    OUTDATED_CLIENT_FIELD_NUMBER: _ClassVar[int]
    WA_ID_FIELD_NUMBER: _ClassVar[int]
    ON_CALL_FIELD_NUMBER: _ClassVar[int]
    RING_DURATION_FIELD_NUMBER: _ClassVar[int]
    TALK_DURATION_FIELD_NUMBER: _ClassVar[int]
    TONE_HZ_FIELD_NUMBER: _ClassVar[int]
    SAY_FILE_FIELD_NUMBER: _ClassVar[int]
    user_number: str
    on_permission_request: PermissionRequestResponse
    reply_delay: _duration_pb2.Duration
    outdated_client: bool
    wa_id: str
    on_call: OnCall
    ring_duration: _duration_pb2.Duration
    talk_duration: _duration_pb2.Duration
    tone_hz: float
    say_file: str
    def __init__(self, user_number: _Optional[str] = ..., on_permission_request: _Optional[_Union[PermissionRequestResponse, str]] = ..., reply_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., outdated_client: _Optional[bool] = ..., wa_id: _Optional[str] = ..., on_call: _Optional[_Union[OnCall, str]] = ..., ring_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., talk_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., tone_hz: _Optional[float] = ..., say_file: _Optional[str] = ...) -> None: ...

class GetUserBehaviorRequest(_message.Message):
    __slots__ = ("user_number",)
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    user_number: str
    def __init__(self, user_number: _Optional[str] = ...) -> None: ...

class UserBehavior(_message.Message):
    __slots__ = ("user_number", "on_permission_request", "reply_delay", "outdated_client", "wa_id", "on_call", "ring_duration", "talk_duration", "tone_hz", "say_file")
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ON_PERMISSION_REQUEST_FIELD_NUMBER: _ClassVar[int]
    REPLY_DELAY_FIELD_NUMBER: _ClassVar[int]
    OUTDATED_CLIENT_FIELD_NUMBER: _ClassVar[int]
    WA_ID_FIELD_NUMBER: _ClassVar[int]
    ON_CALL_FIELD_NUMBER: _ClassVar[int]
    RING_DURATION_FIELD_NUMBER: _ClassVar[int]
    TALK_DURATION_FIELD_NUMBER: _ClassVar[int]
    TONE_HZ_FIELD_NUMBER: _ClassVar[int]
    SAY_FILE_FIELD_NUMBER: _ClassVar[int]
    user_number: str
    on_permission_request: PermissionRequestResponse
    reply_delay: _duration_pb2.Duration
    outdated_client: bool
    wa_id: str
    on_call: OnCall
    ring_duration: _duration_pb2.Duration
    talk_duration: _duration_pb2.Duration
    tone_hz: float
    say_file: str
    def __init__(self, user_number: _Optional[str] = ..., on_permission_request: _Optional[_Union[PermissionRequestResponse, str]] = ..., reply_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., outdated_client: _Optional[bool] = ..., wa_id: _Optional[str] = ..., on_call: _Optional[_Union[OnCall, str]] = ..., ring_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., talk_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., tone_hz: _Optional[float] = ..., say_file: _Optional[str] = ...) -> None: ...

class SendUserMessageRequest(_message.Message):
    __slots__ = ("business_number", "user_number", "text")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    text: str
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class SendUserMessageResponse(_message.Message):
    __slots__ = ("message_id",)
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    def __init__(self, message_id: _Optional[str] = ...) -> None: ...

class RevokePermissionRequest(_message.Message):
    __slots__ = ("business_number", "user_number")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ...) -> None: ...

class GrantPermissionRequest(_message.Message):
    __slots__ = ("business_number", "user_number", "permanent")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    permanent: bool
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., permanent: _Optional[bool] = ...) -> None: ...

class SimPermission(_message.Message):
    __slots__ = ("business_number", "user_number", "status", "expires_at")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    status: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., status: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("user_number", "business_number")
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    user_number: str
    business_number: str
    def __init__(self, user_number: _Optional[str] = ..., business_number: _Optional[str] = ...) -> None: ...

class SentMessage(_message.Message):
    __slots__ = ("message_id", "business_number", "user_number", "type", "sent_at", "body_text", "template_name", "template_language", "template_body_parameters", "user_response")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    BODY_TEXT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_NAME_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_BODY_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    USER_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    business_number: str
    user_number: str
    type: MessageType
    sent_at: _timestamp_pb2.Timestamp
    body_text: str
    template_name: str
    template_language: str
    template_body_parameters: _containers.RepeatedScalarFieldContainer[str]
    user_response: str
    def __init__(self, message_id: _Optional[str] = ..., business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., type: _Optional[_Union[MessageType, str]] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., body_text: _Optional[str] = ..., template_name: _Optional[str] = ..., template_language: _Optional[str] = ..., template_body_parameters: _Optional[_Iterable[str]] = ..., user_response: _Optional[str] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[SentMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[SentMessage, _Mapping]]] = ...) -> None: ...

class GetPlatformPermissionRequest(_message.Message):
    __slots__ = ("business_number", "user_number")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ...) -> None: ...

class GetPhoneCallRequest(_message.Message):
    __slots__ = ("platform_call_id",)
    PLATFORM_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    platform_call_id: str
    def __init__(self, platform_call_id: _Optional[str] = ...) -> None: ...

class PlaceUserCallRequest(_message.Message):
    __slots__ = ("business_number", "user_number")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    user_number: str
    def __init__(self, business_number: _Optional[str] = ..., user_number: _Optional[str] = ...) -> None: ...

class HangUpRequest(_message.Message):
    __slots__ = ("platform_call_id",)
    PLATFORM_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    platform_call_id: str
    def __init__(self, platform_call_id: _Optional[str] = ...) -> None: ...

class PhoneCall(_message.Message):
    __slots__ = ("platform_call_id", "business_number", "user_number", "direction", "state", "frames_received", "audible_frames_received", "mean_level_received", "frames_sent", "started_at", "answered_at", "ended_at")
    PLATFORM_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    USER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    AUDIBLE_FRAMES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    MEAN_LEVEL_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SENT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    platform_call_id: str
    business_number: str
    user_number: str
    direction: str
    state: str
    frames_received: int
    audible_frames_received: int
    mean_level_received: float
    frames_sent: int
    started_at: _timestamp_pb2.Timestamp
    answered_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    def __init__(self, platform_call_id: _Optional[str] = ..., business_number: _Optional[str] = ..., user_number: _Optional[str] = ..., direction: _Optional[str] = ..., state: _Optional[str] = ..., frames_received: _Optional[int] = ..., audible_frames_received: _Optional[int] = ..., mean_level_received: _Optional[float] = ..., frames_sent: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., answered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RestrictBusinessRequest(_message.Message):
    __slots__ = ("business_number", "duration")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    duration: _duration_pb2.Duration
    def __init__(self, business_number: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RestrictBusinessResponse(_message.Message):
    __slots__ = ("restricted_until",)
    RESTRICTED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    restricted_until: _timestamp_pb2.Timestamp
    def __init__(self, restricted_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetPlatformConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BusinessAccount(_message.Message):
    __slots__ = ("business_number", "phone_number_id", "waba_id", "default_template_name", "default_template_language", "templates")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBER_ID_FIELD_NUMBER: _ClassVar[int]
    WABA_ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TEMPLATE_NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TEMPLATE_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    phone_number_id: str
    waba_id: str
    default_template_name: str
    default_template_language: str
    templates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, business_number: _Optional[str] = ..., phone_number_id: _Optional[str] = ..., waba_id: _Optional[str] = ..., default_template_name: _Optional[str] = ..., default_template_language: _Optional[str] = ..., templates: _Optional[_Iterable[str]] = ...) -> None: ...

class PlatformConfig(_message.Message):
    __slots__ = ("graph_base_url", "app_secret", "access_token", "accounts", "webhook_urls", "webhook_verify_token", "webhook_routes")
    GRAPH_BASE_URL_FIELD_NUMBER: _ClassVar[int]
    APP_SECRET_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URLS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_VERIFY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ROUTES_FIELD_NUMBER: _ClassVar[int]
    graph_base_url: str
    app_secret: str
    access_token: str
    accounts: _containers.RepeatedCompositeFieldContainer[BusinessAccount]
    webhook_urls: _containers.RepeatedScalarFieldContainer[str]
    webhook_verify_token: str
    webhook_routes: _containers.RepeatedCompositeFieldContainer[WebhookRoute]
    def __init__(self, graph_base_url: _Optional[str] = ..., app_secret: _Optional[str] = ..., access_token: _Optional[str] = ..., accounts: _Optional[_Iterable[_Union[BusinessAccount, _Mapping]]] = ..., webhook_urls: _Optional[_Iterable[str]] = ..., webhook_verify_token: _Optional[str] = ..., webhook_routes: _Optional[_Iterable[_Union[WebhookRoute, _Mapping]]] = ...) -> None: ...

class WebhookRoute(_message.Message):
    __slots__ = ("business_number", "urls")
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    URLS_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    urls: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, business_number: _Optional[str] = ..., urls: _Optional[_Iterable[str]] = ...) -> None: ...

class ProvisionBusinessRequest(_message.Message):
    __slots__ = ("business_number",)
    BUSINESS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    business_number: str
    def __init__(self, business_number: _Optional[str] = ...) -> None: ...
