"""The rule engine, rule by rule (whatsapp-calling.md §1-§3, engine readings in wacall/engine.py).

Table-driven over the presets where a rule has the same shape in each; the numbers come from the preset tables in
§2.1. Event times are whole seconds in UTC, the resolution of webhook timestamps. A window limit frees
`boundary_margin` (2 s in every preset, `MARGIN` here) after the platform's own instant.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from wacall.rules import engine
from wacall.rules.engine import (
    EMPTY_LEDGER,
    Action,
    CallConnected,
    CallUnanswered,
    Channel,
    Evaluation,
    Ledger,
    LedgerEvent,
    LimitUsage,
    PermissionGranted,
    PermissionRejected,
    PermissionRevoked,
    PermissionState,
    Reason,
    RequestSent,
    RequestWithdrawn,
    Source,
    UserMessage,
    UserPrompted,
)
from wacall.rules.policy import DAY, META_CURRENT, SANDBOX, SEED, Policy, PolicyError, WindowLimit, load_policy

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
WEEK = 7 * DAY
CALLABLE_REGION = "GB"  # business-initiated calling available
DENIED_REGIONS = ("US", "CA", "TR", "EG", "VN", "NG")
MARGIN = 2 * SECOND  # every preset's boundary_margin

ALL_PRESETS = pytest.mark.parametrize("policy", [SEED, META_CURRENT, SANDBOX], ids=lambda p: p.name)
ONE_PER_DAY_PRESETS = pytest.mark.parametrize("policy", [SEED, META_CURRENT], ids=lambda p: p.name)
# (policy, requests per 24 h, requests per 7 d)
REQUEST_LIMITS = pytest.mark.parametrize(
    ("policy", "per_day", "per_week"),
    [(SEED, 1, 2), (META_CURRENT, 1, 2), (SANDBOX, 25, 100)],
    ids=["seed", "meta-current", "sandbox"],
)
# (policy, connected business-initiated calls per rolling 24 h)
CALL_CAPS = pytest.mark.parametrize(
    ("policy", "cap"), [(SEED, 5), (META_CURRENT, 100), (SANDBOX, 100)], ids=["seed", "meta-current", "sandbox"]
)
# (policy, unanswered calls that prompt the user, unanswered calls that revoke)
STREAK_THRESHOLDS = pytest.mark.parametrize(
    ("policy", "prompt_at", "revoke_at"),
    [(SEED, 2, 4), (META_CURRENT, 2, 4), (SANDBOX, 5, 10)],
    ids=["seed", "meta-current", "sandbox"],
)


def fold(policy: Policy, *events: LedgerEvent, ledger: Ledger = EMPTY_LEDGER) -> Ledger:
    for event in events:
        ledger = engine.apply(ledger, event, policy).ledger
    return ledger


def check(
    ledger: Ledger,
    now: datetime,
    policy: Policy,
    *,
    region: str = CALLABLE_REGION,
    template: bool = True,
    call_in_progress: bool = False,
) -> Evaluation:
    return engine.evaluate(
        ledger, now, policy, business_region=region, template_available=template, call_in_progress=call_in_progress
    )


def requests(times: list[datetime]) -> list[LedgerEvent]:
    return [RequestSent(t) for t in times]


def grant(at: datetime, *, permanent: bool = False, expires_at: datetime | None = None) -> PermissionGranted:
    return PermissionGranted(at, permanent, expires_at, Source.USER_ACTION)


def usage(evaluation_limits: tuple[LimitUsage, ...], window: timedelta) -> LimitUsage:
    (found,) = (u for u in evaluation_limits if u.window == window)
    return found


def business_calls(start: datetime, count: int, every: timedelta = MINUTE) -> list[LedgerEvent]:
    return [CallConnected(start + i * every, business_initiated=True) for i in range(count)]


# --- the presets ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "per_day", "per_week", "cap", "prompt_at", "revoke_at"),
    [(SEED, 1, 2, 5, 2, 4), (META_CURRENT, 1, 2, 100, 2, 4), (SANDBOX, 25, 100, 100, 5, 10)],
    ids=["seed", "meta-current", "sandbox"],
)
def test_presets_carry_the_documented_numbers(
    policy: Policy, per_day: int, per_week: int, cap: int, prompt_at: int, revoke_at: int
) -> None:
    assert policy.request_limits == (WindowLimit(DAY, per_day), WindowLimit(WEEK, per_week))
    assert policy.connected_call_limits == (WindowLimit(DAY, cap),)
    assert policy.temporary_grant_lifetime == WEEK == timedelta(seconds=7 * 86_400)
    assert policy.service_window == DAY
    assert (policy.prompt_after_unanswered, policy.revoke_after_unanswered) == (prompt_at, revoke_at)
    assert policy.denied_business_regions == frozenset(DENIED_REGIONS)
    assert policy.longest_window == WEEK
    assert (policy.boundary_margin, policy.window_margin, policy.request_lifetime) == (MARGIN, MINUTE, WEEK)


# --- permission requests: 1 per 24 h, 2 per 7 days (25 / 100 on the sandbox) --------------------------------------


@ALL_PRESETS
def test_first_request_is_allowed_and_uses_no_limit_yet(policy: Policy) -> None:
    decision = check(EMPTY_LEDGER, T0, policy).request
    assert (decision.action, decision.allowed, decision.reason, decision.next_allowed_at) == (
        Action.SEND_PERMISSION_REQUEST,
        True,
        Reason.ALLOWED,
        None,
    )
    assert [(u.window, u.used, u.resets_at) for u in decision.limits] == [(DAY, 0, None), (WEEK, 0, None)]


@ONE_PER_DAY_PRESETS
def test_second_request_within_24h_is_refused_until_first_ages_out(policy: Policy) -> None:
    ledger = fold(policy, RequestSent(T0))

    refused = check(ledger, T0 + 5 * HOUR, policy).request
    assert (refused.allowed, refused.reason, refused.next_allowed_at) == (
        False,
        Reason.REQUEST_LIMIT_REACHED,
        T0 + DAY + MARGIN,
    )
    assert check(ledger, T0 + DAY + MARGIN - SECOND, policy).request.allowed is False

    allowed = check(ledger, T0 + DAY + MARGIN, policy).request
    assert (allowed.allowed, allowed.reason, allowed.next_allowed_at) == (True, Reason.ALLOWED, None)
    assert usage(allowed.limits, DAY).used == 0
    assert usage(allowed.limits, WEEK).used == 1


@REQUEST_LIMITS
def test_requests_beyond_the_24h_limit_are_refused_until_the_oldest_counted_ages_out(
    policy: Policy, per_day: int, per_week: int
) -> None:
    ledger = fold(policy, *requests([T0 + i * SECOND for i in range(per_day)]))
    now = T0 + per_day * SECOND

    refused = check(ledger, now, policy).request
    assert (refused.allowed, refused.reason) == (False, Reason.REQUEST_LIMIT_REACHED)
    # Usage exactly at the maximum: the oldest counted request + 24 h (+ the margin).
    assert refused.next_allowed_at == T0 + DAY + MARGIN
    assert usage(refused.limits, DAY) == LimitUsage(DAY, per_day, per_day, T0 + DAY + MARGIN)
    assert check(ledger, T0 + DAY + MARGIN - SECOND, policy).request.allowed is False
    assert check(ledger, T0 + DAY + MARGIN, policy).request.allowed is True


@ONE_PER_DAY_PRESETS
def test_third_request_within_7_days_is_refused_until_the_first_ages_out(policy: Policy) -> None:
    ledger = fold(policy, RequestSent(T0), RequestSent(T0 + DAY))

    refused = check(ledger, T0 + 2 * DAY + MARGIN, policy).request
    assert (refused.allowed, refused.reason, refused.next_allowed_at) == (
        False,
        Reason.REQUEST_LIMIT_REACHED,
        T0 + WEEK + MARGIN,
    )
    assert usage(refused.limits, DAY).used == 0
    assert usage(refused.limits, WEEK) == LimitUsage(WEEK, 2, 2, T0 + WEEK + MARGIN)

    assert check(ledger, T0 + WEEK + MARGIN - SECOND, policy).request.allowed is False
    allowed = check(ledger, T0 + WEEK + MARGIN, policy).request
    assert allowed.allowed is True
    assert usage(allowed.limits, WEEK) == LimitUsage(WEEK, 2, 1, T0 + DAY + WEEK + MARGIN)


def _fill_week(per_day: int, per_week: int, last_batch_at: datetime) -> list[datetime]:
    """`per_week` request times: full daily batches from T0, the last batch at `last_batch_at`."""
    times = [T0 + day * DAY + i * SECOND for day in range(per_week // per_day - 1) for i in range(per_day)]
    return times + [last_batch_at + i * SECOND for i in range(per_day)]


@REQUEST_LIMITS
def test_requests_beyond_the_7_day_limit_are_refused_until_the_oldest_counted_ages_out(
    policy: Policy, per_day: int, per_week: int
) -> None:
    times = _fill_week(per_day, per_week, last_batch_at=T0 + (per_week // per_day - 1) * DAY)
    ledger = fold(policy, *requests(times))
    now = times[-1] + DAY + MARGIN  # the 24 h window is free again

    refused = check(ledger, now, policy).request
    assert usage(refused.limits, DAY).used == 0
    assert usage(refused.limits, WEEK).used == per_week
    assert (refused.allowed, refused.reason, refused.next_allowed_at) == (
        False,
        Reason.REQUEST_LIMIT_REACHED,
        T0 + WEEK + MARGIN,
    )
    assert check(ledger, T0 + WEEK + MARGIN, policy).request.allowed is True


@REQUEST_LIMITS
def test_next_request_is_allowed_at_the_latest_time_over_the_blocking_windows(
    policy: Policy, per_day: int, per_week: int
) -> None:
    # The 7-day window frees at T0 + 7 d; the 24 h window, filled at 6 d 12 h, only at 7 d 12 h.
    last_batch = T0 + 6 * DAY + 12 * HOUR
    ledger = fold(policy, *requests(_fill_week(per_day, per_week, last_batch_at=last_batch)))
    now = last_batch + HOUR

    refused = check(ledger, now, policy).request
    assert usage(refused.limits, DAY) == LimitUsage(DAY, per_day, per_day, last_batch + DAY + MARGIN)
    assert usage(refused.limits, WEEK) == LimitUsage(WEEK, per_week, per_week, T0 + WEEK + MARGIN)
    assert refused.next_allowed_at == last_batch + DAY + MARGIN
    assert check(ledger, T0 + WEEK + MARGIN, policy).request.allowed is False  # the week freed up, the day has not
    assert check(ledger, last_batch + DAY + MARGIN, policy).request.allowed is True


@ALL_PRESETS
def test_limit_usage_reports_used_and_when_the_oldest_counted_request_leaves_the_window(policy: Policy) -> None:
    ledger = fold(policy, RequestSent(T0), RequestSent(T0 + 2 * DAY))
    limits = check(ledger, T0 + 2 * DAY + HOUR, policy).request.limits
    assert usage(limits, DAY) == LimitUsage(DAY, policy.request_limits[0].max_allowed, 1, T0 + 3 * DAY + MARGIN)
    assert usage(limits, WEEK) == LimitUsage(WEEK, policy.request_limits[1].max_allowed, 2, T0 + WEEK + MARGIN)


def test_window_counts_an_event_until_exactly_one_window_later() -> None:
    limit = WindowLimit(DAY, 3)
    assert engine.window_usage([T0], limit, T0 + DAY - SECOND) == (LimitUsage(DAY, 3, 1, T0 + DAY), None)
    assert engine.window_usage([T0], limit, T0 + DAY) == (LimitUsage(DAY, 3, 0, None), None)


def test_window_at_its_maximum_frees_when_the_oldest_counted_event_ages_out() -> None:
    times = [T0 + HOUR, T0, T0 + 2 * HOUR]  # order does not matter
    assert engine.window_usage(times, WindowLimit(DAY, 3), T0 + 3 * HOUR) == (
        LimitUsage(DAY, 3, 3, T0 + DAY),
        T0 + DAY,
    )


def test_window_above_its_maximum_frees_when_enough_events_age_out_to_go_below_it() -> None:
    # 4 counted, at most 2: three must leave to go below 2, so the window frees when the third oldest ages out.
    times = [T0, T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR]
    assert engine.window_usage(times, WindowLimit(DAY, 2), T0 + 4 * HOUR) == (
        LimitUsage(DAY, 2, 4, T0 + DAY),
        T0 + 2 * HOUR + DAY,
    )


def test_window_below_its_maximum_admits_one_more_now() -> None:
    assert engine.window_usage([T0 - 2 * DAY, T0], WindowLimit(DAY, 2), T0 + HOUR) == (
        LimitUsage(DAY, 2, 1, T0 + DAY),
        None,
    )


# --- channel: the customer-service window --------------------------------------------------------------------------


@ALL_PRESETS
def test_request_goes_interactive_while_the_24h_service_window_is_open(policy: Policy) -> None:
    ledger = fold(policy, UserMessage(T0))
    evaluation = check(ledger, T0 + DAY - SECOND, policy, template=False)
    assert evaluation.service_window_expires_at == T0 + DAY
    assert (evaluation.request.allowed, evaluation.request.channel) == (True, Channel.INTERACTIVE)


@ALL_PRESETS
def test_request_goes_by_template_once_the_service_window_has_closed(policy: Policy) -> None:
    ledger = fold(policy, UserMessage(T0))
    evaluation = check(ledger, T0 + DAY, policy, template=True)
    assert evaluation.service_window_expires_at is None
    assert (evaluation.request.allowed, evaluation.request.channel) == (True, Channel.TEMPLATE)


@ALL_PRESETS
def test_request_goes_by_template_when_the_user_never_wrote(policy: Policy) -> None:
    evaluation = check(EMPTY_LEDGER, T0, policy, template=True)
    assert evaluation.service_window_expires_at is None
    assert (evaluation.request.allowed, evaluation.request.channel) == (True, Channel.TEMPLATE)


@ALL_PRESETS
@pytest.mark.parametrize("user_wrote", [False, True], ids=["never-wrote", "window-closed"])
def test_request_outside_the_service_window_without_a_template_is_refused_with_no_next_allowed_at(
    policy: Policy, user_wrote: bool
) -> None:
    ledger = fold(policy, UserMessage(T0 - 2 * DAY)) if user_wrote else EMPTY_LEDGER
    decision = check(ledger, T0, policy, template=False).request
    assert (decision.allowed, decision.reason, decision.next_allowed_at, decision.channel) == (
        False,
        Reason.NO_TEMPLATE_FOR_CLOSED_WINDOW,
        None,
        Channel.TEMPLATE,
    )


@ALL_PRESETS
def test_a_later_user_message_extends_the_service_window(policy: Policy) -> None:
    ledger = fold(policy, UserMessage(T0), UserMessage(T0 + 10 * HOUR))
    assert check(ledger, T0 + 30 * HOUR, policy).service_window_expires_at == T0 + 34 * HOUR
    # A late-arriving older message does not shorten it.
    ledger = fold(policy, UserMessage(T0 + 5 * HOUR), ledger=ledger)
    assert check(ledger, T0 + 30 * HOUR, policy).service_window_expires_at == T0 + 34 * HOUR


@ONE_PER_DAY_PRESETS
def test_request_limit_wait_is_not_offered_when_no_channel_exists(policy: Policy) -> None:
    ledger = fold(policy, RequestSent(T0))
    decision = check(ledger, T0 + HOUR, policy, template=False).request
    assert (decision.allowed, decision.reason, decision.next_allowed_at) == (False, Reason.REQUEST_LIMIT_REACHED, None)


@ONE_PER_DAY_PRESETS
def test_request_limit_wait_is_offered_when_the_service_window_outlasts_it(policy: Policy) -> None:
    ledger = fold(policy, RequestSent(T0), UserMessage(T0 + 2 * HOUR))
    decision = check(ledger, T0 + 3 * HOUR, policy, template=False).request
    assert (decision.reason, decision.channel, decision.next_allowed_at) == (
        Reason.REQUEST_LIMIT_REACHED,
        Channel.INTERACTIVE,
        T0 + DAY + MARGIN,
    )
    assert check(ledger, T0 + DAY + MARGIN, policy, template=False).request.allowed is True


@ONE_PER_DAY_PRESETS
def test_request_limit_wait_is_not_offered_when_the_service_window_closes_first_and_no_template(
    policy: Policy,
) -> None:
    # Window open until T0 + 24 h (interactive now), request limit until T0 + 25 h, no template: at T0 + 25 h the
    # request is still refused (no channel), so waiting does not help (same principle as a grant expiring first).
    ledger = fold(policy, UserMessage(T0), RequestSent(T0 + HOUR))
    assert check(ledger, T0 + 25 * HOUR, policy, template=False).request.allowed is False

    decision = check(ledger, T0 + 2 * HOUR, policy, template=False).request
    assert (decision.allowed, decision.reason) == (False, Reason.REQUEST_LIMIT_REACHED)
    assert decision.next_allowed_at is None


@ALL_PRESETS
@pytest.mark.parametrize("business_initiated", [True, False], ids=["business-call-accepted", "user-called"])
def test_a_connected_call_opens_the_service_window(policy: Policy, business_initiated: bool) -> None:
    # §3 [Meta, pricing page]: the window opens or refreshes when the user calls the business and when the user
    # accepts a business call.
    ledger = fold(policy, grant(T0, permanent=True), CallConnected(T0 + HOUR, business_initiated=business_initiated))
    evaluation = check(ledger, T0 + 2 * HOUR, policy, template=False)
    assert evaluation.service_window_expires_at == T0 + HOUR + DAY
    assert evaluation.request.channel is Channel.INTERACTIVE


# --- permanent permission and requests ----------------------------------------------------------------------------


@ALL_PRESETS
@pytest.mark.parametrize("limits_exhausted", [False, True], ids=["limits-free", "limits-exhausted"])
def test_request_while_permission_is_permanent_is_refused_with_no_next_allowed_at(
    policy: Policy, limits_exhausted: bool
) -> None:
    sent = [T0 + i * SECOND for i in range(policy.request_limits[0].max_allowed)] if limits_exhausted else []
    ledger = fold(policy, *requests(sent), grant(T0 + MINUTE, permanent=True))
    decision = check(ledger, T0 + 2 * MINUTE, policy).request
    assert (decision.allowed, decision.reason, decision.next_allowed_at) == (False, Reason.ALREADY_PERMANENT, None)


@ALL_PRESETS
def test_request_while_a_temporary_grant_is_live_is_allowed_and_keeps_the_grant(policy: Policy) -> None:
    ledger = fold(policy, grant(T0))
    assert check(ledger, T0 + HOUR, policy).request.allowed is True
    ledger = fold(policy, RequestSent(T0 + HOUR), ledger=ledger)
    evaluation = check(ledger, T0 + 2 * HOUR, policy)
    assert (evaluation.state, evaluation.expires_at, evaluation.call.allowed) == (
        PermissionState.TEMPORARY,
        T0 + WEEK,
        True,
    )


# --- temporary and permanent grants -------------------------------------------------------------------------------


@ALL_PRESETS
def test_temporary_grant_expires_7_days_after_approval(policy: Policy) -> None:
    ledger = fold(policy, grant(T0))

    live = check(ledger, T0 + WEEK - SECOND, policy)
    assert (live.state, live.expires_at, live.call.allowed) == (PermissionState.TEMPORARY, T0 + WEEK, True)

    expired = check(ledger, T0 + WEEK, policy)  # at expires_at it is expired
    assert (expired.state, expired.expires_at) == (PermissionState.EXPIRED, T0 + WEEK)
    assert (expired.call.allowed, expired.call.reason, expired.call.next_allowed_at) == (
        False,
        Reason.PERMISSION_EXPIRED,
        None,
    )
    assert ledger.state is PermissionState.TEMPORARY  # EXPIRED is derived, never stored


@ALL_PRESETS
def test_temporary_grant_follows_the_platform_expiration_timestamp_when_given(policy: Policy) -> None:
    ledger = fold(policy, grant(T0, expires_at=T0 + 3 * DAY))
    assert check(ledger, T0 + 3 * DAY - SECOND, policy).state is PermissionState.TEMPORARY
    assert check(ledger, T0 + 3 * DAY, policy).state is PermissionState.EXPIRED


@ALL_PRESETS
def test_permanent_grant_never_expires(policy: Policy) -> None:
    ledger = fold(policy, grant(T0, permanent=True))
    evaluation = check(ledger, T0 + 3650 * DAY, policy)
    assert (evaluation.state, evaluation.expires_at, evaluation.call.allowed) == (PermissionState.PERMANENT, None, True)


@ALL_PRESETS
def test_request_after_a_grant_expired_moves_the_pair_to_requested(policy: Policy) -> None:
    ledger = fold(policy, grant(T0), RequestSent(T0 + WEEK))
    evaluation = check(ledger, T0 + WEEK + HOUR, policy)
    assert (evaluation.state, evaluation.expires_at, evaluation.call.reason) == (
        PermissionState.REQUESTED,
        None,
        Reason.NO_PERMISSION,
    )


@ALL_PRESETS
def test_a_new_grant_replaces_an_expired_one(policy: Policy) -> None:
    ledger = fold(policy, grant(T0), grant(T0 + 10 * DAY))
    evaluation = check(ledger, T0 + 10 * DAY, policy)
    assert (evaluation.state, evaluation.expires_at) == (PermissionState.TEMPORARY, T0 + 17 * DAY)


@pytest.mark.parametrize(
    ("events", "state"),
    [
        ([grant(T0), PermissionRejected(T0 + HOUR, Source.USER_ACTION)], PermissionState.REJECTED),
        ([grant(T0, permanent=True), PermissionRevoked(T0 + HOUR, Source.USER_ACTION)], PermissionState.REVOKED),
        ([PermissionRejected(T0, Source.USER_ACTION), RequestSent(T0 + HOUR)], PermissionState.REQUESTED),
        ([PermissionRevoked(T0, Source.USER_ACTION), RequestSent(T0 + HOUR)], PermissionState.REQUESTED),
        ([RequestSent(T0), PermissionRejected(T0 + HOUR, Source.USER_ACTION)], PermissionState.REJECTED),
        ([PermissionRejected(T0, Source.USER_ACTION), grant(T0 + HOUR)], PermissionState.TEMPORARY),
        ([grant(T0), grant(T0 + HOUR, permanent=True)], PermissionState.PERMANENT),
        ([grant(T0, permanent=True), grant(T0 + HOUR)], PermissionState.TEMPORARY),
    ],
    ids=[
        "decline-ends-a-grant",
        "revoke-ends-a-permanent-grant",
        "request-after-decline",
        "request-after-revoke",
        "decline-of-a-request",
        "decline-is-not-final",
        "upgrade-to-permanent",
        "change-to-temporary",
    ],
)
def test_permission_lifecycle_follows_the_transition_table(events: list[LedgerEvent], state: PermissionState) -> None:
    assert check(fold(SEED, *events), T0 + 2 * HOUR, SEED).state is state


# --- connected-call cap -------------------------------------------------------------------------------------------


@CALL_CAPS
def test_connected_calls_beyond_the_cap_are_refused_until_the_oldest_is_24h_old(policy: Policy, cap: int) -> None:
    ledger = fold(policy, grant(T0 - HOUR, permanent=True), *business_calls(T0, cap))

    refused = check(ledger, T0 + cap * MINUTE, policy).call
    assert (refused.allowed, refused.reason, refused.next_allowed_at) == (
        False,
        Reason.CALL_LIMIT_REACHED,
        T0 + DAY + MARGIN,
    )
    assert refused.limits == (LimitUsage(DAY, cap, cap, T0 + DAY + MARGIN),)
    assert check(ledger, T0 + DAY + MARGIN - SECOND, policy).call.allowed is False

    # At exactly answer + 24 h + the margin the oldest call no longer counts.
    allowed = check(ledger, T0 + DAY + MARGIN, policy).call
    assert (allowed.allowed, allowed.reason, allowed.next_allowed_at) == (True, Reason.ALLOWED, None)
    assert allowed.limits == (LimitUsage(DAY, cap, cap - 1, T0 + MINUTE + DAY + MARGIN),)


@CALL_CAPS
def test_one_call_below_the_cap_is_still_allowed(policy: Policy, cap: int) -> None:
    ledger = fold(policy, grant(T0 - HOUR, permanent=True), *business_calls(T0, cap - 1))
    decision = check(ledger, T0 + cap * MINUTE, policy).call
    assert (decision.allowed, decision.limits[0].used) == (True, cap - 1)


@CALL_CAPS
def test_hitting_the_call_cap_does_not_revoke_the_permission(policy: Policy, cap: int) -> None:
    ledger = fold(policy, grant(T0 - HOUR, permanent=True), *business_calls(T0, cap))
    assert check(ledger, T0 + cap * MINUTE, policy).state is PermissionState.PERMANENT


@CALL_CAPS
@pytest.mark.parametrize(
    ("first_call_at", "next_allowed_at"),
    [
        (WEEK - DAY - MARGIN - SECOND, WEEK - SECOND),  # the wait ends one second before expiry
        (WEEK - DAY - MARGIN, None),  # the wait ends at expiry
        (WEEK - DAY + HOUR, None),  # the wait ends after expiry
    ],
    ids=["ends-before-expiry", "ends-at-expiry", "ends-after-expiry"],
)
def test_call_limit_wait_is_offered_only_if_the_temporary_grant_outlives_it(
    policy: Policy, cap: int, first_call_at: timedelta, next_allowed_at: timedelta | None
) -> None:
    ledger = fold(policy, grant(T0), *business_calls(T0 + first_call_at, cap, every=SECOND))
    decision = check(ledger, T0 + first_call_at + cap * SECOND, policy).call
    assert (decision.allowed, decision.reason) == (False, Reason.CALL_LIMIT_REACHED)
    assert decision.next_allowed_at == (None if next_allowed_at is None else T0 + next_allowed_at)


@ALL_PRESETS
def test_call_while_a_call_is_active_with_the_user_is_refused(policy: Policy) -> None:
    ledger = fold(policy, grant(T0, permanent=True))
    decision = check(ledger, T0 + HOUR, policy, call_in_progress=True).call
    assert (decision.allowed, decision.reason, decision.next_allowed_at) == (False, Reason.CALL_IN_PROGRESS, None)


# --- what a connected call resets --------------------------------------------------------------------------------


@ALL_PRESETS
def test_connected_call_resets_request_counters_and_streak_but_not_the_call_window(policy: Policy) -> None:
    per_day = policy.request_limits[0].max_allowed
    ledger = fold(
        policy,
        *requests([T0 + i * SECOND for i in range(per_day)]),
        grant(T0 + MINUTE),
        CallUnanswered(T0 + 2 * MINUTE),
        CallConnected(T0 + 3 * MINUTE, business_initiated=True),
    )
    evaluation = check(ledger, T0 + 4 * MINUTE, policy)
    assert evaluation.request.allowed is True
    assert [u.used for u in evaluation.request.limits] == [0, 0]
    assert evaluation.consecutive_unanswered == 0
    assert evaluation.call.limits[0].used == 1
    assert evaluation.call.limits[0].resets_at == T0 + 3 * MINUTE + DAY + MARGIN


@ALL_PRESETS
def test_requests_sent_after_a_connected_call_count_again(policy: Policy) -> None:
    ledger = fold(
        policy,
        RequestSent(T0),
        CallConnected(T0 + HOUR, business_initiated=False),
        RequestSent(T0 + 2 * HOUR),
    )
    limits = check(ledger, T0 + 3 * HOUR, policy).request.limits
    assert [(u.used, u.resets_at) for u in limits] == [
        (1, T0 + 2 * HOUR + DAY + MARGIN),
        (1, T0 + 2 * HOUR + WEEK + MARGIN),
    ]


@ALL_PRESETS
def test_user_initiated_connected_call_resets_request_counters_and_streak_but_is_not_counted_against_the_cap(
    policy: Policy,
) -> None:
    per_day = policy.request_limits[0].max_allowed
    ledger = fold(
        policy,
        *requests([T0 + i * SECOND for i in range(per_day)]),
        grant(T0 + MINUTE),
        CallUnanswered(T0 + 2 * MINUTE),
        CallConnected(T0 + 3 * MINUTE, business_initiated=False),
    )
    evaluation = check(ledger, T0 + 4 * MINUTE, policy)
    assert (evaluation.request.allowed, [u.used for u in evaluation.request.limits]) == (True, [0, 0])
    assert evaluation.consecutive_unanswered == 0
    assert evaluation.call.limits[0].used == 0


@CALL_CAPS
def test_only_business_initiated_connected_calls_count_against_the_cap(policy: Policy, cap: int) -> None:
    user_calls = [CallConnected(T0 + i * MINUTE, business_initiated=False) for i in range(cap)]
    ledger = fold(policy, grant(T0 - HOUR, permanent=True), *user_calls, *business_calls(T0 + HOUR, cap - 1))
    decision = check(ledger, T0 + 2 * HOUR, policy).call
    assert (decision.allowed, decision.limits[0].used) == (True, cap - 1)


# --- the unanswered streak ------------------------------------------------------------------------------------------


@STREAK_THRESHOLDS
def test_unanswered_streak_prompts_the_user_at_the_prompt_threshold(
    policy: Policy, prompt_at: int, revoke_at: int
) -> None:
    ledger = fold(policy, grant(T0))
    for n in range(1, prompt_at + 1):
        at = T0 + n * MINUTE
        applied = engine.apply(ledger, CallUnanswered(at), policy)
        ledger = applied.ledger
        evaluation = check(ledger, at, policy)
        assert evaluation.consecutive_unanswered == n
        assert evaluation.user_prompted is (n >= prompt_at)
        assert applied.derived == ((UserPrompted(at),) if n == prompt_at else ())
    assert check(ledger, T0 + HOUR, policy).state is PermissionState.TEMPORARY


@STREAK_THRESHOLDS
@pytest.mark.parametrize("permanent", [False, True], ids=["temporary", "permanent"])
def test_unanswered_streak_revokes_the_permission_at_the_revoke_threshold(
    policy: Policy, prompt_at: int, revoke_at: int, permanent: bool
) -> None:
    ledger = fold(
        policy, grant(T0, permanent=permanent), *[CallUnanswered(T0 + n * MINUTE) for n in range(1, revoke_at)]
    )
    assert check(ledger, T0 + HOUR, policy).call.allowed is True

    at = T0 + 2 * HOUR
    applied = engine.apply(ledger, CallUnanswered(at), policy)
    assert applied.derived == (PermissionRevoked(at, Source.WACALL_RULE),)
    assert applied.ledger.state_changed_at == at
    evaluation = check(applied.ledger, at, policy)
    assert (evaluation.state, evaluation.consecutive_unanswered, evaluation.user_prompted) == (
        PermissionState.REVOKED,
        revoke_at,
        True,
    )
    assert (evaluation.call.allowed, evaluation.call.reason, evaluation.call.next_allowed_at) == (
        False,
        Reason.PERMISSION_REVOKED,
        None,
    )


@STREAK_THRESHOLDS
def test_a_new_grant_clears_the_unanswered_streak(policy: Policy, prompt_at: int, revoke_at: int) -> None:
    ledger = fold(policy, grant(T0), *[CallUnanswered(T0 + n * MINUTE) for n in range(1, revoke_at + 1)])
    assert check(ledger, T0 + HOUR, policy).state is PermissionState.REVOKED
    ledger = fold(policy, grant(T0 + 2 * HOUR), ledger=ledger)
    evaluation = check(ledger, T0 + 2 * HOUR, policy)
    assert (evaluation.state, evaluation.consecutive_unanswered, evaluation.user_prompted) == (
        PermissionState.TEMPORARY,
        0,
        False,
    )
    assert evaluation.call.allowed is True


@STREAK_THRESHOLDS
def test_platform_revocation_after_wacall_revoked_converges_on_revoked(
    policy: Policy, prompt_at: int, revoke_at: int
) -> None:
    at = T0 + revoke_at * MINUTE
    ledger = fold(policy, grant(T0), *[CallUnanswered(T0 + n * MINUTE) for n in range(1, revoke_at + 1)])
    applied = engine.apply(ledger, PermissionRevoked(at + SECOND, Source.PLATFORM_AUTOMATIC), policy)
    assert (applied.stale, applied.ledger.state) == (False, PermissionState.REVOKED)


# --- the country deny-list ------------------------------------------------------------------------------------------


@ALL_PRESETS
@pytest.mark.parametrize("region", DENIED_REGIONS)
@pytest.mark.parametrize("limits_exhausted", [False, True], ids=["limits-free", "limits-exhausted"])
def test_business_number_in_a_denied_country_can_neither_request_nor_call(
    policy: Policy, region: str, limits_exhausted: bool
) -> None:
    events: list[LedgerEvent] = [UserMessage(T0), grant(T0)]
    if limits_exhausted:
        events += business_calls(T0, policy.connected_call_limits[0].max_allowed, every=SECOND)
        events += requests([T0 + MINUTE + i * SECOND for i in range(policy.request_limits[0].max_allowed)])
    ledger = fold(policy, *events)
    denied = check(ledger, T0 + HOUR, policy, region=region)
    for decision in denied.actions:
        assert (decision.allowed, decision.reason, decision.next_allowed_at) == (
            False,
            Reason.COUNTRY_UNSUPPORTED,
            None,
        )
    # The same pair with a business number in a callable country.
    callable_ = check(ledger, T0 + HOUR, policy, region=CALLABLE_REGION)
    expected = [Reason.REQUEST_LIMIT_REACHED, Reason.CALL_LIMIT_REACHED] if limits_exhausted else [Reason.ALLOWED] * 2
    assert [d.reason for d in callable_.actions] == expected
    assert [d.limits for d in denied.actions] == [d.limits for d in callable_.actions]


# --- calls without a live grant -----------------------------------------------------------------------------------


@ALL_PRESETS
@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([], Reason.NO_PERMISSION),
        ([RequestSent(T0)], Reason.NO_PERMISSION),
        ([grant(T0 - WEEK)], Reason.PERMISSION_EXPIRED),
        ([grant(T0), PermissionRevoked(T0 + SECOND, Source.USER_ACTION)], Reason.PERMISSION_REVOKED),
        ([RequestSent(T0), PermissionRejected(T0 + SECOND, Source.USER_ACTION)], Reason.PERMISSION_REJECTED),
    ],
    ids=["none", "requested", "expired", "revoked", "rejected"],
)
def test_call_without_a_live_grant_is_refused_with_its_reason_and_no_next_allowed_at(
    policy: Policy, events: list[LedgerEvent], reason: Reason
) -> None:
    decision = check(fold(policy, *events), T0 + HOUR, policy).call
    assert (decision.allowed, decision.reason, decision.next_allowed_at) == (False, reason, None)


# --- late and out-of-order permission replies -------------------------------------------------------------------


@pytest.mark.parametrize(
    "late",
    [
        grant(T0 + 5 * SECOND),
        grant(T0 + 5 * SECOND, permanent=True),
        PermissionRejected(T0 + 5 * SECOND, Source.USER_ACTION),
        PermissionRevoked(T0 + 5 * SECOND, Source.PLATFORM_AUTOMATIC),
    ],
    ids=["grant", "permanent-grant", "reject", "revoke"],
)
@pytest.mark.parametrize(
    "latest",
    [grant(T0 + 10 * SECOND), PermissionRevoked(T0 + 10 * SECOND, Source.USER_ACTION)],
    ids=["granted", "revoked"],
)
def test_permission_reply_older_than_the_last_change_is_stale_and_changes_nothing(
    late: LedgerEvent, latest: LedgerEvent
) -> None:
    ledger = fold(SEED, latest, CallUnanswered(T0 + 20 * SECOND))
    applied = engine.apply(ledger, late, SEED)
    assert applied.stale is True
    assert applied.ledger == ledger
    assert applied.derived == ()


def test_stale_comparison_is_in_whole_seconds_so_a_reply_in_the_same_second_applies_in_arrival_order() -> None:
    # Sub-second parts only to show they are ignored: webhook timestamps are whole seconds.
    ledger = fold(SEED, grant(T0 + 10 * SECOND + timedelta(milliseconds=700)))
    same_second = engine.apply(
        ledger, PermissionRevoked(T0 + 10 * SECOND + timedelta(milliseconds=200), Source.USER_ACTION), SEED
    )
    assert (same_second.stale, same_second.ledger.state) == (False, PermissionState.REVOKED)
    earlier_second = engine.apply(
        ledger, PermissionRevoked(T0 + 9 * SECOND + timedelta(milliseconds=900), Source.USER_ACTION), SEED
    )
    assert (earlier_second.stale, earlier_second.ledger.state) == (True, PermissionState.TEMPORARY)


def test_our_own_request_does_not_move_the_ordering_watermark() -> None:
    ledger = fold(SEED, PermissionRejected(T0, Source.USER_ACTION), RequestSent(T0 + HOUR))
    assert ledger.state_changed_at == T0
    # A grant stamped before our request but after the decline still applies.
    applied = engine.apply(ledger, grant(T0 + MINUTE), SEED)
    assert (applied.stale, applied.ledger.state) == (False, PermissionState.TEMPORARY)


@ALL_PRESETS
def test_fresh_events_are_not_stale(policy: Policy) -> None:
    ledger = fold(policy, grant(T0))
    for event in (grant(T0), PermissionRejected(T0 + SECOND, Source.USER_ACTION), RequestSent(T0), UserMessage(T0)):
        assert engine.apply(ledger, event, policy).stale is False


# --- a request the platform refused ---------------------------------------------------------------------------------


@ALL_PRESETS
def test_withdrawn_request_stops_counting_and_restores_the_state_before(policy: Policy) -> None:
    before = fold(policy, PermissionRejected(T0, Source.USER_ACTION))
    sent = fold(policy, RequestSent(T0 + HOUR), ledger=before)
    assert check(sent, T0 + HOUR, policy).state is PermissionState.REQUESTED

    withdrawn = fold(policy, RequestWithdrawn(T0 + HOUR, before.state), ledger=sent)
    evaluation = check(withdrawn, T0 + HOUR, policy)
    assert evaluation.state is PermissionState.REJECTED
    assert [u.used for u in evaluation.request.limits] == [0, 0]
    assert evaluation.request.allowed is True


@ALL_PRESETS
def test_withdrawn_request_keeps_a_state_the_user_changed_since(policy: Policy) -> None:
    ledger = fold(policy, RequestSent(T0), grant(T0 + MINUTE), RequestWithdrawn(T0, PermissionState.NONE))
    evaluation = check(ledger, T0 + 2 * MINUTE, policy)
    assert evaluation.state is PermissionState.TEMPORARY
    assert [u.used for u in evaluation.request.limits] == [0, 0]


@ALL_PRESETS
def test_withdrawn_request_after_a_grant_expired_leaves_the_grant_expired(policy: Policy) -> None:
    # The service passes the stored state (`ledger.state`, TEMPORARY for an expired grant) as state_before.
    before = fold(policy, grant(T0))
    sent = fold(policy, RequestSent(T0 + 8 * DAY), ledger=before)
    withdrawn = fold(policy, RequestWithdrawn(T0 + 8 * DAY, before.state), ledger=sent)
    evaluation = check(withdrawn, T0 + 8 * DAY, policy)
    assert (evaluation.state, evaluation.expires_at) == (PermissionState.EXPIRED, T0 + WEEK)
    assert (evaluation.call.allowed, evaluation.call.reason) == (False, Reason.PERMISSION_EXPIRED)


# --- pruning ------------------------------------------------------------------------------------------------------


@ALL_PRESETS
def test_prune_drops_only_times_no_window_can_count(policy: Policy) -> None:
    now = T0 + 30 * DAY
    horizon = now - WEEK - MARGIN
    ledger = Ledger(
        request_times=(horizon - DAY, horizon, horizon + SECOND, now - HOUR),
        connected_call_times=(horizon, horizon + SECOND, now - DAY, now - HOUR),
    )
    pruned = engine.prune(ledger, now, policy)
    assert pruned.request_times == (horizon + SECOND, now - HOUR)
    assert pruned.connected_call_times == (horizon + SECOND, now - DAY, now - HOUR)
    for later in (now, now + HOUR, now + DAY, now + WEEK):
        assert check(pruned, later, policy) == check(ledger, later, policy)


# --- policy overrides ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["seed", "meta-current", "sandbox"])
def test_load_policy_without_overrides_returns_the_preset(name: str) -> None:
    assert load_policy(name) is {"seed": SEED, "meta-current": META_CURRENT, "sandbox": SANDBOX}[name]
    assert load_policy(name, {}).name == name


def test_load_policy_applies_every_override_and_labels_the_result() -> None:
    policy = load_policy(
        "seed",
        {
            "request_limits": [{"window_seconds": 3600, "max_allowed": 3}],
            "connected_call_limits": [{"window_seconds": 86400, "max_allowed": 10}],
            "temporary_grant_lifetime_seconds": 86400,
            "service_window_seconds": 1800.5,
            "prompt_after_unanswered": 3,
            "revoke_after_unanswered": 3,
            "denied_business_regions": ["us", "FR"],
        },
    )
    assert policy.request_limits == (WindowLimit(HOUR, 3),)
    assert policy.connected_call_limits == (WindowLimit(DAY, 10),)
    assert policy.temporary_grant_lifetime == DAY
    assert policy.service_window == timedelta(seconds=1800.5)
    assert (policy.prompt_after_unanswered, policy.revoke_after_unanswered) == (3, 3)
    assert policy.denied_business_regions == frozenset({"US", "FR"})
    assert (policy.name, policy.version, policy.label) == ("seed+custom", 2, "seed+custom@2")
    assert policy.source.endswith("; overridden")
    assert policy.longest_window == DAY


def test_overridden_policy_drives_the_engine() -> None:
    policy = load_policy("sandbox", {"connected_call_limits": [{"window_seconds": 3600, "max_allowed": 1}]})
    ledger = fold(policy, grant(T0, permanent=True), CallConnected(T0, business_initiated=True))
    decision = check(ledger, T0 + MINUTE, policy).call
    assert (decision.reason, decision.next_allowed_at) == (Reason.CALL_LIMIT_REACHED, T0 + HOUR + MARGIN)


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("production", None, "unknown policy 'production'"),
        ("seed", {"max_calls": 5}, "unknown policy override 'max_calls'"),
        ("seed", {"temporary_grant_lifetime_seconds": 0}, "positive number of seconds"),
        ("seed", {"temporary_grant_lifetime_seconds": -5}, "positive number of seconds"),
        ("seed", {"service_window_seconds": True}, "positive number of seconds"),
        ("seed", {"service_window_seconds": "86400"}, "positive number of seconds"),
        ("seed", {"prompt_after_unanswered": 0}, "positive integer"),
        ("seed", {"revoke_after_unanswered": 2.0}, "positive integer"),
        ("seed", {"revoke_after_unanswered": True}, "positive integer"),
        ("seed", {"request_limits": []}, "non-empty list"),
        ("seed", {"request_limits": {"window_seconds": 60, "max_allowed": 1}}, "non-empty list"),
        ("seed", {"request_limits": [{"window_seconds": 60}]}, "exactly window_seconds and max_allowed"),
        ("seed", {"connected_call_limits": [{"window_seconds": 60, "max_allowed": 1, "x": 1}]}, "exactly"),
        ("seed", {"connected_call_limits": [{"window_seconds": 0, "max_allowed": 1}]}, "positive number of seconds"),
        ("seed", {"connected_call_limits": [{"window_seconds": 60, "max_allowed": 0}]}, "positive integer"),
        ("seed", {"denied_business_regions": "US"}, "two-letter region codes"),
        ("seed", {"denied_business_regions": ["USA"]}, "two-letter region codes"),
        ("seed", {"denied_business_regions": [1]}, "two-letter region codes"),
        ("seed", {"prompt_after_unanswered": 5}, "must not exceed revoke_after_unanswered"),
        ("sandbox", {"revoke_after_unanswered": 4}, "must not exceed revoke_after_unanswered"),
    ],
)
def test_load_policy_refuses_unusable_names_and_overrides(
    name: str, overrides: dict[str, object] | None, message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        load_policy(name, overrides)


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


# --- a paused business number (§2.5) -------------------------------------------------------------------------------


def paused_evaluation(ledger: engine.Ledger, now: datetime, until: datetime | None) -> engine.Evaluation:
    return engine.evaluate(
        ledger, now, SEED, business_region="GB", template_available=True, restriction=engine.Restriction(until)
    )


def test_a_pause_refuses_both_actions_until_it_ends() -> None:
    granted = engine.apply(engine.Ledger(), engine.PermissionGranted(T0, True, None, Source.USER_ACTION), SEED).ledger
    result = paused_evaluation(granted, T0, T0 + 7 * DAY)
    assert result.call.reason is Reason.BUSINESS_RESTRICTED and result.call.next_allowed_at == T0 + 7 * DAY
    assert result.request.reason is Reason.BUSINESS_RESTRICTED and result.request.next_allowed_at is None
    assert paused_evaluation(granted, T0 + 7 * DAY, T0 + 7 * DAY).call.allowed


def test_a_pause_with_no_end_gives_no_next_allowed_at() -> None:
    result = paused_evaluation(engine.Ledger(), T0, None)
    assert not result.request.allowed and result.request.reason is Reason.BUSINESS_RESTRICTED
    assert result.request.next_allowed_at is None


def test_after_a_pause_the_action_still_waits_for_its_own_limits() -> None:
    sent = engine.apply(engine.Ledger(), engine.RequestSent(T0), SEED).ledger
    sent = engine.apply(sent, engine.RequestSent(T0 + 1 * DAY), SEED).ledger
    # Paused for 2 days; the 7-day window frees only at T0 + 7 days.
    result = paused_evaluation(sent, T0 + 1 * DAY, T0 + 3 * DAY)
    assert result.request.reason is Reason.BUSINESS_RESTRICTED and result.request.next_allowed_at == T0 + WEEK + MARGIN


def test_a_temporary_grant_that_expires_during_the_pause_gives_no_next_allowed_at() -> None:
    granted = engine.apply(engine.Ledger(), engine.PermissionGranted(T0, False, None, Source.USER_ACTION), SEED).ledger
    result = paused_evaluation(granted, T0, T0 + 8 * DAY)
    assert result.call.reason is Reason.BUSINESS_RESTRICTED and result.call.next_allowed_at is None


# --- callback grants never downgrade --------------------------------------------------------------------------------


def callback(at: datetime, expires_at: datetime | None = None) -> PermissionGranted:
    """The platform's automatic temporary grant after the user called the business."""
    return PermissionGranted(at, False, expires_at, Source.PLATFORM_AUTOMATIC)


