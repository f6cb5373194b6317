"""The call state machine: one call's facts folded from webhooks and local actions. Pure, no I/O.

Webhooks arrive late, twice, or out of order (HOOK-2): `terminate` before `connect`, `ACCEPTED` after media or
even after `terminate`. So the machine is monotonic: every event names the state it *reaches*
(`EVENT_REACHES`), and a call only ever moves up `STATE_RANK`. An ended call absorbs later events but still
records their facts: an `ACCEPTED` after `terminate` still marks the call answered.

The outcome is decided from the facts, first match wins (whatsapp-calling.md §6.6):
ANSWERED (picked up: ACCEPTED seen or terminate with start_time/duration) → REJECTED → CANCELLED (ended by the
business before pickup) → FAILED (setup/connection errors) → UNANSWERED.

What the rules ledger learns (`ledger_effects`): a connected call at the moment of answer; an unanswered or
rejected call when it ends; an open service window when the user calls. FAILED and CANCELLED calls teach it
nothing else.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from wacall.rules import engine


class CallState(enum.Enum):
    DIALING = "dialing"
    RINGING = "ringing"
    CONNECTED = "connected"
    ENDED = "ended"


class CallOutcome(enum.Enum):
    ANSWERED = "answered"
    UNANSWERED = "unanswered"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Direction(enum.Enum):
    BUSINESS_INITIATED = "business_initiated"
    USER_INITIATED = "user_initiated"


STATE_RANK: Mapping[CallState, int] = {
    CallState.DIALING: 0,
    CallState.RINGING: 1,
    CallState.CONNECTED: 2,
    CallState.ENDED: 3,
}


# --- events -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """The `connect` webhook: the platform's SDP for the call."""

    at: datetime


@dataclass(frozen=True, slots=True)
class Ringing:
    at: datetime


@dataclass(frozen=True, slots=True)
class Accepted:
    at: datetime


@dataclass(frozen=True, slots=True)
class Rejected:
    at: datetime


@dataclass(frozen=True, slots=True)
class Terminated:
    """The `terminate` webhook. `start_time`/`duration` are present only if the user picked up."""

    at: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration_seconds: int | None = None
    error_codes: tuple[int, ...] = ()  # the platform's own codes, for the record
    # The platform says the call never got set up (its error codes say so; the upstream reads them).
    setup_failed: bool = False


@dataclass(frozen=True, slots=True)
class EndedByBusiness:
    """The business ended the call (EndCall, or the route finished)."""

    at: datetime


@dataclass(frozen=True, slots=True)
class SetupFailed:
    """The call could not be set up on our side or the platform refused it."""

    at: datetime
    error_code: int | None = None
    detail: str = ""


CallEvent = Connect | Ringing | Accepted | Rejected | Terminated | EndedByBusiness | SetupFailed

# The state each event reaches. A call never moves down STATE_RANK, so duplicates and late events are harmless.
EVENT_REACHES: Mapping[type, CallState | None] = {
    Connect: CallState.DIALING,
    Ringing: CallState.RINGING,
    Accepted: CallState.CONNECTED,
    Rejected: None,  # a fact only: a terminate follows
    Terminated: CallState.ENDED,
    EndedByBusiness: CallState.ENDED,
    SetupFailed: CallState.ENDED,
}


@dataclass(frozen=True, slots=True)
class CallFacts:
    direction: Direction
    created_at: datetime
    state: CallState = CallState.DIALING
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    duration_seconds: int | None = None
    rejected: bool = False
    ended_by_business_before_answer: bool = False
    setup_failed: bool = False
    error_codes: tuple[int, ...] = ()
    error_detail: str = ""
    # What the rules ledger has been told, so each fact is applied once.
    connected_applied: bool = False
    unanswered_applied: bool = False
    window_applied: bool = False

    @property
    def outcome(self) -> CallOutcome | None:
        if self.state is not CallState.ENDED:
            return None
        if self.answered_at is not None:
            return CallOutcome.ANSWERED
        if self.rejected:
            return CallOutcome.REJECTED
        if self.ended_by_business_before_answer:
            return CallOutcome.CANCELLED
        if self.setup_failed:
            return CallOutcome.FAILED
        return CallOutcome.UNANSWERED


