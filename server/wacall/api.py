"""gRPC servicer for wacall.v1.CallingService: validate, call the permission service, map the result.

Errors carry google.rpc rich details: RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure for used-up limits,
FAILED_PRECONDITION with PreconditionFailure for permission and configuration problems, INVALID_ARGUMENT with
BadRequest for bad fields. Every message says what to do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall import engine
from wacall.call_service import CallNotFound, CallService, CallView
from wacall.calls import CallOutcome, CallState, Direction
from wacall.engine import ActionDecision, Evaluation
from wacall.errors import REASONS, platform_error
from wacall.graph import GraphError, TemplateRef
from wacall.media.tracks import Framer, PcmResampler
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
from wacall.store import EventRecord, Pair, optional_datetime, to_micros
from wacall_adapters.announcement import AnnouncementAdapter
from wacall_adapters.base import MediaAdapter
from wacall_adapters.media_stream import MediaStreamAdapter
from wacall_adapters.webrtc import WebRtcBridgeAdapter, WebRtcPassthroughAdapter

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
        "call_updated",
        "business_restriction_changed",
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


CALL_STATE = {s: getattr(pb, f"CALL_STATE_{s.name}") for s in CallState}
CALL_OUTCOME = {o: getattr(pb, f"CALL_OUTCOME_{o.name}") for o in CallOutcome}
CALL_DIRECTION = {d: getattr(pb, f"CALL_DIRECTION_{d.name}") for d in Direction}


def call_message(view: CallView) -> pb.Call:
    facts = view.facts
    error = view.platform_error
    return pb.Call(
        call_id=view.call_id,
        platform_call_id=view.platform_call_id or "",
        business_number=view.pair.business,
        user_number=view.pair.user,
        direction=CALL_DIRECTION[view.direction],
        state=CALL_STATE[facts.state],
        outcome=CALL_OUTCOME[facts.outcome] if facts.outcome else pb.CALL_OUTCOME_UNSPECIFIED,
        created_at=timestamp(facts.created_at),
        answered_at=timestamp(facts.answered_at),
        ended_at=timestamp(facts.ended_at),
        duration_seconds=facts.duration_seconds or 0,
        route=view.route,
        platform_error=pb.PlatformError(
            code=error["code"], message=error.get("message", ""), details=error.get("details", "")
        )
        if error
        else None,
        biz_opaque_callback_data=view.opaque,
        webrtc_answer_sdp=view.answer_sdp,
        media=pb.MediaStats(
            frames_sent=view.media.frames_sent,
            frames_received=view.media.frames_received,
            audible_frames_received=view.media.audible_frames_received,
            mean_level_received=view.media.mean_level_received,
        ),
        end_reason=view.end_reason,
    )


def snapshot_message(snapshot: Mapping[str, Any]) -> pb.Call:
    """A Call from the JSON snapshot kept in the event log."""

    def t(value: int | None) -> timestamp_pb2.Timestamp | None:
        return timestamp(optional_datetime(value))

    error = snapshot.get("platform_error")
    return pb.Call(
        call_id=snapshot["call_id"],
        platform_call_id=snapshot["platform_call_id"],
        business_number=snapshot["business"],
        user_number=snapshot["user"],
        direction=CALL_DIRECTION[Direction(snapshot["direction"])],
        state=CALL_STATE[CallState(snapshot["state"])],
        outcome=CALL_OUTCOME[CallOutcome(snapshot["outcome"])] if snapshot["outcome"] else pb.CALL_OUTCOME_UNSPECIFIED,
        created_at=t(snapshot["created_at"]),
        answered_at=t(snapshot["answered_at"]),
        ended_at=t(snapshot["ended_at"]),
        duration_seconds=snapshot["duration_seconds"],
        route=snapshot["route"],
        platform_error=pb.PlatformError(
            code=error["code"], message=error.get("message", ""), details=error.get("details", "")
        )
        if error
        else None,
        biz_opaque_callback_data=snapshot["opaque"],
        end_reason=snapshot["end_reason"],
    )


def event_message(record: EventRecord) -> pb.Event:
    attributes = dict(record.attributes)
    snapshot = attributes.pop("call", None)
    return pb.Event(
        cursor=str(record.cursor),
        kind=EVENT_KIND.get(record.kind, pb.EVENT_KIND_UNSPECIFIED),
        business_number=record.pair.business,
        user_number=record.pair.user,
        occurred_at=timestamp(record.occurred_at),
        recorded_at=timestamp(record.recorded_at),
        source=SOURCE.get(record.source, pb.EVENT_SOURCE_UNSPECIFIED),
        permission_state=STATE[record.state_after],
        attributes=attributes,
        call=snapshot_message(json.loads(snapshot)) if snapshot else None,
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
    # A time-bound precondition (a paused business number) still says when to retry.
    retry = (
        [error_details_pb2.RetryInfo(retry_delay=duration(decision.next_allowed_at - now))]
        if decision.next_allowed_at is not None
        else []
    )
    await abort(
        context,
        info.status,
        message,
        *retry,
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


SAMPLE_RATES = (8000, 16000, 24000, 48000)
MAX_CALL_PAGE = 500


async def build_route(route: pb.Route, context: Context) -> tuple[Callable[[], MediaAdapter], str, str]:
    """The adapter factory for a route, its name, and what distinguishes it for idempotency. Validates first."""
    kind = route.WhichOneof("kind") or "announcement"
    if kind == "announcement":
        a = route.announcement
        if a.audio_file and not os.path.isfile(a.audio_file):
            await abort_bad_request(
                context, "route.announcement.audio_file", f"no such file on the server: {a.audio_file}"
            )
        if a.tone_hz and not 20 <= a.tone_hz <= 20000:
            await abort_bad_request(context, "route.announcement.tone_hz", "between 20 and 20000 Hz")
        tone = a.tone_duration.ToTimedelta() if a.HasField("tone_duration") else timedelta(seconds=5)
        limit = a.max_duration.ToTimedelta() if a.HasField("max_duration") else timedelta(minutes=5)
        if tone <= timedelta(0) or limit <= timedelta(0):
            await abort_bad_request(context, "route.announcement", "durations must be positive")
        if a.record_to and not os.path.isdir(os.path.dirname(os.path.abspath(a.record_to))):
            await abort_bad_request(context, "route.announcement.record_to", "its directory does not exist")
        return (
            lambda: AnnouncementAdapter(
                audio_file=a.audio_file,
                tone_hz=a.tone_hz or 440.0,
                tone_seconds=tone.total_seconds(),
                record_to=a.record_to,
                max_duration=limit,
            ),
            "announcement",
            a.SerializeToString().hex(),
        )
    if kind == "webrtc":
        w = route.webrtc
        if "m=audio" not in w.offer_sdp:
            await abort_bad_request(context, "route.webrtc.offer_sdp", "an SDP offer with an audio m-line is required")
        if w.passthrough:
            return lambda: WebRtcPassthroughAdapter(offer_sdp=w.offer_sdp), "webrtc_passthrough", w.offer_sdp
        return (
            lambda: WebRtcBridgeAdapter(offer_sdp=w.offer_sdp, ice_servers=list(w.ice_servers)),
            "webrtc",
            w.offer_sdp,
        )
    m = route.media_stream
    stream_limit = m.max_duration.ToTimedelta() if m.HasField("max_duration") else None
    if stream_limit is not None and stream_limit <= timedelta(0):
        await abort_bad_request(context, "route.media_stream.max_duration", "must be positive")
    return lambda: MediaStreamAdapter(max_duration=stream_limit), "media_stream", m.SerializeToString().hex()


def _page_token(view: CallView) -> str:
    raw = f"{to_micros(view.facts.created_at)}:{view.call_id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _parse_page_token(token: str) -> tuple[int, str] | None:
    try:
        micros, call_id = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        return int(micros), call_id
    except (ValueError, UnicodeDecodeError):
        return None


class CallingServicer(calling_pb2_grpc.CallingServiceServicer):
    def __init__(self, permissions: PermissionService, calls: CallService) -> None:
        self.permissions = permissions
        self.calls = calls
        self._stream_readers: set[asyncio.Task[None]] = set()

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
            case CallNotFound():
                await abort(
                    context, grpc.StatusCode.NOT_FOUND, f"no call {error}: use Call.call_id from StartCall or ListCalls"
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
            if request.reconcile:
                view = await self.permissions.reconcile(request.business_number, request.user_number)
            else:
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

    @staticmethod
    async def _pair_filter(
        request: pb.WatchEventsRequest | pb.ListEventsRequest | pb.ListCallsRequest, context: Context
    ) -> tuple[str | None, str | None]:
        """The optional business/user filters of a listing, canonical, or INVALID_ARGUMENT."""
        try:
            business = (
                parse_number(request.business_number, "business_number").e164 if request.business_number else None
            )
            user = parse_number(request.user_number, "user_number").e164 if request.user_number else None
        except InvalidNumber as error:
            await abort_bad_request(context, error.field, error.why)
        return business, user

    async def _filters(
        self, request: pb.WatchEventsRequest | pb.ListEventsRequest, context: Context
    ) -> tuple[str | None, str | None, int]:
        business, user = await self._pair_filter(request, context)
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

    # --- calls ----------------------------------------------------------------------------------------------------

    async def StartCall(self, request: pb.StartCallRequest, context: Context) -> pb.Call:
        factory, name, distinct = await build_route(request.route, context)
        try:
            view = await self.calls.start(
                request.business_number,
                request.user_number,
                factory,
                name,
                opaque=request.biz_opaque_callback_data,
                idempotency_key=request.idempotency_key,
                fingerprint_extra=distinct,
            )
        except Exception as error:
            await self._guard(context, error)
        return call_message(view)

    async def _call_id(self, context: Context, call_id: str) -> str:
        if not call_id.strip():
            await abort_bad_request(context, "call_id", "required: the Call.call_id from StartCall or ListCalls")
        return call_id.strip()

    async def GetCall(self, request: pb.GetCallRequest, context: Context) -> pb.Call:
        call_id = await self._call_id(context, request.call_id)
        try:
            return call_message(await self.calls.get(call_id))
        except CallNotFound as error:
            await self._guard(context, error)

    async def EndCall(self, request: pb.EndCallRequest, context: Context) -> pb.Call:
        call_id = await self._call_id(context, request.call_id)
        try:
            return call_message(await self.calls.end(call_id))
        except CallNotFound as error:
            await self._guard(context, error)

    async def ListCalls(self, request: pb.ListCallsRequest, context: Context) -> pb.ListCallsResponse:
        business, user = await self._pair_filter(request, context)
        if not 0 <= request.page_size <= MAX_CALL_PAGE:
            await abort_bad_request(context, "page_size", f"between 1 and {MAX_CALL_PAGE} (0 means 50)")
        before = None
        if request.page_token:
            before = _parse_page_token(request.page_token)
            if before is None:
                await abort_bad_request(context, "page_token", "not a token this service issued")
        size = request.page_size or 50
        views = await self.calls.list(business, user, before, size)
        return pb.ListCallsResponse(
            calls=[call_message(v) for v in views],
            next_page_token=_page_token(views[-1]) if len(views) == size else "",
        )

    async def CallMedia(
        self, request_iterator: AsyncIterator[pb.CallMediaRequest], context: Context
    ) -> AsyncIterator[pb.CallMediaResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "call_id" or not first.call_id:
            await abort_bad_request(context, "call_id", "the first message must name the call")
        rate = first.sample_rate or 48000
        if rate not in SAMPLE_RATES:
            await abort_bad_request(context, "sample_rate", f"one of {', '.join(map(str, SAMPLE_RATES))}")
        try:
            view = await self.calls.get(first.call_id)
        except CallNotFound as error:
            await self._guard(context, error)
        session = self.calls.session(first.call_id)
        if session is None or not isinstance(session.adapter, MediaStreamAdapter):
            reason = (
                "the call has ended" if view.state is CallState.ENDED else "the call is not on a media_stream route"
            )
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cannot attach to {first.call_id}: {reason}",
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type="NOT_A_MEDIA_STREAM_CALL", subject=first.call_id, description=reason
                        )
                    ]
                ),
            )
        adapter = session.adapter
        outbound: asyncio.Queue[pb.CallMediaResponse | None] = asyncio.Queue(maxsize=50)
        to_client = PcmResampler(48000, rate)

        def offer(item: pb.CallMediaResponse | None) -> None:
            if outbound.full():  # a slow reader loses the oldest audio, not the call
                outbound.get_nowait()
            outbound.put_nowait(item)

        client_framer = Framer(rate // 50 * 2)

        def to_client_frames(frame: bytes) -> None:
            for chunk in client_framer.push(to_client.convert(frame)):
                offer(pb.CallMediaResponse(audio=chunk))

        unsubscribe = adapter.subscribe(to_client_frames)

        async def read_client() -> None:
            from_client = PcmResampler(rate, 48000)
            framer = Framer()
            async for message in request_iterator:
                kind = message.WhichOneof("kind")
                if kind == "audio":
                    for frame in framer.push(from_client.convert(message.audio)):
                        adapter.send(frame)
                elif kind == "hangup":
                    await self.calls.end(first.call_id, reason="ended by the media stream client")

        async def follow_call() -> None:
            async for update in self.calls.updates(first.call_id):
                offer(pb.CallMediaResponse(call=call_message(update)))
            offer(None)

        reader = asyncio.create_task(read_client())
        follower = asyncio.create_task(follow_call())
        try:
            while (item := await outbound.get()) is not None:
                yield item
        finally:
            unsubscribe()
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            # A task blocked reading grpc.aio's request stream cannot be awaited after cancel: it finishes when the
            # RPC does. Keep a reference until then.
            reader.cancel()
            self._stream_readers.add(reader)
            reader.add_done_callback(self._stream_readers.discard)


def attributes_text(attributes: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(attributes.items()))
