"""Rich gRPC errors (google.rpc details) for refusals, platform errors and bad input. Messages say what to do."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from wacall.api_messages import action_detail, duration
from wacall.errors import REASONS, platform_error
from wacall.graph import GraphError
from wacall.permissions import PlatformRefusal, RuleRefusal

Context = grpc.aio.ServicerContext[Any, Any]


async def abort(context: Context, code: grpc.StatusCode, message: str, *details: object) -> NoReturn:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)  # type: ignore[arg-type]
        packed.append(holder)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
    await context.abort(code, message, trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),))
    raise AssertionError("unreachable")  # pragma: no cover


async def abort_bad_request(context: Context, field: str, why: str) -> NoReturn:
    await abort(
        context,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field}: {why}",
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=why)]
        ),
    )


async def abort_precondition(
    context: Context,
    violation_type: str,
    subject: str,
    description: str,
    message: str,
    *extra: object,
    status: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION,
) -> NoReturn:
    """A refusal with one PreconditionFailure violation (and any extra details, e.g. RetryInfo); the status is
    FAILED_PRECONDITION unless a more specific one applies (ALREADY_EXISTS for a call in progress)."""
    await abort(
        context,
        status,
        message,
        *extra,
        error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=violation_type, subject=subject, description=description
                )
            ]
        ),
    )


async def abort_refusal(context: Context, refusal: RuleRefusal, now: datetime) -> NoReturn:
    decision = refusal.decision
    info = REASONS[decision.reason]
    subject = f"{refusal.pair.business}:{refusal.pair.user}"
    message = (
        f"{decision.action.value} refused for {refusal.pair.user} from {refusal.pair.business}: "
        f"{action_detail(decision)}"
    )
    # Whenever waiting helps (a used-up limit, a paused business number), say how long.
    retry = (
        [error_details_pb2.RetryInfo(retry_delay=duration(decision.next_allowed_at - now))]
        if decision.next_allowed_at is not None
        else []
    )
    if info.status is grpc.StatusCode.RESOURCE_EXHAUSTED:
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=subject, description=f"{u.used} of {u.max_allowed} per {_window_text(u.window)} used"
                )
                for u in decision.limits
                if u.used >= u.max_allowed
            ]
        )
        await abort(context, info.status, message, *retry, quota)
    await abort_precondition(context, info.violation_type, subject, info.advice, message, *retry, status=info.status)


def _window_text(window: timedelta) -> str:
    hours = int(window.total_seconds() // 3600)
    return f"{hours // 24} days" if hours % 24 == 0 and hours > 24 else f"{hours} h"


async def abort_platform(context: Context, refusal: PlatformRefusal) -> NoReturn:
    error = refusal.error
    subject = f"{refusal.pair.business}:{refusal.pair.user}"
    if isinstance(error, GraphError):
        info = platform_error(error.code)
        message = f"the platform refused the request: error {error.code} ({info.meaning}): {error.message}"
        if info.status is grpc.StatusCode.RESOURCE_EXHAUSTED:
            await abort(
                context,
                info.status,
                message,
                error_details_pb2.QuotaFailure(
                    violations=[error_details_pb2.QuotaFailure.Violation(subject=subject, description=message)]
                ),
            )
        if info.status is grpc.StatusCode.FAILED_PRECONDITION:
            await abort_precondition(context, f"PLATFORM_{error.code}", subject, info.meaning, message)
        await abort(
            context,
            info.status,
            message,
            error_details_pb2.ErrorInfo(
                reason=f"PLATFORM_{error.code}",
                domain="graph.facebook.com",
                metadata={"details": error.details, "http_status": str(error.http_status)},
            ),
        )
    hint = (
        "it may have been delivered: it stays counted until settled; retry with the same idempotency_key to learn how"
        if error.maybe_sent
        else "nothing was sent; retry later"
    )
    await abort(
        context,
        grpc.StatusCode.UNAVAILABLE,
        f"the platform could not be reached: {error}; {hint}",
        error_details_pb2.RetryInfo(retry_delay=duration(timedelta(seconds=5))),
    )
