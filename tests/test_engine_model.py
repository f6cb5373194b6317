"""The rule engine against a brute-force reference model of the rules (whatsapp-calling.md §1-§3).

A hypothesis state machine plays random event sequences for one pair (requests sent when allowed, grants,
declines, revocations, user messages, connected and unanswered calls, withdrawn requests, late replies) with random
forward time jumps, and after every step compares `engine.evaluate` with `ReferenceModel.expect`.

The model keeps only the raw list of events in arrival order and recomputes everything from it each time: counts
by filtering the list, the permission by replaying the permission events, `next_allowed_at` by trying every instant
at which anything could change and taking the first one at which the action is allowed. It follows the engine's
documented [wacall] readings (engine module docstring, §2.2) and nothing else of the engine; where the rules text
is explicit it follows the text (§3: a connected call, user-initiated or a business call the user accepted, opens
or refreshes the customer-service window).

The readings covered include the margins (a limit frees `boundary_margin` late; the template is preferred within
`window_margin` of the window's close), callback grants that never downgrade, facts adopted from the platform that
neither stamp the ordering mark nor clear the streak, requests that die after `request_lifetime` (the pair reads its
earlier state; a grant replying to a dead request is ignored, a decline is not), and the checks run at the exact
boundaries and one second and one microsecond either side.

WACALL_ENGINE_MODEL_PROFILE=engine-model-thorough runs a much longer search (minutes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from wacall.rules import engine
from wacall.rules.engine import (
    EMPTY_LEDGER,
    CallConnected,
    CallUnanswered,
    Channel,
    Ledger,
    LedgerEvent,
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
from wacall.rules.policy import META_CURRENT, SANDBOX, SEED, Policy, WindowLimit

S = PermissionState
T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MICROSECOND = timedelta(microseconds=1)
CALLABLE_REGION = "GB"
ZERO = timedelta(0)

settings.register_profile(
    "engine-model",
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "engine-model-thorough",
    parent=settings.get_profile("engine-model"),
    max_examples=2_000,
    stateful_step_count=80,
)
MODEL_SETTINGS = settings.get_profile(os.environ.get("WACALL_ENGINE_MODEL_PROFILE", "engine-model"))


# --- the reference model ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    kind: str  # one of the constants below
    at: datetime
    permanent: bool = False
    expires_at: datetime | None = None  # grants: the resolved expiry of a temporary grant
    business_initiated: bool = False  # connected calls
    callback: bool = False  # grants: the platform's automatic temporary grant after the user called
    adopted: bool = False  # grants and revocations learnt from the platform's own view


REQUEST, GRANT, REJECT, REVOKE, MESSAGE, CONNECTED, UNANSWERED = (
    "request",
    "grant",
    "reject",
    "revoke",
    "message",
    "connected",
    "unanswered",
)


@dataclass(frozen=True)
class Permission:
    stored: PermissionState  # never EXPIRED
    expires_at: datetime | None
    # While REQUESTED: when the newest request dies, and what the pair was before it was asked.
    requested_until: datetime | None = None
    before_request: PermissionState = S.NONE

    def at(self, t: datetime) -> PermissionState:
        state = self.stored
        if state is S.REQUESTED and (self.requested_until is None or t >= self.requested_until):
            state = self.before_request
        if state is S.TEMPORARY and self.expires_at is not None and t >= self.expires_at:
            return S.EXPIRED
        return state


@dataclass(frozen=True)
class Replay:
    permission: Permission
    mark: datetime | None  # the last permission change that orders later webhooks
    streak_since: int  # index of the last event that restarted the unanswered streak (-1: none)
    absorbed: frozenset[int]  # indices of callback grants that changed nothing


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason
    next_allowed_at: datetime | None
    usage: tuple[tuple[int, datetime | None], ...]  # (used, resets_at) per window, in policy order


@dataclass(frozen=True)
class Expected:
    state: PermissionState
    expires_at: datetime | None
    consecutive_unanswered: int
    user_prompted: bool
    service_window_expires_at: datetime | None
    channel: Channel
    request: Decision
    call: Decision


class ReferenceModel:
    """The rules, recomputed from the raw events every time."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.events: list[Event] = []
        self._replayed: tuple[tuple[Event, ...], Replay] | None = None

    # Permission: replay the permission events in order (§1, engine transition table). Only events the engine
    # applies are in the list (stale replies and grants to dead requests are left out by the state machine).
    def replay(self) -> Replay:
        events = tuple(self.events)
        if self._replayed is None or self._replayed[0] != events:
            self._replayed = (events, self._replay(events))
        return self._replayed[1]

    def _replay(self, events: tuple[Event, ...]) -> Replay:
        p = Permission(S.NONE, None)
        mark: datetime | None = None
        streak_since = -1
        absorbed: set[int] = set()
        for i, e in enumerate(events):
            now_state = p.at(e.at)
            if e.kind == REQUEST:
                if now_state in (S.TEMPORARY, S.PERMANENT):
                    continue  # a request changes nothing for a pair that holds a live grant
                dies = e.at + self.policy.request_lifetime
                if p.stored is S.REQUESTED:  # asked again: the newest request decides when REQUESTED ends
                    p = Permission(S.REQUESTED, p.expires_at, max(filter(None, (p.requested_until, dies))),
                                   p.before_request)  # fmt: skip
                else:
                    p = Permission(S.REQUESTED, p.expires_at, dies, p.stored)
                continue
            if e.kind not in (GRANT, REJECT, REVOKE):
                continue
            if e.kind == GRANT and e.callback:
                if now_state is S.PERMANENT:
                    absorbed.add(i)  # never lowers a permanent permission
                    continue
                if now_state is S.TEMPORARY:
                    assert p.expires_at is not None and e.expires_at is not None
                    if e.expires_at <= p.expires_at:
                        absorbed.add(i)  # never shortens a later expiry
                        continue
                p = Permission(S.TEMPORARY, e.expires_at)
            elif e.kind == GRANT:
                p = Permission(S.PERMANENT, None) if e.permanent else Permission(S.TEMPORARY, e.expires_at)
            elif e.kind == REJECT:
                p = Permission(S.REJECTED, None)  # a decline ends any grant (fail closed)
            else:
                p = Permission(S.REVOKED, None)
            if not e.adopted:
                mark = e.at
                if e.kind == GRANT:
                    streak_since = i
        return Replay(p, mark, streak_since, frozenset(absorbed))

    def permission(self) -> Permission:
        return self.replay().permission

    def last_permission_change(self) -> datetime | None:
        return self.replay().mark

    def stale(self, at: datetime) -> bool:
        """A webhook stamped before the last permission change (compared in whole seconds) changes nothing."""
        mark = self.last_permission_change()
        return mark is not None and at.replace(microsecond=0) < mark.replace(microsecond=0)

    # Requests count only since the most recent connected call (either direction), in arrival order.
    def request_times(self) -> list[datetime]:
        last_call = max((i for i, e in enumerate(self.events) if e.kind == CONNECTED), default=-1)
        return [e.at for e in self.events[last_call + 1 :] if e.kind == REQUEST]

    # Only answered business-initiated calls count against the cap; nothing resets it.
    def call_times(self) -> list[datetime]:
        return [e.at for e in self.events if e.kind == CONNECTED and e.business_initiated]

    # Consecutive unanswered calls since the last connected call or the last grant that started a permission (not
    # an adopted one, not an absorbed callback grant).
    def streak(self) -> int:
        since = max(self.replay().streak_since, max((i for i, e in enumerate(self.events) if e.kind == CONNECTED),
                                                    default=-1))  # fmt: skip
        return sum(1 for e in self.events[since + 1 :] if e.kind == UNANSWERED)

    # §3: the window is the 24 h after the user's last message, a user call, or the user accepting a business call.
    def window_closes(self, t: datetime) -> datetime | None:
        opened = max((e.at for e in self.events if e.kind in (MESSAGE, CONNECTED) and e.at <= t), default=None)
        if opened is None or t >= opened + self.policy.service_window:
            return None
        return opened + self.policy.service_window

    # wacall counts a use for its window plus the boundary margin (the platform's clock runs behind).
    def counted(self, times: list[datetime], limit: WindowLimit, t: datetime) -> list[datetime]:
        return [x for x in times if x <= t < x + limit.window + self.policy.boundary_margin]

    def usage(self, times: list[datetime], limits: tuple[WindowLimit, ...], t: datetime) -> tuple[Any, ...]:
        margin = self.policy.boundary_margin
        return tuple(
            (len(c), min(c) + limit.window + margin if c else None)
            for limit in limits
            for c in [self.counted(times, limit, t)]
        )

    # Interactive while the window is open, unless it closes within the window margin and a template exists.
    def channel(self, t: datetime, template: bool) -> Channel:
        closes = self.window_closes(t)
        if closes is None or (template and closes - t < self.policy.window_margin):
            return Channel.TEMPLATE
        return Channel.INTERACTIVE

    def full(self, times: list[datetime], limits: tuple[WindowLimit, ...], t: datetime) -> bool:
        return any(len(self.counted(times, limit, t)) >= limit.max_allowed for limit in limits)

    # The gates (§2.2 "Gates derived from the above"), at any instant t >= now, assuming no further events.
    def request_gate(self, region: str, template: bool) -> Callable[[datetime], Reason]:
        permission, times = self.permission(), self.request_times()

        def reason(t: datetime) -> Reason:
            if region in self.policy.denied_business_regions:
                return Reason.COUNTRY_UNSUPPORTED
            if permission.at(t) is S.PERMANENT:
                return Reason.ALREADY_PERMANENT
            if self.full(times, self.policy.request_limits, t):
                return Reason.REQUEST_LIMIT_REACHED
            if self.window_closes(t) is None and not template:
                return Reason.NO_TEMPLATE_FOR_CLOSED_WINDOW
            return Reason.ALLOWED

        return reason

    def call_gate(self, region: str) -> Callable[[datetime], Reason]:
        permission, times = self.permission(), self.call_times()

        def reason(t: datetime) -> Reason:
            if region in self.policy.denied_business_regions:
                return Reason.COUNTRY_UNSUPPORTED
            state = permission.at(t)
            if state not in (S.TEMPORARY, S.PERMANENT):
                return {
                    S.NONE: Reason.NO_PERMISSION,
                    S.REQUESTED: Reason.NO_PERMISSION,
                    S.REJECTED: Reason.PERMISSION_REJECTED,
                    S.REVOKED: Reason.PERMISSION_REVOKED,
                    S.EXPIRED: Reason.PERMISSION_EXPIRED,
                }[state]
            if self.full(times, self.policy.connected_call_limits, t):
                return Reason.CALL_LIMIT_REACHED
            return Reason.ALLOWED

        return reason

    def change_points(self, now: datetime) -> list[datetime]:
        """Every future instant at which some gate could change: each event time plus each duration the rules use,
        and each grant's expiry. Between two of these nothing changes, so scanning them finds the earliest time."""
        margin = self.policy.boundary_margin
        durations = {
            timedelta(0),
            self.policy.service_window,
            self.policy.service_window - self.policy.window_margin,
            self.policy.temporary_grant_lifetime,
            self.policy.request_lifetime,
            *(limit.window + margin for limit in (*self.policy.request_limits, *self.policy.connected_call_limits)),
        }
        points = {e.at + d for e in self.events for d in durations}
        points |= {e.expires_at for e in self.events if e.expires_at is not None}
        return sorted(p for p in points if p > now)

    def decide(self, gate: Callable[[datetime], Reason], now: datetime, usage: tuple[Any, ...]) -> Decision:
        reason = gate(now)
        if reason is Reason.ALLOWED:
            return Decision(True, reason, None, usage)
        later = next((t for t in self.change_points(now) if gate(t) is Reason.ALLOWED), None)
        return Decision(False, reason, later, usage)

    def expect(self, now: datetime, *, region: str, template: bool) -> Expected:
        permission = self.permission()
        state = permission.at(now)
        streak = self.streak()
        window_closes = self.window_closes(now)
        request = self.decide(
            self.request_gate(region, template),
            now,
            self.usage(self.request_times(), self.policy.request_limits, now),
        )
        call = self.decide(
            self.call_gate(region), now, self.usage(self.call_times(), self.policy.connected_call_limits, now)
        )
        return Expected(
            state=state,
            expires_at=permission.expires_at if state in (S.TEMPORARY, S.EXPIRED) else None,
            consecutive_unanswered=streak,
            user_prompted=streak >= self.policy.prompt_after_unanswered,
            service_window_expires_at=window_closes,
            channel=self.channel(now, template),
            request=request,
            call=call,
        )


