"""How every gRPC method is served (`wacall.api.serving.ServedMethods`): the bearer token, the request parsed with a
clear error when it does not parse, and one record per RPC — with its final status, the request the method got, and
streams recorded when they end. A real grpc.aio server and client on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from wacall_client.v1 import calling_pb2 as pb

from wacall.api.serving import ServedMethods
from wacall.store import StoreUnavailable

TOKEN = "s3cret"
SERVICE = "test.Pairs"
BUSINESS, USER = "+447911123456", "+34612345678"


@dataclass
class Recorded:
    rpcs: list[tuple[str, grpc.StatusCode, Message | None]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def rpc_done(self, method: str, code: grpc.StatusCode, seconds: float, request: Message | None) -> None:
        assert seconds >= 0
        self.rpcs.append((method, code, request))
        self.done.set()

    async def next(self) -> tuple[str, grpc.StatusCode, Message | None]:
        """The first RPC recorded (waits for it: the record is written as the call finishes on the server)."""
        await asyncio.wait_for(self.done.wait(), 5)
        return self.rpcs[0]


async def echo(request: pb.GetPermissionRequest, context: grpc.aio.ServicerContext[object, object]) -> pb.Permission:
    return pb.Permission(business_number=request.business_number, user_number=request.user_number)


async def repeat(
    request: pb.GetPermissionRequest, context: grpc.aio.ServicerContext[object, object]
) -> AsyncIterator[pb.Permission]:
    for _ in range(3):
        yield pb.Permission(business_number=request.business_number)
        await asyncio.sleep(0.01)
    await asyncio.sleep(3600)  # until the client cancels


async def count(
    requests: AsyncIterator[pb.GetPermissionRequest], context: grpc.aio.ServicerContext[object, object]
) -> AsyncIterator[pb.Permission]:
    async for request in requests:
        yield pb.Permission(user_number=request.user_number)


async def unreachable(
    request: pb.GetPermissionRequest, context: grpc.aio.ServicerContext[object, object]
) -> pb.Permission:
    raise StoreUnavailable("connection refused")


HANDLERS = {
    "Unreachable": grpc.unary_unary_rpc_method_handler(
        unreachable, pb.GetPermissionRequest.FromString, pb.Permission.SerializeToString
    ),
    "Echo": grpc.unary_unary_rpc_method_handler(
        echo, pb.GetPermissionRequest.FromString, pb.Permission.SerializeToString
    ),
    "Repeat": grpc.unary_stream_rpc_method_handler(
        repeat, pb.GetPermissionRequest.FromString, pb.Permission.SerializeToString
    ),
    "Count": grpc.stream_stream_rpc_method_handler(
        count, pb.GetPermissionRequest.FromString, pb.Permission.SerializeToString
    ),
}


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, Recorded]]:
    server = grpc.aio.server()
    recorded = Recorded()
    methods = ServedMethods(server, bearer_token=TOKEN, recorder=recorded)
    methods.add_registered_method_handlers(SERVICE, HANDLERS)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), methods)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, recorded
    finally:
        await server.stop(None)


AUTHORIZED = (("authorization", f"Bearer {TOKEN}"),)
REQUEST = pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER)


async def test_a_call_with_the_token_is_served_and_recorded_with_the_request_it_parsed(
    served: tuple[grpc.aio.Channel, Recorded],
) -> None:
    channel, recorded = served
    call = channel.unary_unary(f"/{SERVICE}/Echo")
    reply = pb.Permission.FromString(await call(REQUEST.SerializeToString(), metadata=AUTHORIZED))
    assert (reply.business_number, reply.user_number) == (BUSINESS, USER)
    method, code, request = await recorded.next()
    assert (method, code, request) == (f"/{SERVICE}/Echo", grpc.StatusCode.OK, REQUEST)


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)])
async def test_a_missing_or_wrong_token_is_unauthenticated_and_recorded_before_anything_parses(
    served: tuple[grpc.aio.Channel, Recorded], metadata: tuple[tuple[str, str], ...]
) -> None:
    channel, recorded = served
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await channel.unary_unary(f"/{SERVICE}/Echo")(REQUEST.SerializeToString(), metadata=metadata)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in (refused.value.details() or "")
    assert await recorded.next() == (f"/{SERVICE}/Echo", grpc.StatusCode.UNAUTHENTICATED, None)


async def test_a_streaming_request_without_the_token_is_unauthenticated(
    served: tuple[grpc.aio.Channel, Recorded],
) -> None:
    channel, recorded = served
    stream = channel.stream_stream(f"/{SERVICE}/Count")()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.read()
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert await recorded.next() == (f"/{SERVICE}/Count", grpc.StatusCode.UNAUTHENTICATED, None)


async def test_health_checks_need_no_token(served: tuple[grpc.aio.Channel, Recorded]) -> None:
    channel, recorded = served
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    method, code, _ = await recorded.next()
    assert (method, code) == ("/grpc.health.v1.Health/Check", grpc.StatusCode.OK)


async def test_a_request_that_does_not_parse_is_invalid_argument_with_a_bad_request(
    served: tuple[grpc.aio.Channel, Recorded],
) -> None:
    channel, recorded = served
    truncated = REQUEST.SerializeToString()[:-3]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await channel.unary_unary(f"/{SERVICE}/Echo")(truncated, metadata=AUTHORIZED)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = dict(refused.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    bad_request = error_details_pb2.BadRequest()
    assert status_pb2.Status.FromString(details).details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "request"
    assert await recorded.next() == (f"/{SERVICE}/Echo", grpc.StatusCode.INVALID_ARGUMENT, None)


async def test_a_malformed_message_in_a_request_stream_is_invalid_argument(
    served: tuple[grpc.aio.Channel, Recorded],
) -> None:
    channel, recorded = served
    stream = channel.stream_stream(f"/{SERVICE}/Count")(metadata=AUTHORIZED)
    await stream.write(REQUEST.SerializeToString())
    assert pb.Permission.FromString(await stream.read()).user_number == USER
    await stream.write(b"\xff\xff")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.read()
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert await recorded.next() == (f"/{SERVICE}/Count", grpc.StatusCode.INVALID_ARGUMENT, None)


async def test_a_store_that_cannot_reach_its_database_is_unavailable_with_retry_info(
    served: tuple[grpc.aio.Channel, Recorded],
) -> None:
    channel, recorded = served
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await channel.unary_unary(f"/{SERVICE}/Unreachable")(REQUEST.SerializeToString(), metadata=AUTHORIZED)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    details = dict(refused.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in status_pb2.Status.FromString(details).details)
    assert retry.retry_delay.seconds > 0
    assert await recorded.next() == (f"/{SERVICE}/Unreachable", grpc.StatusCode.UNAVAILABLE, REQUEST)


async def test_a_stream_is_recorded_when_it_ends_not_when_it_starts(served: tuple[grpc.aio.Channel, Recorded]) -> None:
    channel, recorded = served
    stream = channel.unary_stream(f"/{SERVICE}/Repeat")(REQUEST.SerializeToString(), metadata=AUTHORIZED)
    for _ in range(3):
        assert pb.Permission.FromString(await stream.read()).business_number == BUSINESS
    assert recorded.rpcs == []
    stream.cancel()
    assert await recorded.next() == (f"/{SERVICE}/Repeat", grpc.StatusCode.CANCELLED, REQUEST)


def sync_echo(request: pb.GetPermissionRequest, context: grpc.ServicerContext) -> pb.Permission:
    return pb.Permission(user_number=request.user_number)


SYNC_HANDLERS = {
    "Echo": grpc.unary_unary_rpc_method_handler(
        sync_echo, pb.GetPermissionRequest.FromString, pb.Permission.SerializeToString
    )
}


async def test_a_synchronous_handler_is_served_on_grpcs_thread_and_still_needs_the_token() -> None:
    server = grpc.aio.server()
    ServedMethods(server, bearer_token=TOKEN, recorder=Recorded()).add_registered_method_handlers(
        SERVICE, SYNC_HANDLERS
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary(f"/{SERVICE}/Echo")
            reply = await echo(REQUEST.SerializeToString(), metadata=AUTHORIZED)
            assert pb.Permission.FromString(reply).user_number == USER
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await echo(REQUEST.SerializeToString())
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)