@ALL_PRESETS
def test_a_callback_grant_never_lowers_a_permanent_permission(policy: Policy) -> None:
    ledger = fold(policy, grant(T0, permanent=True), CallUnanswered(T0 + MINUTE))
    applied = engine.apply(ledger, callback(T0 + HOUR), policy)
    assert (applied.absorbed, applied.stale, applied.ledger) == (True, False, ledger)
    evaluation = check(applied.ledger, T0 + 30 * DAY, policy)
    assert (evaluation.state, evaluation.expires_at, evaluation.call.allowed) == (PermissionState.PERMANENT, None, True)
    assert evaluation.request.reason is Reason.ALREADY_PERMANENT
    assert evaluation.consecutive_unanswered == 1  # nothing new started: the streak goes on


@ALL_PRESETS
def test_a_callback_grant_never_shortens_a_later_expiry(policy: Policy) -> None:
    ledger = fold(policy, grant(T0, expires_at=T0 + 10 * DAY))
    applied = engine.apply(ledger, callback(T0 + HOUR), policy)  # would expire at T0 + 7 d 1 h
    assert (applied.absorbed, applied.ledger) == (True, ledger)
    assert check(applied.ledger, T0 + 8 * DAY, policy).state is PermissionState.TEMPORARY


@ALL_PRESETS
def test_a_callback_grant_extends_a_sooner_expiry_and_starts_a_new_streak(policy: Policy) -> None:
    ledger = fold(policy, grant(T0), CallUnanswered(T0 + MINUTE))
    applied = engine.apply(ledger, callback(T0 + 2 * DAY), policy)
    assert applied.absorbed is False
    evaluation = check(applied.ledger, T0 + 2 * DAY, policy)
    assert (evaluation.state, evaluation.expires_at, evaluation.consecutive_unanswered) == (
        PermissionState.TEMPORARY,
        T0 + 9 * DAY,
        0,
    )


