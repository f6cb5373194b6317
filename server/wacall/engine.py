"""The rule engine: what one (business number, user) pair may do now, and how events change its ledger.

Pure: no I/O, no clock reads. Every function takes the pair's `Ledger`, the time, and a `Policy`.

How to read it
--------------
* `PERMISSION_TRANSITIONS` is the whole permission lifecycle: (state the pair is in, permission event) → new state.
  EXPIRED is never stored: a TEMPORARY grant whose `expires_at` has passed *is* EXPIRED (the platform sends no
  webhook when a grant runs out).
* `apply` folds one event into the ledger: the permission table, then the counters (requests sent, connected
  calls, the unanswered streak), then the automatic consequences (prompt, revocation at the threshold).
* `evaluate` answers, for each action, "allowed?", "why not?", the usage of each limit and `next_allowed_at`.

Readings of the platform rules that the code depends on (whatsapp-calling.md §2.2):
* A connected call (either direction) resets the permission-request counters and the unanswered streak, not the
  connected-call window. Requests sent before the most recent connected call are not counted.
* Only answered business-initiated calls count against the connected-call limit.
* Unanswered and rejected calls both extend the streak. At `revoke_after_unanswered` the permission is revoked here
  (fail closed); the platform's own automatic-revoke reply converges on the same state.
* A new grant starts a new permission, so it also clears the streak.
* A connected call, like an inbound message, opens the customer-service window (§3).
* Permission changes are ordered by their own timestamps: a reply older than the last change is recorded for audit
  but does not change the state (webhooks arrive late and out of order).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from wacall.policy import Policy, WindowLimit


class PermissionState(enum.Enum):
    NONE = "none"
    REQUESTED = "requested"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    REJECTED = "rejected"
    REVOKED = "revoked"
    EXPIRED = "expired"  # derived, never stored


class Action(enum.Enum):
    SEND_PERMISSION_REQUEST = "send_permission_request"
    START_CALL = "start_call"


class Channel(enum.Enum):
    INTERACTIVE = "interactive"
    TEMPLATE = "template"


class Reason(enum.Enum):
    ALLOWED = "allowed"
    COUNTRY_UNSUPPORTED = "country_unsupported"
    ALREADY_PERMANENT = "already_permanent"
    REQUEST_LIMIT_REACHED = "request_limit_reached"
    NO_TEMPLATE_FOR_CLOSED_WINDOW = "no_template_for_closed_window"
    NO_PERMISSION = "no_permission"
    PERMISSION_EXPIRED = "permission_expired"
    PERMISSION_REVOKED = "permission_revoked"
    CALL_LIMIT_REACHED = "call_limit_reached"
    PERMISSION_REJECTED = "permission_rejected"
    CALL_IN_PROGRESS = "call_in_progress"
    BUSINESS_RESTRICTED = "business_restricted"


class Source(enum.Enum):
    BUSINESS = "business"
    USER_ACTION = "user_action"
    PLATFORM_AUTOMATIC = "platform_automatic"
    WACALL_RULE = "wacall_rule"


# --- events -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestSent:
    """The business sent a call-permission request (consumes the request limits)."""

    at: datetime


@dataclass(frozen=True, slots=True)
class RequestWithdrawn:
    """A request reserved at `sent_at` was definitely not sent (the platform refused it): it stops counting, and
    the pair's REQUESTED state falls back to `state_before`."""

    sent_at: datetime
    state_before: PermissionState


@dataclass(frozen=True, slots=True)
class PermissionGranted:
    at: datetime
    permanent: bool
    # From the platform's expiration_timestamp; None means `at` + the policy's grant lifetime (temporary only).
    expires_at: datetime | None
    source: Source


@dataclass(frozen=True, slots=True)
class PermissionRejected:
    """The user declined a permission request."""

    at: datetime
    source: Source


@dataclass(frozen=True, slots=True)
class PermissionRevoked:
    at: datetime
    source: Source


