"""One table from platform error codes to our reasons, and from reasons to gRPC status codes.

Servicers never decide a status code themselves: they look it up here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from wacall.engine import Reason


@dataclass(frozen=True, slots=True)
class PlatformErrorInfo:
    meaning: str
    reason: Reason | None  # our rule reason, when the error is one of the rules
    status: grpc.StatusCode
    # In a call's terminate: the call never got set up, so it is FAILED and counts for nothing (§6.6).
    fails_call_setup: bool = False


# Meta Graph error codes (whatsapp-calling.md §8) → what they mean for us.
PLATFORM_ERRORS: Mapping[int, PlatformErrorInfo] = {
    100: PlatformErrorInfo("invalid parameter", None, grpc.StatusCode.INVALID_ARGUMENT),
    131009: PlatformErrorInfo("parameter value not valid", None, grpc.StatusCode.INVALID_ARGUMENT),
    131026: PlatformErrorInfo(
        "message undeliverable (client too old for call permission requests?)",
        None,
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    131030: PlatformErrorInfo(
        "recipient not in the test number's allowed list", None, grpc.StatusCode.FAILED_PRECONDITION
    ),
    131047: PlatformErrorInfo(
        "free-form message outside the 24 h customer-service window",
        Reason.NO_TEMPLATE_FOR_CLOSED_WINDOW,
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    131055: PlatformErrorInfo(
        "Graph calling not allowed: the number is in SIP mode", None, grpc.StatusCode.FAILED_PRECONDITION
    ),
    132001: PlatformErrorInfo(
        "template does not exist or is not approved in this language", None, grpc.StatusCode.FAILED_PRECONDITION
    ),
    138000: PlatformErrorInfo(
        "calling is not enabled on the business number", None, grpc.StatusCode.FAILED_PRECONDITION
    ),
    138006: PlatformErrorInfo(
        "no approved call permission from the user", Reason.NO_PERMISSION, grpc.StatusCode.FAILED_PRECONDITION
    ),
    138009: PlatformErrorInfo(
        "permission-request limit reached for this user",
        Reason.REQUEST_LIMIT_REACHED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    138012: PlatformErrorInfo(
        "connected-call limit reached for this user", Reason.CALL_LIMIT_REACHED, grpc.StatusCode.RESOURCE_EXHAUSTED
    ),
    138013: PlatformErrorInfo(
        "business-initiated calling is not available for this business number",
        Reason.COUNTRY_UNSUPPORTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    138017: PlatformErrorInfo(
        "the user already granted a permanent permission", Reason.ALREADY_PERMANENT, grpc.StatusCode.FAILED_PRECONDITION
    ),
    138001: PlatformErrorInfo(
        "the user cannot be called: not on WhatsApp, terms not accepted, or an unsupported client",
        None,
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    138002: PlatformErrorInfo(
        "concurrent-call limit of the business number reached", None, grpc.StatusCode.RESOURCE_EXHAUSTED
    ),
    138003: PlatformErrorInfo(
        "a call with this user is already in progress", Reason.CALL_IN_PROGRESS, grpc.StatusCode.ALREADY_EXISTS
    ),
    138004: PlatformErrorInfo(
        "connection error on the platform", None, grpc.StatusCode.UNAVAILABLE, fails_call_setup=True
    ),
    138005: PlatformErrorInfo(
        "call-initiation rate limit of the business number reached", None, grpc.StatusCode.RESOURCE_EXHAUSTED
    ),
    138007: PlatformErrorInfo(
        "connect timeout: the SDP answer was not applied in time",
        None,
        grpc.StatusCode.UNAVAILABLE,
        fails_call_setup=True,
    ),
    138019: PlatformErrorInfo("call setup failed", None, grpc.StatusCode.UNAVAILABLE, fails_call_setup=True),
    138020: PlatformErrorInfo("relay connection failed", None, grpc.StatusCode.UNAVAILABLE, fails_call_setup=True),
    138021: PlatformErrorInfo("media receive timeout", None, grpc.StatusCode.UNAVAILABLE),
    138022: PlatformErrorInfo("media transmit timeout", None, grpc.StatusCode.UNAVAILABLE),
    138023: PlatformErrorInfo("accepted but no media", None, grpc.StatusCode.UNAVAILABLE),
    138014: PlatformErrorInfo(
        "business-initiated calling is paused for this number (low quality)",
        Reason.BUSINESS_RESTRICTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    613: PlatformErrorInfo("permission lookup rate limit", None, grpc.StatusCode.UNAVAILABLE),
    190: PlatformErrorInfo("access token invalid or expired", None, grpc.StatusCode.FAILED_PRECONDITION),
}

UNKNOWN_PLATFORM_ERROR = PlatformErrorInfo("unexpected platform error", None, grpc.StatusCode.UNAVAILABLE)


def platform_error(code: int) -> PlatformErrorInfo:
    return PLATFORM_ERRORS.get(code, UNKNOWN_PLATFORM_ERROR)


CALL_SETUP_FAILURES = frozenset(code for code, info in PLATFORM_ERRORS.items() if info.fails_call_setup)


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    status: grpc.StatusCode
    # The PreconditionFailure / QuotaFailure subject type.
    violation_type: str
    advice: str


REASONS: Mapping[Reason, ReasonInfo] = {
    Reason.COUNTRY_UNSUPPORTED: ReasonInfo(
        grpc.StatusCode.FAILED_PRECONDITION,
        "COUNTRY_UNSUPPORTED",
        "business-initiated calling is not available for business numbers of this country; "
        "use a business number from another country",
    ),
    Reason.ALREADY_PERMANENT: ReasonInfo(
        grpc.StatusCode.FAILED_PRECONDITION,
        "ALREADY_PERMANENT",
        "the user granted a permanent permission; there is nothing to request: call them",
    ),
    Reason.REQUEST_LIMIT_REACHED: ReasonInfo(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REQUEST_LIMIT",
        "the permission-request limit for this user is used up; retry after next_allowed_at "
        "(a connected call resets it)",
    ),
    Reason.NO_TEMPLATE_FOR_CLOSED_WINDOW: ReasonInfo(
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_TEMPLATE",
        "the user's 24 h service window is closed: pass an approved permission-request template or configure "
        "a default template for this sender",
    ),
    Reason.NO_PERMISSION: ReasonInfo(
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_PERMISSION",
        "the user has not granted call permission: send a permission request first",
    ),
    Reason.PERMISSION_EXPIRED: ReasonInfo(
        grpc.StatusCode.FAILED_PRECONDITION,
        "PERMISSION_EXPIRED",
        "the user's temporary permission expired: send a new permission request",
    ),
    Reason.PERMISSION_REVOKED: ReasonInfo(
        grpc.StatusCode.FAILED_PRECONDITION,
        "PERMISSION_REVOKED",
        "the permission was revoked: only a new grant from the user allows calls again",
    ),
    Reason.PERMISSION_REJECTED: ReasonInfo(
        grpc.StatusCode.FAILED_PRECONDITION, "PERMISSION_REJECTED", "the user declined the last permission request"
    ),
    Reason.CALL_LIMIT_REACHED: ReasonInfo(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "CONNECTED_CALL_LIMIT",
        "the connected-call limit for this user is used up; retry after next_allowed_at",
    ),
    Reason.BUSINESS_RESTRICTED: ReasonInfo(
        grpc.StatusCode.FAILED_PRECONDITION,
        "BUSINESS_RESTRICTED",
        "the platform paused business-initiated calling and permission requests for this business number; "
        "wait for next_allowed_at, or improve call quality if the pause has no end",
    ),
    Reason.CALL_IN_PROGRESS: ReasonInfo(
        grpc.StatusCode.ALREADY_EXISTS, "CALL_IN_PROGRESS", "a call with this user is already in progress"
    ),
}
