"""The queue router: which agent is offered which waiting call, and what happens when anyone acts. Pure, no I/O.

Written as the rule engine is: the state is data (`RouterState`), every input is a small event, and `step(state,
event, now)` returns the next state and the decisions the service must carry out (offers to send, offers to withdraw,
a call to hand to an agent, presence to announce). The service applies a step inside one store transaction, so two
agents accepting one call are serialised there and exactly one wins. Nothing here reads a clock: every timer (ring
timeout, maximum wait, wrap-up) is a deadline compared with `now`, and `next_deadline(state)` tells the service when
to step again with `Tick`.

How to read it
--------------
* `PRESENCE_CHANGES` is the whole presence lifecycle an agent asks for: (presence it is in, presence it asks for) →
  what happens (at once, after its call, refused).
* `STRATEGIES` holds each strategy's one ordering function: given the free, eligible agents of a queue (those in the
  lowest penalty tier that has any), which to offer the call to, in order. RING_ALL offers to all of them at once.
* `_dispatch` runs after every event: waiting calls, highest priority first and first come first served within a
  priority, each take the best free eligible agent their queue's strategy names. A free agent is AVAILABLE and holds no
  offer; eligible means a member of the queue with every required skill at its level.
* Rounds: an agent who declined a call, or let its offer time out, is not offered that call again until every other
  eligible agent has had it in this round, and not before the queue's `decline_delay` (after a decline) or
  `no_answer_delay` (after a ring-out) has passed: FreeSWITCH's reject / no-answer delay, Asterisk's `retry`. A call
  that no one may be offered waits for the earliest of those times (a `RETRY` timer) and then starts a new round with
  the agents whose delay is over. So a decline passes the call on, and a lone agent who declined it is not rung again
  at once; a call waits while an eligible agent is free only for that delay.
* LONGEST_IDLE measures idle time from the later of becoming AVAILABLE and the end of the last wrap-up. ROUND_ROBIN
  remembers, per queue, the last agent offered a call and goes on from the next one (by agent id). LINEAR follows the
  order in which agents were first put. RANDOM draws from a generator seeded by the call and the offer count, so a
  replay of the same events makes the same choices.
* A decline is not a missed offer; an offer that times out is. `max_missed_offers` missed in a row (0 = never) send
  the agent AWAY, why MISSED_OFFERS; an accepted offer resets the count.
* Maximum wait: the call's offers are withdrawn (TIMED_OUT) and it moves to the overflow queue, or, with none, the
  service plays the closing announcement and hangs up (`QueueTimedOut`).
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

DEFAULT_RING_TIMEOUT = timedelta(seconds=20)
# The whole state is one row, re-encoded at every step: these bound how large it can grow.
MAX_QUEUES = 1_000
MAX_AGENTS = 10_000
DEFAULT_SERVICE_LEVEL = timedelta(seconds=20)
# How long a call waits before it rings again an agent who declined it, or let it ring out.
DEFAULT_DECLINE_DELAY = timedelta(seconds=10)
DEFAULT_NO_ANSWER_DELAY = timedelta(seconds=5)  # Asterisk's `retry` default


class Strategy(enum.Enum):
    RING_ALL = "ring_all"
    LONGEST_IDLE = "longest_idle"
    ROUND_ROBIN = "round_robin"
    FEWEST_CALLS = "fewest_calls"
    LINEAR = "linear"
    RANDOM = "random"


class Presence(enum.Enum):
    OFFLINE = "offline"
    AWAY = "away"
    AVAILABLE = "available"
    BUSY = "busy"  # set by the router: on a call
    WRAP_UP = "wrap_up"  # set by the router: after a call, for the queue's wrap-up time


class PresenceWhy(enum.Enum):
    """Why an agent's presence changed (the `presence` event says it)."""

    REQUESTED = "requested"  # the agent asked
    LOGGED_IN = "logged_in"
    SESSION_ENDED = "session_ended"
    MISSED_OFFERS = "missed_offers"  # auto-paused
    CALL_STARTED = "call_started"
    CALL_ENDED = "call_ended"
    WRAP_UP_ENDED = "wrap_up_ended"


class WithdrawnWhy(enum.Enum):
    ANSWERED_ELSEWHERE = "answered_elsewhere"
    ABANDONED = "abandoned"
    TIMED_OUT = "timed_out"
    AGENT_OFFLINE = "agent_offline"


