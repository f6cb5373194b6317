"""From wacall's refusal reasons to SIP final responses: the one table a PBX's view of a refusal comes from.

Each refusal is a final response with `Warning: 399 <host> "<REASON>: <what to do>"`, REASON being the enum name.
The rules' reasons say what to do in the same words as the gRPC errors (`wacall.errors.REASONS`), so the two faces
never disagree; the call-level outcomes that are not rules have their advice here.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from wacall.calls import machine
from wacall.errors import REASONS
from wacall.rules.engine import Reason
from wacall.sip.message import Request, Response, RetryAfter, Warning, response_to
from wacall.upstreams.base import RefusalReason

__all__ = [
    "SIP_ENDINGS",
    "SIP_REFUSALS",
    "CallOutcome",
    "SipRefusal",
    "final_response",
    "platform_refusal",
    "retry_after_seconds",
]

# RFC 3261 §20.43: 399 is "miscellaneous warning", free text for people and tools.
WARN_CODE = 399


class CallOutcome(enum.Enum):
    """Why a front-door call is refused or ends that is not one of the rules' reasons."""

    SOURCE_NOT_ALLOWED = "source_not_allowed"
    BAD_CREDENTIALS = "bad_credentials"
    BUSINESS_NUMBER_NOT_ALLOWED = "business_number_not_allowed"
    INVALID_NUMBER = "invalid_number"
    NO_COMMON_CODEC = "no_common_codec"
    PLATFORM_FAILURE = "platform_failure"
    USER_DECLINED = "user_declined"
    NO_ANSWER = "no_answer"
    CANCELLED = "cancelled"
    ENDED_AT_ANSWER = "ended_at_answer"
    ENDED_BY_BUSINESS = "ended_by_business"
    SHUTTING_DOWN = "shutting_down"
    EXTENSION_UNSUPPORTED = "extension_unsupported"
    MEDIA_ENGINE_UNAVAILABLE = "media_engine_unavailable"
    MEDIA_SETUP_FAILED = "media_setup_failed"


@dataclass(frozen=True, slots=True)
class SipRefusal:
    status: int
    advice: str
    # Retry-After carries the seconds until next_allowed_at (a used-up limit: waiting helps).
    retry_after: bool = False


def _rule(status: int, reason: Reason, *, retry_after: bool = False) -> SipRefusal:
    return SipRefusal(status, REASONS[reason].advice, retry_after)


SIP_REFUSALS: Mapping[Reason | CallOutcome, SipRefusal] = {
    # The rules (the decision StartCall makes).
    Reason.COUNTRY_UNSUPPORTED: _rule(403, Reason.COUNTRY_UNSUPPORTED),
    Reason.ALREADY_PERMANENT: _rule(403, Reason.ALREADY_PERMANENT),
    Reason.REQUEST_LIMIT_REACHED: _rule(403, Reason.REQUEST_LIMIT_REACHED),
    Reason.NO_TEMPLATE_FOR_CLOSED_WINDOW: _rule(403, Reason.NO_TEMPLATE_FOR_CLOSED_WINDOW),
    Reason.NO_PERMISSION: _rule(403, Reason.NO_PERMISSION),
    Reason.PERMISSION_EXPIRED: _rule(403, Reason.PERMISSION_EXPIRED),
    Reason.PERMISSION_REVOKED: _rule(403, Reason.PERMISSION_REVOKED),
    Reason.PERMISSION_REJECTED: _rule(403, Reason.PERMISSION_REJECTED),
    Reason.BUSINESS_RESTRICTED: _rule(403, Reason.BUSINESS_RESTRICTED),
    Reason.CALL_LIMIT_REACHED: _rule(480, Reason.CALL_LIMIT_REACHED, retry_after=True),
    Reason.CALL_IN_PROGRESS: _rule(486, Reason.CALL_IN_PROGRESS),
    # The front door's own checks, before any rule is asked.
    CallOutcome.SOURCE_NOT_ALLOWED: SipRefusal(403, "no trunk allows this source address: add it to allowed_sources"),
    CallOutcome.BAD_CREDENTIALS: SipRefusal(403, "wrong credentials: use the trunk's username and password"),
    CallOutcome.BUSINESS_NUMBER_NOT_ALLOWED: SipRefusal(
        403, "call from one of the trunk's business_numbers (P-Asserted-Identity, else the From user part)"
    ),
    CallOutcome.INVALID_NUMBER: SipRefusal(404, "dial the WhatsApp user's number as +E164 or digits"),
    CallOutcome.NO_COMMON_CODEC: SipRefusal(488, "offer one of the trunk's codecs (PCMU, PCMA or opus)"),
    # How a call that was placed ends before it is answered.
    CallOutcome.PLATFORM_FAILURE: SipRefusal(503, "the platform could not place the call; try again later"),
    CallOutcome.USER_DECLINED: SipRefusal(603, "the user declined the call"),
    CallOutcome.NO_ANSWER: SipRefusal(480, "the user did not answer"),
    CallOutcome.CANCELLED: SipRefusal(487, "the caller cancelled the call"),
    # Ended on wacall's side, not by the PBX: a 487 would tell the PBX it cancelled, and it would not fail over.
    CallOutcome.ENDED_AT_ANSWER: SipRefusal(480, "the call ended as the user answered; call again"),
    CallOutcome.ENDED_BY_BUSINESS: SipRefusal(480, "the call was ended on wacall's side (EndCall) before the answer"),
    CallOutcome.SHUTTING_DOWN: SipRefusal(503, "this wacall is shutting down; retry, or use another", retry_after=True),
    CallOutcome.EXTENSION_UNSUPPORTED: SipRefusal(420, "wacall supports none of the extensions in Require"),
    # SIP media goes through rtpengine only: without one the front door takes no calls.
    CallOutcome.MEDIA_ENGINE_UNAVAILABLE: SipRefusal(
        503, "wacall runs without a media engine: install rtpengine-daemon, or give --rtpengine, and restart"
    ),
    CallOutcome.MEDIA_SETUP_FAILED: SipRefusal(503, "the media engine could not set up the call; try again later"),
}

