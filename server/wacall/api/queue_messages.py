"""The contact centre's proto messages: queues and agents read from requests (every field checked, `InvalidField`
naming it) and written back, stats, and the event log's `ContactCenterChange`. Pure mapping."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from wacall_client.v1 import contact_center_model_pb2 as model_pb
from wacall_client.v1 import contact_center_pb2 as cc_pb

from wacall import fields
from wacall.fields import InvalidField
from wacall.queues import codec
from wacall.queues.router import (
    DEFAULT_DECLINE_DELAY,
    DEFAULT_NO_ANSWER_DELAY,
    DEFAULT_RING_TIMEOUT,
    DEFAULT_SERVICE_LEVEL,
    Agent,
    HoldAudio,
    Presence,
    PresenceWhy,
    PutAgent,
    QueueConfig,
    QueueStats,
    Strategy,
    WithdrawnWhy,
)

# Queue, agent and skill names: short identifiers a URL, a log line and a config file can carry unquoted.
IDENTIFIER = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_NAME = 128
MAX_SKILLS = 32
MAX_LEVEL = 1000
MAX_AGENT_QUEUES = 64
MAX_PENALTY = 1000
MAX_MISSED_OFFERS = 1000
MAX_TONE_HZ = 20000
MAX_AUDIO_FILE = 512
MAX_RING_TIMEOUT = timedelta(hours=1)
MAX_WAIT = timedelta(days=7)
MAX_WRAP_UP = timedelta(hours=24)
MAX_SERVICE_LEVEL = timedelta(days=1)
MAX_RETRY_DELAY = timedelta(hours=1)

STRATEGY: Mapping[int, Strategy] = {
    model_pb.STRATEGY_UNSPECIFIED: Strategy.LONGEST_IDLE,
    **{getattr(model_pb, f"STRATEGY_{s.name}"): s for s in Strategy},
}
STRATEGY_OUT: Mapping[Strategy, int] = {s: getattr(model_pb, f"STRATEGY_{s.name}") for s in Strategy}
PRESENCE: Mapping[Presence, int] = {p: getattr(model_pb, f"AGENT_PRESENCE_{p.name}") for p in Presence}
PRESENCE_IN: Mapping[int, Presence] = {v: k for k, v in PRESENCE.items()}
PRESENCE_WHY: Mapping[PresenceWhy, int] = {w: getattr(model_pb, f"PRESENCE_WHY_{w.name}") for w in PresenceWhy}
WITHDRAWN_WHY: Mapping[WithdrawnWhy, int] = {
    w: getattr(model_pb, f"OFFER_WITHDRAWN_WHY_{w.name}") for w in WithdrawnWhy
}


def _duration(value: timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


# --- reading requests ---------------------------------------------------------------------------------------------


def identifier(value: str, field: str) -> str:
    if not IDENTIFIER.fullmatch(value):
        shown = value if len(value) <= 80 else value[:79] + "…"
        raise InvalidField(field, f"1 to 64 letters, digits, '.', '_' or '-' (got {shown!r})")
    return value


def _levels(values: Mapping[str, int], field: str, what: str) -> dict[str, int]:
    if len(values) > MAX_SKILLS:
        raise InvalidField(field, f"at most {MAX_SKILLS} (got {len(values)})")
    levels: dict[str, int] = {}
    for name, level in sorted(values.items()):
        identifier(name, f"{field}[{name[:64]}]")
        if not 0 <= level <= MAX_LEVEL:
            raise InvalidField(f"{field}[{name}]", f"{what} is 0 to {MAX_LEVEL} (got {level})")
        levels[name] = level
    return levels


def _optional_duration(
    message: Any, name: str, *, default: timedelta | None, maximum: timedelta, positive: bool = True
) -> timedelta | None:
    """The optional Duration field `name`: `default` when unset; else within [0, maximum], and above 0 if
    `positive`."""
    if not message.HasField(name):
        return default
    value = fields.duration_in(getattr(message, name), name, minimum=timedelta(0), maximum=maximum)
    if positive and value == timedelta(0):
        raise InvalidField(name, "must be positive (leave it unset for the default)")
    return value


def queue_config(message: model_pb.Queue, media_dir: str) -> QueueConfig:
    """The queue a PutQueue asks for, every field checked (`InvalidField` names the first bad one)."""
    queue_id = identifier(message.queue_id, "queue_id")
    name = fields.bounded_text(message.name, "name", max_chars=MAX_NAME)
    if message.strategy not in STRATEGY:
        raise InvalidField("strategy", f"unknown strategy {message.strategy}")
    required = _levels(message.required_skills, "required_skills", "a level")
    ring_timeout = _optional_duration(message, "ring_timeout", default=DEFAULT_RING_TIMEOUT, maximum=MAX_RING_TIMEOUT)
    max_wait = _optional_duration(message, "max_wait", default=None, maximum=MAX_WAIT)
    wrap_up = _optional_duration(message, "wrap_up", default=timedelta(0), maximum=MAX_WRAP_UP, positive=False)
    service_level = _optional_duration(
        message, "service_level", default=DEFAULT_SERVICE_LEVEL, maximum=MAX_SERVICE_LEVEL
    )
    decline_delay = _optional_duration(
        message, "decline_delay", default=DEFAULT_DECLINE_DELAY, maximum=MAX_RETRY_DELAY, positive=False
    )
    no_answer_delay = _optional_duration(
        message, "no_answer_delay", default=DEFAULT_NO_ANSWER_DELAY, maximum=MAX_RETRY_DELAY, positive=False
    )
    if not 0 <= message.max_missed_offers <= MAX_MISSED_OFFERS:
        raise InvalidField("max_missed_offers", f"0 (never pause) to {MAX_MISSED_OFFERS}")
    overflow = message.overflow_queue_id
    if overflow:
        identifier(overflow, "overflow_queue_id")
        if overflow == queue_id:
            raise InvalidField("overflow_queue_id", "a queue cannot overflow into itself")
    hold = HoldAudio()
    match message.hold_audio.WhichOneof("source"):
        case "audio_file":
            given = message.hold_audio.audio_file
            fields.server_file(given, "hold_audio.audio_file", media_dir, max_chars=MAX_AUDIO_FILE)
            hold = HoldAudio(audio_file=given)
        case "tone_hz":
            if not 1 <= message.hold_audio.tone_hz <= MAX_TONE_HZ:
                raise InvalidField("hold_audio.tone_hz", f"1 to {MAX_TONE_HZ} Hz")
            hold = HoldAudio(tone_hz=message.hold_audio.tone_hz)
    assert ring_timeout is not None and wrap_up is not None and service_level is not None
    assert decline_delay is not None and no_answer_delay is not None
    return QueueConfig(
        queue_id,
        STRATEGY[message.strategy],
        name=name,
        hold_audio=hold,
        required_skills=required,
        ring_timeout=ring_timeout,
        max_wait=max_wait,
        wrap_up=wrap_up,
        max_missed_offers=message.max_missed_offers,
        overflow_queue_id=overflow,
        service_level=service_level,
        decline_delay=decline_delay,
        no_answer_delay=no_answer_delay,
    )


def put_agent(message: model_pb.Agent) -> PutAgent:
    """The agent profile a PutAgent asks for, every field checked (`presence` and the counters are output only)."""
    agent_id = identifier(message.agent_id, "agent_id")
    name = fields.bounded_text(message.name, "name", max_chars=MAX_NAME)
    skills = _levels(message.skills, "skills", "a level")
    if len(message.queue_ids) > MAX_AGENT_QUEUES:
        raise InvalidField("queue_ids", f"at most {MAX_AGENT_QUEUES} queues (got {len(message.queue_ids)})")
    queues: dict[str, int] = {}
    for index, queue_id in enumerate(message.queue_ids):
        identifier(queue_id, f"queue_ids[{index}]")
        if queue_id in queues:
            raise InvalidField(f"queue_ids[{index}]", f"{queue_id!r} is listed twice")
        queues[queue_id] = 0
    for queue_id, penalty in sorted(message.queue_penalties.items()):
        field = f"queue_penalties[{queue_id[:64]}]"
        if queue_id not in queues:
            raise InvalidField(field, "a penalty is for one of the agent's queue_ids")
        if not 0 <= penalty <= MAX_PENALTY:
            raise InvalidField(field, f"a penalty is 0 to {MAX_PENALTY} (got {penalty})")
        queues[queue_id] = penalty
    return PutAgent(agent_id, skills=skills, queues=queues, name=name)


# --- writing replies ----------------------------------------------------------------------------------------------


def queue_message(config: QueueConfig) -> model_pb.Queue:
    hold = config.hold_audio
    return model_pb.Queue(
        queue_id=config.queue_id,
        name=config.name,
        strategy=STRATEGY_OUT[config.strategy],  # type: ignore[arg-type]
        required_skills=dict(config.required_skills),
        ring_timeout=_duration(config.ring_timeout),
        max_wait=_duration(config.max_wait) if config.max_wait is not None else None,
        wrap_up=_duration(config.wrap_up),
        max_missed_offers=config.max_missed_offers,
        overflow_queue_id=config.overflow_queue_id,
        hold_audio=model_pb.HoldAudio(audio_file=hold.audio_file)
        if hold.audio_file
        else model_pb.HoldAudio(tone_hz=hold.tone_hz)
        if hold.tone_hz
        else None,
        service_level=_duration(config.service_level),
        decline_delay=_duration(config.decline_delay),
        no_answer_delay=_duration(config.no_answer_delay),
    )


def agent_message(agent: Agent) -> model_pb.Agent:
    return model_pb.Agent(
        agent_id=agent.agent_id,
        name=agent.name,
        skills=dict(agent.skills),
        queue_ids=sorted(agent.queues),
        presence=PRESENCE[agent.presence],  # type: ignore[arg-type]
        queue_penalties=dict(agent.queues),
        calls_handled=agent.calls_handled,
        missed_offers=agent.missed_offers,
        last_call_ended_at=_timestamp(agent.last_call_ended_at),
        call_id=agent.call_id,
    )


def stats_message(queue_id: str, stats: QueueStats, threshold: timedelta) -> cc_pb.QueueStats:
    return cc_pb.QueueStats(
        queue_id=queue_id,
        waiting=stats.waiting,
        longest_wait=_duration(stats.longest_wait),
        agents_available=stats.agents_available,
        agents_busy=stats.agents_busy,
        offered=stats.offered,
        answered=stats.answered,
        abandoned=stats.abandoned,
        overflowed=stats.overflowed,
        average_wait=_duration(stats.average_wait),
        service_level=stats.service_level,
        service_level_threshold=_duration(threshold),
    )


def change_message(stored: str) -> model_pb.ContactCenterChange:
    """The `contact_center` attribute of an event-log entry (wacall.queues.service writes it) as the proto."""
    data: Mapping[str, Any] = json.loads(stored)
    return model_pb.ContactCenterChange(
        queue_id=data.get("queue_id", ""),
        agent_id=data.get("agent_id", ""),
        call_id=data.get("call_id", ""),
        offer_id=data.get("offer_id", ""),
        presence=PRESENCE[Presence(data["presence"])] if "presence" in data else None,  # type: ignore[arg-type]
        presence_why=PRESENCE_WHY[PresenceWhy(data["presence_why"])] if "presence_why" in data else None,  # type: ignore[arg-type]
        withdrawn_why=WITHDRAWN_WHY[WithdrawnWhy(data["withdrawn_why"])] if "withdrawn_why" in data else None,  # type: ignore[arg-type]
        to_queue_id=data.get("to_queue_id", ""),
        waited=_duration(timedelta(microseconds=data["waited"])) if "waited" in data else None,
        queue=queue_message(codec.queue_from_json(data["queue"])) if "queue" in data else None,
        agent=agent_message(codec.agent_from_json(data["agent"])) if "agent" in data else None,
        deleted=bool(data.get("deleted", False)),
    )
