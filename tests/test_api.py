"""The API surface: bad input on every RPC, auth, event streams with cursors, health."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from conftest import BUSINESS, OTHER_USER, USER, Running
from grpc_health.v1 import health_pb2, health_pb2_grpc
from wacall_client import error_details
from wacall_client.sim.v1 import simulator_pb2 as sim_pb
from wacall_client.testing.v1 import clock_pb2
from wacall_client.v1 import calling_pb2 as pb

BAD_NUMBERS = ["", "abc", "+1", "+999123456789", "+44 7911 12345x", "0044"]


async def expect_bad_request(call: object, field: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert [v.field for v in error_details(error).field_violations] == [field]
    assert field in (error.details() or "")
    return error


@pytest.mark.parametrize("number", BAD_NUMBERS)
async def test_get_permission_rejects_bad_numbers(wacall: Running, number: str) -> None:
    await expect_bad_request(wacall.permission(number, USER), "business_number")
    await expect_bad_request(wacall.permission(BUSINESS, number), "user_number")


@pytest.mark.parametrize("number", BAD_NUMBERS)
async def test_request_permission_rejects_bad_numbers_and_sends_nothing(wacall: Running, number: str) -> None:
    await expect_bad_request(wacall.request(number, USER), "business_number")
    await expect_bad_request(wacall.request(BUSINESS, number), "user_number")
    events = await wacall.calling.ListEvents(pb.ListEventsRequest())
    assert not events.events


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"body_text": "x" * 1025}, "body_text"),
        ({"idempotency_key": "k" * 129}, "idempotency_key"),
        ({"template": pb.Template(name="", language="en")}, "template.name"),
        ({"template": pb.Template(name="t", language="")}, "template.language"),
        ({"template": pb.Template(name="t", language="en", body_parameters=["p"] * 51)}, "template.body_parameters"),
    ],
)
async def test_request_permission_rejects_bad_fields_and_changes_nothing(
    wacall: Running, fields: dict[str, object], bad_field: str
) -> None:
    await expect_bad_request(wacall.request(**fields), bad_field)
    permission = await wacall.permission()
    assert permission.state == pb.PERMISSION_STATE_NONE
    assert [limit.used for limit in permission.actions[0].limits] == [0, 0]


async def test_watch_and_list_events_reject_bad_filters_and_cursors(wacall: Running) -> None:
    await expect_bad_request(wacall.calling.ListEvents(pb.ListEventsRequest(user_number="nope")), "user_number")
    await expect_bad_request(wacall.calling.ListEvents(pb.ListEventsRequest(after_cursor="x9")), "after_cursor")
    await expect_bad_request(wacall.calling.ListEvents(pb.ListEventsRequest(page_size=5000)), "page_size")
    stream = wacall.calling.WatchEvents(pb.WatchEventsRequest(business_number="12"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_simulator_and_clock_reject_bad_input(wacall: Running) -> None:
    await expect_bad_request(wacall.sim.SetUserBehavior(sim_pb.SetUserBehaviorRequest(user_number="x")), "user_number")
    await expect_bad_request(
        wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number="1", user_number=USER)),
        "business_number",
    )
    await expect_bad_request(
        wacall.sim.GrantPermission(sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number="")),
        "user_number",
    )
    await expect_bad_request(wacall.sim.ListMessages(sim_pb.ListMessagesRequest(user_number="")), "user_number")
    negative = clock_pb2.AdvanceRequest()
    negative.duration.seconds = -5
    before = await wacall.now()
    await expect_bad_request(wacall.clock.Advance(negative), "duration")
    assert await wacall.now() == before


async def test_watch_events_resumes_after_a_cursor_without_gaps_or_repeats(wacall: Running) -> None:
    await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    await wacall.request()
    first_two: list[pb.Event] = []
    async for event in wacall.calling.WatchEvents(pb.WatchEventsRequest()):
        first_two.append(event)
        if len(first_two) == 2:
            break
    assert [e.kind for e in first_two] == [pb.EVENT_KIND_USER_MESSAGE_RECEIVED, pb.EVENT_KIND_PERMISSION_REQUEST_SENT]

    # More events happen while nobody watches, then more while the resumed stream is open.
    await wacall.sim.GrantPermission(sim_pb.GrantPermissionRequest(business_number=BUSINESS, user_number=USER))
    resumed: list[pb.Event] = []

    async def follow() -> None:
        async for event in wacall.calling.WatchEvents(pb.WatchEventsRequest(after_cursor=first_two[-1].cursor)):
            resumed.append(event)
            if len(resumed) == 3:
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    await wacall.sim.RevokePermission(sim_pb.RevokePermissionRequest(business_number=BUSINESS, user_number=USER))
    await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    await asyncio.wait_for(follower, 5)
    assert [e.kind for e in resumed] == [
        pb.EVENT_KIND_PERMISSION_GRANTED,
        pb.EVENT_KIND_PERMISSION_REVOKED,
        pb.EVENT_KIND_USER_MESSAGE_RECEIVED,
    ]
    cursors = [int(e.cursor) for e in first_two + resumed]
    assert cursors == sorted(set(cursors)) and cursors == list(range(cursors[0], cursors[0] + 5))
    assert resumed[0].source == pb.EVENT_SOURCE_USER_ACTION
    assert resumed[0].permission_state == pb.PERMISSION_STATE_TEMPORARY
    assert resumed[1].permission_state == pb.PERMISSION_STATE_REVOKED


async def test_watch_events_filters_by_pair(wacall: Running) -> None:
    await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=OTHER_USER))
    await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    async for event in wacall.calling.WatchEvents(pb.WatchEventsRequest(user_number="34612345678")):
        assert event.user_number == USER
        break


async def test_list_events_pages_with_cursors(wacall: Running) -> None:
    for _ in range(5):
        await wacall.sim.SendUserMessage(sim_pb.SendUserMessageRequest(business_number=BUSINESS, user_number=USER))
    page1 = await wacall.calling.ListEvents(pb.ListEventsRequest(page_size=3))
    page2 = await wacall.calling.ListEvents(pb.ListEventsRequest(page_size=3, after_cursor=page1.next_cursor))
    assert len(page1.events) == 3 and len(page2.events) == 2 and page2.next_cursor == ""
    assert len({e.cursor for e in [*page1.events, *page2.events]}) == 5


async def test_auth_token_required_when_configured(make_service) -> None:  # type: ignore[no-untyped-def]
    running: Running = await make_service(auth_token="s3cret")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.calling.GetPermission(pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await running.calling.GetPermission(
            pb.GetPermissionRequest(business_number=BUSINESS, user_number=USER),
            metadata=(("authorization", "Bearer nope"),),
        )
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    stream = running.calling.WatchEvents(pb.WatchEventsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in stream:
            pass
    assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    permission = await running.permission()  # carries the right token
    assert permission.state == pb.PERMISSION_STATE_NONE
    # Health checks stay open for load balancers.
    health = health_pb2_grpc.HealthStub(running.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="wacall.v1.CallingService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_reports_serving(wacall: Running) -> None:
    health = health_pb2_grpc.HealthStub(wacall.channel)
    for service in ("", "wacall.v1.CallingService", "wacall.sim.v1.SimulatorService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