@ALL_PRESETS
@pytest.mark.parametrize(
    "events",
    [[], [grant(T0 - 8 * DAY)], [PermissionRevoked(T0 - DAY, Source.USER_ACTION)], [RequestSent(T0 - HOUR)]],
    ids=["none", "expired", "revoked", "requested"],
)
def test_a_callback_grant_gives_a_temporary_permission_to_a_pair_without_one(
    policy: Policy, events: list[LedgerEvent]
) -> None:
    ledger = fold(policy, *events, callback(T0))
    assert (check(ledger, T0, policy).state, ledger.expires_at) == (PermissionState.TEMPORARY, T0 + WEEK)


@ALL_PRESETS
def test_the_platforms_own_temporary_view_adopted_does_lower_a_permanent_permission(policy: Policy) -> None:
    # Reconcile's temporary grant is the platform's word, not a callback: it is adopted as it is.
    adopted = PermissionGranted(T0 + HOUR, False, T0 + 2 * DAY, Source.PLATFORM_AUTOMATIC, adopted=True)
    ledger = fold(policy, grant(T0, permanent=True), adopted)
    assert (check(ledger, T0 + HOUR, policy).state, ledger.expires_at) == (PermissionState.TEMPORARY, T0 + 2 * DAY)


# --- adopted facts ---------------------------------------------------------------------------------------------------


