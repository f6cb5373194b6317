"""The Python client against a real service: every method of `Client` (asyncio) and of `SyncClient` (blocking, run
in a thread so the in-process service keeps serving), with the token on every call and the rich errors unpacked.

Each scenario runs once per client: what one client can do, the other can too.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import aclosing
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import certifi
import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from wacall_client import Client, ErrorDetails, SyncClient, WacallError
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.testing.v1 import clock_pb2
from wacall_client.v1 import calling_pb2 as pb
from wacall_client.v1 import contact_center_model_pb2 as model
from wacall_client.v1 import contact_center_pb2 as cc

from tests.conftest import BUSINESS, OTHER_USER, USER, Running

T = TypeVar("T")
TOKEN = "client-test-token"
AnyClient = Client | SyncClient
R = cc.AgentSessionRequest


async def run(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls a client method: awaited for the async client, in a thread for the sync one."""
    if inspect.iscoroutinefunction(method):
        return await method(*args, **kwargs)
    return await asyncio.to_thread(method, *args, **kwargs)


async def take_until(stream: Callable[..., Any], done: Callable[[Any], bool], *args: Any, **kwargs: Any) -> list[Any]:
    """Reads a streaming method's items until `done(item)`, then leaves the loop (which cancels the call)."""
    if inspect.isasyncgenfunction(stream):

        async def read() -> list[Any]:
            items: list[Any] = []
            async with aclosing(stream(*args, **kwargs)) as replies:
                async for item in replies:
                    items.append(item)
                    if done(item):
                        break
            return items

        return await asyncio.wait_for(read(), 20)

    def read_blocking() -> list[Any]:
        items: list[Any] = []
        replies = stream(*args, **kwargs)
        try:
            for item in replies:
                items.append(item)
                if done(item):
                    break
        finally:
            replies.close()
        return items

    return await asyncio.wait_for(asyncio.to_thread(read_blocking), 20)


def held_open(first: list[T], until: threading.Event, then: list[T], is_async: bool) -> AsyncIterable[T] | Iterable[T]:
    """A request stream: `first`, then (once `until` is set) `then`; the stream stays open in between."""

    async def requests() -> AsyncIterator[T]:
        for item in first:
            yield item
        while not until.is_set():
            await asyncio.sleep(0.02)
        for item in then:
            yield item

    def blocking_requests() -> Iterator[T]:
        yield from first
        until.wait(20)
        yield from then

    return requests() if is_async else blocking_requests()


async def eventually(fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 10) -> T:
    deadline = time.monotonic() + timeout
    while not done(value := await fetch()):
        assert time.monotonic() < deadline, f"not reached in {timeout}s: {value}"
        await asyncio.sleep(0.05)
    return value


@pytest.fixture(params=["async", "sync"])
async def client(
    request: pytest.FixtureRequest, make_service: Callable[..., Awaitable[Running]]
) -> AsyncIterator[AnyClient]:
    running = await make_service(auth_token=TOKEN)
    if request.param == "async":
        async with Client(running.addresses.grpc, token=TOKEN, timeout=20) as wacall:
            yield wacall
    else:
        sync = SyncClient(running.addresses.grpc, token=TOKEN, timeout=20)
        try:
            yield sync
        finally:
            sync.close()


