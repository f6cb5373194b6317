import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectAgentRequest(_message.Message):
    __slots__ = ("call_id", "agent_id", "queue_id", "offer_id", "waited", "webrtc_offer_sdp", "media_stream")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    WAITED_FIELD_NUMBER: _ClassVar[int]
    WEBRTC_OFFER_SDP_FIELD_NUMBER: _ClassVar[int]
    MEDIA_STREAM_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    agent_id: str
    queue_id: str
    offer_id: str
    waited: _duration_pb2.Duration
    webrtc_offer_sdp: str
    media_stream: MediaStreamMedia
    def __init__(self, call_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., queue_id: _Optional[str] = ..., offer_id: _Optional[str] = ..., waited: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., webrtc_offer_sdp: _Optional[str] = ..., media_stream: _Optional[_Union[MediaStreamMedia, _Mapping]] = ...) -> None: ...

class MediaStreamMedia(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConnectAgentResponse(_message.Message):
    __slots__ = ("webrtc_answer_sdp",)
    WEBRTC_ANSWER_SDP_FIELD_NUMBER: _ClassVar[int]
    webrtc_answer_sdp: str
    def __init__(self, webrtc_answer_sdp: _Optional[str] = ...) -> None: ...