@ALL_PRESETS
def test_an_adopted_fact_moves_neither_the_ordering_mark_nor_the_streak(policy: Policy) -> None:
    ledger = fold(policy, grant(T0), CallUnanswered(T0 + MINUTE))
    adopted = PermissionGranted(T0 + HOUR, True, None, Source.PLATFORM_AUTOMATIC, adopted=True)
    ledger = fold(policy, adopted, ledger=ledger)
    assert (ledger.state, ledger.state_changed_at, ledger.consecutive_unanswered) == (
        PermissionState.PERMANENT,
        T0,
        1,
    )
    # A revoke the user made before the adoption, still in flight, applies.
    revoked = engine.apply(ledger, PermissionRevoked(T0 + 30 * MINUTE, Source.USER_ACTION), policy)
    assert (revoked.stale, revoked.ledger.state) == (False, PermissionState.REVOKED)
    # One from before the last real change is still stale.
    older = engine.apply(ledger, PermissionRevoked(T0 - SECOND, Source.USER_ACTION), policy)
    assert (older.stale, older.ledger) == (True, ledger)


@ALL_PRESETS
def test_an_adopted_fact_is_never_stale(policy: Policy) -> None:
    ledger = fold(policy, grant(T0 + HOUR))
    adopted = engine.apply(ledger, PermissionRevoked(T0, Source.PLATFORM_AUTOMATIC, adopted=True), policy)
    assert (adopted.stale, adopted.ledger.state, adopted.ledger.state_changed_at) == (
        False,
        PermissionState.REVOKED,
        T0 + HOUR,
    )