class RoutingRefused(Exception):
    """A command the router cannot carry out (an offer already gone, an unknown agent); the state is unchanged."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- configuration and state ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoldAudio:
    """What a waiting caller hears: a file in the media directory, else a tone (the router only keeps it)."""

    audio_file: str = ""
    tone_hz: int = 0


@dataclass(frozen=True, slots=True)
class QueueConfig:
    queue_id: str
    strategy: Strategy = Strategy.LONGEST_IDLE
    name: str = ""
    hold_audio: HoldAudio = HoldAudio()
    # skill → the lowest level an agent must have (0: any level)
    required_skills: Mapping[str, int] = field(default_factory=dict)
    ring_timeout: timedelta = DEFAULT_RING_TIMEOUT
    max_wait: timedelta | None = None  # None: no limit
    wrap_up: timedelta = timedelta(0)
    max_missed_offers: int = 0  # 0: never pause
    overflow_queue_id: str = ""
    service_level: timedelta = DEFAULT_SERVICE_LEVEL
    decline_delay: timedelta = DEFAULT_DECLINE_DELAY
    no_answer_delay: timedelta = DEFAULT_NO_ANSWER_DELAY


@dataclass(frozen=True, slots=True)
class Agent:
    agent_id: str
    name: str = ""
    skills: Mapping[str, int] = field(default_factory=dict)
    # queue id → penalty: agents in a lower penalty tier are offered calls first
    queues: Mapping[str, int] = field(default_factory=dict)
    presence: Presence = Presence.OFFLINE
    # When the agent last became free to take calls (AVAILABLE, or the end of a wrap-up): LONGEST_IDLE's measure.
    idle_since: datetime | None = None
    wrap_up_until: datetime | None = None
    last_call_ended_at: datetime | None = None
    calls_handled: int = 0
    missed_offers: int = 0
    call_id: str = ""  # the call it is on (BUSY) or wrapping up
    # What the agent asked to become once its call is over (AWAY, OFFLINE), if anything.
    after_call: Presence | None = None
    added: int = 0  # the order agents were first put: LINEAR's order
    # The wacall instance holding the agent's live session ("" when signed out): when that process is gone, so is
    # the session (`SessionsGone`).
    session_instance: str = ""


@dataclass(frozen=True, slots=True)
class Waiting:
    """A call waiting in a queue (with hold audio) for an agent."""

    call_id: str
    queue_id: str
    priority: int
    arrived_at: datetime  # when the call first entered a queue (what the agent is told it waited)
    entered_at: datetime  # when it entered this queue (its maximum wait counts from here)
    seq: int  # first come, first served within a priority
    # Agents who had the call in this round (declined it, let it time out, or left while it rang) → when it may ring
    # them again: not offered it again this round, nor before that time.
    tried: Mapping[str, datetime] = field(default_factory=dict)
    offers_made: int = 0


@dataclass(frozen=True, slots=True)
class Offer:
    offer_id: str
    call_id: str
    agent_id: str
    queue_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Assignment:
    """An agent on a call (from an accepted offer, or one it placed itself: no queue)."""

    agent_id: str
    queue_id: str = ""


@dataclass(frozen=True, slots=True)
class QueueCounters:
    offered: int = 0  # calls that entered the queue
    answered: int = 0
    abandoned: int = 0
    overflowed: int = 0  # moved on at maximum wait (to another queue, or the closing announcement)
    total_wait: timedelta = timedelta(0)  # of answered calls
    answered_within_service_level: int = 0


@dataclass(frozen=True, slots=True)
class RouterState:
    queues: Mapping[str, QueueConfig] = field(default_factory=dict)
    agents: Mapping[str, Agent] = field(default_factory=dict)
    waiting: Mapping[str, Waiting] = field(default_factory=dict)
    offers: Mapping[str, Offer] = field(default_factory=dict)
    assigned: Mapping[str, Assignment] = field(default_factory=dict)  # call id → who has it, while it lasts
    last_offered: Mapping[str, str] = field(default_factory=dict)  # queue id → agent id (ROUND_ROBIN's memory)
    counters: Mapping[str, QueueCounters] = field(default_factory=dict)
    next_offer: int = 1
    next_seq: int = 1
    next_added: int = 1


EMPTY = RouterState()


# --- events -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PutQueue:
    config: QueueConfig


@dataclass(frozen=True, slots=True)
class DeleteQueue:
    queue_id: str


@dataclass(frozen=True, slots=True)
class PutAgent:
    """Create or replace an agent's profile (skills, queues); its presence and history stay."""

    agent_id: str
    skills: Mapping[str, int] = field(default_factory=dict)
    queues: Mapping[str, int] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True, slots=True)
class DeleteAgent:
    agent_id: str


@dataclass(frozen=True, slots=True)
class LogIn:
    """The agent signed in through a session held by wacall instance `instance`."""

    agent_id: str
    instance: str = ""


@dataclass(frozen=True, slots=True)
class SessionsGone:
    """The processes named held sessions that are gone with them (a crash, a kill, a power loss): their agents go
    OFFLINE as if each session had closed (SESSION_ENDED)."""

    instances: frozenset[str]


@dataclass(frozen=True, slots=True)
class SetPresence:
    agent_id: str
    presence: Presence
    why: PresenceWhy = PresenceWhy.REQUESTED


@dataclass(frozen=True, slots=True)
class CallQueued:
    """A call enters a queue (the customer is on hold)."""

    call_id: str
    queue_id: str
    priority: int = 0


@dataclass(frozen=True, slots=True)
class CallGone:
    """The call ended: abandoned if it was still waiting; the end of the agent's call if one had it. An agent's own
    call that was never `answered` (refused by the platform, its media failed, not picked up) leaves the agent as it
    was: not a call handled, no new idle time."""

    call_id: str
    answered: bool = True


@dataclass(frozen=True, slots=True)
class Accept:
    offer_id: str


@dataclass(frozen=True, slots=True)
class Decline:
    offer_id: str


@dataclass(frozen=True, slots=True)
class AgentCallStarted:
    """An agent places a call itself (a callback): BUSY for its duration, as for an accepted offer."""

    agent_id: str
    call_id: str