def _later(state: CallState, reached: CallState | None) -> CallState:
    if reached is None or STATE_RANK[reached] <= STATE_RANK[state]:
        return state
    return reached


def apply(facts: CallFacts, event: CallEvent) -> CallFacts:
    """Fold one event into the call."""
    was_ended = facts.state is CallState.ENDED
    facts = dataclasses.replace(facts, state=_later(facts.state, EVENT_REACHES[type(event)]))
    match event:
        case Accepted(at=at):
            # The earliest evidence of pickup wins, whatever order the webhooks came in.
            answered = at if facts.answered_at is None else min(facts.answered_at, at)
            facts = dataclasses.replace(facts, answered_at=answered, ended_by_business_before_answer=False)
        case Rejected():
            facts = dataclasses.replace(facts, rejected=True)
        case Terminated():
            picked_up = [t for t in (facts.answered_at, event.start_time) if t is not None]
            if event.start_time is None and event.duration_seconds:
                picked_up.append((event.end_time or event.at) - timedelta(seconds=event.duration_seconds))
            facts = dataclasses.replace(
                facts,
                answered_at=min(picked_up) if picked_up else None,
                ended_at=facts.ended_at or event.end_time or event.at,
                duration_seconds=event.duration_seconds
                if event.duration_seconds is not None
                else facts.duration_seconds,
                error_codes=tuple(sorted({*facts.error_codes, *event.error_codes})),
                setup_failed=facts.setup_failed or event.setup_failed,
            )
        case EndedByBusiness(at=at):
            if not was_ended:
                facts = dataclasses.replace(
                    facts, ended_at=at, ended_by_business_before_answer=facts.answered_at is None
                )
        case SetupFailed(at=at, error_code=code, detail=detail):
            if not was_ended:
                codes = facts.error_codes if code is None else tuple(sorted({*facts.error_codes, code}))
                facts = dataclasses.replace(
                    facts, ended_at=at, setup_failed=True, error_codes=codes, error_detail=detail
                )
    if (
        facts.state is CallState.ENDED
        and facts.answered_at is not None
        and facts.duration_seconds is None
        and facts.ended_at is not None
    ):
        facts = dataclasses.replace(
            facts, duration_seconds=max(0, int((facts.ended_at - facts.answered_at).total_seconds()))
        )
    return facts


def ledger_effects(facts: CallFacts) -> tuple[CallFacts, tuple[engine.LedgerEvent, ...]]:
    """What the rules ledger must learn from the call's facts that it has not learned yet.

    Each fact is told once: a connected call counts from the answer time known when it is first told (which
    instant Meta itself uses is UNCERTAIN, §2.2).
    """
    effects: list[engine.LedgerEvent] = []
    # The user calling the business opens the service window (§3), answered or not. (Picking up a business call
    # opens it too: the engine does that for every connected call.)
    if facts.direction is Direction.USER_INITIATED and not facts.window_applied:
        effects.append(engine.UserMessage(facts.created_at))
        facts = dataclasses.replace(facts, window_applied=True)
    if facts.answered_at is not None and not facts.connected_applied:
        effects.append(engine.CallConnected(facts.answered_at, facts.direction is Direction.BUSINESS_INITIATED))
        facts = dataclasses.replace(facts, connected_applied=True)
    outcome = facts.outcome
    if (
        facts.direction is Direction.BUSINESS_INITIATED
        and outcome in (CallOutcome.UNANSWERED, CallOutcome.REJECTED)
        and not facts.unanswered_applied
        and facts.ended_at is not None
    ):
        effects.append(engine.CallUnanswered(facts.ended_at))
        facts = dataclasses.replace(facts, unanswered_applied=True)
    return facts, tuple(effects)