# --- a request nobody answers expires ------------------------------------------------------------------------------

MICROSECOND = timedelta(microseconds=1)


@ALL_PRESETS
@pytest.mark.parametrize(
    ("events", "state"),
    [
        ([], PermissionState.NONE),
        ([PermissionRejected(T0 - DAY, Source.USER_ACTION)], PermissionState.REJECTED),
        ([PermissionRevoked(T0 - DAY, Source.USER_ACTION)], PermissionState.REVOKED),
        ([grant(T0 - 8 * DAY)], PermissionState.EXPIRED),
    ],
    ids=["none", "rejected", "revoked", "expired"],
)
def test_a_request_nobody_answers_expires_and_the_pair_reads_its_earlier_state(
    policy: Policy, events: list[LedgerEvent], state: PermissionState
) -> None:
    ledger = fold(policy, *events, RequestSent(T0))
    dies = T0 + policy.request_lifetime
    assert check(ledger, dies - MICROSECOND, policy).state is PermissionState.REQUESTED
    after = check(ledger, dies, policy)
    assert after.state is state
    assert (
        after.call.reason
        is {
            PermissionState.NONE: Reason.NO_PERMISSION,
            PermissionState.REJECTED: Reason.PERMISSION_REJECTED,
            PermissionState.REVOKED: Reason.PERMISSION_REVOKED,
            PermissionState.EXPIRED: Reason.PERMISSION_EXPIRED,
        }[state]
    )
    assert check(engine.prune(ledger, dies, policy), dies, policy) == after


