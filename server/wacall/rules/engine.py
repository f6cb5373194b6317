"""The rule engine: what one (business number, user) pair may do now, and how events change its ledger.

Pure: no I/O, no clock reads. Every function takes the pair's `Ledger`, the time, and a `Policy`.

How to read it
--------------
* `PERMISSION_TRANSITIONS` is the whole permission lifecycle: (state the pair is in, permission event) → (new
  state, what becomes of the expiry). EXPIRED is never stored: a TEMPORARY grant whose `expires_at` has passed *is*
  EXPIRED (the platform sends no webhook when a grant runs out). Likewise a REQUESTED pair whose every request is
  older than `request_lifetime` reads as the state it had before the request (NONE, REJECTED, REVOKED, EXPIRED).
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
* An automatic grant (the callback permission after the user called) never lowers a PERMANENT permission nor shortens
  a later expiry; where it would change nothing it is absorbed (recorded, no effect on the streak or the ordering).
* Facts adopted from the platform's own view (`adopted`: GetPermission reconcile, 138006, 138017) are stamped with
  the local time they were learnt, so they neither move the ordering mark (a webhook still in flight, stamped
  after the last real change, still applies) nor clear the unanswered streak.
* A request nobody answered is dead `request_lifetime` after it was sent (§1.3). A grant replying to a dead request
  is recorded, not applied (the platform lets nobody accept one); a decline still applies (fail closed: the platform
  keeps an answered request live for 7 days after the answer, and a no is never ignored).
* Times are kept to the microsecond, so a connected call resets exactly the requests sent before it, even within
  one second (an exact tie is ordered by arrival). Only the ordering of permission replies (`is_stale`) compares in
  whole seconds, the resolution of webhook timestamps.
* Margins (policy numbers): a window limit frees `boundary_margin` after the platform's own instant, and the
  template is preferred when the service window closes within `window_margin`. `next_allowed_at` and `resets_at`
  include the margin and are exact: allowed at that instant, refused one microsecond before.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from wacall.rules.policy import Policy, WindowLimit


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
    once no live request is left the pair falls back to the state it had before (the ledger's own record of it;
    `state_before`, what the caller saw, is informative only)."""

    sent_at: datetime
    state_before: PermissionState | None = None


@dataclass(frozen=True, slots=True)
class PermissionGranted:
    at: datetime
    permanent: bool
    # From the platform's expiration_timestamp; None means `at` + the policy's grant lifetime (temporary only).
    expires_at: datetime | None
    source: Source
    # Learnt from the platform's own view (reconcile, 138017) at local time `at`, not reported by a webhook.
    adopted: bool = False
    # When the request this reply answers (its context.id) was sent, if it was one of ours.
    request_sent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PermissionRejected:
    """The user declined a permission request."""

    at: datetime
    source: Source
    request_sent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PermissionRevoked:
    at: datetime
    source: Source
    # Learnt from the platform's own view (reconcile, 138006) at local time `at`, not reported by a webhook.
    adopted: bool = False


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
    # While REQUESTED: when each live request dies (sent + request_lifetime), and the stored state the pair had
    # before it was asked (never REQUESTED), which it reads again once every request is dead.
    request_expiries: tuple[datetime, ...] = ()
    state_before_request: PermissionState = PermissionState.NONE


EMPTY_LEDGER = Ledger()


def effective_state(ledger: Ledger, now: datetime) -> PermissionState:
    state = ledger.state
    if state is PermissionState.REQUESTED and not any(now < dies for dies in ledger.request_expiries):
        state = ledger.state_before_request
    if state is PermissionState.TEMPORARY and ledger.expires_at is not None and now >= ledger.expires_at:
        return PermissionState.EXPIRED
    return state


def has_permission(state: PermissionState) -> bool:
    return state in (PermissionState.TEMPORARY, PermissionState.PERMANENT)


S = PermissionState
_ANY = None  # wildcard in the table below


class Expiry(enum.Enum):
    """What a transition does to the pair's `expires_at`."""

    KEEP = "keep"  # stays as it was
    CLEAR = "clear"  # no expiry
    FROM_EVENT = "from_event"  # the grant's own expiry
    LATER = "later"  # the later of the pair's and the grant's


