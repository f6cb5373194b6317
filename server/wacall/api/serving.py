"""How every gRPC method is served: the bearer token, the RPC's record (status, duration, pair) and the parse of
its request, done by one wrapper per method handler, built once where services are registered.

`ServedMethods` stands in for the server where services are registered (the generated `add_*_to_server`
functions take it as their server). Not interceptors: grpc.aio runs each interceptor as coroutines on every call,
and none of this changes after registration. In each call, in this order:

1. the bearer token (every method but health checks, when a token is set): missing or wrong → UNAUTHENTICATED;
2. the request parsed here, so that one that is not a valid message of its type (corrupt wire format, a string
   field that is not UTF-8, e.g. a lone surrogate) is INVALID_ARGUMENT with a BadRequest, not grpc's UNKNOWN;
3. the method itself: a store that cannot reach its database (`StoreUnavailable`, from any method) is UNAVAILABLE
   with RetryInfo;
4. the RPC handed to the `RpcRecorder` with its final status, its duration and the parsed request (None when it
   never parsed), so refused calls are recorded too; a stream when it ends.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc
from google.protobuf.message import DecodeError, Message

from wacall.api.errors import Context, abort_bad_request, abort_store_unavailable
from wacall.store import StoreError

if TYPE_CHECKING:  # generic only in the type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]

# Health checks answer without a token: load balancers and orchestrators do not hold one.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.",)


class RpcRecorder(Protocol):
    """Told of every RPC once it is over."""

    def rpc_done(self, method: str, code: grpc.StatusCode, seconds: float, request: Message | None) -> None:
        """`request` is the parsed request of a unary-request method, None for a stream of requests or a request
        that never parsed (refused before, or malformed)."""


class _NotRecorded:
    def rpc_done(self, method: str, code: grpc.StatusCode, seconds: float, request: Message | None) -> None:
        pass


NOT_RECORDED: RpcRecorder = _NotRecorded()


class ServedMethods:
    """Registers services with every method handler wrapped once (see the module's docstring)."""

    def __init__(self, server: grpc.aio.Server, *, bearer_token: str = "", recorder: RpcRecorder = NOT_RECORDED):
        self.server = server
        self._expected = f"Bearer {bearer_token}".encode() if bearer_token else None
        self._recorder = recorder

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(tuple(_ServedGenericHandler(self, h) for h in generic_rpc_handlers))

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Handler]) -> None:
        self.server.add_registered_method_handlers(
            service_name,
            {name: self.serve(f"/{service_name}/{name}", handler) for name, handler in method_handlers.items()},
        )

    def serve(self, method: str, handler: Handler) -> Handler:
        """The handler wrapped: token, parse, record. A synchronous handler, which grpc runs on a thread (a
        generated base class's unimplemented method, the synchronous reflection servicer), gets the token check
        only: it is neither parsed here nor recorded."""
        expected = None if method.startswith(UNAUTHENTICATED_PREFIXES) else self._expected
        if not _asynchronous(handler):
            return handler if expected is None else _token_checked(handler, expected)
        return _wrapped(method, handler, expected, self._recorder)