@dataclass(frozen=True, slots=True)
class EndWrapUp:
    agent_id: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: fire every timer due at `now`."""


Event = (
    PutQueue
    | DeleteQueue
    | PutAgent
    | DeleteAgent
    | LogIn
    | SessionsGone
    | SetPresence
    | CallQueued
    | CallGone
    | Accept
    | Decline
    | AgentCallStarted
    | EndWrapUp
    | Tick
)


# --- decisions ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfferMade:
    offer: Offer
    waited: timedelta


@dataclass(frozen=True, slots=True)
class OfferWithdrawn:
    offer: Offer
    why: WithdrawnWhy


@dataclass(frozen=True, slots=True)
class Assigned:
    """The agent won the call: the service moves the call's media from hold to the agent."""

    call_id: str
    agent_id: str
    queue_id: str
    offer_id: str
    waited: timedelta


@dataclass(frozen=True, slots=True)
class Overflowed:
    call_id: str
    from_queue: str
    to_queue: str


@dataclass(frozen=True, slots=True)
class QueueTimedOut:
    """The call waited its queue's maximum with no overflow queue: play the closing announcement and hang up."""

    call_id: str
    queue_id: str


@dataclass(frozen=True, slots=True)
class QueueGone:
    """The call's queue was deleted (or never existed): the service ends the call."""

    call_id: str
    queue_id: str


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    agent_id: str
    presence: Presence
    why: PresenceWhy


Decision = OfferMade | OfferWithdrawn | Assigned | Overflowed | QueueTimedOut | QueueGone | PresenceChanged


@dataclass(frozen=True, slots=True)
class Step:
    state: RouterState
    decisions: tuple[Decision, ...]


# --- presence -----------------------------------------------------------------------------------------------------


class Change(enum.Enum):
    NOW = "now"
    AFTER_CALL = "after_call"  # remembered, applied when the call (and its wrap-up) is over
    REFUSED = "refused"


P = Presence
# (presence the agent is in, presence it asks for) → what happens. BUSY and WRAP_UP are the router's to set.
PRESENCE_CHANGES: Mapping[tuple[Presence, Presence], Change] = MappingProxyType(
    {
        **{
            (current, wanted): Change.NOW
            for current in (P.OFFLINE, P.AWAY, P.AVAILABLE)
            for wanted in (
                P.OFFLINE,
                P.AWAY,
                P.AVAILABLE,
            )
        },
        (P.BUSY, P.AVAILABLE): Change.AFTER_CALL,  # clears a pause asked for during the call
        (P.BUSY, P.AWAY): Change.AFTER_CALL,
        (P.BUSY, P.OFFLINE): Change.AFTER_CALL,
        (P.WRAP_UP, P.AVAILABLE): Change.NOW,  # ends the wrap-up early
        (P.WRAP_UP, P.AWAY): Change.NOW,
        (P.WRAP_UP, P.OFFLINE): Change.NOW,
        **{(current, wanted): Change.REFUSED for current in P for wanted in (P.BUSY, P.WRAP_UP)},
    }
)


def _set_presence(agent: Agent, presence: Presence, why: PresenceWhy, now: datetime) -> tuple[Agent, list[Decision]]:
    if agent.presence is presence:
        return agent, []
    becomes_free = presence is Presence.AVAILABLE
    agent = dataclasses.replace(
        agent,
        presence=presence,
        idle_since=now if becomes_free else agent.idle_since,
        wrap_up_until=None if presence is not Presence.WRAP_UP else agent.wrap_up_until,
        call_id=agent.call_id if presence in (Presence.BUSY, Presence.WRAP_UP) else "",
        session_instance="" if presence is Presence.OFFLINE else agent.session_instance,
        # An agent who comes back (or is paused) starts counting missed offers afresh.
        missed_offers=0
        if presence in (Presence.AVAILABLE, Presence.OFFLINE) and why is PresenceWhy.REQUESTED
        else agent.missed_offers,
    )
    return agent, [PresenceChanged(agent.agent_id, presence, why)]


# --- eligibility and strategies -------------------------------------------------------------------------------------


def eligible(agent: Agent, queue: QueueConfig) -> bool:
    """A member of the queue with every skill it requires, at its level."""
    if queue.queue_id not in agent.queues:
        return False
    return all(agent.skills.get(skill, -1) >= level for skill, level in queue.required_skills.items())


def _idle_for(agent: Agent, now: datetime) -> timedelta:
    return now - agent.idle_since if agent.idle_since is not None else timedelta(0)


def _longest_idle(candidates: Sequence[Agent], ctx: _Choice) -> list[Agent]:
    return sorted(candidates, key=lambda a: (-_idle_for(a, ctx.now), a.agent_id))[:1]


def _round_robin(candidates: Sequence[Agent], ctx: _Choice) -> list[Agent]:
    ordered = sorted(candidates, key=lambda a: a.agent_id)
    last = ctx.last_offered
    after = [a for a in ordered if last is not None and a.agent_id > last]
    return (after or ordered)[:1]


def _fewest_calls(candidates: Sequence[Agent], ctx: _Choice) -> list[Agent]:
    return sorted(candidates, key=lambda a: (a.calls_handled, -_idle_for(a, ctx.now), a.agent_id))[:1]


def _linear(candidates: Sequence[Agent], ctx: _Choice) -> list[Agent]:
    return sorted(candidates, key=lambda a: (a.added, a.agent_id))[:1]


