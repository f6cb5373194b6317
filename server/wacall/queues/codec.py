"""The router's state as JSON, the form the store keeps it in: times as integer microseconds since the epoch (as the
rest of the store), durations as integer microseconds, enums by value. `decode(encode(state)) == state`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from wacall.queues.router import (
    DEFAULT_DECLINE_DELAY,
    DEFAULT_NO_ANSWER_DELAY,
    Agent,
    Assignment,
    HoldAudio,
    Offer,
    Presence,
    QueueConfig,
    QueueCounters,
    RouterState,
    Strategy,
    Waiting,
)
from wacall.store.codecs import from_micros, optional_datetime, optional_micros, to_micros

FORMAT = 1


def _micros(value: timedelta) -> int:
    return value // timedelta(microseconds=1)


def _duration(value: int) -> timedelta:
    return timedelta(microseconds=value)


def _queue(q: QueueConfig) -> dict[str, Any]:
    return {
        "strategy": q.strategy.value,
        "name": q.name,
        "hold_audio": [q.hold_audio.audio_file, q.hold_audio.tone_hz],
        "required_skills": dict(q.required_skills),
        "ring_timeout": _micros(q.ring_timeout),
        "max_wait": None if q.max_wait is None else _micros(q.max_wait),
        "wrap_up": _micros(q.wrap_up),
        "max_missed_offers": q.max_missed_offers,
        "overflow_queue_id": q.overflow_queue_id,
        "service_level": _micros(q.service_level),
        "decline_delay": _micros(q.decline_delay),
        "no_answer_delay": _micros(q.no_answer_delay),
    }


def _queue_from(queue_id: str, d: Mapping[str, Any]) -> QueueConfig:
    return QueueConfig(
        queue_id,
        Strategy(d["strategy"]),
        name=d["name"],
        hold_audio=HoldAudio(*d["hold_audio"]),
        required_skills=dict(d["required_skills"]),
        ring_timeout=_duration(d["ring_timeout"]),
        max_wait=None if d["max_wait"] is None else _duration(d["max_wait"]),
        wrap_up=_duration(d["wrap_up"]),
        max_missed_offers=d["max_missed_offers"],
        overflow_queue_id=d["overflow_queue_id"],
        service_level=_duration(d["service_level"]),
        # Queues stored before these settings existed take the defaults.
        decline_delay=_duration(d.get("decline_delay", _micros(DEFAULT_DECLINE_DELAY))),
        no_answer_delay=_duration(d.get("no_answer_delay", _micros(DEFAULT_NO_ANSWER_DELAY))),
    )


def _agent(a: Agent) -> dict[str, Any]:
    return {
        "name": a.name,
        "skills": dict(a.skills),
        "queues": dict(a.queues),
        "presence": a.presence.value,
        "idle_since": optional_micros(a.idle_since),
        "wrap_up_until": optional_micros(a.wrap_up_until),
        "last_call_ended_at": optional_micros(a.last_call_ended_at),
        "calls_handled": a.calls_handled,
        "missed_offers": a.missed_offers,
        "call_id": a.call_id,
        "after_call": None if a.after_call is None else a.after_call.value,
        "added": a.added,
        "session_instance": a.session_instance,
    }


def _agent_from(agent_id: str, d: Mapping[str, Any]) -> Agent:
    return Agent(
        agent_id,
        name=d["name"],
        skills=dict(d["skills"]),
        queues=dict(d["queues"]),
        presence=Presence(d["presence"]),
        idle_since=optional_datetime(d["idle_since"]),
        wrap_up_until=optional_datetime(d["wrap_up_until"]),
        last_call_ended_at=optional_datetime(d["last_call_ended_at"]),
        calls_handled=d["calls_handled"],
        missed_offers=d["missed_offers"],
        call_id=d["call_id"],
        after_call=None if d["after_call"] is None else Presence(d["after_call"]),
        added=d["added"],
        session_instance=d.get("session_instance", ""),  # not stored before sessions were placed
    )


def _waiting(w: Waiting) -> dict[str, Any]:
    return {
        "queue_id": w.queue_id,
        "priority": w.priority,
        "arrived_at": to_micros(w.arrived_at),
        "entered_at": to_micros(w.entered_at),
        "seq": w.seq,
        "tried": {agent_id: to_micros(at) for agent_id, at in sorted(w.tried.items())},
        "offers_made": w.offers_made,
    }


def _tried(stored: Mapping[str, int] | list[str], entered_at: datetime) -> dict[str, datetime]:
    """Who had the call this round → when it may ring them again (a list, as stored before the retry delays: their
    delay is over)."""
    if isinstance(stored, list):
        return dict.fromkeys(stored, entered_at)
    return {agent_id: from_micros(at) for agent_id, at in stored.items()}


def _waiting_from(call_id: str, d: Mapping[str, Any]) -> Waiting:
    return Waiting(
        call_id,
        d["queue_id"],
        d["priority"],
        arrived_at=from_micros(d["arrived_at"]),
        entered_at=from_micros(d["entered_at"]),
        seq=d["seq"],
        tried=_tried(d["tried"], from_micros(d["entered_at"])),
        offers_made=d["offers_made"],
    )


def _counters(c: QueueCounters) -> dict[str, Any]:
    return {
        "offered": c.offered,
        "answered": c.answered,
        "abandoned": c.abandoned,
        "overflowed": c.overflowed,
        "total_wait": _micros(c.total_wait),
        "answered_within_service_level": c.answered_within_service_level,
    }


def _counters_from(d: Mapping[str, Any]) -> QueueCounters:
    return QueueCounters(
        offered=d["offered"],
        answered=d["answered"],
        abandoned=d["abandoned"],
        overflowed=d["overflowed"],
        total_wait=_duration(d["total_wait"]),
        answered_within_service_level=d["answered_within_service_level"],
    )


def queue_json(config: QueueConfig) -> dict[str, Any]:
    """One queue's configuration as JSON (with its id), as the event log records a change."""
    return {"queue_id": config.queue_id, **_queue(config)}