async def test_permissions_events_policy_and_rich_errors(client: AnyClient) -> None:
    sim = client.simulator
    behavior = await run(sim.set_user_behavior, USER, on_permission_request=sim_pb.ACCEPT_TEMPORARY)
    assert behavior.on_permission_request == sim_pb.ACCEPT_TEMPORARY
    assert (await run(sim.get_user_behavior, USER)).on_permission_request == sim_pb.ACCEPT_TEMPORARY
    assert (await run(client.get_policy)).name == "seed"

    sent = await run(client.request_permission, BUSINESS, USER, idempotency_key="first")
    assert sent.message_id and not sent.replayed
    granted = await eventually(
        lambda: run(client.get_permission, BUSINESS, USER), lambda p: p.state == pb.PERMISSION_STATE_TEMPORARY
    )
    assert granted.expires_at.seconds > 0
    events = await take_until(
        client.watch_events,
        lambda e: e.kind == pb.EVENT_KIND_PERMISSION_GRANTED,
        business_number=BUSINESS,
        user_number=USER,
    )
    assert [e.kind for e in events][:1] == [pb.EVENT_KIND_PERMISSION_REQUEST_SENT]
    page = await run(client.list_events, BUSINESS, USER, page_size=10)
    assert [e.cursor for e in page.events][: len(events)] == [e.cursor for e in events]

    # The rules allow one request per 24 h: the second is refused, and says when to retry.
    with pytest.raises(WacallError) as limited:
        await run(client.request_permission, BUSINESS, USER, idempotency_key="second")
    assert limited.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.value.retry_after is not None and timedelta(hours=23) < limited.value.retry_after <= timedelta(
        hours=24, seconds=2
    )
    assert "1 of 1 per 24 h" in limited.value.details.quota_violations[0].description
    assert isinstance(limited.value.__cause__, grpc.RpcError)

    # A bad field is named.
    with pytest.raises(WacallError) as bad:
        await run(client.request_permission, BUSINESS, OTHER_USER, idempotency_key="k" * 200)
    assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.value.details.field_violations] == ["idempotency_key"]

    messages = await run(sim.list_messages, USER, business_number=BUSINESS)
    assert [m.message_id for m in messages.messages] == [sent.message_id]
    assert (await run(sim.get_platform_permission, BUSINESS, USER)).status
    assert (await run(sim.send_user_message, BUSINESS, USER, "hello")).message_id
    assert (await run(sim.grant_permission, BUSINESS, OTHER_USER, permanent=True)).business_number == BUSINESS
    await run(sim.revoke_permission, BUSINESS, OTHER_USER)
    revoked = await eventually(
        lambda: run(client.get_permission, BUSINESS, OTHER_USER), lambda p: p.state == pb.PERMISSION_STATE_REVOKED
    )
    assert revoked.state == pb.PERMISSION_STATE_REVOKED


async def test_calls_call_media_the_users_phone_and_the_clock(client: AnyClient) -> None:
    sim = client.simulator
    await run(sim.grant_permission, BUSINESS, USER, permanent=True)
    await run(sim.set_user_behavior, USER, on_call=sim_pb.ANSWER, ring_duration=timedelta(0), tone_hz=880)
    call = await run(
        client.start_call, BUSINESS, USER, route=pb.Route(media_stream=pb.MediaStreamRoute()), idempotency_key="c1"
    )
    assert call.state == pb.CALL_STATE_DIALING

    # Listen until the user is heard, then hang up through the stream: it ends with the call.
    heard = threading.Event()
    hang_up = held_open([], heard, [pb.CallMediaRequest(hangup=True)], isinstance(client, Client))

    def ended_or_heard(response: pb.CallMediaResponse) -> bool:
        if response.WhichOneof("kind") == "audio" and any(response.audio):
            heard.set()
        return response.WhichOneof("kind") == "call" and response.call.state == pb.CALL_STATE_ENDED

    media = await take_until(client.call_media, ended_or_heard, call.call_id, hang_up, sample_rate=16000)
    audio = [m.audio for m in media if m.WhichOneof("kind") == "audio"]
    assert audio and all(len(frame) == 640 for frame in audio)  # 20 ms of PCM16 at 16 kHz
    assert media[-1].call.outcome == pb.CALL_OUTCOME_ANSWERED

    assert (await run(client.get_call, call.call_id)).state == pb.CALL_STATE_ENDED
    listed = await run(client.list_calls, user_number=USER, page_size=10)
    assert [c.call_id for c in listed.calls] == [call.call_id]
    phone = await run(sim.get_phone_call, call.platform_call_id)
    assert phone.frames_sent > 0 and phone.answered_at.seconds > 0  # the phone answered and spoke

    # A call the user lets ring (clock time stands still), cancelled by the business.
    await run(sim.set_user_behavior, USER, ring_duration=timedelta(minutes=5))
    ringing = await run(client.start_call, BUSINESS, USER)
    cancelled = await run(client.end_call, ringing.call_id)
    assert cancelled.state == pb.CALL_STATE_ENDED and cancelled.outcome == pb.CALL_OUTCOME_CANCELLED
    with pytest.raises(WacallError) as unknown:
        await run(client.get_call, "call_unknown")
    assert unknown.value.code is grpc.StatusCode.NOT_FOUND

    # The user calls the business, then hangs up.
    placed = await run(sim.place_user_call, BUSINESS, OTHER_USER)
    assert placed.platform_call_id
    await run(sim.hang_up, placed.platform_call_id)

    before = (await run(client.clock.now)).now.ToDatetime()
    after = (await run(client.clock.advance, timedelta(hours=2))).now.ToDatetime()
    assert after - before == timedelta(hours=2)

    paused = await run(sim.restrict_business, BUSINESS, timedelta(days=1))
    assert paused.restricted_until.ToDatetime() == after + timedelta(days=1)
    refused = await eventually(
        lambda: run(client.get_permission, BUSINESS, USER),
        lambda p: any(a.reason == pb.REASON_BUSINESS_RESTRICTED for a in p.actions),
    )
    assert refused.state == pb.PERMISSION_STATE_PERMANENT