def _random(candidates: Sequence[Agent], ctx: _Choice) -> list[Agent]:
    ordered = sorted(candidates, key=lambda a: a.agent_id)
    return [random.Random(ctx.seed).choice(ordered)]


def _ring_all(candidates: Sequence[Agent], ctx: _Choice) -> list[Agent]:
    return sorted(candidates, key=lambda a: a.agent_id)


@dataclass(frozen=True, slots=True)
class _Choice:
    """What a strategy may look at besides the candidates."""

    now: datetime
    last_offered: str | None
    seed: str


STRATEGIES: Mapping[Strategy, Callable[[Sequence[Agent], _Choice], list[Agent]]] = MappingProxyType(
    {
        Strategy.RING_ALL: _ring_all,
        Strategy.LONGEST_IDLE: _longest_idle,
        Strategy.ROUND_ROBIN: _round_robin,
        Strategy.FEWEST_CALLS: _fewest_calls,
        Strategy.LINEAR: _linear,
        Strategy.RANDOM: _random,
    }
)


def lowest_penalty_tier(agents: Iterable[Agent], queue_id: str) -> list[Agent]:
    """The agents of the lowest penalty (for `queue_id`) present in `agents`."""
    agents = list(agents)
    if not agents:
        return []
    lowest = min(a.queues[queue_id] for a in agents)
    return [a for a in agents if a.queues[queue_id] == lowest]


# --- the step -----------------------------------------------------------------------------------------------------


class _Working:
    """One step's scratch: mutable copies of the state's maps, and the decisions so far."""

    def __init__(self, state: RouterState, now: datetime) -> None:
        self.now = now
        self.queues = dict(state.queues)
        self.agents = dict(state.agents)
        self.waiting = dict(state.waiting)
        self.offers = dict(state.offers)
        self.assigned = dict(state.assigned)
        self.last_offered = dict(state.last_offered)
        self.counters = dict(state.counters)
        self.next_offer = state.next_offer
        self.next_seq = state.next_seq
        self.next_added = state.next_added
        self.decisions: list[Decision] = []

    def freeze(self) -> RouterState:
        return RouterState(
            queues=MappingProxyType(self.queues),
            agents=MappingProxyType(self.agents),
            waiting=MappingProxyType(self.waiting),
            offers=MappingProxyType(self.offers),
            assigned=MappingProxyType(self.assigned),
            last_offered=MappingProxyType(self.last_offered),
            counters=MappingProxyType(self.counters),
            next_offer=self.next_offer,
            next_seq=self.next_seq,
            next_added=self.next_added,
        )

    def agent(self, agent_id: str) -> Agent:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise RoutingRefused("unknown_agent", f"no agent {agent_id!r}")
        return agent

    def offer(self, offer_id: str) -> Offer:
        offer = self.offers.get(offer_id)
        if offer is None:
            raise RoutingRefused(
                "offer_gone", f"offer {offer_id!r} is no longer open (answered elsewhere, withdrawn or timed out)"
            )
        return offer

    def count(self, queue_id: str, *, wait: timedelta = timedelta(0), within_level: bool = False, **add: int) -> None:
        before = self.counters.get(queue_id, QueueCounters())
        self.counters[queue_id] = dataclasses.replace(
            before,
            offered=before.offered + add.get("offered", 0),
            answered=before.answered + add.get("answered", 0),
            abandoned=before.abandoned + add.get("abandoned", 0),
            overflowed=before.overflowed + add.get("overflowed", 0),
            total_wait=before.total_wait + wait,
            answered_within_service_level=before.answered_within_service_level + int(within_level),
        )

    def presence(self, agent: Agent, presence: Presence, why: PresenceWhy) -> Agent:
        agent, decisions = _set_presence(agent, presence, why, self.now)
        self.agents[agent.agent_id] = agent
        self.decisions += decisions
        return agent

    def offer_held_by(self, agent_id: str) -> Offer | None:
        return next((o for o in self.offers.values() if o.agent_id == agent_id), None)

    def offers_for(self, call_id: str) -> list[Offer]:
        return [o for o in self.offers.values() if o.call_id == call_id]

    def withdraw(self, offer: Offer, why: WithdrawnWhy) -> None:
        del self.offers[offer.offer_id]
        self.decisions.append(OfferWithdrawn(offer, why))

    def tried(self, call_id: str, agent_id: str, delay: timedelta = timedelta(0)) -> None:
        """The agent had the call in this round: not offered it again before `delay` has passed."""
        waiting = self.waiting.get(call_id)
        if waiting is not None:
            tried = {**waiting.tried, agent_id: self.now + delay}
            self.waiting[call_id] = dataclasses.replace(waiting, tried=tried)

    def delays(self, queue_id: str) -> QueueConfig:
        """The queue's configuration, or the defaults for a queue deleted meanwhile."""
        return self.queues.get(queue_id) or QueueConfig(queue_id)

    def call_over_for(self, agent: Agent, queue_id: str) -> None:
        """The agent's call ended: wrap up for its queue's wrap-up time, else straight to what it asked for."""
        queue = self.queues.get(queue_id)
        wrap_up = queue.wrap_up if queue is not None else timedelta(0)
        agent = dataclasses.replace(agent, calls_handled=agent.calls_handled + 1, last_call_ended_at=self.now)
        if wrap_up > timedelta(0) and agent.after_call is not Presence.OFFLINE:
            agent = dataclasses.replace(agent, wrap_up_until=self.now + wrap_up)
            self.presence(agent, Presence.WRAP_UP, PresenceWhy.CALL_ENDED)
        else:
            self.leave_call(agent, agent.after_call or Presence.AVAILABLE, PresenceWhy.CALL_ENDED)

    def call_back_not_answered(self, agent: Agent) -> None:
        """The agent's own call never connected: back to its presence before the call, its idle time kept."""
        idle_since = agent.idle_since
        self.leave_call(agent, agent.after_call or Presence.AVAILABLE, PresenceWhy.CALL_ENDED)
        self.agents[agent.agent_id] = dataclasses.replace(self.agents[agent.agent_id], idle_since=idle_since)

    def leave_call(self, agent: Agent, presence: Presence, why: PresenceWhy) -> None:
        agent = dataclasses.replace(agent, after_call=None, call_id="", wrap_up_until=None)
        self.agents[agent.agent_id] = agent
        self.presence(agent, presence, why)

    def stop_offering_to(self, agent: Agent) -> None:
        """The agent is no longer free: its ringing offer goes to the next agent."""
        held = self.offer_held_by(agent.agent_id)
        if held is not None:
            self.withdraw(held, WithdrawnWhy.AGENT_OFFLINE)
            self.tried(held.call_id, agent.agent_id)