# --- the state machine --------------------------------------------------------------------------------------------

SHORT = st.integers(1, 120)
HOURS = st.integers(121, 2 * 86_400)
DAYS = st.integers(2 * 86_400, 10 * 86_400)


class EngineAgainstModel(RuleBasedStateMachine):
    policy: ClassVar[Policy] = SEED

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.ledger: Ledger = EMPTY_LEDGER
        self.pruned: Ledger = EMPTY_LEDGER  # the same events, pruned after each one as the service stores it
        self.model = ReferenceModel(self.policy)
        self.withdrawable: tuple[datetime, PermissionState] | None = None  # the last event was this request
        self.denied_region = 0

    def _apply(self, event: LedgerEvent, model_event: Event | None) -> engine.Applied:
        applied = engine.apply(self.ledger, event, self.policy)
        pruned = engine.apply(self.pruned, event, self.policy)
        self.ledger = applied.ledger
        self.pruned = engine.prune(pruned.ledger, self.now, self.policy)
        assert (pruned.derived, pruned.stale, pruned.request_expired, pruned.absorbed) == (
            applied.derived,
            applied.stale,
            applied.request_expired,
            applied.absorbed,
        )
        if model_event is not None:
            self.model.events.append(model_event)
        self.withdrawable = None
        return applied

    def _allowed(self, action: str) -> bool:
        """What the model allows now (a template is configured: a request is possible outside the window too)."""
        gate = (
            self.model.request_gate(CALLABLE_REGION, True)
            if action == "request"
            else self.model.call_gate(CALLABLE_REGION)
        )
        return gate(self.now) is Reason.ALLOWED

    # Time

    @rule(seconds=st.one_of(SHORT, HOURS, DAYS))
    def wait(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @precondition(lambda self: bool(self.model.change_points(self.now)))
    @rule(data=st.data(), offset=st.sampled_from([-SECOND, -MICROSECOND, ZERO, ZERO, MICROSECOND, SECOND]))
    def wait_for_a_boundary(self, data: st.DataObject, offset: timedelta) -> None:
        """Jump to (or one second or one microsecond around) an instant where a window (with its margin), a grant, a
        request or the service window (or its margin) ends."""
        target = data.draw(st.sampled_from(self.model.change_points(self.now)))
        self.now = max(self.now, target + offset)

    # The business

    @precondition(lambda self: self._allowed("request"))
    @rule()
    def send_request(self) -> None:
        state_before = self.ledger.state  # what the service passes to RequestWithdrawn
        applied = self._apply(RequestSent(self.now), Event(REQUEST, self.now))
        assert (applied.derived, applied.stale) == ((), False)
        self.withdrawable = (self.now, state_before)

    @precondition(lambda self: self._allowed("request"))
    @rule(count=st.integers(2, 30), spacing=st.integers(0, 3_600))
    def send_requests_until_refused(self, count: int, spacing: int) -> None:
        """A burst, to reach the larger (sandbox) request limits."""
        while count and self._allowed("request"):
            self._apply(RequestSent(self.now), Event(REQUEST, self.now))
            self.now += timedelta(seconds=spacing)
            count -= 1

    @precondition(lambda self: self.withdrawable is not None)
    @rule()
    def platform_refuses_the_request(self) -> None:
        assert self.withdrawable is not None
        sent_at, state_before = self.withdrawable
        self._apply(RequestWithdrawn(sent_at, state_before), None)
        last = self.model.events.pop()
        assert (last.kind, last.at) == (REQUEST, sent_at)

    # The user

    @rule(
        permanent=st.booleans(),
        platform_expiry=st.one_of(st.none(), st.integers(1, 8 * 86_400)),
        source=st.sampled_from([Source.USER_ACTION, Source.PLATFORM_AUTOMATIC]),
    )
    def user_grants(self, permanent: bool, platform_expiry: int | None, source: Source) -> None:
        """A grant from a request or the profile, or (automatic, temporary) the callback grant after a user call."""
        given = None if permanent or platform_expiry is None else self.now + timedelta(seconds=platform_expiry)
        resolved = None if permanent else given or self.now + self.policy.temporary_grant_lifetime
        callback = source is Source.PLATFORM_AUTOMATIC and not permanent
        applied = self._apply(
            PermissionGranted(self.now, permanent, given, source),
            Event(GRANT, self.now, permanent=permanent, expires_at=resolved, callback=callback),
        )
        assert (applied.derived, applied.stale) == ((), False)
        assert applied.absorbed is (len(self.model.events) - 1 in self.model.replay().absorbed)

    @rule(
        kind=st.sampled_from(["permanent", "temporary", "revoked"]),
        platform_expiry=st.integers(1, 8 * 86_400),
    )
    def platform_view_is_adopted(self, kind: str, platform_expiry: int) -> None:
        """GetPermission(reconcile), 138017 or 138006: the platform's view, learnt now."""
        expires = self.now + timedelta(seconds=platform_expiry)
        event: LedgerEvent
        if kind == "revoked":
            event, model_event = (
                PermissionRevoked(self.now, Source.PLATFORM_AUTOMATIC, adopted=True),
                Event(REVOKE, self.now, adopted=True),
            )
        else:
            permanent = kind == "permanent"
            event = PermissionGranted(
                self.now, permanent, None if permanent else expires, Source.PLATFORM_AUTOMATIC, adopted=True
            )
            model_event = Event(
                GRANT, self.now, permanent=permanent, expires_at=None if permanent else expires, adopted=True
            )
        applied = self._apply(event, model_event)
        assert (applied.derived, applied.stale, applied.absorbed) == ((), False, False)

    @precondition(lambda self: self.now > T0)
    @rule(
        seconds_earlier=st.integers(0, 3 * 86_400),
        kind=st.sampled_from(["grant", "permanent", "reject", "revoke"]),
    )
    def late_reply_after_the_last_change(self, seconds_earlier: int, kind: str) -> None:
        """A webhook stamped before now but not before the last real change (an adopted fact is not one): applied."""
        at = max(self.now - timedelta(seconds=seconds_earlier), T0)
        mark = self.model.last_permission_change()
        if mark is not None:
            at = max(at, mark.replace(microsecond=0))
        resolved = at + self.policy.temporary_grant_lifetime
        event, model_event = {
            "grant": (PermissionGranted(at, False, None, Source.USER_ACTION), Event(GRANT, at, expires_at=resolved)),
            "permanent": (PermissionGranted(at, True, None, Source.USER_ACTION), Event(GRANT, at, permanent=True)),
            "reject": (PermissionRejected(at, Source.USER_ACTION), Event(REJECT, at)),
            "revoke": (PermissionRevoked(at, Source.USER_ACTION), Event(REVOKE, at)),
        }[kind]
        assert not self.model.stale(at)
        applied = self._apply(event, model_event)
        assert (applied.derived, applied.stale, applied.absorbed) == ((), False, False)

    @precondition(lambda self: any(e.kind == REQUEST for e in self.model.events))
    @rule(data=st.data(), kind=st.sampled_from(["temporary", "permanent", "reject"]))
    def user_answers_an_earlier_request(self, data: st.DataObject, kind: str) -> None:
        """A reply naming one of our requests: a grant from a request dead by then changes nothing."""
        sent_at = data.draw(st.sampled_from([e.at for e in self.model.events if e.kind == REQUEST]))
        dead = self.now >= sent_at + self.policy.request_lifetime
        event: LedgerEvent
        if kind == "reject":
            event, model_event = PermissionRejected(self.now, Source.USER_ACTION, sent_at), Event(REJECT, self.now)
        else:
            permanent = kind == "permanent"
            event = PermissionGranted(self.now, permanent, None, Source.USER_ACTION, request_sent_at=sent_at)
            expires = None if permanent else self.now + self.policy.temporary_grant_lifetime
            model_event = Event(GRANT, self.now, permanent=permanent, expires_at=expires)
        before = self.ledger
        applied = self._apply(event, None if dead and kind != "reject" else model_event)
        assert (applied.request_expired, applied.stale, applied.derived) == (dead, False, ())
        if dead and kind != "reject":
            assert self.ledger == before

    @rule()
    def user_declines(self) -> None:
        applied = self._apply(PermissionRejected(self.now, Source.USER_ACTION), Event(REJECT, self.now))
        assert (applied.derived, applied.stale) == ((), False)

    @rule(source=st.sampled_from([Source.USER_ACTION, Source.PLATFORM_AUTOMATIC]))
    def user_revokes(self, source: Source) -> None:
        applied = self._apply(PermissionRevoked(self.now, source), Event(REVOKE, self.now))
        assert (applied.derived, applied.stale) == ((), False)

    @rule()
    def user_writes(self) -> None:
        self._apply(UserMessage(self.now), Event(MESSAGE, self.now))

    @rule()
    def user_calls_and_is_answered(self) -> None:
        applied = self._apply(
            CallConnected(self.now, business_initiated=False), Event(CONNECTED, self.now, business_initiated=False)
        )
        assert applied.derived == ()

    @precondition(lambda self: self._allowed("call"))
    @rule()
    def business_call_is_answered(self) -> None:
        applied = self._apply(
            CallConnected(self.now, business_initiated=True), Event(CONNECTED, self.now, business_initiated=True)
        )
        assert applied.derived == ()

    @precondition(lambda self: self._allowed("call"))
    @rule(count=st.integers(2, 110), spacing=st.integers(0, 900))
    def business_calls_answered_until_refused(self, count: int, spacing: int) -> None:
        """A burst, to reach the connected-call caps of 100."""
        while count and self._allowed("call"):
            self._apply(
                CallConnected(self.now, business_initiated=True), Event(CONNECTED, self.now, business_initiated=True)
            )
            self.now += timedelta(seconds=spacing)
            count -= 1

    @precondition(lambda self: self._allowed("call"))
    @rule(count=st.integers(1, 12), spacing=st.integers(0, 7_200))
    def business_calls_not_answered(self, count: int, spacing: int) -> None:
        """Unanswered or declined calls in a row, while calling is allowed (a streak reaching the thresholds)."""
        while count and self._allowed("call"):
            self._business_call_not_answered()
            self.now += timedelta(seconds=spacing)
            count -= 1

    @precondition(lambda self: self._allowed("call"))
    @rule()
    def business_call_is_not_answered(self) -> None:
        self._business_call_not_answered()

    def _business_call_not_answered(self) -> None:
        applied = self._apply(CallUnanswered(self.now), Event(UNANSWERED, self.now))
        streak = self.model.streak()
        expected: list[LedgerEvent] = []
        if streak == self.policy.prompt_after_unanswered:
            expected.append(UserPrompted(self.now))
        if streak >= self.policy.revoke_after_unanswered:  # the call was allowed, so a grant was live
            expected.append(PermissionRevoked(self.now, Source.WACALL_RULE))
            self.model.events.append(Event(REVOKE, self.now))
        assert applied.derived == tuple(expected)

    @precondition(lambda self: self.model.last_permission_change() is not None)
    @rule(
        seconds_earlier=st.integers(1, 3 * 86_400),
        kind=st.sampled_from(["grant", "permanent", "reject", "revoke"]),
    )
    def late_reply_older_than_the_last_change(self, seconds_earlier: int, kind: str) -> None:
        last = self.model.last_permission_change()
        assert last is not None
        at = last - timedelta(seconds=seconds_earlier)
        event: LedgerEvent = {
            "grant": PermissionGranted(at, False, None, Source.USER_ACTION),
            "permanent": PermissionGranted(at, True, None, Source.USER_ACTION),
            "reject": PermissionRejected(at, Source.USER_ACTION),
            "revoke": PermissionRevoked(at, Source.PLATFORM_AUTOMATIC),
        }[kind]
        before = (self.ledger, engine.prune(self.pruned, self.now, self.policy))
        applied = self._apply(event, None)
        assert (applied.stale, applied.derived) == (True, ())
        assert (self.ledger, self.pruned) == before

    # The check

    @invariant()
    def engine_agrees_with_the_model(self) -> None:
        denied = sorted(self.policy.denied_business_regions)
        self.denied_region = (self.denied_region + 1) % len(denied)
        for region in (CALLABLE_REGION, denied[self.denied_region]):
            for template in (True, False):
                self._compare(region, template)

    def _compare(self, region: str, template: bool) -> None:
        exp = self.model.expect(self.now, region=region, template=template)
        got = engine.evaluate(self.ledger, self.now, self.policy, business_region=region, template_available=template)
        from_pruned = engine.evaluate(
            self.pruned, self.now, self.policy, business_region=region, template_available=template
        )
        where = f"at {self.now.isoformat()} region={region} template={template}"
        assert from_pruned == got, f"pruning changed the evaluation {where}"

        assert (got.state, got.expires_at) == (exp.state, exp.expires_at), f"permission {where}"
        assert (got.consecutive_unanswered, got.user_prompted) == (
            exp.consecutive_unanswered,
            exp.user_prompted,
        ), f"unanswered streak {where}"
        assert got.service_window_expires_at == exp.service_window_expires_at, f"service window {where}"
        assert got.request.channel is exp.channel, f"request channel {where}"

        request_usage = tuple((u.used, u.resets_at) for u in got.request.limits)
        assert [(u.window, u.max_allowed) for u in got.request.limits] == [
            (limit.window, limit.max_allowed) for limit in self.policy.request_limits
        ]
        assert request_usage == exp.request.usage, f"request limit usage {where}"
        assert (got.request.allowed, got.request.reason) == (exp.request.allowed, exp.request.reason), (
            f"request decision {where}"
        )
        assert got.request.next_allowed_at == exp.request.next_allowed_at, f"request next_allowed_at {where}"

        call_usage = tuple((u.used, u.resets_at) for u in got.call.limits)
        assert [(u.window, u.max_allowed) for u in got.call.limits] == [
            (limit.window, limit.max_allowed) for limit in self.policy.connected_call_limits
        ]
        assert call_usage == exp.call.usage, f"connected-call limit usage {where}"
        assert (got.call.allowed, got.call.reason) == (exp.call.allowed, exp.call.reason), f"call decision {where}"
        assert got.call.next_allowed_at == exp.call.next_allowed_at, f"call next_allowed_at {where}"


def _machine(policy: Policy) -> type[EngineAgainstModel]:
    name = "EngineAgainstModel_" + policy.name.replace("-", "_")
    return type(name, (EngineAgainstModel,), {"policy": policy})


@pytest.mark.parametrize("policy", [SEED, META_CURRENT, SANDBOX], ids=lambda p: p.name)
def test_engine_agrees_with_the_reference_model(policy: Policy) -> None:
    run_state_machine_as_test(_machine(policy), settings=MODEL_SETTINGS)
