"""gRPC servicer for wacall.v1.CallingService: validate, call the permission service, map the result.

Errors carry google.rpc rich details: RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure for used-up limits,
FAILED_PRECONDITION with PreconditionFailure for permission and configuration problems, INVALID_ARGUMENT with
BadRequest for bad fields. Every message says what to do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall import engine
from wacall.engine import ActionDecision, Evaluation
from wacall.errors import REASONS, platform_error
from wacall.graph import GraphError, TemplateRef
from wacall.numbers import InvalidNumber, parse_number
from wacall.permissions import (
    IdempotencyConflict,
    InvalidField,
    PermissionService,
    PermissionView,
    PlatformRefusal,
    RuleRefusal,
)
from wacall.policy import Policy, WindowLimit
from wacall.senders import UnknownSender
from wacall.store import EventRecord, Pair

STATE = {s: getattr(pb, f"PERMISSION_STATE_{s.name}") for s in engine.PermissionState}
REASON = {r: getattr(pb, f"REASON_{r.name}") for r in engine.Reason}
ACTION = {a: getattr(pb, f"ACTION_{a.name}") for a in engine.Action}
CHANNEL = {c: getattr(pb, f"CHANNEL_{c.name}") for c in engine.Channel}
SOURCE = {s.value: getattr(pb, f"EVENT_SOURCE_{s.name}") for s in engine.Source}
EVENT_KIND = {
    name: getattr(pb, f"EVENT_KIND_{name.upper()}")
    for name in (
        "permission_request_sent",
        "permission_request_failed",
        "permission_granted",
        "permission_rejected",
        "permission_revoked",
        "user_message_received",
        "call_connected",
        "call_unanswered",
        "user_prompted",
    )
}
MAX_PAGE = 1000

Context = grpc.aio.ServicerContext[Any, Any]


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def duration(value: timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def _action_detail(decision: ActionDecision) -> str:
    if decision.allowed:
        return "allowed now"
    advice = REASONS[decision.reason].advice
    if decision.next_allowed_at:
        return f"{advice}; next allowed at {decision.next_allowed_at.isoformat()}"
    return advice


def action_status(decision: ActionDecision) -> pb.ActionStatus:
    return pb.ActionStatus(
        action=ACTION[decision.action],
        allowed=decision.allowed,
        reason=REASON[decision.reason],
        next_allowed_at=timestamp(decision.next_allowed_at),
        limits=[
            pb.Limit(
                window=duration(u.window), max_allowed=u.max_allowed, used=u.used, resets_at=timestamp(u.resets_at)
            )
            for u in decision.limits
        ],
        channel=CHANNEL[decision.channel] if decision.channel else pb.CHANNEL_UNSPECIFIED,
        detail=_action_detail(decision),
    )


def permission_message(
    pair: Pair, evaluation: Evaluation, updated_at: datetime | None, policy: Policy
) -> pb.Permission:
    return pb.Permission(
        business_number=pair.business,
        user_number=pair.user,
        state=STATE[evaluation.state],
        expires_at=timestamp(evaluation.expires_at),
        consecutive_unanswered_calls=evaluation.consecutive_unanswered,
        user_prompted=evaluation.user_prompted,
        service_window_expires_at=timestamp(evaluation.service_window_expires_at),
        actions=[action_status(d) for d in evaluation.actions],
        updated_at=timestamp(updated_at),
        policy=policy.label,
    )


def view_message(view: PermissionView) -> pb.Permission:
    return permission_message(view.pair, view.evaluation, view.updated_at, view.policy)


def event_message(record: EventRecord) -> pb.Event:
    return pb.Event(
        cursor=str(record.cursor),
        kind=EVENT_KIND.get(record.kind, pb.EVENT_KIND_UNSPECIFIED),
        business_number=record.pair.business,
        user_number=record.pair.user,
        occurred_at=timestamp(record.occurred_at),
        recorded_at=timestamp(record.recorded_at),
        source=SOURCE.get(record.source, pb.EVENT_SOURCE_UNSPECIFIED),
        permission_state=STATE[record.state_after],
        attributes=dict(record.attributes),
    )


def limit_message(limit: WindowLimit) -> pb.Limit:
    return pb.Limit(window=duration(limit.window), max_allowed=limit.max_allowed)


def policy_message(policy: Policy) -> pb.Policy:
    return pb.Policy(
        name=policy.name,
        version=policy.version,
        source=policy.source,
        permission_request_limits=[limit_message(x) for x in policy.request_limits],
        connected_call_limits=[limit_message(x) for x in policy.connected_call_limits],
        temporary_grant_lifetime=duration(policy.temporary_grant_lifetime),
        prompt_after_unanswered=policy.prompt_after_unanswered,
        revoke_after_unanswered=policy.revoke_after_unanswered,
        service_window=duration(policy.service_window),
        denied_business_regions=sorted(policy.denied_business_regions),
    )


# --- rich errors --------------------------------------------------------------------------------------------------


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


async def abort_refusal(context: Context, refusal: RuleRefusal, now: datetime) -> NoReturn:
    decision = refusal.decision
    info = REASONS[decision.reason]
    subject = f"{refusal.pair.business}:{refusal.pair.user}"
    message = (
        f"{decision.action.value} refused for {refusal.pair.user} from {refusal.pair.business}: "
        f"{_action_detail(decision)}"
    )
    if info.status is grpc.StatusCode.RESOURCE_EXHAUSTED:
        details: list[object] = []
        if decision.next_allowed_at is not None:
            details.append(error_details_pb2.RetryInfo(retry_delay=duration(decision.next_allowed_at - now)))
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=subject,
                        description=f"{u.used} of {u.max_allowed} per {_window_text(u.window)} used",
                    )
                    for u in decision.limits
                    if u.used >= u.max_allowed
                ]
            )
        )
        await abort(context, info.status, message, *details)
    await abort(
        context,
        info.status,
        message,
        error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=info.violation_type, subject=subject, description=info.advice
                )
            ]
        ),
    )


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
            await abort(
                context,
                info.status,
                message,
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=f"PLATFORM_{error.code}", subject=subject, description=info.meaning
                        )
                    ]
                ),
            )
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
        "it may have been delivered; check ListEvents before retrying"
        if error.maybe_sent
        else "nothing was sent; retry later"
    )
    await abort(
        context,
        grpc.StatusCode.UNAVAILABLE,
        f"the platform could not be reached: {error}; {hint}",
        error_details_pb2.RetryInfo(retry_delay=duration(timedelta(seconds=5))),
    )


def parse_cursor(value: str, field: str) -> int | None:
    if not value:
        return 0
    return int(value) if value.isdigit() else None


class CallingServicer(calling_pb2_grpc.CallingServiceServicer):
    def __init__(self, permissions: PermissionService) -> None:
        self.permissions = permissions

    async def _guard(self, context: Context, error: Exception) -> NoReturn:
        match error:
            case InvalidNumber(field=field, why=why) | InvalidField(field=field, why=why):
                await abort_bad_request(context, field, why)
            case RuleRefusal():
                await abort_refusal(context, error, self.permissions.clock.now())
            case PlatformRefusal():
                await abort_platform(context, error)
            case UnknownSender():
                await abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    str(error),
                    error_details_pb2.PreconditionFailure(
                        violations=[
                            error_details_pb2.PreconditionFailure.Violation(
                                type="SENDER_NOT_CONFIGURED", subject=error.business_number, description=str(error)
                            )
                        ]
                    ),
                )
            case IdempotencyConflict():
                await abort(
                    context,
                    grpc.StatusCode.ABORTED if "in flight" in str(error) else grpc.StatusCode.INVALID_ARGUMENT,
                    str(error),
                    error_details_pb2.BadRequest(
                        field_violations=[
                            error_details_pb2.BadRequest.FieldViolation(field="idempotency_key", description=str(error))
                        ]
                    ),
                )
        raise error

    async def GetPermission(self, request: pb.GetPermissionRequest, context: Context) -> pb.Permission:
        try:
            view = await self.permissions.get(request.business_number, request.user_number)
        except Exception as error:
            await self._guard(context, error)
        return view_message(view)

    async def RequestPermission(
        self, request: pb.RequestPermissionRequest, context: Context
    ) -> pb.RequestPermissionResponse:
        template = None
        if request.HasField("template"):
            template = TemplateRef(
                request.template.name, request.template.language, tuple(request.template.body_parameters)
            )
        try:
            result = await self.permissions.request(
                request.business_number,
                request.user_number,
                body_text=request.body_text,
                template=template,
                idempotency_key=request.idempotency_key,
            )
        except Exception as error:
            await self._guard(context, error)
        return pb.RequestPermissionResponse(
            message_id=result.message_id,
            channel=CHANNEL[result.channel],
            permission=view_message(result.view),
            replayed=result.replayed,
        )

    async def _filters(
        self, request: pb.WatchEventsRequest | pb.ListEventsRequest, context: Context
    ) -> tuple[str | None, str | None, int]:
        try:
            business = (
                parse_number(request.business_number, "business_number").e164 if request.business_number else None
            )
            user = parse_number(request.user_number, "user_number").e164 if request.user_number else None
        except InvalidNumber as error:
            await abort_bad_request(context, error.field, error.why)
        cursor = parse_cursor(request.after_cursor, "after_cursor")
        if cursor is None:
            await abort_bad_request(context, "after_cursor", "not a cursor this service issued (use Event.cursor)")
        return business, user, cursor

    async def WatchEvents(self, request: pb.WatchEventsRequest, context: Context) -> AsyncIterator[pb.Event]:
        business, user, cursor = await self._filters(request, context)
        if request.only_new and not request.after_cursor:
            cursor = await self.permissions.store.last_cursor()
        async for record in self.permissions.watch(cursor, business, user):
            yield event_message(record)

    async def ListEvents(self, request: pb.ListEventsRequest, context: Context) -> pb.ListEventsResponse:
        business, user, cursor = await self._filters(request, context)
        if request.page_size < 0 or request.page_size > MAX_PAGE:
            await abort_bad_request(context, "page_size", f"between 1 and {MAX_PAGE} (0 means 100)")
        size = request.page_size or 100
        records = await self.permissions.store.events_after(cursor, business=business, user=user, limit=size)
        return pb.ListEventsResponse(
            events=[event_message(r) for r in records],
            next_cursor=str(records[-1].cursor) if len(records) == size else "",
        )

    async def GetPolicy(self, request: pb.GetPolicyRequest, context: Context) -> pb.Policy:
        return policy_message(self.permissions.policy)


def attributes_text(attributes: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(attributes.items()))