@ALL_PRESETS
def test_a_newer_request_keeps_the_pair_requested_until_it_dies_too(policy: Policy) -> None:
    ledger = fold(policy, RequestSent(T0), RequestSent(T0 + 2 * DAY))
    assert check(ledger, T0 + WEEK, policy).state is PermissionState.REQUESTED
    assert check(ledger, T0 + 2 * DAY + WEEK, policy).state is PermissionState.NONE
    # Withdrawing the newer one leaves the older one's lifetime.
    withdrawn = fold(policy, RequestWithdrawn(T0 + 2 * DAY), ledger=ledger)
    assert check(withdrawn, T0 + WEEK - SECOND, policy).state is PermissionState.REQUESTED
    assert check(withdrawn, T0 + WEEK, policy).state is PermissionState.NONE


@ALL_PRESETS
@pytest.mark.parametrize("permanent", [False, True], ids=["temporary", "permanent"])
def test_a_grant_replying_to_a_dead_request_is_not_applied(policy: Policy, permanent: bool) -> None:
    ledger = fold(policy, RequestSent(T0))
    dies = T0 + policy.request_lifetime
    late = PermissionGranted(dies, permanent, None, Source.USER_ACTION, request_sent_at=T0)
    applied = engine.apply(ledger, late, policy)
    assert (applied.request_expired, applied.ledger) == (True, ledger)
    just_in_time = dataclasses.replace(late, at=dies - MICROSECOND)
    live = engine.apply(ledger, just_in_time, policy)
    assert live.request_expired is False
    assert live.ledger.state is (PermissionState.PERMANENT if permanent else PermissionState.TEMPORARY)


