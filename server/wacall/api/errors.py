"""Rich gRPC errors (google.rpc details) for refusals, platform errors and bad input. Messages say what to do.

Also the readers of request fields that refuse what the service cannot take (over-long or control-character text,
Durations out of range) and the guard that answers a request that does not even parse with INVALID_ARGUMENT.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
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


# --- requests that do not parse -----------------------------------------------------------------------------------

if TYPE_CHECKING:  # generic only in the type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]


async def _parse(deserialize: Callable[[bytes], Any], raw: bytes, context: Context) -> Any:
    try:
        return deserialize(raw)
    except DecodeError as error:
        await abort_bad_request(context, "request", f"not a valid message of this method's request type: {error}")


def _parsing(handler: Handler) -> Handler:
    """The same handler, reading raw bytes and parsing them itself, so that a parse failure is INVALID_ARGUMENT."""
    deserialize = handler.request_deserializer
    assert deserialize is not None
    serialize = handler.response_serializer

    async def requests(raw_requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        async for raw in raw_requests:
            yield await _parse(deserialize, raw, context)

    if not handler.request_streaming and not handler.response_streaming:
        unary: Any = handler.unary_unary  # grpc's stubs type the behaviours as synchronous
        assert unary is not None

        async def unary_unary(raw: bytes, context: Context) -> Any:
            try:
                result = unary(await _parse(deserialize, raw, context), context)
                return await result if inspect.isawaitable(result) else result
            except StoreError as error:  # StoreUnavailable, or any store failure: never UNKNOWN
                await abort_store_unavailable(context, error)

        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)
    if not handler.request_streaming:
        streaming: Any = handler.unary_stream
        assert streaming is not None

        async def unary_stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
            try:
                async for response in streaming(await _parse(deserialize, raw, context), context):
                    yield response
            except StoreError as error:  # StoreUnavailable, or any store failure: never UNKNOWN
                await abort_store_unavailable(context, error)

        return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serialize)
    if not handler.response_streaming:
        collecting: Any = handler.stream_unary
        assert collecting is not None

        async def stream_unary(raw_requests: AsyncIterator[bytes], context: Context) -> Any:
            try:
                return await collecting(requests(raw_requests, context), context)
            except StoreError as error:  # StoreUnavailable, or any store failure: never UNKNOWN
                await abort_store_unavailable(context, error)

        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)
    bidirectional: Any = handler.stream_stream
    assert bidirectional is not None

    async def stream_stream(raw_requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        try:
            async for response in bidirectional(requests(raw_requests, context), context):
                yield response
        except StoreError as error:  # StoreUnavailable, or any store failure: never UNKNOWN
            await abort_store_unavailable(context, error)

    return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=serialize)


def _wrappable(handler: Handler) -> bool:
    if handler.request_deserializer is None:
        return False
    # Streaming responses: only generator-style handlers (ours); those that write through the context keep theirs.
    return not handler.response_streaming or inspect.isasyncgenfunction(handler.unary_stream or handler.stream_stream)


def _guarded(handler: Handler) -> Handler:
    return _parsing(handler) if _wrappable(handler) else handler


class _ParsingGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers parse their own requests (each wrapped once, then reused)."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler: Handler | None = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method or ""
        wrapped = self._wrapped.get(method)
        if wrapped is None or wrapped[0] is not handler:
            wrapped = self._wrapped[method] = (handler, _guarded(handler))
        return wrapped[1]


class MalformedRequestGuard:
    """A request that is not a valid message (corrupt wire format, a string field that is not UTF-8, e.g. a lone
    surrogate) is INVALID_ARGUMENT with a BadRequest, instead of the UNKNOWN grpc answers when parsing fails; and a
    store that cannot reach its database (`StoreUnavailable`, or any `StoreError`, from any method) is UNAVAILABLE
    with RetryInfo.

    It stands in for the server where services are registered (the generated `add_*_to_server` functions take it
    as their server): every method handler is wrapped there, once, to parse its own requests. Not an interceptor:
    grpc runs an interceptor chain as coroutines on every call, and this wrapping never changes after
    registration."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(tuple(_ParsingGenericHandler(h) for h in generic_rpc_handlers))

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Handler]) -> None:
        self.server.add_registered_method_handlers(
            service_name, {name: _guarded(handler) for name, handler in method_handlers.items()}
        )