class _ServedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are served by `ServedMethods` (each wrapped once, then reused)."""

    def __init__(self, served: ServedMethods, inner: grpc.GenericRpcHandler) -> None:
        self._served = served
        self._inner = inner
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler: Handler | None = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method or ""
        wrapped = self._wrapped.get(method)
        if wrapped is None or wrapped[0] is not handler:
            wrapped = self._wrapped[method] = (handler, self._served.serve(method, handler))
        return wrapped[1]


UNAUTHENTICATED_DETAILS = "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'"


async def _refuse_unauthenticated(context: Context) -> NoReturn:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)


def _authorized(context: Context, expected: bytes) -> bool:
    given: str | bytes = ""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            given = value
    return hmac.compare_digest(given.encode() if isinstance(given, str) else given, expected)


async def _refuse_malformed(context: Context, error: DecodeError) -> NoReturn:
    await abort_bad_request(context, "request", f"not a valid message of this method's request type: {error}")


def _code(context: Context, otherwise: grpc.StatusCode = grpc.StatusCode.OK) -> grpc.StatusCode:
    """The status the handler set (by abort or set_code); `otherwise` when it set none."""
    code: Any = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _CODES_BY_NUMBER.get(code, otherwise)
    return otherwise


_CODES_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


def _token_checked(handler: Handler, expected: bytes) -> Handler:
    behaviour: Any = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        given: str | bytes = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value
        if not hmac.compare_digest(given.encode() if isinstance(given, str) else given, expected):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)
        return behaviour(request, context)

    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(checked, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(checked, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(checked, **kwargs)
    return grpc.stream_stream_rpc_method_handler(checked, **kwargs)


def _asynchronous(handler: Handler) -> bool:
    behaviour = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)


def _parses_itself(handler: Handler) -> bool:
    """Whether the wrapper can parse the requests: it needs the deserializer, and a streaming response must be a
    generator (ours are; handlers that write through the context keep grpc's parsing)."""
    if handler.request_deserializer is None:
        return False
    return not handler.response_streaming or inspect.isasyncgenfunction(handler.unary_stream or handler.stream_stream)


def _wrapped(method: str, handler: Handler, expected: bytes | None, recorder: RpcRecorder) -> Handler:
    parse: Callable[[bytes], Any] | None = handler.request_deserializer if _parses_itself(handler) else None
    kwargs: dict[str, Any] = {
        "request_deserializer": None if parse is not None else handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    done = recorder.rpc_done
    perf_counter = time.perf_counter
    behaviour: Any  # grpc's stubs type the behaviours as synchronous

    async def requests(raw_requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async for raw in raw_requests:
            if parse is None:
                yield raw
                continue
            try:
                request = parse(raw)
            except DecodeError as error:
                await _refuse_malformed(context, error)
            yield request

    if not handler.request_streaming and not handler.response_streaming:
        behaviour = handler.unary_unary
        awaited = inspect.iscoroutinefunction(behaviour)

        async def unary_unary(raw: Any, context: Context) -> Any:
            started = perf_counter()
            code = grpc.StatusCode.UNKNOWN
            request = None
            try:
                if expected is not None and not _authorized(context, expected):
                    await _refuse_unauthenticated(context)
                if parse is None:
                    request = raw
                else:
                    try:
                        request = parse(raw)
                    except DecodeError as error:
                        await _refuse_malformed(context, error)
                try:
                    result = behaviour(request, context)
                    if awaited or inspect.isawaitable(result):
                        result = await result
                except StoreError as error:  # StoreUnavailable, or any store failure: never UNKNOWN
                    await abort_store_unavailable(context, error)
                code = _code(context)
                return result
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = _code(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                done(method, code, perf_counter() - started, request if isinstance(request, Message) else None)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)

    if not handler.request_streaming:
        behaviour = handler.unary_stream
        if not inspect.isasyncgenfunction(behaviour):  # writes through the context
            assert parse is None

            async def unary_stream_written(request: Any, context: Context) -> Any:
                started = perf_counter()
                code = grpc.StatusCode.UNKNOWN
                try:
                    if expected is not None and not _authorized(context, expected):
                        await _refuse_unauthenticated(context)
                    try:
                        result = behaviour(request, context)
                        if inspect.isawaitable(result):
                            result = await result
                    except StoreError as error:  # StoreUnavailable, or any store failure: never UNKNOWN
                        await abort_store_unavailable(context, error)
                    code = _code(context)
                    return result
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                except grpc.aio.AbortError:
                    code = _code(context, grpc.StatusCode.UNKNOWN)
                    raise
                finally:
                    done(method, code, perf_counter() - started, request if isinstance(request, Message) else None)

            return grpc.unary_stream_rpc_method_handler(unary_stream_written, **kwargs)

        async def unary_stream(raw: Any, context: Context) -> AsyncIterator[Any]:
            started = perf_counter()
            code = grpc.StatusCode.UNKNOWN
            request = None
            try:
                if expected is not None and not _authorized(context, expected):
                    await _refuse_unauthenticated(context)
                if parse is None:
                    request = raw
                else:
                    try:
                        request = parse(raw)
                    except DecodeError as error:
                        await _refuse_malformed(context, error)
                try:
                    async for response in behaviour(request, context):
                        yield response
                except StoreError as error:  # StoreUnavailable, or any store failure: never UNKNOWN
                    await abort_store_unavailable(context, error)
                code = _code(context)
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = _code(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                done(method, code, perf_counter() - started, request if isinstance(request, Message) else None)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)

    behaviour = handler.stream_unary if not handler.response_streaming else handler.stream_stream
    if not handler.response_streaming or not inspect.isasyncgenfunction(behaviour):

        async def stream_in(raw_requests: AsyncIterator[Any], context: Context) -> Any:
            started = perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                if expected is not None and not _authorized(context, expected):
                    await _refuse_unauthenticated(context)
                try:
                    result = behaviour(requests(raw_requests, context), context)
                    if inspect.isawaitable(result):
                        result = await result
                except StoreError as error:  # StoreUnavailable, or any store failure: never UNKNOWN
                    await abort_store_unavailable(context, error)
                code = _code(context)
                return result
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = _code(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                done(method, code, perf_counter() - started, None)

        if not handler.response_streaming:
            return grpc.stream_unary_rpc_method_handler(stream_in, **kwargs)
        return grpc.stream_stream_rpc_method_handler(stream_in, **kwargs)

    async def stream_stream(raw_requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        started = perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            if expected is not None and not _authorized(context, expected):
                await _refuse_unauthenticated(context)
            try:
                async for response in behaviour(requests(raw_requests, context), context):
                    yield response
            except StoreError as error:  # StoreUnavailable, or any store failure: never UNKNOWN
                await abort_store_unavailable(context, error)
            code = _code(context)
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = _code(context, grpc.StatusCode.UNKNOWN)
            raise
        finally:
            done(method, code, perf_counter() - started, None)

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)