@ALL_PRESETS
def test_a_decline_replying_to_a_dead_request_still_applies(policy: Policy) -> None:
    ledger = fold(policy, grant(T0), RequestSent(T0 + HOUR))
    late = PermissionRejected(T0 + HOUR + policy.request_lifetime, Source.USER_ACTION, request_sent_at=T0 + HOUR)
    applied = engine.apply(ledger, late, policy)
    assert (applied.request_expired, applied.ledger.state) == (True, PermissionState.REJECTED)


# --- margins at the edges ------------------------------------------------------------------------------------------


@ALL_PRESETS
def test_each_limit_allows_exactly_at_next_allowed_at_and_not_a_microsecond_before(policy: Policy) -> None:
    per_day, cap = policy.request_limits[0].max_allowed, policy.connected_call_limits[0].max_allowed
    ledger = fold(
        policy,
        grant(T0 - HOUR, permanent=True),
        *business_calls(T0, cap, every=SECOND),
        PermissionRevoked(T0 + HOUR, Source.USER_ACTION),
        *requests([T0 + HOUR + i * SECOND for i in range(per_day)]),
        grant(T0 + 2 * HOUR, permanent=True),
    )
    now = T0 + 3 * HOUR
    call = check(ledger, now, policy).call
    assert call.next_allowed_at == T0 + DAY + policy.boundary_margin == call.limits[0].resets_at
    assert check(ledger, call.next_allowed_at - MICROSECOND, policy).call.allowed is False
    assert check(ledger, call.next_allowed_at, policy).call.allowed is True
    # The request limit, on a pair without a permanent grant.
    asked = fold(policy, *requests([T0 + i * SECOND for i in range(per_day)]))
    request = check(asked, T0 + HOUR, policy).request
    assert request.next_allowed_at == T0 + DAY + policy.boundary_margin
    assert check(asked, request.next_allowed_at - MICROSECOND, policy).request.allowed is False
    assert check(asked, request.next_allowed_at, policy).request.allowed is True