async def test_queues_agents_and_an_agent_session(client: AnyClient) -> None:
    center = client.contact_center
    queue = await run(center.put_queue, model.Queue(queue_id="sales", name="Sales"))
    assert queue.queue_id == "sales"
    assert (await run(center.get_queue, "sales")).name == "Sales"
    assert [q.queue_id for q in (await run(center.list_queues)).queues] == ["sales"]
    agent = await run(center.put_agent, model.Agent(agent_id="ann", name="Ann", queue_ids=["sales"]))
    assert agent.agent_id == "ann"
    assert (await run(center.get_agent, "ann")).name == "Ann"
    assert [a.agent_id for a in (await run(center.list_agents, queue_id="sales")).agents] == ["ann"]
    stats = await run(center.get_queue_stats, "sales")
    assert (stats.queue_id, stats.waiting, stats.agents_available) == ("sales", 0, 0)  # nobody signed in yet

    available = threading.Event()
    requests = held_open(
        [R(login=R.Login(agent_id="ann")), R(set_presence=R.SetPresence(presence=model.AGENT_PRESENCE_AVAILABLE))],
        available,
        [],
        isinstance(client, Client),
    )

    def is_available(event: cc.AgentSessionEvent) -> bool:
        done = event.WhichOneof("kind") == "presence" and event.presence.state == model.AGENT_PRESENCE_AVAILABLE
        if done:
            available.set()
        return done

    events = await take_until(center.agent_session, is_available, requests)
    assert events[0].logged_in.agent.agent_id == "ann"

    # Leaving the session takes the agent offline; then both can go.
    await eventually(lambda: run(center.get_agent, "ann"), lambda a: a.presence == model.AGENT_PRESENCE_OFFLINE)
    assert (await run(center.delete_agent, "ann")).agent_id == "ann"
    assert (await run(center.delete_queue, "sales")).queue_id == "sales"
    with pytest.raises(WacallError) as missing:
        await run(center.get_queue, "sales")
    assert missing.value.code is grpc.StatusCode.NOT_FOUND and missing.value.details.reason == "unknown_queue"
    with pytest.raises(WacallError) as bad:
        await run(center.put_queue, model.Queue(queue_id="no spaces allowed"))
    assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.value.details.field_violations] == ["queue_id"]


async def test_every_call_carries_the_token(make_service: Callable[..., Awaitable[Running]]) -> None:
    running = await make_service(auth_token=TOKEN)
    async with Client(running.addresses.grpc, token="wrong") as wrong:
        with pytest.raises(WacallError) as refused:
            await wrong.get_policy()
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
    sync = SyncClient(running.addresses.grpc)
    try:
        with pytest.raises(WacallError) as anonymous:
            await asyncio.to_thread(sync.clock.now)
        assert anonymous.value.code is grpc.StatusCode.UNAUTHENTICATED
    finally:
        sync.close()