@dataclass(frozen=True, slots=True)
class UserMessage:
    """An inbound message from the user: opens (or extends) the customer-service window."""

    at: datetime


@dataclass(frozen=True, slots=True)
class CallConnected:
    """The user picked up (`at` = the moment of answer)."""

    at: datetime
    business_initiated: bool


@dataclass(frozen=True, slots=True)
class CallUnanswered:
    """A business-initiated call ended unanswered or rejected."""

    at: datetime


@dataclass(frozen=True, slots=True)
class UserPrompted:
    """Derived: the streak reached the prompt threshold; the user is asked to reconsider (device-side only)."""

    at: datetime


LedgerEvent = (
    RequestSent
    | RequestWithdrawn
    | PermissionGranted
    | PermissionRejected
    | PermissionRevoked
    | UserMessage
    | CallConnected
    | CallUnanswered
    | UserPrompted
)

# --- the ledger of one pair ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ledger:
    state: PermissionState = PermissionState.NONE  # never EXPIRED: see effective_state
    expires_at: datetime | None = None
    # Event time of the last permission change by the user, the platform or a rule: orders late replies.
    state_changed_at: datetime | None = None
    # Requests sent since the last connected call (the counters a connected call resets).
    request_times: tuple[datetime, ...] = ()
    # Answered business-initiated calls (never reset; they age out of their window).
    connected_call_times: tuple[datetime, ...] = ()
    consecutive_unanswered: int = 0
    last_connected_at: datetime | None = None
    last_user_message_at: datetime | None = None


EMPTY_LEDGER = Ledger()


def effective_state(ledger: Ledger, now: datetime) -> PermissionState:
    if ledger.state is PermissionState.TEMPORARY and ledger.expires_at is not None and now >= ledger.expires_at:
        return PermissionState.EXPIRED
    return ledger.state


def has_permission(state: PermissionState) -> bool:
    return state in (PermissionState.TEMPORARY, PermissionState.PERMANENT)


S = PermissionState
_ANY = None  # wildcard in the table below

# (state before, event) → state after. The first matching row wins: exact state first, then _ANY.
# "grant_temporary" and "grant_permanent" split PermissionGranted by its kind.
PERMISSION_TRANSITIONS: Mapping[tuple[str, PermissionState | None], PermissionState] = {
    # A request changes nothing for a pair that holds a grant (the user may upgrade to permanent).
    ("request_sent", S.TEMPORARY): S.TEMPORARY,
    ("request_sent", S.PERMANENT): S.PERMANENT,
    ("request_sent", _ANY): S.REQUESTED,
    ("grant_temporary", _ANY): S.TEMPORARY,
    ("grant_permanent", _ANY): S.PERMANENT,
    # A decline ends any grant the pair held: fail closed rather than call a user who just said no.
    ("rejected", _ANY): S.REJECTED,
    ("revoked", _ANY): S.REVOKED,
}


def _transition_key(event: LedgerEvent) -> str | None:
    match event:
        case RequestSent():
            return "request_sent"
        case PermissionGranted(permanent=True):
            return "grant_permanent"
        case PermissionGranted():
            return "grant_temporary"
        case PermissionRejected():
            return "rejected"
        case PermissionRevoked():
            return "revoked"
        case _:
            return None


def next_permission_state(before: PermissionState, event: LedgerEvent) -> PermissionState | None:
    """The state after `event` from `before`, or None if the event is not a permission change."""
    key = _transition_key(event)
    if key is None:
        return None
    return PERMISSION_TRANSITIONS.get((key, before), PERMISSION_TRANSITIONS[(key, _ANY)])


@dataclass(frozen=True, slots=True)
class Applied:
    ledger: Ledger
    # Consequences the rules drew from the event (UserPrompted, PermissionRevoked by WACALL_RULE), for the audit log.
    derived: tuple[LedgerEvent, ...] = ()
    # True when the event was older than the last permission change and did not alter the permission.
    stale: bool = False