def _on_put_queue(w: _Working, event: PutQueue) -> None:
    problems = queue_problems(event.config)
    if problems:
        field_name, why = problems[0]
        raise RoutingRefused("invalid_queue", f"{field_name}: {why}")
    config = event.config
    if config.queue_id not in w.queues and len(w.queues) >= MAX_QUEUES:
        raise RoutingRefused("too_many_queues", f"at most {MAX_QUEUES} queues: delete one first")
    if config.overflow_queue_id and config.overflow_queue_id not in w.queues:
        raise RoutingRefused(
            "unknown_overflow_queue",
            f"no queue {config.overflow_queue_id!r} to overflow into: put that queue first",
        )
    w.queues[config.queue_id] = config


def _on_delete_queue(w: _Working, event: DeleteQueue) -> None:
    if event.queue_id not in w.queues:
        raise RoutingRefused("unknown_queue", f"no queue {event.queue_id!r}")
    if any(c.queue_id == event.queue_id for c in w.waiting.values()):
        raise RoutingRefused("queue_in_use", f"calls are waiting in queue {event.queue_id!r}: delete it when empty")
    feeding = sorted(q.queue_id for q in w.queues.values() if q.overflow_queue_id == event.queue_id)
    if feeding:
        raise RoutingRefused(
            "queue_in_use", f"queue {feeding[0]!r} overflows into {event.queue_id!r}: change that queue first"
        )
    del w.queues[event.queue_id]
    # Its figures and round-robin memory go with it: a queue put again under the id starts afresh.
    w.counters.pop(event.queue_id, None)
    w.last_offered.pop(event.queue_id, None)


def _on_put_agent(w: _Working, event: PutAgent) -> None:
    for name, level in event.skills.items():
        if level < 0:
            raise RoutingRefused("invalid_agent", f"skills[{name}]: a level is 0 or more")
    for queue_id, penalty in event.queues.items():
        if penalty < 0:
            raise RoutingRefused("invalid_agent", f"queues[{queue_id}]: a penalty is 0 or more")
    before = w.agents.get(event.agent_id)
    if before is None and len(w.agents) >= MAX_AGENTS:
        raise RoutingRefused("too_many_agents", f"at most {MAX_AGENTS} agents: delete one first")
    if before is None:
        before = Agent(event.agent_id, added=w.next_added)
        w.next_added += 1
    agent = dataclasses.replace(before, name=event.name, skills=dict(event.skills), queues=dict(event.queues))
    w.agents[agent.agent_id] = agent
    held = w.offer_held_by(agent.agent_id)
    if held is not None and (held.queue_id not in w.queues or not eligible(agent, w.queues[held.queue_id])):
        w.stop_offering_to(agent)


def _on_delete_agent(w: _Working, event: DeleteAgent) -> None:
    agent = w.agent(event.agent_id)
    if agent.presence in (Presence.BUSY, Presence.WRAP_UP):
        raise RoutingRefused("agent_busy", f"agent {agent.agent_id!r} is on a call: delete it after the call")
    w.stop_offering_to(agent)
    del w.agents[agent.agent_id]


def _on_log_in(w: _Working, event: LogIn) -> None:
    agent = w.agent(event.agent_id)
    # A session open again during a call: the OFFLINE its closed session left for after the call no longer holds.
    after_call = None if agent.after_call is Presence.OFFLINE else agent.after_call
    agent = w.agents[agent.agent_id] = dataclasses.replace(
        agent, session_instance=event.instance, after_call=after_call
    )
    if agent.presence is Presence.OFFLINE:
        w.presence(agent, Presence.AWAY, PresenceWhy.LOGGED_IN)


def _on_sessions_gone(w: _Working, event: SessionsGone) -> None:
    for agent in list(w.agents.values()):
        if agent.session_instance in event.instances and agent.presence is not Presence.OFFLINE:
            agent = w.agents[agent.agent_id] = dataclasses.replace(agent, session_instance="")
            _on_set_presence(w, SetPresence(agent.agent_id, Presence.OFFLINE, PresenceWhy.SESSION_ENDED))


