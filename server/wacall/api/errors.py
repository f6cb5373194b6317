"""Rich gRPC errors (google.rpc details) for refusals, platform errors and bad input. Messages say what to do.

Also the readers of request fields that refuse what the service cannot take (over-long or control-character text,
Durations out of range). A request that does not even parse, and a store that cannot reach its database, are
answered where methods are served (`serving.py`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from wacall import fields
from wacall.api.messages import action_detail, duration
from wacall.errors import REASONS, refusal_status
from wacall.fields import InvalidField
from wacall.permissions import PlatformRefusal, RuleRefusal
from wacall.store.base import StoreError
from wacall.upstreams.base import UpstreamUnavailable

Context = grpc.aio.ServicerContext[Any, Any]

# Status messages echo input at times; they travel in trailers, which clients cap (8 KiB by default).
MAX_MESSAGE = 1000


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def abort(context: Context, code: grpc.StatusCode, message: str, *details: Message) -> NoReturn:
    """Ends the RPC with a google.rpc.Status carrying the details (grpcio-status writes grpc-status-details-bin)."""
    message = shorten(message)
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")  # pragma: no cover


async def abort_bad_request(context: Context, field: str, why: str) -> NoReturn:
    why = shorten(why, MAX_MESSAGE // 2)
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
    *extra: Message,
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
    if not isinstance(error, UpstreamUnavailable):
        status = refusal_status(error.reason)
        code = error.platform_code
        message = f"the platform refused the request: error {code} ({error.meaning}): {error.message}"
        if status is grpc.StatusCode.RESOURCE_EXHAUSTED:
            await abort(
                context,
                status,
                message,
                error_details_pb2.QuotaFailure(
                    violations=[error_details_pb2.QuotaFailure.Violation(subject=subject, description=message)]
                ),
            )
        if status is grpc.StatusCode.FAILED_PRECONDITION:
            await abort_precondition(context, f"PLATFORM_{code}", subject, error.meaning, message)
        await abort(
            context,
            status,
            message,
            error_details_pb2.ErrorInfo(reason=f"PLATFORM_{code}", domain=error.platform, metadata=error.details),
        )
    hint = (
        "it may have been delivered: it stays counted until settled; retry with the same idempotency_key to learn how"
        if error.may_have_been_sent
        else "nothing was sent; retry later"
    )
    await abort(
        context,
        grpc.StatusCode.UNAVAILABLE,
        f"the platform could not be reached: {error}; {hint}",
        error_details_pb2.RetryInfo(retry_delay=duration(timedelta(seconds=5))),
    )


# How long a client is asked to wait before it retries while the database is unreachable.
STORE_RETRY_DELAY = timedelta(seconds=3)


async def abort_store_unavailable(context: Context, error: StoreError) -> NoReturn:
    """UNAVAILABLE with RetryInfo and the ErrorInfo reason STORE_UNAVAILABLE: nothing was decided; retry (with the
    same idempotency key, so a request whose commit was cut off is not made twice). Any other `StoreError` that
    reaches the API (the store closing during shutdown) is answered the same way: the service cannot decide now."""
    await abort(
        context,
        grpc.StatusCode.UNAVAILABLE,
        f"the ledger's database is unavailable: {error}; retry later with the same idempotency key",
        error_details_pb2.RetryInfo(retry_delay=duration(STORE_RETRY_DELAY)),
        error_details_pb2.ErrorInfo(reason="STORE_UNAVAILABLE", domain="wacall"),
    )


# --- reading request fields ---------------------------------------------------------------------------------------


async def duration_value(context: Context, value: duration_pb2.Duration, field: str) -> timedelta:
    """The Duration as a timedelta, or INVALID_ARGUMENT when it is not a valid Duration."""
    try:
        return fields.duration_value(value, field)
    except InvalidField as error:
        await abort_bad_request(context, error.field, error.why)


async def duration_field(
    context: Context, value: duration_pb2.Duration, field: str, *, minimum: timedelta, maximum: timedelta
) -> timedelta:
    """The Duration as a timedelta, or INVALID_ARGUMENT when it is not a valid Duration or outside the range."""
    try:
        return fields.duration_in(value, field, minimum=minimum, maximum=maximum)
    except InvalidField as error:
        await abort_bad_request(context, error.field, error.why)


async def text_field(context: Context, value: str, field: str, *, max_chars: int, multiline: bool = False) -> str:
    """`fields.bounded_text`, or INVALID_ARGUMENT."""
    try:
        return fields.bounded_text(value, field, max_chars=max_chars, multiline=multiline)
    except InvalidField as error:
        await abort_bad_request(context, error.field, error.why)


async def server_file_field(context: Context, value: str, field: str, directory: str, *, max_chars: int) -> str:
    """`fields.server_file` (the real path, inside `directory`), or INVALID_ARGUMENT naming the field."""
    try:
        return fields.server_file(value, field, directory, max_chars=max_chars)
    except InvalidField as error:
        await abort_bad_request(context, error.field, error.why)
