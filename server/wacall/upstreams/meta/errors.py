"""Meta's Graph error codes (whatsapp-calling.md §8): what each means, and which neutral reason it is to us.

The one place a Meta error code is read. The API layer maps the neutral reason to a gRPC status (wacall.errors).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wacall.rules.engine import Reason
from wacall.upstreams.base import RefusalReason, UpstreamReason


@dataclass(frozen=True, slots=True)
class MetaErrorInfo:
    meaning: str
    reason: RefusalReason

    @property
    def retryable(self) -> bool:
        return self.reason in RETRYABLE

    @property
    def fails_call_setup(self) -> bool:
        """In a call's terminate: the call never got set up, so it is FAILED and counts for nothing (§6.6)."""
        return self.reason is UpstreamReason.CALL_SETUP_FAILED


RETRYABLE = frozenset(
    {
        UpstreamReason.TRANSIENT,
        UpstreamReason.CALL_SETUP_FAILED,
        UpstreamReason.CAPACITY,
        Reason.REQUEST_LIMIT_REACHED,
        Reason.CALL_LIMIT_REACHED,
    }
)

META_ERRORS: Mapping[int, MetaErrorInfo] = {
    100: MetaErrorInfo("invalid parameter", UpstreamReason.INVALID_REQUEST),
    131009: MetaErrorInfo("parameter value not valid", UpstreamReason.INVALID_REQUEST),
    131026: MetaErrorInfo(
        "message undeliverable (client too old for call permission requests?)", UpstreamReason.NOT_POSSIBLE
    ),
    131030: MetaErrorInfo("recipient not in the test number's allowed list", UpstreamReason.NOT_POSSIBLE),
    131047: MetaErrorInfo(
        "free-form message outside the 24 h customer-service window", Reason.NO_TEMPLATE_FOR_CLOSED_WINDOW
    ),
    131055: MetaErrorInfo("Graph calling not allowed: the number is in SIP mode", UpstreamReason.NOT_POSSIBLE),
    132001: MetaErrorInfo("template does not exist or is not approved in this language", UpstreamReason.NOT_POSSIBLE),
    138000: MetaErrorInfo("calling is not enabled on the business number", UpstreamReason.NOT_POSSIBLE),
    138006: MetaErrorInfo("no approved call permission from the user", Reason.NO_PERMISSION),
    138009: MetaErrorInfo("permission-request limit reached for this user", Reason.REQUEST_LIMIT_REACHED),
    138012: MetaErrorInfo("connected-call limit reached for this user", Reason.CALL_LIMIT_REACHED),
    138013: MetaErrorInfo(
        "business-initiated calling is not available for this business number", Reason.COUNTRY_UNSUPPORTED
    ),
    138017: MetaErrorInfo("the user already granted a permanent permission", Reason.ALREADY_PERMANENT),
    138001: MetaErrorInfo(
        "the user cannot be called: not on WhatsApp, terms not accepted, or an unsupported client",
        UpstreamReason.NOT_POSSIBLE,
    ),
    138002: MetaErrorInfo("concurrent-call limit of the business number reached", UpstreamReason.CAPACITY),
    138003: MetaErrorInfo("a call with this user is already in progress", Reason.CALL_IN_PROGRESS),
    138004: MetaErrorInfo("connection error on the platform", UpstreamReason.CALL_SETUP_FAILED),
    138005: MetaErrorInfo("call-initiation rate limit of the business number reached", UpstreamReason.CAPACITY),
    138007: MetaErrorInfo("connect timeout: the SDP answer was not applied in time", UpstreamReason.CALL_SETUP_FAILED),
    138019: MetaErrorInfo("call setup failed", UpstreamReason.CALL_SETUP_FAILED),
    138020: MetaErrorInfo("relay connection failed", UpstreamReason.CALL_SETUP_FAILED),
    138021: MetaErrorInfo("media receive timeout", UpstreamReason.TRANSIENT),
    138022: MetaErrorInfo("media transmit timeout", UpstreamReason.TRANSIENT),
    138023: MetaErrorInfo("accepted but no media", UpstreamReason.TRANSIENT),
    138014: MetaErrorInfo(
        "business-initiated calling is paused for this number (low quality)", Reason.BUSINESS_RESTRICTED
    ),
    613: MetaErrorInfo("permission lookup rate limit", UpstreamReason.TRANSIENT),
    190: MetaErrorInfo("access token invalid or expired", UpstreamReason.NOT_POSSIBLE),
}

UNKNOWN_META_ERROR = MetaErrorInfo("unexpected platform error", UpstreamReason.TRANSIENT)


def meta_error(code: int) -> MetaErrorInfo:
    return META_ERRORS.get(code, UNKNOWN_META_ERROR)


CALL_SETUP_FAILURES = frozenset(code for code, info in META_ERRORS.items() if info.fails_call_setup)