@ALL_PRESETS
def test_the_template_is_preferred_when_the_service_window_closes_within_the_window_margin(policy: Policy) -> None:
    ledger = fold(policy, UserMessage(T0))
    switch = T0 + DAY - policy.window_margin
    assert check(ledger, switch, policy).request.channel is Channel.INTERACTIVE
    assert check(ledger, switch + MICROSECOND, policy).request.channel is Channel.TEMPLATE
    # Without a template the interactive request is still used until the window closes.
    last = check(ledger, T0 + DAY - MICROSECOND, policy, template=False).request
    assert (last.allowed, last.channel) == (True, Channel.INTERACTIVE)
    assert check(ledger, T0 + DAY, policy, template=False).request.allowed is False


@ONE_PER_DAY_PRESETS
@pytest.mark.parametrize(
    ("sent_after_message", "offered"),
    [(-MARGIN - MICROSECOND, True), (-MARGIN, False)],
    ids=["frees-before-close", "frees-at-close"],
)
def test_a_request_limit_wait_without_template_is_offered_only_if_it_ends_before_the_window_closes(
    policy: Policy, sent_after_message: timedelta, offered: bool
) -> None:
    # The request frees 24 h + margin after it was sent; the window closes 24 h after the message.
    ledger = fold(policy, UserMessage(T0), RequestSent(T0 + sent_after_message))
    decision = check(ledger, T0 + HOUR, policy, template=False).request
    assert decision.reason is Reason.REQUEST_LIMIT_REACHED
    assert decision.next_allowed_at == (T0 + sent_after_message + DAY + MARGIN if offered else None)
    if decision.next_allowed_at is not None:
        assert check(ledger, decision.next_allowed_at, policy, template=False).request.allowed is True


def test_without_margins_the_limits_free_at_the_platforms_instant() -> None:
    exact = SEED.without_margins()
    ledger = fold(exact, RequestSent(T0), UserMessage(T0))
    assert check(ledger, T0 + HOUR, exact).request.next_allowed_at == T0 + DAY
    assert check(ledger, T0 + DAY - MICROSECOND, exact).request.channel is Channel.INTERACTIVE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"boundary_margin_seconds": -1}, "from 0 to 86400"),
        ({"window_margin_seconds": True}, "from 0 to 86400"),
        ({"window_margin_seconds": "60"}, "from 0 to 86400"),
        ({"boundary_margin_seconds": 86_400}, "from 0 to 86400"),
        ({"request_lifetime_seconds": 0}, "positive number of seconds"),
    ],
)
def test_margin_and_request_lifetime_overrides_are_validated(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        load_policy("seed", overrides)


def test_margins_may_be_zero() -> None:
    policy = load_policy("seed", {"boundary_margin_seconds": 0, "window_margin_seconds": 0})
    assert (policy.boundary_margin, policy.window_margin) == (timedelta(0), timedelta(0))
