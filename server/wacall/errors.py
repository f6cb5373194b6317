"""From our reasons (the rules' and an upstream's refusals) to gRPC status codes.

Servicers never decide a status code themselves: they look it up here. Platform error codes are the upstream's
business (wacall.upstreams.meta.errors); they reach us as neutral reasons.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from wacall.rules.engine import Reason
from wacall.upstreams.base import RefusalReason, UpstreamReason


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


# An upstream's refusals that are not one of the rules.
UPSTREAM_STATUS: Mapping[UpstreamReason, grpc.StatusCode] = {
    UpstreamReason.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    UpstreamReason.NOT_POSSIBLE: grpc.StatusCode.FAILED_PRECONDITION,
    UpstreamReason.CAPACITY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UpstreamReason.CALL_SETUP_FAILED: grpc.StatusCode.UNAVAILABLE,
    UpstreamReason.TRANSIENT: grpc.StatusCode.UNAVAILABLE,
}


def refusal_status(reason: RefusalReason) -> grpc.StatusCode:
    return REASONS[reason].status if isinstance(reason, Reason) else UPSTREAM_STATUS[reason]