def _on_set_presence(w: _Working, event: SetPresence) -> None:
    agent = w.agent(event.agent_id)
    change = PRESENCE_CHANGES[(agent.presence, event.presence)]
    if change is Change.REFUSED:
        raise RoutingRefused("presence_refused", f"an agent cannot set itself {event.presence.name}")
    if change is Change.AFTER_CALL:
        later = None if event.presence is Presence.AVAILABLE else event.presence
        w.agents[agent.agent_id] = dataclasses.replace(agent, after_call=later)
        return
    if agent.presence is Presence.WRAP_UP:
        w.leave_call(agent, event.presence, event.why)
        return
    if event.presence is not Presence.AVAILABLE:
        w.stop_offering_to(agent)
    w.presence(agent, event.presence, event.why)


def _on_call_queued(w: _Working, event: CallQueued) -> None:
    if event.call_id in w.waiting or event.call_id in w.assigned:
        raise RoutingRefused("call_already_routed", f"call {event.call_id!r} is already in a queue or with an agent")
    if event.queue_id not in w.queues:
        w.decisions.append(QueueGone(event.call_id, event.queue_id))
        return
    w.waiting[event.call_id] = Waiting(
        event.call_id, event.queue_id, event.priority, arrived_at=w.now, entered_at=w.now, seq=w.next_seq
    )
    w.next_seq += 1
    w.count(event.queue_id, offered=1)


def _on_call_gone(w: _Working, event: CallGone) -> None:
    waiting = w.waiting.pop(event.call_id, None)
    if waiting is not None:
        for offer in w.offers_for(event.call_id):
            w.withdraw(offer, WithdrawnWhy.ABANDONED)
        w.count(waiting.queue_id, abandoned=1)
    assignment = w.assigned.pop(event.call_id, None)
    if assignment is not None:
        agent = w.agents.get(assignment.agent_id)
        if agent is not None and agent.presence is Presence.BUSY and agent.call_id == event.call_id:
            if assignment.queue_id or event.answered:
                w.call_over_for(agent, assignment.queue_id)
            else:
                w.call_back_not_answered(agent)


def _on_accept(w: _Working, event: Accept) -> None:
    offer = w.offer(event.offer_id)
    del w.offers[offer.offer_id]
    for other in w.offers_for(offer.call_id):
        w.withdraw(other, WithdrawnWhy.ANSWERED_ELSEWHERE)
    waiting = w.waiting.pop(offer.call_id)
    w.assigned[offer.call_id] = Assignment(offer.agent_id, offer.queue_id)
    agent = dataclasses.replace(w.agent(offer.agent_id), missed_offers=0, call_id=offer.call_id)
    w.presence(agent, Presence.BUSY, PresenceWhy.CALL_STARTED)
    in_queue = w.now - waiting.entered_at
    queue = w.queues.get(offer.queue_id)
    level = queue.service_level if queue is not None else DEFAULT_SERVICE_LEVEL
    w.count(offer.queue_id, answered=1, wait=in_queue, within_level=in_queue <= level)
    w.decisions.append(
        Assigned(offer.call_id, offer.agent_id, offer.queue_id, offer.offer_id, w.now - waiting.arrived_at)
    )


def _on_decline(w: _Working, event: Decline) -> None:
    offer = w.offer(event.offer_id)
    del w.offers[offer.offer_id]
    w.tried(offer.call_id, offer.agent_id, w.delays(offer.queue_id).decline_delay)


def _on_agent_call_started(w: _Working, event: AgentCallStarted) -> None:
    agent = w.agent(event.agent_id)
    if agent.presence not in (Presence.AVAILABLE, Presence.AWAY):
        raise RoutingRefused(
            "agent_not_ready",
            f"agent {agent.agent_id!r} is {agent.presence.name}: it must be signed in and not on a call",
        )
    if w.offer_held_by(agent.agent_id) is not None:
        raise RoutingRefused(
            "offer_ringing", f"agent {agent.agent_id!r} has an offer ringing: accept or decline it first"
        )
    if event.call_id in w.assigned or event.call_id in w.waiting:
        raise RoutingRefused("call_already_routed", f"call {event.call_id!r} is already in a queue or with an agent")
    w.assigned[event.call_id] = Assignment(agent.agent_id)
    # The agent's presence before the call is what it returns to.
    agent = dataclasses.replace(
        agent, call_id=event.call_id, after_call=None if agent.presence is Presence.AVAILABLE else agent.presence
    )
    w.presence(agent, Presence.BUSY, PresenceWhy.CALL_STARTED)


def _on_end_wrap_up(w: _Working, event: EndWrapUp) -> None:
    agent = w.agent(event.agent_id)
    if agent.presence is not Presence.WRAP_UP:
        raise RoutingRefused("not_wrapping_up", f"agent {agent.agent_id!r} is {agent.presence.name}, not in wrap-up")
    w.leave_call(agent, agent.after_call or Presence.AVAILABLE, PresenceWhy.WRAP_UP_ENDED)


def _on_tick(w: _Working, event: Tick) -> None:
    """Nothing of its own: the timers due fire in `_catch_up`, around every event."""