# How a placed call that ends before it was answered ends for the PBX (an answered call got its 200 OK).
SIP_ENDINGS: Mapping[machine.CallOutcome, CallOutcome] = {
    machine.CallOutcome.REJECTED: CallOutcome.USER_DECLINED,
    machine.CallOutcome.UNANSWERED: CallOutcome.NO_ANSWER,
    machine.CallOutcome.FAILED: CallOutcome.PLATFORM_FAILURE,
    machine.CallOutcome.CANCELLED: CallOutcome.CANCELLED,
}


def platform_refusal(reason: RefusalReason) -> Reason | CallOutcome:
    """What the PBX hears when the platform refused to place the call: the rule it named (it may know of a revoked
    permission before we do), else a platform failure."""
    return reason if isinstance(reason, Reason) and reason in SIP_REFUSALS else CallOutcome.PLATFORM_FAILURE


def retry_after_seconds(next_allowed_at: datetime, now: datetime) -> int:
    """Whole seconds until `next_allowed_at`, rounded up (retrying earlier is refused), never negative."""
    return max(0, math.ceil((next_allowed_at - now).total_seconds()))


def final_response(
    request: Request,
    reason: Reason | CallOutcome,
    *,
    agent: str,
    to_tag: str,
    now: datetime | None = None,
    next_allowed_at: datetime | None = None,
    detail: str | None = None,
) -> Response:
    """The final response refusing (or ending) `request` for `reason`, with its Warning and, for a used-up limit
    whose `next_allowed_at` is known, Retry-After. `detail` replaces the table's advice where the caller knows
    better what is wrong (an invalid number says why); `agent` is wacall's host as the PBX knows it."""
    refusal = SIP_REFUSALS.get(reason)
    if refusal is None:
        raise ValueError(f"{reason.name} is not a refusal")
    text = _printable(f"{reason.name}: {detail or refusal.advice}")
    headers = [("Warning", str(Warning(WARN_CODE, agent, text)))]
    if refusal.retry_after and next_allowed_at is not None:
        if now is None:
            raise ValueError("Retry-After needs now as well as next_allowed_at")
        headers.append(("Retry-After", str(RetryAfter(retry_after_seconds(next_allowed_at, now)))))
    return response_to(request, refusal.status, to_tag=to_tag, headers=headers)


# The longest Warning text sent: a platform's message can be long, and a PBX logs it on one line.
MAX_WARNING_TEXT = 300


def _printable(text: str) -> str:
    """`text` as a Warning can carry it: control characters (a platform's own words may hold a newline) as spaces,
    at most `MAX_WARNING_TEXT` characters."""
    cleaned = "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)
    return cleaned if len(cleaned) <= MAX_WARNING_TEXT else cleaned[: MAX_WARNING_TEXT - 3] + "..."
