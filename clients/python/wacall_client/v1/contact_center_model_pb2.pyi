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

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    STRATEGY_RING_ALL: _ClassVar[Strategy]
    STRATEGY_LONGEST_IDLE: _ClassVar[Strategy]
    STRATEGY_ROUND_ROBIN: _ClassVar[Strategy]
    STRATEGY_FEWEST_CALLS: _ClassVar[Strategy]
    STRATEGY_LINEAR: _ClassVar[Strategy]
    STRATEGY_RANDOM: _ClassVar[Strategy]

class AgentPresence(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_PRESENCE_UNSPECIFIED: _ClassVar[AgentPresence]
    AGENT_PRESENCE_OFFLINE: _ClassVar[AgentPresence]
    AGENT_PRESENCE_AWAY: _ClassVar[AgentPresence]
    AGENT_PRESENCE_AVAILABLE: _ClassVar[AgentPresence]
    AGENT_PRESENCE_BUSY: _ClassVar[AgentPresence]
    AGENT_PRESENCE_WRAP_UP: _ClassVar[AgentPresence]

class PresenceWhy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESENCE_WHY_UNSPECIFIED: _ClassVar[PresenceWhy]
    PRESENCE_WHY_REQUESTED: _ClassVar[PresenceWhy]
    PRESENCE_WHY_LOGGED_IN: _ClassVar[PresenceWhy]
    PRESENCE_WHY_SESSION_ENDED: _ClassVar[PresenceWhy]
    PRESENCE_WHY_MISSED_OFFERS: _ClassVar[PresenceWhy]
    PRESENCE_WHY_CALL_STARTED: _ClassVar[PresenceWhy]
    PRESENCE_WHY_CALL_ENDED: _ClassVar[PresenceWhy]
    PRESENCE_WHY_WRAP_UP_ENDED: _ClassVar[PresenceWhy]

class OfferWithdrawnWhy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OFFER_WITHDRAWN_WHY_UNSPECIFIED: _ClassVar[OfferWithdrawnWhy]
    OFFER_WITHDRAWN_WHY_ANSWERED_ELSEWHERE: _ClassVar[OfferWithdrawnWhy]
    OFFER_WITHDRAWN_WHY_ABANDONED: _ClassVar[OfferWithdrawnWhy]
    OFFER_WITHDRAWN_WHY_TIMED_OUT: _ClassVar[OfferWithdrawnWhy]
    OFFER_WITHDRAWN_WHY_AGENT_OFFLINE: _ClassVar[OfferWithdrawnWhy]
STRATEGY_UNSPECIFIED: Strategy
STRATEGY_RING_ALL: Strategy
STRATEGY_LONGEST_IDLE: Strategy
STRATEGY_ROUND_ROBIN: Strategy
STRATEGY_FEWEST_CALLS: Strategy
STRATEGY_LINEAR: Strategy
STRATEGY_RANDOM: Strategy
AGENT_PRESENCE_UNSPECIFIED: AgentPresence
AGENT_PRESENCE_OFFLINE: AgentPresence
AGENT_PRESENCE_AWAY: AgentPresence
AGENT_PRESENCE_AVAILABLE: AgentPresence
AGENT_PRESENCE_BUSY: AgentPresence
AGENT_PRESENCE_WRAP_UP: AgentPresence
PRESENCE_WHY_UNSPECIFIED: PresenceWhy
PRESENCE_WHY_REQUESTED: PresenceWhy
PRESENCE_WHY_LOGGED_IN: PresenceWhy
PRESENCE_WHY_SESSION_ENDED: PresenceWhy
PRESENCE_WHY_MISSED_OFFERS: PresenceWhy
PRESENCE_WHY_CALL_STARTED: PresenceWhy
PRESENCE_WHY_CALL_ENDED: PresenceWhy
PRESENCE_WHY_WRAP_UP_ENDED: PresenceWhy
OFFER_WITHDRAWN_WHY_UNSPECIFIED: OfferWithdrawnWhy
OFFER_WITHDRAWN_WHY_ANSWERED_ELSEWHERE: OfferWithdrawnWhy
OFFER_WITHDRAWN_WHY_ABANDONED: OfferWithdrawnWhy
OFFER_WITHDRAWN_WHY_TIMED_OUT: OfferWithdrawnWhy
OFFER_WITHDRAWN_WHY_AGENT_OFFLINE: OfferWithdrawnWhy

class HoldAudio(_message.Message):
    __slots__ = ("audio_file", "tone_hz")
    AUDIO_FILE_FIELD_NUMBER: _ClassVar[int]
    TONE_HZ_FIELD_NUMBER: _ClassVar[int]
    audio_file: str
    tone_hz: int
    def __init__(self, audio_file: _Optional[str] = ..., tone_hz: _Optional[int] = ...) -> None: ...

class Queue(_message.Message):
    __slots__ = ("queue_id", "name", "strategy", "required_skills", "ring_timeout", "max_wait", "wrap_up", "max_missed_offers", "overflow_queue_id", "hold_audio", "service_level", "decline_delay", "no_answer_delay")
    class RequiredSkillsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_SKILLS_FIELD_NUMBER: _ClassVar[int]
    RING_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_FIELD_NUMBER: _ClassVar[int]
    WRAP_UP_FIELD_NUMBER: _ClassVar[int]
    MAX_MISSED_OFFERS_FIELD_NUMBER: _ClassVar[int]
    OVERFLOW_QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    HOLD_AUDIO_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    DECLINE_DELAY_FIELD_NUMBER: _ClassVar[int]
    NO_ANSWER_DELAY_FIELD_NUMBER: _ClassVar[int]
    queue_id: str
    name: str
    strategy: Strategy
    required_skills: _containers.ScalarMap[str, int]
    ring_timeout: _duration_pb2.Duration
    max_wait: _duration_pb2.Duration
    wrap_up: _duration_pb2.Duration
    max_missed_offers: int
    overflow_queue_id: str
    hold_audio: HoldAudio
    service_level: _duration_pb2.Duration
    decline_delay: _duration_pb2.Duration
    no_answer_delay: _duration_pb2.Duration
    def __init__(self, queue_id: _Optional[str] = ..., name: _Optional[str] = ..., strategy: _Optional[_Union[Strategy, str]] = ..., required_skills: _Optional[_Mapping[str, int]] = ..., ring_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., wrap_up: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_missed_offers: _Optional[int] = ..., overflow_queue_id: _Optional[str] = ..., hold_audio: _Optional[_Union[HoldAudio, _Mapping]] = ..., service_level: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., decline_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., no_answer_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("agent_id", "name", "skills", "queue_ids", "presence", "queue_penalties", "calls_handled", "missed_offers", "last_call_ended_at", "call_id")
    class SkillsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class QueuePenaltiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_IDS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_PENALTIES_FIELD_NUMBER: _ClassVar[int]
    CALLS_HANDLED_FIELD_NUMBER: _ClassVar[int]
    MISSED_OFFERS_FIELD_NUMBER: _ClassVar[int]
    LAST_CALL_ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    name: str
    skills: _containers.ScalarMap[str, int]
    queue_ids: _containers.RepeatedScalarFieldContainer[str]
    presence: AgentPresence
    queue_penalties: _containers.ScalarMap[str, int]
    calls_handled: int
    missed_offers: int
    last_call_ended_at: _timestamp_pb2.Timestamp
    call_id: str
    def __init__(self, agent_id: _Optional[str] = ..., name: _Optional[str] = ..., skills: _Optional[_Mapping[str, int]] = ..., queue_ids: _Optional[_Iterable[str]] = ..., presence: _Optional[_Union[AgentPresence, str]] = ..., queue_penalties: _Optional[_Mapping[str, int]] = ..., calls_handled: _Optional[int] = ..., missed_offers: _Optional[int] = ..., last_call_ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., call_id: _Optional[str] = ...) -> None: ...

class ContactCenterChange(_message.Message):
    __slots__ = ("queue_id", "agent_id", "call_id", "offer_id", "presence", "presence_why", "withdrawn_why", "to_queue_id", "waited", "queue", "agent", "deleted")
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_WHY_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWN_WHY_FIELD_NUMBER: _ClassVar[int]
    TO_QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    WAITED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    queue_id: str
    agent_id: str
    call_id: str
    offer_id: str
    presence: AgentPresence
    presence_why: PresenceWhy
    withdrawn_why: OfferWithdrawnWhy
    to_queue_id: str
    waited: _duration_pb2.Duration
    queue: Queue
    agent: Agent
    deleted: bool
    def __init__(self, queue_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., call_id: _Optional[str] = ..., offer_id: _Optional[str] = ..., presence: _Optional[_Union[AgentPresence, str]] = ..., presence_why: _Optional[_Union[PresenceWhy, str]] = ..., withdrawn_why: _Optional[_Union[OfferWithdrawnWhy, str]] = ..., to_queue_id: _Optional[str] = ..., waited: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., queue: _Optional[_Union[Queue, _Mapping]] = ..., agent: _Optional[_Union[Agent, _Mapping]] = ..., deleted: _Optional[bool] = ...) -> None: ...