HANDLERS: Mapping[type, Callable[[_Working, Any], None]] = MappingProxyType(
    {
        PutQueue: _on_put_queue,
        DeleteQueue: _on_delete_queue,
        PutAgent: _on_put_agent,
        DeleteAgent: _on_delete_agent,
        LogIn: _on_log_in,
        SessionsGone: _on_sessions_gone,
        SetPresence: _on_set_presence,
        CallQueued: _on_call_queued,
        CallGone: _on_call_gone,
        Accept: _on_accept,
        Decline: _on_decline,
        AgentCallStarted: _on_agent_call_started,
        EndWrapUp: _on_end_wrap_up,
        Tick: _on_tick,
    }
)


_DAWN = datetime.min.replace(tzinfo=UTC)


class _Timer(enum.IntEnum):
    """Kinds of timer, in the order they fire when due at the same instant."""

    RING_TIMEOUT = 0
    MAX_WAIT = 1
    WRAP_UP = 2
    RETRY = 3  # a call no one rings: the earliest time an agent who had it may be offered it again


def _timers(w: _Working) -> Iterator[tuple[datetime, _Timer, str]]:
    for offer in w.offers.values():
        yield offer.expires_at, _Timer.RING_TIMEOUT, offer.offer_id
    limits = {q.queue_id: q.max_wait for q in w.queues.values() if q.max_wait is not None}
    if limits:
        for call in w.waiting.values():
            limit = limits.get(call.queue_id)
            if limit is not None:
                yield call.entered_at + limit, _Timer.MAX_WAIT, call.call_id
    for agent in w.agents.values():
        if agent.presence is Presence.WRAP_UP and agent.wrap_up_until is not None:
            yield agent.wrap_up_until, _Timer.WRAP_UP, agent.agent_id
    ringing = {o.call_id for o in w.offers.values()}
    for call in w.waiting.values():
        if call.tried and call.call_id not in ringing:
            yield min(call.tried.values()), _Timer.RETRY, call.call_id


def _catch_up(w: _Working, now: datetime, floor: datetime = _DAWN) -> None:
    """Fire every timer due by `now`, earliest first, each at its own instant and followed by the offers it frees:
    one step at a late `now` ends where waking at every deadline would have. Time never runs back below `floor` (a
    `RETRY` is due as soon as a call stops ringing, which may be after the delays it waits for ran out)."""
    while True:
        earliest = min(_timers(w), default=None)
        if earliest is None or earliest[0] > now:
            w.now = now
            return
        at, kind, key = earliest
        w.now = floor = max(at, floor)
        _FIRE[kind](w, key)
        _dispatch(w)


def _ring_timeout(w: _Working, offer_id: str) -> None:
    offer = w.offers[offer_id]
    w.withdraw(offer, WithdrawnWhy.TIMED_OUT)
    w.tried(offer.call_id, offer.agent_id, w.delays(offer.queue_id).no_answer_delay)
    agent = w.agents[offer.agent_id]
    agent = dataclasses.replace(agent, missed_offers=agent.missed_offers + 1)
    w.agents[agent.agent_id] = agent
    queue = w.queues.get(offer.queue_id)
    if queue is not None and queue.max_missed_offers and agent.missed_offers >= queue.max_missed_offers:
        w.presence(agent, Presence.AWAY, PresenceWhy.MISSED_OFFERS)


def _max_wait(w: _Working, call_id: str) -> None:
    call = w.waiting[call_id]
    queue = w.queues[call.queue_id]
    for offer in w.offers_for(call_id):
        w.withdraw(offer, WithdrawnWhy.TIMED_OUT)
    w.count(call.queue_id, overflowed=1)
    onward = queue.overflow_queue_id
    if onward and onward in w.queues and onward != call.queue_id:
        w.waiting[call_id] = dataclasses.replace(call, queue_id=onward, entered_at=w.now, tried={})
        w.count(onward, offered=1)
        w.decisions.append(Overflowed(call_id, call.queue_id, onward))
    else:
        del w.waiting[call_id]
        w.decisions.append(QueueTimedOut(call_id, call.queue_id))


def _retry(w: _Working, call_id: str) -> None:
    """No one rings the call: the agents whose delay is over may be offered it again (a new round for them)."""
    call = w.waiting[call_id]
    w.waiting[call_id] = dataclasses.replace(call, tried={a: at for a, at in call.tried.items() if at > w.now})


def _wrap_up_over(w: _Working, agent_id: str) -> None:
    agent = w.agents[agent_id]
    w.leave_call(agent, agent.after_call or Presence.AVAILABLE, PresenceWhy.WRAP_UP_ENDED)


_FIRE: Mapping[_Timer, Callable[[_Working, str], None]] = MappingProxyType(
    {
        _Timer.RING_TIMEOUT: _ring_timeout,
        _Timer.MAX_WAIT: _max_wait,
        _Timer.WRAP_UP: _wrap_up_over,
        _Timer.RETRY: _retry,
    }
)