# (state before, event) → (state after, expiry). The first matching row wins: exact state first, then _ANY.
# PermissionGranted splits by kind: "grant_permanent", "grant_temporary", and "callback_grant" for the platform's
# automatic temporary grant after the user called (an adopted temporary grant is the platform's word: not a callback).
# A row that keeps the expiry (KEEP, LATER) and so leaves the permission exactly as it was is *absorbed*: recorded,
# with no effect on the ordering mark or the streak.
PERMISSION_TRANSITIONS: Mapping[tuple[str, PermissionState | None], tuple[PermissionState, Expiry]] = {
    # A request changes nothing for a pair that holds a grant (the user may upgrade to permanent).
    ("request_sent", S.TEMPORARY): (S.TEMPORARY, Expiry.KEEP),
    ("request_sent", S.PERMANENT): (S.PERMANENT, Expiry.KEEP),
    # The expiry stays: a withdrawn or dead request falls back to the grant exactly as it was.
    ("request_sent", _ANY): (S.REQUESTED, Expiry.KEEP),
    ("grant_temporary", _ANY): (S.TEMPORARY, Expiry.FROM_EVENT),
    ("grant_permanent", _ANY): (S.PERMANENT, Expiry.CLEAR),
    # An automatic grant never lowers a permanent permission (the user chose "always allow")...
    ("callback_grant", S.PERMANENT): (S.PERMANENT, Expiry.KEEP),
    # ... nor shortens a later expiry.
    ("callback_grant", S.TEMPORARY): (S.TEMPORARY, Expiry.LATER),
    ("callback_grant", _ANY): (S.TEMPORARY, Expiry.FROM_EVENT),
    # A decline ends any grant the pair held: fail closed rather than call a user who just said no.
    ("rejected", _ANY): (S.REJECTED, Expiry.CLEAR),
    ("revoked", _ANY): (S.REVOKED, Expiry.CLEAR),
}


def _transition_key(event: LedgerEvent) -> str | None:
    match event:
        case RequestSent():
            return "request_sent"
        case PermissionGranted(permanent=True):
            return "grant_permanent"
        case PermissionGranted(source=Source.PLATFORM_AUTOMATIC, adopted=False):
            return "callback_grant"
        case PermissionGranted():
            return "grant_temporary"
        case PermissionRejected():
            return "rejected"
        case PermissionRevoked():
            return "revoked"
        case _:
            return None


def transition(before: PermissionState, event: LedgerEvent) -> tuple[PermissionState, Expiry] | None:
    """The (state, expiry rule) after `event` from `before`, or None if the event is not a permission change."""
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
    # True when the event was a reply to a request already dead when the user answered (a grant from it is ignored).
    request_expired: bool = False
    # True when the transition left the permission exactly as it was (an automatic grant on a better permission).
    absorbed: bool = False


def _event_time(event: LedgerEvent) -> datetime:
    return event.sent_at if isinstance(event, RequestWithdrawn) else event.at