async def test_tls_options_make_the_client_speak_tls(make_service: Callable[..., Awaitable[Running]]) -> None:
    # The service's own TLS comes with the operations work; here its plaintext port shows that each way of asking
    # for TLS makes the client open a TLS handshake (which a plaintext server cannot complete) and none is silently
    # ignored.
    running = await make_service()
    address = running.addresses.grpc
    for options in (
        {"tls": True},
        {"credentials": grpc.ssl_channel_credentials()},
        {"root_certificates": Path(certifi.where()).read_bytes()},
    ):
        async with Client(address, timeout=5, **options) as secure:  # type: ignore[arg-type]
            with pytest.raises(WacallError) as refused:
                await secure.get_policy()
        assert refused.value.code is grpc.StatusCode.UNAVAILABLE, options
    async with Client(address, timeout=5) as plain:
        assert (await plain.get_policy()).name == "seed"


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


async def test_every_rpc_of_every_service_has_a_method_on_both_clients() -> None:
    # The clients are written by hand (the sync one generated from the async one): this catches an RPC added to a
    # proto without its method.
    services = [
        (pb.DESCRIPTOR.services_by_name["CallingService"], lambda c: c),
        (cc.DESCRIPTOR.services_by_name["ContactCenterService"], lambda c: c.contact_center),
        (sim_pb.DESCRIPTOR.services_by_name["SimulatorService"], lambda c: c.simulator),
        (clock_pb2.DESCRIPTOR.services_by_name["ClockService"], lambda c: c.clock),
    ]
    async with Client("127.0.0.1:1") as async_client:
        sync_client = SyncClient("127.0.0.1:1")
        try:
            missing = [
                f"{type(client).__name__}: {service.full_name}.{method.name}"
                for service, part in services
                for method in service.methods
                for client in (async_client, sync_client)
                if not callable(getattr(part(client), snake_case(method.name), None))
            ]
        finally:
            sync_client.close()
    assert missing == []


@pytest.fixture
async def rewriting_proxy() -> AsyncIterator[tuple[str, list[tuple[str, bytes]]]]:
    """A server answering GetPolicy with an error whose details trailer is set by the test: corrupt, or a Status
    whose code and message differ from the call's (as behind a proxy that rewrites grpc-message)."""
    trailer: list[tuple[str, bytes]] = []

    async def get_policy(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION, "rewritten by a proxy", trailing_metadata=tuple(trailer)
        )
        raise AssertionError("abort raises")

    handler = grpc.method_handlers_generic_handler(
        "wacall.v1.CallingService", {"GetPolicy": grpc.unary_unary_rpc_method_handler(get_policy)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", trailer
    await server.stop(0)


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_an_unreadable_or_rewritten_details_trailer_still_raises_wacall_error(
    rewriting_proxy: tuple[str, list[tuple[str, bytes]]], kind: str
) -> None:
    address, trailer = rewriting_proxy

    async def get_policy() -> WacallError:
        if kind == "async":
            async with Client(address, timeout=5) as wacall:
                with pytest.raises(WacallError) as caught:
                    await wacall.get_policy()
            return caught.value
        sync = SyncClient(address, timeout=5)
        try:
            with pytest.raises(WacallError) as caught_sync:
                await asyncio.to_thread(sync.get_policy)
            return caught_sync.value
        finally:
            sync.close()

    trailer[:] = [("grpc-status-details-bin", b"\xff\xff")]
    corrupt = await get_policy()
    assert corrupt.code is grpc.StatusCode.FAILED_PRECONDITION and corrupt.message == "rewritten by a proxy"
    assert corrupt.details == ErrorDetails()
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="NO_PERMISSION", domain="wacall"))
    status = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="the original", details=[info])
    trailer[:] = [("grpc-status-details-bin", status.SerializeToString())]
    rewritten = await get_policy()
    assert rewritten.code is grpc.StatusCode.FAILED_PRECONDITION
    assert rewritten.details.reason == "NO_PERMISSION"  # the details the service sent are still read
