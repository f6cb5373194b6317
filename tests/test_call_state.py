"""The call state machine (`wacall.calls.machine`), pure: whatsapp-calling.md §6.4/§6.6, pitfalls HOOK-2 and HOOK-3.

Webhooks arrive late, twice and out of order, so the machine is monotonic and an ended call still records facts.
The outcome follows the documented mapping, first match wins: ANSWERED → REJECTED → CANCELLED → FAILED →
UNANSWERED. `ledger_effects` tells the rules ledger each fact once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wacall.calls import machine as calls
from wacall.calls.machine import (
    Accepted,
    CallEvent,
    CallFacts,
    CallOutcome,
    CallState,
    Connect,
    Direction,
    EndedByBusiness,
    Rejected,
    Ringing,
    SetupFailed,
    Terminated,
)
from wacall.rules import engine
from wacall.rules.policy import SEED
from wacall.upstreams.meta.errors import CALL_SETUP_FAILURES, meta_error

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
BIC = Direction.BUSINESS_INITIATED
UIC = Direction.USER_INITIATED


def terminated(when: datetime, codes: tuple[int, ...]) -> Terminated:
    """A terminate carrying the platform's error codes, classified by Meta's error table as the upstream does."""
    return Terminated(when, error_codes=codes, setup_failed=any(meta_error(code).fails_call_setup for code in codes))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_call(direction: Direction = BIC) -> CallFacts:
    return CallFacts(direction=direction, created_at=T0)


def fold(events: Iterable[CallEvent], facts: CallFacts | None = None) -> CallFacts:
    facts = new_call() if facts is None else facts
    for event in events:
        facts = calls.apply(facts, event)
    return facts


def picked_up_terminate(answer: float, end: float) -> Terminated:
    """A terminate webhook for a call the user picked up (start_time/end_time/duration present)."""
    return Terminated(at(end), start_time=at(answer), end_time=at(end), duration_seconds=int(end - answer))


def effects_of(facts: CallFacts) -> tuple[CallFacts, tuple[engine.LedgerEvent, ...]]:
    return calls.ledger_effects(facts)


def of_type(effects: Iterable[engine.LedgerEvent], kind: type) -> list[engine.LedgerEvent]:
    return [e for e in effects if isinstance(e, kind)]


def effects_along(events: Iterable[CallEvent], facts: CallFacts | None = None) -> tuple[CallFacts, list]:
    """Apply each event and ask for the ledger effects after every step, as the service does."""
    facts = new_call() if facts is None else facts
    told: list[engine.LedgerEvent] = []
    for event in events:
        facts, effects = calls.ledger_effects(calls.apply(facts, event))
        told.extend(effects)
    return facts, told


# --- the happy path ---------------------------------------------------------------------------------------------


def test_happy_path_connect_ringing_accepted_terminate_ends_answered_with_duration() -> None:
    facts = new_call()
    assert facts.state is CallState.DIALING
    facts = calls.apply(facts, Connect(at(0)))
    assert facts.state is CallState.DIALING
    facts = calls.apply(facts, Ringing(at(1)))
    assert facts.state is CallState.RINGING
    facts = calls.apply(facts, Accepted(at(5)))
    assert facts.state is CallState.CONNECTED
    assert facts.answered_at == at(5)
    facts = calls.apply(facts, picked_up_terminate(answer=5, end=125))
    assert facts.state is CallState.ENDED
    assert facts.outcome is CallOutcome.ANSWERED
    assert facts.answered_at == at(5)
    assert facts.ended_at == at(125)
    assert facts.duration_seconds == 120


def test_outcome_is_none_until_the_call_has_ended() -> None:
    facts = new_call()
    assert facts.outcome is None
    for event in (Connect(at(0)), Ringing(at(1)), Accepted(at(2)), Rejected(at(3))):
        facts = calls.apply(facts, event)
        assert facts.state is not CallState.ENDED
        assert facts.outcome is None
    facts = calls.apply(facts, Terminated(at(9)))
    assert facts.outcome is not None


def test_duration_is_derived_from_answer_and_end_when_terminate_carries_none() -> None:
    facts = fold([Connect(at(0)), Accepted(at(3)), Terminated(at(43))])
    assert facts.outcome is CallOutcome.ANSWERED
    assert facts.duration_seconds == 40


# --- monotonic, duplicates, out of order (HOOK-1, HOOK-2) -------------------------------------------------------


def test_a_late_ringing_after_connected_does_not_move_the_state_back() -> None:
    facts = fold([Connect(at(0)), Ringing(at(1)), Accepted(at(2))])
    assert facts.state is CallState.CONNECTED
    facts = calls.apply(facts, Ringing(at(1)))
    assert facts.state is CallState.CONNECTED
    facts = calls.apply(facts, Connect(at(0)))
    assert facts.state is CallState.CONNECTED


def test_ringing_then_a_late_connect_stays_ringing() -> None:
    facts = fold([Ringing(at(1)), Connect(at(0))])
    assert facts.state is CallState.RINGING


def test_duplicate_events_are_harmless() -> None:
    events = [Connect(at(0)), Ringing(at(1)), Accepted(at(5)), picked_up_terminate(answer=5, end=65)]
    once = fold(events)
    twice = fold(e for event in events for e in (event, event))
    assert twice == once
    assert fold([*events, *events]) == once


def test_a_duplicate_accepted_keeps_the_first_answer_time() -> None:
    facts = fold([Accepted(at(5)), Accepted(at(5)), Accepted(at(7))])
    assert facts.answered_at == at(5)


def test_a_duplicate_terminate_keeps_the_end_time_duration_and_merges_error_codes() -> None:
    first = terminated(at(30), (138021,))
    facts = fold([Connect(at(0)), first, first, terminated(at(31), (138022,))])
    assert facts.ended_at == at(30)
    assert facts.error_codes == (138021, 138022)
    assert facts.outcome is CallOutcome.UNANSWERED


def test_terminate_before_connect_ends_the_call() -> None:
    facts = fold([Terminated(at(30))])
    assert facts.state is CallState.ENDED
    assert facts.ended_at == at(30)
    assert facts.outcome is CallOutcome.UNANSWERED


def test_a_late_connect_or_ringing_does_not_reopen_an_ended_call() -> None:
    facts = fold([Terminated(at(30)), Connect(at(0)), Ringing(at(1))])
    assert facts.state is CallState.ENDED
    assert facts.outcome is CallOutcome.UNANSWERED
    assert facts.ended_at == at(30)


def test_accepted_after_terminate_still_marks_the_call_answered() -> None:
    facts = fold([Connect(at(0)), Ringing(at(1)), Terminated(at(60))])
    assert facts.outcome is CallOutcome.UNANSWERED
    facts = calls.apply(facts, Accepted(at(5)))
    assert facts.state is CallState.ENDED  # the state does not move back to CONNECTED
    assert facts.answered_at == at(5)
    assert facts.outcome is CallOutcome.ANSWERED
    assert facts.duration_seconds == 55


def test_terminate_with_start_time_and_duration_but_no_accepted_is_answered() -> None:
    facts = fold([Connect(at(0)), Ringing(at(1)), picked_up_terminate(answer=4, end=34)])
    assert facts.outcome is CallOutcome.ANSWERED
    assert facts.answered_at == at(4)
    assert facts.duration_seconds == 30


def test_terminate_with_duration_only_is_answered_at_end_minus_duration() -> None:
    facts = fold([Connect(at(0)), Terminated(at(50), end_time=at(50), duration_seconds=20)])
    assert facts.outcome is CallOutcome.ANSWERED
    assert facts.answered_at == at(30)
    assert facts.duration_seconds == 20


def test_terminate_with_start_time_only_is_answered() -> None:
    facts = fold([Connect(at(0)), Terminated(at(50), start_time=at(10))])
    assert facts.outcome is CallOutcome.ANSWERED
    assert facts.answered_at == at(10)
    assert facts.duration_seconds == 40


# --- outcome mapping, first match wins (§6.6) -------------------------------------------------------------------


def test_rejected_then_terminate_is_rejected() -> None:
    facts = fold([Connect(at(0)), Ringing(at(1)), Rejected(at(4))])
    assert facts.rejected
    assert facts.state is CallState.RINGING  # REJECTED is a fact only: a terminate follows
    facts = calls.apply(facts, Terminated(at(4)))
    assert facts.outcome is CallOutcome.REJECTED


def test_terminate_then_a_late_rejected_is_rejected() -> None:
    facts = fold([Connect(at(0)), Terminated(at(4)), Rejected(at(4))])
    assert facts.outcome is CallOutcome.REJECTED


def test_answered_wins_over_rejected() -> None:
    facts = fold([Rejected(at(2)), Accepted(at(3)), Terminated(at(9))])
    assert facts.outcome is CallOutcome.ANSWERED


def test_rejected_wins_over_setup_error_codes() -> None:
    facts = fold([Rejected(at(2)), terminated(at(3), (138019,))])
    assert facts.outcome is CallOutcome.REJECTED


def test_business_ending_the_call_before_answer_is_cancelled() -> None:
    facts = fold([Connect(at(0)), Ringing(at(1)), EndedByBusiness(at(8))])
    assert facts.state is CallState.ENDED
    assert facts.ended_by_business_before_answer
    assert facts.outcome is CallOutcome.CANCELLED
    # The terminate webhook that follows our own terminate keeps it cancelled and keeps our end time.
    facts = calls.apply(facts, Terminated(at(9)))
    assert facts.outcome is CallOutcome.CANCELLED
    assert facts.ended_at == at(8)


def test_a_late_accepted_after_business_cancel_makes_the_call_answered() -> None:
    # First match wins: "picked up" (rule 1) comes before "ended by our own terminate before pickup" (rule 3).
    facts = fold([Connect(at(0)), Ringing(at(1)), EndedByBusiness(at(8)), Terminated(at(9))])
    assert facts.outcome is CallOutcome.CANCELLED
    facts = calls.apply(facts, Accepted(at(7)))
    assert facts.outcome is CallOutcome.ANSWERED
    assert facts.answered_at == at(7)
    assert not facts.ended_by_business_before_answer


def test_business_ending_an_answered_call_is_answered_not_cancelled() -> None:
    facts = fold([Connect(at(0)), Accepted(at(2)), EndedByBusiness(at(30))])
    assert not facts.ended_by_business_before_answer
    assert facts.outcome is CallOutcome.ANSWERED
    assert facts.duration_seconds == 28


def test_rejected_wins_over_cancelled() -> None:
    facts = fold([Connect(at(0)), Rejected(at(2)), EndedByBusiness(at(3))])
    assert facts.outcome is CallOutcome.REJECTED


def test_cancelled_wins_over_setup_error_codes() -> None:
    facts = fold([Connect(at(0)), EndedByBusiness(at(3)), terminated(at(4), (138007,))])
    assert facts.outcome is CallOutcome.CANCELLED


@pytest.mark.parametrize("code", [138004, 138007, 138019, 138020])
def test_setup_error_codes_in_terminate_are_failed(code: int) -> None:
    facts = fold([Connect(at(0)), terminated(at(10), (code,))])
    assert facts.outcome is CallOutcome.FAILED


@pytest.mark.parametrize("code", [138021, 138022, 138023, 131026])
def test_other_error_codes_in_terminate_are_unanswered(code: int) -> None:
    facts = fold([Connect(at(0)), terminated(at(10), (code,))])
    assert facts.outcome is CallOutcome.UNANSWERED


def test_terminate_with_status_failed_and_no_error_detail_is_unanswered() -> None:
    # The status (COMPLETED/FAILED) is not evidence of anything: no pickup and no setup code → UNANSWERED.
    facts = fold([Connect(at(0)), Ringing(at(1)), Terminated(at(45))])
    assert facts.error_codes == ()
    assert facts.outcome is CallOutcome.UNANSWERED


def test_setup_failed_is_failed() -> None:
    facts = fold([SetupFailed(at(1), error_code=138004, detail="connect refused")])
    assert facts.state is CallState.ENDED
    assert facts.setup_failed
    assert facts.error_codes == (138004,)
    assert facts.error_detail == "connect refused"
    assert facts.outcome is CallOutcome.FAILED


def test_setup_failed_without_a_code_is_failed() -> None:
    facts = fold([SetupFailed(at(1))])
    assert facts.outcome is CallOutcome.FAILED
    assert facts.error_codes == ()


def test_setup_failed_after_the_call_ended_changes_nothing() -> None:
    ended = fold([Connect(at(0)), Terminated(at(5))])
    assert calls.apply(ended, SetupFailed(at(6), error_code=138004)) == ended


# --- ledger effects ---------------------------------------------------------------------------------------------


def test_answered_business_call_tells_the_ledger_one_connected_call_at_answer_time() -> None:
    facts = fold([Connect(at(0)), Ringing(at(1)), Accepted(at(5)), picked_up_terminate(5, 65)])
    facts, effects = effects_of(facts)
    assert of_type(effects, engine.CallConnected) == [engine.CallConnected(at(5), business_initiated=True)]
    assert facts.connected_applied
    assert not of_type(effects, engine.CallUnanswered)
    # Asked again, with the remembered facts: nothing new.
    facts, again = effects_of(facts)
    assert again == ()
    # Duplicate webhooks after that add nothing either.
    facts = fold([Accepted(at(5)), picked_up_terminate(5, 65)], facts)
    assert effects_of(facts)[1] == ()


def test_connected_call_is_told_once_when_effects_are_asked_after_every_event() -> None:
    events = [Connect(at(0)), Ringing(at(1)), Accepted(at(5)), Accepted(at(5)), picked_up_terminate(5, 65)]
    facts, told = effects_along([*events, *events])
    assert of_type(told, engine.CallConnected) == [engine.CallConnected(at(5), business_initiated=True)]
    assert not of_type(told, engine.CallUnanswered)
    assert facts.outcome is CallOutcome.ANSWERED


def test_connected_call_is_told_as_soon_as_the_user_picks_up() -> None:
    _, effects = effects_of(fold([Connect(at(0)), Accepted(at(5))]))
    assert of_type(effects, engine.CallConnected) == [engine.CallConnected(at(5), business_initiated=True)]


def test_picking_up_a_business_call_opens_the_service_window() -> None:
    _, effects = effects_of(fold([Connect(at(0)), Accepted(at(5))]))
    ledger = engine.Ledger()
    for effect in effects:
        ledger = engine.apply(ledger, effect, SEED).ledger
    assert engine.service_window_expires_at(ledger, at(5), SEED) == at(5) + SEED.service_window


def test_answered_user_call_tells_the_ledger_a_connected_call_not_business_initiated() -> None:
    facts = fold([Connect(at(0)), Accepted(at(3)), picked_up_terminate(3, 33)], new_call(UIC))
    _, effects = effects_of(facts)
    assert of_type(effects, engine.CallConnected) == [engine.CallConnected(at(3), business_initiated=False)]
    assert not of_type(effects, engine.CallUnanswered)


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([Connect(at(0)), Ringing(at(1)), Terminated(at(40))], id="unanswered"),
        pytest.param([Connect(at(0)), Ringing(at(1)), Rejected(at(40)), Terminated(at(40))], id="rejected"),
        pytest.param([Terminated(at(40)), Rejected(at(40)), Connect(at(0))], id="rejected-out-of-order"),
        pytest.param([Connect(at(0)), terminated(at(40), (138021,))], id="media-timeout"),
    ],
)
def test_unanswered_or_rejected_business_call_tells_the_ledger_one_unanswered_call_at_its_end(
    events: list[CallEvent],
) -> None:
    facts, told = effects_along([*events, *events])
    assert facts.outcome in (CallOutcome.UNANSWERED, CallOutcome.REJECTED)
    assert told == [engine.CallUnanswered(at(40))]
    assert facts.unanswered_applied
    assert effects_of(facts)[1] == ()


def test_unanswered_is_not_told_before_the_call_ends() -> None:
    facts, told = effects_along([Connect(at(0)), Ringing(at(1)), Rejected(at(3))])
    assert told == []
    assert not facts.unanswered_applied


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([Connect(at(0)), terminated(at(10), (138007,))], id="failed-setup-code"),
        pytest.param([SetupFailed(at(0), error_code=138004)], id="setup-failed"),
        pytest.param([Connect(at(0)), Ringing(at(1)), EndedByBusiness(at(5)), Terminated(at(6))], id="cancelled"),
    ],
)
def test_failed_or_cancelled_business_call_tells_the_ledger_nothing(events: list[CallEvent]) -> None:
    facts, told = effects_along(events)
    assert facts.outcome in (CallOutcome.FAILED, CallOutcome.CANCELLED)
    assert told == []


def test_unanswered_user_call_tells_the_ledger_no_call_outcome() -> None:
    facts, told = effects_along([Connect(at(0)), Terminated(at(30))], new_call(UIC))
    assert facts.outcome is CallOutcome.UNANSWERED
    assert not of_type(told, engine.CallConnected)
    assert not of_type(told, engine.CallUnanswered)
    # Only the user's own call opening the service window (§3), once.
    assert told == [engine.UserMessage(T0)]


def test_a_late_accepted_after_the_unanswered_call_was_told_yields_a_connected_call() -> None:
    facts, told = effects_along([Connect(at(0)), Ringing(at(1)), Terminated(at(60))])
    assert told == [engine.CallUnanswered(at(60))]
    facts, effects = effects_of(calls.apply(facts, Accepted(at(5))))
    assert of_type(effects, engine.CallConnected) == [engine.CallConnected(at(5), business_initiated=True)]
    assert facts.outcome is CallOutcome.ANSWERED
    assert not of_type(effects, engine.CallUnanswered)
    assert effects_of(facts)[1] == ()


# --- order tolerance (§6.4: no ordering guarantee, at least once) -----------------------------------------------


def summary(facts: CallFacts) -> tuple[object, ...]:
    return facts.state, facts.outcome, facts.answered_at, facts.ended_at, facts.duration_seconds


def test_every_order_of_an_answered_calls_webhooks_gives_the_same_result() -> None:
    events = [Connect(at(0)), Ringing(at(1)), Accepted(at(5)), picked_up_terminate(5, 65)]
    expected = summary(fold(events))
    assert expected == (CallState.ENDED, CallOutcome.ANSWERED, at(5), at(65), 60)
    for order in itertools.permutations([*events, events[2], events[3]]):
        assert summary(fold(order)) == expected, order


def test_answer_time_does_not_depend_on_arrival_order_when_accepted_and_start_time_differ() -> None:
    # §6.4: "order state changes by the event's own timestamp, not by arrival"; HOOK-3: connected is decided by
    # ACCEPTED or start_time, "whichever arrives first". Nothing says the ACCEPTED status timestamp and the
    # terminate's start_time are the same second, so the answer time must not depend on which one arrived first.
    accepted = Accepted(at(6))
    terminate = picked_up_terminate(answer=5, end=65)
    accepted_first = fold([Connect(at(0)), accepted, terminate])
    terminate_first = fold([Connect(at(0)), terminate, accepted])
    assert accepted_first.outcome is terminate_first.outcome is CallOutcome.ANSWERED
    assert accepted_first.answered_at == terminate_first.answered_at


@st.composite
def webhook_sets(draw: st.DrawFn) -> list[CallEvent]:
    """The webhooks of one call, consistent with each other, as Meta would send them (§6.6)."""
    kind = draw(st.sampled_from(["answered", "answered-no-status", "rejected", "unanswered", "failed"]))
    ring = draw(st.integers(0, 5))
    answer = ring + draw(st.integers(1, 30))
    end = answer + draw(st.integers(0, 600))
    events: list[CallEvent] = [Connect(at(0))]
    if draw(st.booleans()):
        events.append(Ringing(at(ring)))
    match kind:
        case "answered":
            codes = draw(st.sampled_from([(), (138021,), (138022,)]))
            events += [
                Accepted(at(answer)),
                Terminated(at(end), at(answer), at(end), end - answer, codes),
            ]
        case "answered-no-status":
            events.append(Terminated(at(end), at(answer), at(end), end - answer))
        case "rejected":
            events += [Rejected(at(answer)), Terminated(at(answer))]
        case "unanswered":
            events.append(terminated(at(end), draw(st.sampled_from([(), (138021,), (138023,)]))))
        case "failed":
            events.append(terminated(at(end), (draw(st.sampled_from(sorted(CALL_SETUP_FAILURES))),)))
    return events


@settings(max_examples=300, deadline=None)
@given(data=st.data(), events=webhook_sets(), direction=st.sampled_from(list(Direction)))
def test_any_order_and_duplication_of_a_calls_webhooks_gives_the_same_result(
    data: st.DataObject, events: list[CallEvent], direction: Direction
) -> None:
    expected = fold(events, new_call(direction))
    duplicates = data.draw(st.lists(st.sampled_from(events), max_size=4), label="duplicates")
    delivered = data.draw(st.permutations([*events, *duplicates]), label="delivered")
    got = fold(delivered, new_call(direction))
    assert got.state is CallState.ENDED
    assert summary(got) == summary(expected)
    assert got.rejected == expected.rejected
    assert got.error_codes == expected.error_codes