def queue_from_json(data: Mapping[str, Any]) -> QueueConfig:
    return _queue_from(data["queue_id"], data)


def agent_json(agent: Agent) -> dict[str, Any]:
    """One agent as JSON (with its id), as the event log records a change."""
    return {"agent_id": agent.agent_id, **_agent(agent)}


def agent_from_json(data: Mapping[str, Any]) -> Agent:
    return _agent_from(data["agent_id"], data)


def encode(state: RouterState) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "queues": {k: _queue(v) for k, v in state.queues.items()},
        "agents": {k: _agent(v) for k, v in state.agents.items()},
        "waiting": {k: _waiting(v) for k, v in state.waiting.items()},
        "offers": {k: [o.call_id, o.agent_id, o.queue_id, to_micros(o.expires_at)] for k, o in state.offers.items()},
        "assigned": {k: [a.agent_id, a.queue_id] for k, a in state.assigned.items()},
        "last_offered": dict(state.last_offered),
        "counters": {k: _counters(v) for k, v in state.counters.items()},
        "next": [state.next_offer, state.next_seq, state.next_added],
    }


def decode(data: Mapping[str, Any]) -> RouterState:
    if data.get("format") != FORMAT:
        raise ValueError(f"router state format {data.get('format')!r} is not {FORMAT}")
    next_offer, next_seq, next_added = data["next"]
    return RouterState(
        queues=MappingProxyType({k: _queue_from(k, v) for k, v in data["queues"].items()}),
        agents=MappingProxyType({k: _agent_from(k, v) for k, v in data["agents"].items()}),
        waiting=MappingProxyType({k: _waiting_from(k, v) for k, v in data["waiting"].items()}),
        offers=MappingProxyType(
            {k: Offer(k, call, agent, queue, from_micros(at)) for k, (call, agent, queue, at) in data["offers"].items()}
        ),
        assigned=MappingProxyType({k: Assignment(agent, queue) for k, (agent, queue) in data["assigned"].items()}),
        last_offered=MappingProxyType(dict(data["last_offered"])),
        counters=MappingProxyType({k: _counters_from(v) for k, v in data["counters"].items()}),
        next_offer=next_offer,
        next_seq=next_seq,
        next_added=next_added,
    )
