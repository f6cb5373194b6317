"""gRPC servicer for wacall.v1.CallingService: validate, call the services, map the result.

Errors carry google.rpc rich details (errors.py): RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure for
used-up limits, FAILED_PRECONDITION with PreconditionFailure for permission and configuration problems,
INVALID_ARGUMENT with BadRequest for bad fields. Every message says what to do.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import NoReturn, Protocol

import grpc
from google.rpc import error_details_pb2
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import calling_pb2_grpc

from wacall.api.errors import (
    Context,
    abort,
    abort_bad_request,
    abort_platform,
    abort_precondition,
    abort_refusal,
    text_field,
)
from wacall.api.forwarding import OwnerForwarding
from wacall.api.messages import CHANNEL, call_message, duration, event_message, policy_message, view_message
from wacall.calls.machine import CallState
from wacall.calls.ownership import CallOwnerUnreachable
from wacall.calls.record import CallRecord
from wacall.calls.service import MAX_OPAQUE, CallNotFound, CallService, MediaSetupFailed
from wacall.calls.sip_route import SipRouteUnavailable
from wacall.fields import InvalidField, bounded_text
from wacall.media.tracks import Framer, PcmResampler
from wacall.numbers import InvalidNumber, parse_number
from wacall.permissions import (
    MAX_BODY_TEXT,
    MAX_IDEMPOTENCY_KEY,
    MAX_TEMPLATE_PARAMETERS,
    IdempotencyConflict,
    PermissionService,
    PlatformRefusal,
    RequestInFlight,
    RequestOutcomeUnknown,
    RuleRefusal,
)
from wacall.store import to_micros
from wacall.upstreams.base import TemplateRef, UnknownSender
from wacall_adapters.registry import plan_route
from wacall_adapters.routes import RouteRefused, ServerFiles

MAX_PAGE = 1000
# Event cursors and page-token times are ASCII digits (str.isdigit also takes "²") within SQLite's INTEGER.
DIGITS = re.compile(r"[0-9]{1,18}")
CALL_ID = re.compile(r"call_[0-9a-f]{32}")
MAX_PAGE_TOKEN = 128


def parse_cursor(value: str) -> int | None:
    if not value:
        return 0
    return int(value) if DIGITS.fullmatch(value) else None


SAMPLE_RATES = (8000, 16000, 24000, 48000)
MAX_CALL_PAGE = 500
# A number with spaces, dashes and a country code fits easily; longer text is not a number (and is never cached).
MAX_NUMBER_CHARS = 32
MAX_CALL_ID = 128
MAX_TEMPLATE_NAME = 512
MAX_TEMPLATE_LANGUAGE = 32
MAX_TEMPLATE_PARAMETER = 1024


class NumberFields(Protocol):
    """A request naming a pair (or filtering by one)."""

    @property
    def business_number(self) -> str: ...
    @property
    def user_number(self) -> str: ...


async def numbers(context: Context, request: NumberFields) -> None:
    """Bound the number fields before anything parses them."""
    try:
        bounded_text(request.business_number, "business_number", max_chars=MAX_NUMBER_CHARS)
        bounded_text(request.user_number, "user_number", max_chars=MAX_NUMBER_CHARS)
    except InvalidField as error:
        await abort_bad_request(context, error.field, error.why)


def _page_token(view: CallRecord) -> str:
    raw = f"{to_micros(view.facts.created_at)}:{view.call_id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _parse_page_token(token: str) -> tuple[int, str] | None:
    if len(token) > MAX_PAGE_TOKEN:
        return None
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode("ascii")
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError
        return None
    micros, _, call_id = raw.partition(":")
    if not DIGITS.fullmatch(micros) or not CALL_ID.fullmatch(call_id):
        return None
    return int(micros), call_id


class CallingServicer(calling_pb2_grpc.CallingServiceServicer):
    def __init__(
        self,
        permissions: PermissionService,
        calls: CallService,
        files: ServerFiles,
        forwarding: OwnerForwarding | None = None,
    ) -> None:
        self.permissions = permissions
        self.calls = calls
        self.files = files
        # Control of a call another replica owns goes there (api/forwarding.py).
        self.forwarding = forwarding or OwnerForwarding(calls)
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
                await abort_precondition(
                    context, "SENDER_NOT_CONFIGURED", error.business_number, str(error), str(error)
                )
            case MediaSetupFailed(__cause__=RouteRefused() as refused):
                # The route's own check, failing only once the call existed (an offer reached the agent meanwhile).
                await self._guard(context, refused)
            case MediaSetupFailed():
                await abort_precondition(
                    context,
                    "MEDIA_SETUP_FAILED",
                    error.call_id,
                    error.why,
                    f"call {error.call_id} failed before it was placed: {error.why}",
                )
            case SipRouteUnavailable():
                await abort_precondition(context, "SIP_ROUTE_UNAVAILABLE", "route.sip", str(error), str(error))
            case RouteRefused(reason=reason, field=field, message=message):
                # Something the route names does not exist (a queue, an agent), or is not ready for it.
                status = grpc.StatusCode.NOT_FOUND if reason.startswith("UNKNOWN_") else None
                await abort_precondition(
                    context, reason, field, message, message, status=status or grpc.StatusCode.FAILED_PRECONDITION
                )
            case CallOwnerUnreachable(owner=owner, retry_after=retry_after):
                await abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    str(error),
                    error_details_pb2.ErrorInfo(
                        reason="CALL_OWNER_UNREACHABLE",
                        domain="wacall",
                        metadata={"call_id": owner.call_id, "owner": owner.instance, "owner_address": owner.address},
                    ),
                    error_details_pb2.RetryInfo(retry_delay=duration(retry_after)),
                )
            case CallNotFound():
                await abort(
                    context, grpc.StatusCode.NOT_FOUND, f"no call {error}: use Call.call_id from StartCall or ListCalls"
                )
            case RequestInFlight(retry_at=retry_at):
                now = self.permissions.clock.now()
                await abort(
                    context,
                    grpc.StatusCode.ABORTED,
                    str(error),
                    error_details_pb2.RetryInfo(retry_delay=duration(max(retry_at - now, timedelta(seconds=1)))),
                )
            case RequestOutcomeUnknown(pair=pair, outcome=outcome):
                await abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    str(error),
                    error_details_pb2.ErrorInfo(
                        reason="REQUEST_OUTCOME_UNKNOWN",
                        domain="wacall",
                        metadata={"counted": "true", "pair": f"{pair.business}:{pair.user}", **outcome},
                    ),
                )
            case IdempotencyConflict():
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    str(error),
                    error_details_pb2.BadRequest(
                        field_violations=[
                            error_details_pb2.BadRequest.FieldViolation(field="idempotency_key", description=str(error))
                        ]
                    ),
                )
        raise error

    async def GetPermission(self, request: pb.GetPermissionRequest, context: Context) -> pb.Permission:
        await numbers(context, request)
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
        await numbers(context, request)
        await text_field(context, request.body_text, "body_text", max_chars=MAX_BODY_TEXT, multiline=True)
        await text_field(context, request.idempotency_key, "idempotency_key", max_chars=MAX_IDEMPOTENCY_KEY)
        template = None
        if request.HasField("template"):
            given = request.template
            await text_field(context, given.name, "template.name", max_chars=MAX_TEMPLATE_NAME)
            await text_field(context, given.language, "template.language", max_chars=MAX_TEMPLATE_LANGUAGE)
            if len(given.body_parameters) > MAX_TEMPLATE_PARAMETERS:
                await abort_bad_request(
                    context, "template.body_parameters", f"at most {MAX_TEMPLATE_PARAMETERS} values"
                )
            for index, parameter in enumerate(given.body_parameters):
                await text_field(
                    context,
                    parameter,
                    f"template.body_parameters[{index}]",
                    max_chars=MAX_TEMPLATE_PARAMETER,
                    multiline=True,
                )
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
        await numbers(context, request)
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
        cursor = parse_cursor(request.after_cursor)
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
        await numbers(context, request)
        await text_field(context, request.biz_opaque_callback_data, "biz_opaque_callback_data", max_chars=MAX_OPAQUE)
        await text_field(context, request.idempotency_key, "idempotency_key", max_chars=MAX_IDEMPOTENCY_KEY)
        try:
            route = await plan_route(request.route, self.files)
            view = await self.calls.start(
                request.business_number,
                request.user_number,
                route,
                opaque=request.biz_opaque_callback_data,
                idempotency_key=request.idempotency_key,
            )
        except Exception as error:
            await self._guard(context, error)
        return call_message(view)

    async def _call_id(self, context: Context, call_id: str) -> str:
        await text_field(context, call_id, "call_id", max_chars=MAX_CALL_ID)
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
            owner = await self.calls.owner_elsewhere(call_id)
            if owner is not None:
                return await self.forwarding.end_call(owner, request, context)
            return call_message(await self.calls.end(call_id))
        except (CallNotFound, CallOwnerUnreachable) as error:
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
        await text_field(context, first.call_id, "call_id", max_chars=MAX_CALL_ID)
        rate = first.sample_rate or 48000
        if rate not in SAMPLE_RATES:
            await abort_bad_request(context, "sample_rate", f"one of {', '.join(map(str, SAMPLE_RATES))}")
        try:
            owner = await self.calls.owner_elsewhere(first.call_id)
            if owner is not None:
                async for response in self.forwarding.call_media(owner, first, request_iterator, context):
                    yield response
                return
            view = await self.calls.get(first.call_id)
        except (CallNotFound, CallOwnerUnreachable) as error:
            await self._guard(context, error)
        session = self.calls.session(first.call_id)
        stream = session.adapter.audio_stream() if session is not None else None
        if stream is None:
            reason = (
                "the call has ended" if view.state is CallState.ENDED else "the call is not on a media_stream route"
            )
            await abort_precondition(
                context, "NOT_A_MEDIA_STREAM_CALL", first.call_id, reason, f"cannot attach to {first.call_id}: {reason}"
            )
        assert session is not None
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

        unsubscribe = stream.subscribe(to_client_frames)

        async def read_client() -> None:
            from_client = PcmResampler(rate, 48000)
            framer = Framer()
            try:
                async for message in request_iterator:
                    kind = message.WhichOneof("kind")
                    if kind == "audio":
                        for frame in framer.push(from_client.convert(message.audio)):
                            stream.send(frame)
                    elif kind == "hangup":
                        await self.calls.end(first.call_id, reason="ended by the media stream client")
            except grpc.aio.AbortError:
                offer(None)  # a request that did not parse ended the stream (INVALID_ARGUMENT was sent)

        async def follow_call() -> None:
            async for update in self.calls.updates(first.call_id):
                offer(pb.CallMediaResponse(call=call_message(update)))
                if session.adapter.audio_stream() is not stream:
                    break  # the call moved to another route: this stream no longer carries it
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
