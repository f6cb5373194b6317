"""What the platform tells the service, as the domain reads it: typed items, whichever platform's webhooks they came in.

An upstream's parser turns its deliveries into these (Meta's: `upstreams/meta/webhook_payloads.py`), and the ingest
dispatcher hands each to the service that applies it. No platform's vocabulary is read here: the platform's ids
travel as opaque strings (the business account, the user, a message or a call), and its own error codes only for
the record, beside what they mean.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class ReplyTo(enum.StrEnum):
    """What a permission reply answers. The value is recorded as its event's `via`."""

    REQUEST = "request"  # a permission request of ours
    CALLBACK = "callback"  # a call the user made: the grant lets the business call back
    PROFILE = "profile"  # nothing: the user (or the platform) changed it from the business profile


@dataclass(frozen=True, slots=True)
class PermissionReply:
    """The user's (or the platform's) answer about calling permission."""

    business_account: str  # the platform's id of the business account it is for
    user_id: str  # the platform's id of the user
    message_id: str
    timestamp: datetime
    accepted: bool
    permanent: bool
    expires_at: datetime | None
    automatic: bool  # the platform answered, not the user
    context_id: str | None  # the id of what it answers (our request's message, the user's call); None: nothing
    via: ReplyTo


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """Any other message from the user: it opens the customer-service window."""

    business_account: str
    user_id: str
    message_id: str
    timestamp: datetime
    type: str  # text, image, ...: recorded, never read


class DeliveryStatus(enum.StrEnum):
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    OTHER = "other"  # a status the service does not act on


@dataclass(frozen=True, slots=True)
class MessageStatus:
    """What became of a message the business sent."""

    business_account: str
    message_id: str
    user_id: str  # the recipient
    status: DeliveryStatus
    timestamp: datetime
    error_codes: tuple[int, ...]  # the platform's own, for the record
    error_meaning: str  # what the failure means, in ours


class CallEventKind(enum.StrEnum):
    """What happened to a call on the platform. The value is part of the key that deduplicates retries."""

    CONNECT = "connect"  # the call's media is being set up: a user's offer, or the answer to ours
    RINGING = "ringing"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    TERMINATE = "terminate"  # the call ended (or never got set up)
    UNKNOWN = "unknown"  # a kind the service does not know: changes nothing


@dataclass(frozen=True, slots=True)
class CallEventItem:
    """One event of one call, as the platform reported it."""

    business_account: str
    call_id: str  # the platform's id of the call
    kind: CallEventKind
    timestamp: datetime
    user_id: str  # the far end: who called, or who was called
    is_user_calling: bool = False  # a connect that offers a call from the user (to answer)
    sdp: str = ""
    sdp_type: str = ""  # offer | answer, with an SDP
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration_seconds: int | None = None
    error_codes: tuple[int, ...] = ()  # the platform's own, for the record
    error_message: str = ""
    setup_failed: bool = False  # the call never got set up: FAILED, and it counts for nothing
    opaque: str = ""  # what the business attached to the call when it placed it


@dataclass(frozen=True, slots=True)
class BusinessRestriction:
    """Business-initiated calling paused for a business number (until a time, or until lifted), or no longer.

    The platform names the number by its account id or by the number itself (`display_number`, as it wrote it),
    or both.
    """

    business_account: str
    display_number: str
    timestamp: datetime | None  # when the platform says it happened, when it says
    restricted: bool
    until: datetime | None


@dataclass(frozen=True, slots=True)
class Ignored:
    """Part of a delivery that does not concern calling, or that the service cannot use: acknowledged, not applied."""

    field: str  # which part of the delivery
    why: str


InboundItem = PermissionReply | InboundMessage | MessageStatus | CallEventItem | BusinessRestriction | Ignored