def _event_time(event: LedgerEvent) -> datetime:
    return event.sent_at if isinstance(event, RequestWithdrawn) else event.at


def _whole_seconds(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def is_stale(ledger: Ledger, at: datetime) -> bool:
    """Whether a permission change at `at` is older than the last one applied.

    Compared in whole seconds, the resolution of webhook timestamps; ties apply in arrival order.
    """
    return ledger.state_changed_at is not None and _whole_seconds(at) < _whole_seconds(ledger.state_changed_at)


def apply(ledger: Ledger, event: LedgerEvent, policy: Policy) -> Applied:
    """Fold one event into the pair's ledger."""
    at = _event_time(event)
    new_state = next_permission_state(effective_state(ledger, at), event)
    stale = False
    if new_state is not None and not isinstance(event, RequestSent):
        if is_stale(ledger, at):
            stale = True
        else:
            expires_at = None
            if isinstance(event, PermissionGranted) and not event.permanent:
                expires_at = event.expires_at or at + policy.temporary_grant_lifetime
            ledger = dataclasses.replace(ledger, state=new_state, expires_at=expires_at, state_changed_at=at)
            if isinstance(event, PermissionGranted):
                ledger = dataclasses.replace(ledger, consecutive_unanswered=0)
    derived: list[LedgerEvent] = []
    match event:
        case RequestSent():
            # Our own sends do not move the ordering watermark: only the user's and the platform's changes do.
            if new_state is not None and new_state is not ledger.state:
                # expires_at stays: a withdrawn request must fall back to the grant exactly as it was.
                ledger = dataclasses.replace(ledger, state=new_state)
            ledger = dataclasses.replace(ledger, request_times=tuple(sorted((*ledger.request_times, at))))
        case RequestWithdrawn(sent_at=sent_at, state_before=state_before):
            times = list(ledger.request_times)
            if sent_at in times:
                times.remove(sent_at)
            ledger = dataclasses.replace(ledger, request_times=tuple(times))
            if ledger.state is PermissionState.REQUESTED:
                ledger = dataclasses.replace(ledger, state=state_before)
        case UserMessage():
            latest = max(filter(None, (ledger.last_user_message_at, at)))
            ledger = dataclasses.replace(ledger, last_user_message_at=latest)
        case CallConnected(business_initiated=business_initiated):
            calls = ledger.connected_call_times
            if business_initiated:
                calls = tuple(sorted((*calls, at)))
            ledger = dataclasses.replace(
                ledger,
                connected_call_times=calls,
                request_times=tuple(t for t in ledger.request_times if t > at),
                consecutive_unanswered=0,
                last_connected_at=max(filter(None, (ledger.last_connected_at, at))),
                # The user calling the business or accepting its call opens the service window (§3).
                last_user_message_at=max(filter(None, (ledger.last_user_message_at, at))),
            )
        case CallUnanswered():
            streak = ledger.consecutive_unanswered + 1
            ledger = dataclasses.replace(ledger, consecutive_unanswered=streak)
            if streak == policy.prompt_after_unanswered:
                derived.append(UserPrompted(at))
            if streak >= policy.revoke_after_unanswered and has_permission(effective_state(ledger, at)):
                revocation = PermissionRevoked(at, Source.WACALL_RULE)
                ledger = apply(ledger, revocation, policy).ledger
                derived.append(revocation)
    return Applied(ledger, tuple(derived), stale)


def prune(ledger: Ledger, now: datetime, policy: Policy) -> Ledger:
    """Drop times that no window can count any more (keeps stored ledgers small)."""
    horizon = now - policy.longest_window
    return dataclasses.replace(
        ledger,
        request_times=tuple(t for t in ledger.request_times if t > horizon),
        connected_call_times=tuple(t for t in ledger.connected_call_times if t > horizon),
    )


# --- decisions ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitUsage:
    window: timedelta
    max_allowed: int
    used: int
    resets_at: datetime | None  # when the oldest counted use leaves the window


@dataclass(frozen=True, slots=True)
class ActionDecision:
    action: Action
    allowed: bool
    reason: Reason
    next_allowed_at: datetime | None
    limits: tuple[LimitUsage, ...]
    channel: Channel | None = None


@dataclass(frozen=True, slots=True)
class Evaluation:
    state: PermissionState
    expires_at: datetime | None
    consecutive_unanswered: int
    user_prompted: bool
    service_window_expires_at: datetime | None
    request: ActionDecision
    call: ActionDecision

    @property
    def actions(self) -> tuple[ActionDecision, ActionDecision]:
        return (self.request, self.call)


def window_usage(times: Iterable[datetime], limit: WindowLimit, now: datetime) -> tuple[LimitUsage, datetime | None]:
    """Usage of one rolling window at `now`, and when it next admits one more event (None if it admits one now).

    An event at t is counted while now < t + window. At the maximum, the window frees up when enough counted events
    age out to bring usage below the maximum.
    """
    counted = sorted(t for t in times if now < t + limit.window)
    used = len(counted)
    resets_at = counted[0] + limit.window if counted else None
    frees_at = counted[used - limit.max_allowed] + limit.window if used >= limit.max_allowed else None
    return LimitUsage(limit.window, limit.max_allowed, used, resets_at), frees_at


def _windowed(
    times: tuple[datetime, ...], limits: tuple[WindowLimit, ...], now: datetime
) -> tuple[tuple[LimitUsage, ...], datetime | None, bool]:
    usages, blocked_until, blocked = [], None, False
    for limit in limits:
        usage, frees_at = window_usage(times, limit, now)
        usages.append(usage)
        if frees_at is not None:
            blocked = True
            blocked_until = frees_at if blocked_until is None else max(blocked_until, frees_at)
    return tuple(usages), blocked_until, blocked


_NO_GRANT_REASON: Mapping[PermissionState, Reason] = {
    S.NONE: Reason.NO_PERMISSION,
    S.REQUESTED: Reason.NO_PERMISSION,
    S.REJECTED: Reason.PERMISSION_REJECTED,
    S.REVOKED: Reason.PERMISSION_REVOKED,
    S.EXPIRED: Reason.PERMISSION_EXPIRED,
}


def service_window_expires_at(ledger: Ledger, now: datetime, policy: Policy) -> datetime | None:
    if ledger.last_user_message_at is None:
        return None
    closes = ledger.last_user_message_at + policy.service_window
    return closes if now < closes else None


@dataclass(frozen=True, slots=True)
class Restriction:
    """The platform paused business-initiated calling for the business number (§2.5): no calls, no requests."""

    until: datetime | None  # None: until further notice

    def active(self, now: datetime) -> bool:
        return self.until is None or now < self.until


def evaluate(
    ledger: Ledger,
    now: datetime,
    policy: Policy,
    *,
    business_region: str,
    template_available: bool,
    call_in_progress: bool = False,
    restriction: Restriction | None = None,
) -> Evaluation:
    """Everything the API reports about a pair at `now`."""
    evaluation = _evaluate_unrestricted(
        ledger, now, policy, business_region=business_region, template_available=template_available,
        call_in_progress=call_in_progress,
    )  # fmt: skip
    if restriction is None or not restriction.active(now) or business_region in policy.denied_business_regions:
        return evaluation
    # Restricted: each action waits for the pause to end, and then for whatever else would still block it then.
    later = None
    if restriction.until is not None:
        later = _evaluate_unrestricted(
            ledger, restriction.until, policy, business_region=business_region,
            template_available=template_available, call_in_progress=call_in_progress,
        )  # fmt: skip

    def paused(now_decision: ActionDecision, later_decision: ActionDecision | None) -> ActionDecision:
        if later_decision is None:
            next_at = None
        else:
            next_at = restriction.until if later_decision.allowed else later_decision.next_allowed_at
        return dataclasses.replace(
            now_decision, allowed=False, reason=Reason.BUSINESS_RESTRICTED, next_allowed_at=next_at
        )

    return dataclasses.replace(
        evaluation,
        request=paused(evaluation.request, later.request if later else None),
        call=paused(evaluation.call, later.call if later else None),
    )


def _evaluate_unrestricted(
    ledger: Ledger,
    now: datetime,
    policy: Policy,
    *,
    business_region: str,
    template_available: bool,
    call_in_progress: bool,
) -> Evaluation:
    state = effective_state(ledger, now)
    country_ok = business_region not in policy.denied_business_regions
    window_closes = service_window_expires_at(ledger, now, policy)

    # Send a permission request: country, not permanent, request limits, a channel.
    request_limits, request_free_at, request_blocked = _windowed(ledger.request_times, policy.request_limits, now)
    channel = Channel.INTERACTIVE if window_closes is not None else Channel.TEMPLATE
    channel_ok = channel is Channel.INTERACTIVE or template_available
    if not country_ok:
        request = ActionDecision(
            Action.SEND_PERMISSION_REQUEST, False, Reason.COUNTRY_UNSUPPORTED, None, request_limits, channel
        )
    elif state is S.PERMANENT:
        request = ActionDecision(
            Action.SEND_PERMISSION_REQUEST, False, Reason.ALREADY_PERMANENT, None, request_limits, channel
        )
    elif request_blocked:
        # Waiting helps only if a channel still exists then: a template, or a window still open.
        still_sendable = template_available or (
            window_closes is not None and request_free_at is not None and request_free_at < window_closes
        )
        request = ActionDecision(
            Action.SEND_PERMISSION_REQUEST,
            False,
            Reason.REQUEST_LIMIT_REACHED,
            request_free_at if still_sendable else None,
            request_limits,
            channel,
        )
    elif not channel_ok:
        request = ActionDecision(
            Action.SEND_PERMISSION_REQUEST, False, Reason.NO_TEMPLATE_FOR_CLOSED_WINDOW, None, request_limits, channel
        )
    else:
        request = ActionDecision(Action.SEND_PERMISSION_REQUEST, True, Reason.ALLOWED, None, request_limits, channel)

    # Start a call: country, a live grant, no call in progress, the connected-call limit.
    call_limits, call_free_at, call_blocked = _windowed(ledger.connected_call_times, policy.connected_call_limits, now)
    if not country_ok:
        call = ActionDecision(Action.START_CALL, False, Reason.COUNTRY_UNSUPPORTED, None, call_limits)
    elif not has_permission(state):
        call = ActionDecision(Action.START_CALL, False, _NO_GRANT_REASON[state], None, call_limits)
    elif call_in_progress:
        call = ActionDecision(Action.START_CALL, False, Reason.CALL_IN_PROGRESS, None, call_limits)
    elif call_blocked:
        # Waiting helps only if the grant outlives the wait.
        if (
            state is S.TEMPORARY
            and call_free_at is not None
            and ledger.expires_at is not None
            and call_free_at >= ledger.expires_at
        ):
            call_free_at = None
        call = ActionDecision(Action.START_CALL, False, Reason.CALL_LIMIT_REACHED, call_free_at, call_limits)
    else:
        call = ActionDecision(Action.START_CALL, True, Reason.ALLOWED, None, call_limits)

    return Evaluation(
        state=state,
        expires_at=ledger.expires_at if state in (S.TEMPORARY, S.EXPIRED) else None,
        consecutive_unanswered=ledger.consecutive_unanswered,
        user_prompted=ledger.consecutive_unanswered >= policy.prompt_after_unanswered,
        service_window_expires_at=window_closes,
        request=request,
        call=call,
    )