def _dispatch(w: _Working) -> None:
    """Offer waiting calls to free eligible agents: highest priority first, first come first served within one."""
    holding = {o.agent_id for o in w.offers.values()}
    free = {a.agent_id for a in w.agents.values() if a.presence is Presence.AVAILABLE and a.agent_id not in holding}
    if not free:
        return
    # Each queue's free eligible agents, found once; a queue none can serve costs its calls nothing below.
    serving: dict[str, list[Agent]] = {}
    for agent_id in sorted(free):
        agent = w.agents[agent_id]
        for queue_id in agent.queues:
            queue = w.queues.get(queue_id)
            if queue is not None and eligible(agent, queue):
                serving.setdefault(queue_id, []).append(agent)
    ringing_by_call: dict[str, list[Offer]] = {}
    for offer in w.offers.values():
        ringing_by_call.setdefault(offer.call_id, []).append(offer)
    calls = sorted((c for c in w.waiting.values() if c.queue_id in serving), key=lambda c: (-c.priority, c.seq))
    for call in calls:
        if not free:
            return
        queue = w.queues[call.queue_id]
        ringing = ringing_by_call.get(call.call_id, [])
        if ringing and queue.strategy is not Strategy.RING_ALL:
            continue
        # Drop the agents earlier calls took, so later calls of the queue look only at those still free.
        candidates = serving[call.queue_id] = [a for a in serving[call.queue_id] if a.agent_id in free]
        untried = [a for a in candidates if a.agent_id not in call.tried]
        if not untried:
            # Every eligible free agent has had the call this round: the next round starts at the `RETRY` timer.
            continue
        # The lowest penalty tier among the free and those already ringing (RING_ALL adds agents to a ringing
        # call only in its tier), so running this twice offers nothing more.
        ringing_agents = [w.agents[o.agent_id] for o in ringing]
        tier = {a.agent_id for a in lowest_penalty_tier([*untried, *ringing_agents], queue.queue_id)}
        offerable = [a for a in untried if a.agent_id in tier]
        if not offerable:
            continue
        choice = _Choice(w.now, w.last_offered.get(queue.queue_id), f"{call.call_id}:{call.offers_made}")
        chosen = STRATEGIES[queue.strategy](offerable, choice)
        for agent in chosen:
            offer = Offer(
                f"offer_{w.next_offer}", call.call_id, agent.agent_id, queue.queue_id, w.now + queue.ring_timeout
            )
            w.next_offer += 1
            w.offers[offer.offer_id] = offer
            w.decisions.append(OfferMade(offer, w.now - call.arrived_at))
            free.discard(agent.agent_id)
        w.waiting[call.call_id] = dataclasses.replace(call, offers_made=call.offers_made + len(chosen))
        if chosen:
            w.last_offered[queue.queue_id] = chosen[-1].agent_id


def step(state: RouterState, event: Event, now: datetime) -> Step:
    """Apply `event` at `now`: the next state and what the service must do. Raises `RoutingRefused` (and changes
    nothing) for a command that cannot be carried out."""
    work = _Working(state, now)
    _catch_up(work, now)
    HANDLERS[type(event)](work, event)
    _catch_up(work, now, floor=now)
    _dispatch(work)
    return Step(work.freeze(), tuple(work.decisions))


def next_deadline(state: RouterState) -> datetime | None:
    """When the next timer is due (step with `Tick` then), or None when nothing waits on time."""
    return min((at for at, _, _ in _timers(_Working(state, datetime.min))), default=None)


# --- checks and figures -------------------------------------------------------------------------------------------


def queue_problems(config: QueueConfig) -> list[tuple[str, str]]:
    """What is wrong with a queue's configuration, as (field, why) pairs; empty when it is sound."""
    problems: list[tuple[str, str]] = []
    if config.ring_timeout <= timedelta(0):
        problems.append(("ring_timeout", "must be positive"))
    if config.max_wait is not None and config.max_wait <= timedelta(0):
        problems.append(("max_wait", "must be positive (leave it unset for no limit)"))
    if config.wrap_up < timedelta(0):
        problems.append(("wrap_up", "must not be negative"))
    if config.max_missed_offers < 0:
        problems.append(("max_missed_offers", "must be 0 (never pause) or more"))
    if config.overflow_queue_id == config.queue_id:
        problems.append(("overflow_queue_id", "a queue cannot overflow into itself"))
    for skill, level in config.required_skills.items():
        if level < 0:
            problems.append((f"required_skills[{skill}]", "a level is 0 or more"))
    return problems


@dataclass(frozen=True, slots=True)
class QueueStats:
    waiting: int
    longest_wait: timedelta
    agents_available: int
    agents_busy: int
    offered: int
    answered: int
    abandoned: int
    overflowed: int
    average_wait: timedelta
    service_level: float  # answered within the queue's service level / calls that left the queue (0 when none)


def queue_stats(state: RouterState, queue_id: str, now: datetime) -> QueueStats:
    waits = [now - c.entered_at for c in state.waiting.values() if c.queue_id == queue_id]
    members = [a for a in state.agents.values() if queue_id in a.queues]
    counters = state.counters.get(queue_id, QueueCounters())
    finished = counters.answered + counters.abandoned + counters.overflowed
    return QueueStats(
        waiting=len(waits),
        longest_wait=max(waits, default=timedelta(0)),
        agents_available=sum(a.presence is Presence.AVAILABLE for a in members),
        agents_busy=sum(a.presence in (Presence.BUSY, Presence.WRAP_UP) for a in members),
        offered=counters.offered,
        answered=counters.answered,
        abandoned=counters.abandoned,
        overflowed=counters.overflowed,
        average_wait=counters.total_wait / counters.answered if counters.answered else timedelta(0),
        service_level=counters.answered_within_service_level / finished if finished else 0.0,
    )
