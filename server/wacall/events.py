"""The event log's vocabulary: every kind of event the service records, and how an event about a pair's permission
is written.

The kinds are stored in the log and reach the API (WatchEvents, ListEvents) as `EventKind` values: a kind's string
never changes, or stored logs would stop mapping. Events about a pair's permission are written in one place
(`describe` for what a ledger event says, `permission_event` for the record with the state it leaves), so every
writer spells a permission's facts the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime

from wacall.rules import engine
from wacall.rules.engine import Ledger, LedgerEvent, Source
from wacall.store import EventRecord, Pair


class EventKind(enum.StrEnum):
    """What an event in the log is about. The values are what the log stores."""

    PERMISSION_REQUEST_SENT = "permission_request_sent"
    PERMISSION_REQUEST_FAILED = "permission_request_failed"
    PERMISSION_GRANTED = "permission_granted"
    PERMISSION_REJECTED = "permission_rejected"
    PERMISSION_REVOKED = "permission_revoked"
    USER_MESSAGE_RECEIVED = "user_message_received"
    CALL_CONNECTED = "call_connected"
    CALL_UNANSWERED = "call_unanswered"
    USER_PROMPTED = "user_prompted"
    CALL_UPDATED = "call_updated"
    BUSINESS_RESTRICTION_CHANGED = "business_restriction_changed"
    # The contact centre (wacall.queues.service writes them; the change itself is the "contact_center" attribute).
    QUEUE_CHANGED = "queue_changed"
    AGENT_CHANGED = "agent_changed"
    AGENT_PRESENCE_CHANGED = "agent_presence_changed"
    CALL_QUEUED = "call_queued"
    OFFER_MADE = "offer_made"
    OFFER_WITHDRAWN = "offer_withdrawn"
    CALL_ASSIGNED = "call_assigned"
    CALL_OVERFLOWED = "call_overflowed"
    QUEUE_TIMED_OUT = "queue_timed_out"
    QUEUE_MISSING = "queue_missing"


def describe(event: LedgerEvent) -> tuple[EventKind, Source, dict[str, str]]:
    """How the log records a ledger event: its kind, who caused it, and what it says of the permission."""
    match event:
        case engine.RequestSent():
            return EventKind.PERMISSION_REQUEST_SENT, Source.BUSINESS, {}
        case engine.RequestWithdrawn():
            return EventKind.PERMISSION_REQUEST_FAILED, Source.BUSINESS, {}
        case engine.PermissionGranted(permanent=permanent, source=source, adopted=adopted):
            attributes = {"is_permanent": str(permanent).lower()}
            return EventKind.PERMISSION_GRANTED, source, {**attributes, "adopted": "true"} if adopted else attributes
        case engine.PermissionRejected(source=source):
            return EventKind.PERMISSION_REJECTED, source, {}
        case engine.PermissionRevoked(source=source, adopted=adopted):
            return EventKind.PERMISSION_REVOKED, source, {"adopted": "true"} if adopted else {}
        case engine.UserMessage():
            return EventKind.USER_MESSAGE_RECEIVED, Source.USER_ACTION, {}
        case engine.CallConnected(business_initiated=business_initiated):
            return (
                EventKind.CALL_CONNECTED,
                Source.USER_ACTION,
                {"business_initiated": str(business_initiated).lower()},
            )
        case engine.CallUnanswered():
            return EventKind.CALL_UNANSWERED, Source.USER_ACTION, {}
        case engine.UserPrompted():
            return EventKind.USER_PROMPTED, Source.WACALL_RULE, {}
    raise AssertionError(f"unhandled ledger event {event!r}")  # pragma: no cover


def grant_expiry(event: LedgerEvent, ledger: Ledger) -> datetime | None:
    """When the permission a temporary grant leaves ends (the `expires_at` its event records); None otherwise."""
    if isinstance(event, engine.PermissionGranted) and not event.permanent:
        return ledger.expires_at
    return None


def permission_event(
    pair: Pair,
    kind: EventKind,
    source: Source,
    occurred_at: datetime,
    now: datetime,
    ledger: Ledger,
    attributes: Mapping[str, str],
) -> EventRecord:
    """An event about the pair's permission, recorded at `now` with the state `ledger` leaves it in then."""
    return EventRecord(pair, kind, source.value, occurred_at, now, engine.effective_state(ledger, now), attributes)