def _whole_seconds(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def is_stale(ledger: Ledger, at: datetime) -> bool:
    """Whether a permission change at `at` is older than the last one applied.

    Compared in whole seconds, the resolution of webhook timestamps; ties apply in arrival order.
    """
    return ledger.state_changed_at is not None and _whole_seconds(at) < _whole_seconds(ledger.state_changed_at)


def replies_to_a_dead_request(event: LedgerEvent, policy: Policy) -> bool:
    """Whether `event` answers one of our requests after it died (`request_lifetime` after it was sent, §1.3)."""
    if not isinstance(event, PermissionGranted | PermissionRejected) or event.request_sent_at is None:
        return False
    return event.at >= event.request_sent_at + policy.request_lifetime


def _expiry(rule: Expiry, ledger: Ledger, event: LedgerEvent, policy: Policy) -> datetime | None:
    granted = None
    if isinstance(event, PermissionGranted) and not event.permanent:
        granted = event.expires_at or event.at + policy.temporary_grant_lifetime
    match rule:
        case Expiry.KEEP:
            return ledger.expires_at
        case Expiry.CLEAR:
            return None
        case Expiry.FROM_EVENT:
            return granted
        case Expiry.LATER:
            return max(filter(None, (ledger.expires_at, granted)), default=None)


def _change_permission(ledger: Ledger, event: LedgerEvent, policy: Policy) -> Applied:
    """A grant, decline or revocation: the ordering, the table, then what the change resets."""
    at = _event_time(event)
    adopted = isinstance(event, PermissionGranted | PermissionRevoked) and event.adopted
    request_expired = replies_to_a_dead_request(event, policy)
    if request_expired and isinstance(event, PermissionGranted):
        return Applied(ledger, request_expired=True)
    # An adopted fact is the platform's view now: it is never stale, and it stamps nothing (see the docstring).
    if not adopted and is_stale(ledger, at):
        return Applied(ledger, stale=True, request_expired=request_expired)
    before = effective_state(ledger, at)
    found = transition(before, event)
    assert found is not None
    state, rule = found
    expires_at = _expiry(rule, ledger, event, policy)
    if rule in (Expiry.KEEP, Expiry.LATER) and state is before and expires_at == ledger.expires_at:
        return Applied(ledger, absorbed=True)
    ledger = dataclasses.replace(ledger, state=state, expires_at=expires_at, request_expiries=())
    if not adopted:
        ledger = dataclasses.replace(ledger, state_changed_at=at)
        if isinstance(event, PermissionGranted):
            # A new grant starts a new permission, so a new streak.
            ledger = dataclasses.replace(ledger, consecutive_unanswered=0)
    return Applied(ledger, request_expired=request_expired)


def apply(ledger: Ledger, event: LedgerEvent, policy: Policy) -> Applied:
    """Fold one event into the pair's ledger."""
    if isinstance(event, PermissionGranted | PermissionRejected | PermissionRevoked):
        return _change_permission(ledger, event, policy)
    at = _event_time(event)
    derived: list[LedgerEvent] = []
    match event:
        case RequestSent():
            # Our own sends do not move the ordering mark: only the user's and the platform's changes do.
            found = transition(effective_state(ledger, at), event)
            assert found is not None
            if found[0] is S.REQUESTED:
                asked = ledger.state is S.REQUESTED
                ledger = dataclasses.replace(
                    ledger,
                    state=S.REQUESTED,
                    # expires_at stays: a withdrawn or dead request falls back to the grant exactly as it was.
                    state_before_request=ledger.state_before_request if asked else ledger.state,
                    request_expiries=tuple(
                        sorted((*(ledger.request_expiries if asked else ()), at + policy.request_lifetime))
                    ),
                )
            ledger = dataclasses.replace(ledger, request_times=tuple(sorted((*ledger.request_times, at))))
        case RequestWithdrawn(sent_at=sent_at):
            times = list(ledger.request_times)
            if sent_at in times:
                times.remove(sent_at)
            expiries = list(ledger.request_expiries)
            if sent_at + policy.request_lifetime in expiries:
                expiries.remove(sent_at + policy.request_lifetime)
            ledger = dataclasses.replace(ledger, request_times=tuple(times), request_expiries=tuple(expiries))
            if ledger.state is S.REQUESTED and not expiries:
                ledger = dataclasses.replace(ledger, state=ledger.state_before_request)
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
                # Requests sent before the call stop counting (to the microsecond; an exact tie in arrival order).
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
    return Applied(ledger, tuple(derived))


def prune(ledger: Ledger, now: datetime, policy: Policy) -> Ledger:
    """Drop times that no window can count any more, and dead requests (keeps stored ledgers small)."""
    horizon = now - policy.longest_window - policy.boundary_margin
    return dataclasses.replace(
        ledger,
        request_times=tuple(t for t in ledger.request_times if t > horizon),
        connected_call_times=tuple(t for t in ledger.connected_call_times if t > horizon),
        request_expiries=tuple(t for t in ledger.request_expiries if t > now),
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


def window_usage(
    times: Iterable[datetime], limit: WindowLimit, now: datetime, margin: timedelta = timedelta(0)
) -> tuple[LimitUsage, datetime | None]:
    """Usage of one rolling window at `now`, and when it next admits one more event (None if it admits one now).

    An event at t is counted while now < t + window + margin (the margin covers the platform's clock running behind
    ours). At the maximum, the window frees up when enough counted events age out to bring usage below the maximum.
    """
    span = limit.window + margin
    counted = sorted(t for t in times if now < t + span)
    used = len(counted)
    resets_at = counted[0] + span if counted else None
    frees_at = counted[used - limit.max_allowed] + span if used >= limit.max_allowed else None
    return LimitUsage(limit.window, limit.max_allowed, used, resets_at), frees_at


def _windowed(
    times: tuple[datetime, ...], limits: tuple[WindowLimit, ...], now: datetime, margin: timedelta
) -> tuple[tuple[LimitUsage, ...], datetime | None, bool]:
    usages, blocked_until, blocked = [], None, False
    for limit in limits:
        usage, frees_at = window_usage(times, limit, now, margin)
        usages.append(usage)
        if frees_at is not None:
            blocked = True
            blocked_until = frees_at if blocked_until is None else max(blocked_until, frees_at)
    return tuple(usages), blocked_until, blocked


def request_channel(window_closes: datetime | None, now: datetime, policy: Policy, template_available: bool) -> Channel:
    """Interactive while the service window is open; the template once it has closed, and already when it closes
    within `window_margin` if there is one (an interactive request could arrive after the window closed)."""
    if window_closes is None:
        return Channel.TEMPLATE
    if template_available and window_closes - now < policy.window_margin:
        return Channel.TEMPLATE
    return Channel.INTERACTIVE


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
    request_limits, request_free_at, request_blocked = _windowed(
        ledger.request_times, policy.request_limits, now, policy.boundary_margin
    )
    channel = request_channel(window_closes, now, policy, template_available)
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
        # Waiting helps only if a channel still exists then: a template, or a window still open (without a template
        # the interactive request is used up to the window's close, margin or not).
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
    call_limits, call_free_at, call_blocked = _windowed(
        ledger.connected_call_times, policy.connected_call_limits, now, policy.boundary_margin
    )
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
